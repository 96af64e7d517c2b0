"""One training step (forward, loss, backward, Adam update) of each reference model.

The step is the one the Trainer takes on that backend: the backend's fused
whole step where it offers one for the model (the fused CPU backend's
parallel MLP step, which gathers its batch rows itself), else the layer
path on a batch gathered outside the timed region. The step ends with a
device synchronisation on the GPU.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import timed
from gpubackprop.bench.runners import MODELS, Ours

BATCH = 128


@pytest.mark.parametrize("model_name", list(MODELS))
def test_training_step(benchmark, backend, data, model_name, rng):
    spec = MODELS[model_name]
    trainer = Ours(spec, data, BATCH, device=backend).trainer
    model, loss, optimizer = trainer.model, trainer.loss, trainer.optimizer
    fused = backend.training_step(model, loss, optimizer, BATCH)
    path = "layer path" if fused is None else type(fused).__name__
    benchmark.group = f"training step, batch {BATCH} [{backend.name}]"
    benchmark.extra_info["path"] = path
    if fused is not None:
        # The fused step takes the whole training set and the batch's row indices.
        X = data.inputs(spec, data.X_train)
        labels = data.y_train.astype(np.int64)
        T = backend.one_hot(labels, 10, model.dtype)
        index = rng.permutation(len(X))[:BATCH].astype(np.int64)
        with fused:
            benchmark.pedantic(timed(backend, lambda: fused(X, T, labels, index)), rounds=20,
                               warmup_rounds=3)
        return
    X = backend.asarray(data.inputs(spec, data.X_train[:BATCH]))
    labels = backend.asarray(data.y_train[:BATCH])
    T = backend.one_hot(labels, 10, model.dtype)

    def step():
        Y = model.forward(X, train=True)
        _, dY = loss(backend, Y, T)
        model.backward(dY)
        optimizer.step(model)

    benchmark.pedantic(timed(backend, step), rounds=20, warmup_rounds=3)
