"""One training step (forward, loss, backward, Adam update) of each reference model.

The step is the one the Trainer takes on that backend: the model's step as
the backend compiles it (``extra_info["compiler"]`` names the compiler, and
why others declined), gathering its batch rows from the whole training set
inside the timed region. The step ends with a device synchronisation on the GPU.
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
    model = trainer.model
    step = model.compile_step(trainer.loss, trainer.optimizer, BATCH)
    benchmark.group = f"training step, batch {BATCH} [{backend.name}]"
    benchmark.extra_info["compiler"] = step.describe()
    # The step takes the whole training set and the batch's row indices.
    X = backend.asarray(data.inputs(spec, data.X_train))
    labels = backend.asarray(data.y_train.astype(np.int64))
    T = backend.one_hot(labels, 10, model.dtype)
    index = backend.asarray(rng.permutation(len(X))[:BATCH].astype(np.int64))
    with step:
        benchmark.pedantic(timed(backend, lambda: step(X, T, labels, index)), rounds=20,
                           warmup_rounds=3)
