"""The fused CPU backend (Numba kernels) against the NumPy reference."""

import numpy as np
import pytest

from gpubackprop.verify import parity
from gpubackprop.backends import CPUStatus, cpu_status, get_backend
from gpubackprop.cli.main import main
from gpubackprop.nn.optim import Adam

pytestmark = pytest.mark.numba


@pytest.fixture
def fused():
    return get_backend("numba")


@pytest.fixture
def reference():
    return get_backend("numpy")


@pytest.fixture
def kernels():
    # cpu_parallel binds cpu_kernels' functions when first imported: import it before a test
    # patches them (count_calls), or a cold Numba cache would compile it against the patches.
    from gpubackprop.backends.numba import kernels as cpu_kernels, parallel as cpu_parallel  # noqa: F401
    return cpu_kernels


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_parity_row_passes(reference, fused, dtype):
    rows = parity.compare_backends(reference, fused, dtype)
    failed = [row for row in rows if not row.passed]
    assert len(rows) > 60 and not failed, failed


def count_calls(monkeypatch, kernels, name):
    calls = []
    original = getattr(kernels, name)
    monkeypatch.setattr(kernels, name, lambda *args: calls.append(name) or original(*args))
    return calls


def test_layer_by_layer_training_takes_the_fused_kernels(monkeypatch, kernels, rng):
    from gpubackprop.nn.model import mlp
    from gpubackprop.training.trainer import Trainer

    names = ("bias_activation", "activation_backward", "softmax_cross_entropy", "adam_step")
    calls = {name: count_calls(monkeypatch, kernels, name) for name in names}
    X, y = rng.normal(size=(96, 6)), rng.integers(0, 3, size=96)
    # Clipping keeps this model off the whole-step path (tests/test_cpu_parallel.py).
    trainer = Trainer(mlp(6, [8], 3, device="numba", seed=0), batch_size=32, verbose=0,
                      clip_norm=100.0)
    trainer.fit(X, y, epochs=1)
    # 3 batches: 1 ReLU layer and 1 output layer forward, the ReLU backward, 4 parameters
    # updated per step.
    assert {name: len(c) for name, c in calls.items()} == {
        "bias_activation": 6, "activation_backward": 3, "softmax_cross_entropy": 3,
        "adam_step": 12}


@pytest.mark.parametrize("make", [
    lambda A: np.asfortranarray(A),         # not C-contiguous
    lambda A: A.astype(np.float16),         # a dtype without a kernel
])
def test_unsuited_arrays_fall_back_to_the_reference(monkeypatch, kernels, fused, reference,
                                                    rng, make):
    calls = count_calls(monkeypatch, kernels, "activation_backward")
    dY, Y = (make(rng.standard_normal((9, 7)).astype(np.float32)) for _ in range(2))
    np.testing.assert_array_equal(fused.backprop_activation(dY, Y, "relu"),
                                  reference.backprop_activation(dY, Y, "relu"))
    assert calls == []


def test_output_overlapping_an_input_falls_back(monkeypatch, kernels, fused, reference, rng):
    calls = count_calls(monkeypatch, kernels, "activation_backward")
    buffer = rng.standard_normal((10, 8)).astype(np.float32)
    Y = np.tanh(rng.standard_normal((9, 8)).astype(np.float32))
    expected = reference.backprop_activation(buffer[:9].copy(), Y, "tanh")
    # out is dY shifted by one row: an elementwise loop would read values it already wrote.
    got = fused.backprop_activation(buffer[:9], Y, "tanh", out=buffer[1:])
    np.testing.assert_array_equal(got, expected)
    assert calls == []


def test_nan_propagates_as_on_the_reference(fused, reference):
    Z = np.array([[np.nan, 1.0, -2.0], [0.5, np.inf, -np.inf]], dtype=np.float32)
    b = np.zeros(3, dtype=np.float32)
    for backend in (fused, reference):
        Y = backend.bias_activation(Z.copy(), b, "relu")
        assert np.isnan(Y[0, 0]) and Y[1, 1] == np.inf and Y[1, 2] == 0
    T = np.eye(3, dtype=np.float32)[[0, 1]]
    loss, dZ = fused.softmax_cross_entropy(Z, T)
    assert np.isnan(loss) and np.isnan(dZ[0]).all()
    W, M, V = (np.zeros(4, np.float32) for _ in range(3))
    fused.adam_update(W, np.array([np.nan, 1, 1, 1], np.float32), Adam().begin_step(fused), M, V)
    assert np.isnan(W[0]) and np.isfinite(W[1:]).all()


def test_loss_keeps_the_dtype_and_is_a_0d_array(fused, rng):
    for dtype in (np.float32, np.float64):
        Z = rng.standard_normal((5, 4)).astype(dtype)
        loss, dZ = fused.softmax_cross_entropy(Z, np.eye(4, dtype=dtype)[[0, 1, 2, 3, 0]])
        assert loss.shape == () and loss.dtype == dtype and dZ.dtype == dtype


def test_each_kernel_compiles_once_per_dtype(kernels, fused, rng):
    for _ in range(3):
        for dtype in (np.float32, np.float64):
            W, G, M, V = (rng.standard_normal(50).astype(dtype) ** 2 for _ in range(4))
            fused.adam_update(W, G, Adam().begin_step(fused), M, V)
    assert len(kernels.adam_step.signatures) == 2


@pytest.mark.slow
def test_check_against_numba_prints_a_passing_table(capsys):
    assert main(["check", "--against", "numba", "--dtype", "float64"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("parity numpy vs numba, float64, device ")
    assert "adamw W" in out and "FAIL" not in out.replace("PASS", "")


def test_check_against_numba_without_numba_exits_2(monkeypatch, capsys):
    from gpubackprop import backends

    monkeypatch.setattr(backends, "cpu_status", lambda: CPUStatus(False, "Numba is missing (test)"))
    assert main(["check", "--against", "numba"]) == 2
    assert "Numba is missing (test)" in capsys.readouterr().err


def test_cpu_status_names_the_numba_version():
    import numba

    assert cpu_status().numba_version == numba.__version__
