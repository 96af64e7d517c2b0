"""One training step (forward, loss, backward, Adam update) of each reference model.

The batch (128 samples) is gathered once, outside the timed region; the step
ends with a device synchronisation on the GPU.
"""

from __future__ import annotations

import pytest

from conftest import timed
from gpubackprop.bench_runners import MODELS, Ours

BATCH = 128


@pytest.mark.parametrize("model_name", list(MODELS))
def test_training_step(benchmark, backend, data, model_name):
    spec = MODELS[model_name]
    benchmark.group = f"training step, batch {BATCH} [{backend.name}]"
    trainer = Ours(spec, data, BATCH, device=backend).trainer
    model, loss = trainer.model, trainer.loss
    X = backend.asarray(data.inputs(spec, data.X_train[:BATCH]))
    labels = backend.asarray(data.y_train[:BATCH])
    T = backend.one_hot(labels, 10, model.dtype)

    def step():
        Y = model.forward(X, train=True)
        _, dY = loss(backend, Y, T)
        model.backward(dY)
        trainer.optimizer.step(model)

    benchmark.pedantic(timed(backend, step), rounds=20, warmup_rounds=3)
