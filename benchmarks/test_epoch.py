"""One full training epoch (60000 samples, batch 128, Adam) of each reference model.

Real full epochs, never extrapolated from a few batches. On the CPU the same
epoch is also timed for the alternatives (textbook NumPy loop, scikit-learn,
PyTorch when importable) and for the GEMMs of the epoch alone, grouped per
model so pytest-benchmark lists them side by side; ``gpubackprop bench``
gives the interleaved comparison with ratios. Our row includes ``fit``'s
input checks (tens of milliseconds); ``extra_info`` holds the epoch time
the Trainer itself records. Each epoch continues training the same model.
"""

from __future__ import annotations

import pytest

from gpubackprop.bench.runners import MODELS, RUNNERS, Unavailable

BATCH = 128
#: Rounds per model: the large MLP and the RNN take several seconds an epoch on two cores.
ROUNDS = {"784-128-10": 2, "784-512-10": 2, "784-1024-1024-10": 1, "rnn-28x28-128-10": 1}


def make_runner(key, spec, data, device):
    try:
        return RUNNERS[key](spec, data, BATCH, device=device)
    except Unavailable as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("model_name", list(MODELS))
def test_epoch_ours(benchmark, backend, data, model_name):
    device = backend.device
    benchmark.group = f"epoch {model_name} [{device}]"
    runner = make_runner("ours", MODELS[model_name], data, backend)
    if backend.name != "numpy":
        runner.epoch()  # kernel compilation (CUDA or Numba) and cuBLAS handles, untimed
    benchmark.pedantic(runner.epoch, rounds=ROUNDS[model_name], iterations=1)
    benchmark.extra_info["trainer_epoch_s"] = runner.trainer.history.epoch_time[-1]


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("key", ["gemm", "textbook", "sklearn", "torch"])
def test_epoch_alternative(benchmark, data, model_name, key):
    benchmark.group = f"epoch {model_name} [cpu]"
    runner = make_runner(key, MODELS[model_name], data, "cpu")
    benchmark.pedantic(runner.epoch, rounds=ROUNDS[model_name], iterations=1)
