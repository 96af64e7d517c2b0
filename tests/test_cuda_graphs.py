"""The compiled CuPy step recorded as CUDA graphs and replayed, against the same step uncaptured.

Runs on the emulated backend (the fake ``cupy`` records and replays graphs and
refuses, during capture, what CUDA's capture forbids; see
``tests/cuda_emulation/fake_cupy.py``) and, marked ``gpu``, on a real GPU.
Emulated, replayed training equals uncaptured training bit for bit (the same
NumPy products); on a GPU the replayed products are cuBLAS calls of our own
(``cublas_capture``) and the uncaptured ones CuPy's, so they agree to float32
rounding. Without a GPU, those ctypes calls run against a host stand-in of
libcublas (``tests/cuda_emulation/fake_cublas.cpp``, cuBLAS's signatures).
"""

import ctypes
import subprocess
import types
from pathlib import Path

import numpy as np
import pytest

from gpubackprop import Trainer, mlp
from gpubackprop.backends import get_backend
from gpubackprop.backends.cupy.cublas_capture import CaptureGemm, gemm_arguments
from gpubackprop.backends.cupy.graphs import GRAPHS_ENV
from gpubackprop.training.callbacks import LearningRateSchedule
from gpubackprop.training.checkpoint import load_checkpoint, save_checkpoint

from graph_comparison import assert_same_losses, assert_same_training

#: Rows of the training set: 9 batches of 32 and a last one of 12 (a second batch shape).
ROWS, BATCH = 300, 32


@pytest.fixture
def data(rng):
    X = rng.standard_normal((ROWS, 12)).astype(np.float32)
    y = (X[:, 0] - X[:, 1] + 0.5 * X[:, 2] > 0).astype(np.int64) + (X[:, 3] > 0.8)
    return X, y


def train(backend, data, tmp_path, optimizer="adam", activation="tanh", dtype="float32"):
    """Two epochs, a checkpoint, two more epochs resumed from it; the LR cut by 10 every
    epoch; validation after every epoch. Returns (model, losses, steps of both fits)."""
    X, y = data
    validation = (X[:60], y[:60])

    def fit(model, opt, first_seed, epochs):
        schedule = LearningRateSchedule("step", base_lr=0.01, epochs=epochs, step_size=1)
        trainer = Trainer(model, optimizer=opt, lr=0.01, batch_size=BATCH, seed=first_seed,
                          verbose=0, callbacks=[schedule])
        trainer.fit(X, y, epochs=epochs, validation_data=validation)
        return trainer

    model = mlp(12, [16, 8], 3, activation=activation, device=backend, dtype=dtype, seed=4)
    first = fit(model, optimizer, 1, 2)
    save_checkpoint(tmp_path, model, first.optimizer, first.history)
    loaded = load_checkpoint(tmp_path, device=backend)
    second = fit(loaded.model, loaded.optimizer, 2, 2)
    losses = first.history.loss + second.history.loss + first.history.val_loss + \
        second.history.val_loss
    return loaded.model, np.array(losses), (first.step, second.step)


@pytest.mark.parametrize("optimizer, activation, dtype", [
    ("adam", "tanh", "float32"), ("momentum", "silu", "float32"), ("sgd", "relu", "float64")])
def test_replayed_graphs_train_as_the_uncaptured_step(monkeypatch, graph_backend, data, tmp_path,
                                                      optimizer, activation, dtype):
    model, losses, steps = train(graph_backend, data, tmp_path, optimizer, activation, dtype)
    for step in steps:
        assert step.describe() == "cupy-device-step (CUDA graph)"
        # One recording per batch shape (32 and 12 rows), every other step replayed.
        assert (step.graphs.captures, step.graphs.replays) == (2, step.calls - 2)
        assert step.calls == 20
    monkeypatch.setattr(graph_backend, "cuda_graphs", False)
    uncaptured, expected, plain_steps = train(graph_backend, data, tmp_path / "uncaptured",
                                              optimizer, activation, dtype)
    assert all(step.graphs is None for step in plain_steps)
    assert_same_training(graph_backend, (model, losses), (uncaptured, expected),
                         figures_tolerance=(1e-5, 0), states_tolerance=(1e-4, 1e-6))


def allocating_sum_rows(backend):
    """``sum_rows`` that allocates its result, then copies it into ``out``."""
    def sum_rows(X, out=None):
        out[...] = X.sum(axis=0)
        return out
    return sum_rows


def host_reading_sum_rows(backend):
    """``sum_rows`` that also reads one value back to the host (a synchronisation)."""
    plain = backend.sum_rows

    def sum_rows(X, out=None):
        float(X[:1, 0].reshape(()))
        return plain(X, out=out)
    return sum_rows


@pytest.mark.parametrize("change, reason", [
    (allocating_sum_rows, "allocat"), (host_reading_sum_rows, "recording the step failed")])
def test_a_step_that_cannot_be_recorded_runs_uncaptured_and_says_why(
        monkeypatch, graph_backend, data, tmp_path, change, reason):
    monkeypatch.setattr(graph_backend, "sum_rows", change(graph_backend))
    model, losses, steps = train(graph_backend, data, tmp_path)
    for step in steps:
        assert step.graphs is None and reason in step.no_graph
        assert step.describe() == f"cupy-device-step (no CUDA graph: {step.no_graph})"
    monkeypatch.setattr(graph_backend, "cuda_graphs", False)
    uncaptured, expected, _ = train(graph_backend, data, tmp_path / "uncaptured")
    assert_same_losses(graph_backend, losses, expected)


def test_without_a_capture_gemm_the_step_runs_uncaptured(monkeypatch, graph_backend):
    def refuse(xp):
        raise OSError("libcublas.so.13: cannot open shared object file")

    monkeypatch.setattr(graph_backend, "capture_gemm_loader", refuse)
    monkeypatch.setattr(graph_backend, "_capture_gemm", None)
    step = mlp(4, [5], 3, device=graph_backend, seed=0).compile_step("cross_entropy", "sgd", 8)
    assert step.graphs is None
    assert step.describe() == ("cupy-device-step (no CUDA graph: no capture-safe GEMM (OSError: "
                               "libcublas.so.13: cannot open shared object file))")


@pytest.mark.parametrize("value, reason", [
    ("0", f"turned off by {GRAPHS_ENV}=0"), ("off", f"turned off by {GRAPHS_ENV}=off"),
    ("maybe", f"{GRAPHS_ENV}='maybe' is neither 0, 1, all nor device")])
def test_the_environment_switch_turns_graphs_off(monkeypatch, graph_backend, data, value,
                                                 reason):
    monkeypatch.setenv(GRAPHS_ENV, value)
    trainer = Trainer(mlp(12, [16], 3, device=graph_backend, seed=0), batch_size=BATCH,
                      verbose=0)
    trainer.fit(*data, epochs=1)
    assert trainer.step.graphs is None and trainer.step.no_graph == reason
    assert trainer.step.describe() == f"cupy-device-step (no CUDA graph: {reason})"
    monkeypatch.setenv(GRAPHS_ENV, "1")
    trainer.fit(*data, epochs=1)
    assert trainer.step.describe() == "cupy-device-step (CUDA graph)"


def test_new_data_at_another_address_is_recorded_again(graph_backend, rng):
    model = mlp(5, [6], 3, device=graph_backend, dtype="float64", seed=0)
    step = model.compile_step("cross_entropy", "sgd", 10)
    reference = mlp(5, [6], 3, device="numpy", dtype="float64", seed=0)
    expected = reference.compile_step("cross_entropy", "sgd", 10)
    for _ in range(2):
        X = graph_backend.asarray(rng.standard_normal((20, 5)))
        T = graph_backend.asarray(rng.dirichlet(np.ones(3), size=20))
        for index in (slice(0, 10), slice(10, 20), slice(0, 10)):
            loss, hits = step(X, T, None, index)
            want, _ = expected(graph_backend.to_numpy(X), graph_backend.to_numpy(T), None, index)
            assert hits is None and float(loss) == pytest.approx(float(want), rel=1e-10)
    assert (step.graphs.captures, step.graphs.replays) == (2, 4)


def test_a_changed_tf32_setting_is_recorded_again(monkeypatch, graph_backend, rng):
    model = mlp(5, [6], 3, device=graph_backend, seed=0)
    step = model.compile_step("cross_entropy", "sgd", 10)
    X = graph_backend.asarray(rng.standard_normal((10, 5)).astype(np.float32))
    T = graph_backend.asarray(np.eye(3, dtype=np.float32)[rng.integers(0, 3, 10)])
    gemm = graph_backend.capture_gemm()
    for tf32, captures in ((False, 1), (False, 1), (True, 2), (True, 2)):
        monkeypatch.setattr(graph_backend, "tf32_enabled", lambda: tf32)
        step(X, T, None, slice(0, 10))
        assert step.graphs.captures == captures
        if hasattr(gemm, "bound"):  # the emulation's stand-in keeps its last binding
            assert gemm.bound[1] is tf32


@pytest.mark.gpu
def test_tf32_reaches_the_capture_gemm(rng):
    """On the GPU: the products of a TF32 binding round their inputs, a plain one does not."""
    gpu = get_backend("gpu")
    xp = gpu.xp
    A, B = (rng.standard_normal((256, 256)).astype(np.float32) for _ in range(2))
    exact_product = A.astype(np.float64) @ B.astype(np.float64)
    gemm = gpu.capture_gemm()
    errors = {}
    for tf32 in (False, True):
        gemm.bind(xp.cuda.get_current_stream().ptr, tf32=tf32)
        out = xp.empty((256, 256), np.float32)
        gemm.gemm(gpu.asarray(A), gpu.asarray(B), out=out)
        errors[tf32] = np.abs(gpu.to_numpy(out) - exact_product).max() / np.abs(exact_product).max()
    assert errors[False] < 1e-5 < errors[True] < 1e-2


@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True),
                                              (True, True)])
def test_the_capture_gemm_is_the_backends_product(graph_backend, rng, trans_a, trans_b):
    xp = graph_backend.xp
    A = rng.standard_normal((7, 5) if trans_a else (5, 7))
    B = rng.standard_normal((4, 7) if trans_b else (7, 4))
    gemm = graph_backend.capture_gemm()
    gemm.bind(xp.cuda.get_current_stream().ptr, tf32=False)
    out = xp.empty((5, 4))
    gemm.gemm(graph_backend.asarray(A), graph_backend.asarray(B), trans_a, trans_b, out=out)
    expected = (A.T if trans_a else A) @ (B.T if trans_b else B)
    np.testing.assert_allclose(graph_backend.to_numpy(out), expected, rtol=1e-12)


@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True),
                                              (True, True)])
def test_gemm_arguments_compute_the_row_major_product_column_major(rng, trans_a, trans_b):
    """cuBLAS's column-major GEMM, written out in NumPy, on the memory of row-major arrays."""
    M, K, P = 3, 5, 4
    A = rng.standard_normal((K, M) if trans_a else (M, K))
    B = rng.standard_normal((P, K) if trans_b else (K, P))
    args = gemm_arguments(A.shape, B.shape, trans_a, trans_b, (M, P))

    def column_major(memory, rows, cols, ld):
        # Element (i, j) of a column-major matrix with leading dimension ld is memory[i + j ld].
        return memory.ravel()[:cols * ld].reshape(cols, ld).T[:rows]

    first = (column_major(B, args.k, args.m, args.ld_first).T if args.transpose_first
             else column_major(B, args.m, args.k, args.ld_first))
    second = (column_major(A, args.n, args.k, args.ld_second).T if args.transpose_second
              else column_major(A, args.k, args.n, args.ld_second))
    C = np.empty(M * P)
    column_major(C, args.m, args.n, args.ldc)[...] = first @ second
    np.testing.assert_allclose(C.reshape(M, P), (A.T if trans_a else A) @ (B.T if trans_b else B),
                               rtol=1e-12)
    with pytest.raises(ValueError, match=r"cannot multiply \(3, 5\) by \(4, 5\) into \(3, 4\)"):
        gemm_arguments((3, 5), (4, 5), False, False, (3, 4))


#: cuBLAS's enumeration values, as ``cupy_backends.cuda.libs.cublas`` holds them, for the
#: host stand-in of libcublas (``tests/cuda_emulation/fake_cublas.cpp`` uses the same).
CUBLAS_ENUMS = types.SimpleNamespace(
    CUBLAS_OP_N=0, CUBLAS_OP_T=1, CUBLAS_COMPUTE_32F=68, CUBLAS_COMPUTE_32F_FAST_TF32=77,
    CUBLAS_COMPUTE_64F=70, CUBLAS_GEMM_DEFAULT=-1, CUBLAS_GEMM_DEFAULT_TENSOR_OP=99,
    CUBLAS_DEFAULT_MATH=0)


@pytest.fixture(scope="module")
def fake_libcublas(emulated_gpu, tmp_path_factory):
    """``tests/cuda_emulation/fake_cublas.cpp`` built for the host, loaded by ctypes."""
    from cuda_emulation import compiler

    source = Path(__file__).with_name("cuda_emulation") / "fake_cublas.cpp"
    library = tmp_path_factory.mktemp("fake-cublas") / "libfakecublas.so"
    subprocess.run([compiler(), "-std=c++17", "-O1", "-fPIC", "-shared", str(source), "-o",
                    str(library)], check=True, capture_output=True)
    fake = ctypes.CDLL(str(library))
    for name in ("fake_cublas_stream", "fake_cublas_workspace"):
        getattr(fake, name).restype = ctypes.c_void_p
    return fake


@pytest.mark.parametrize("dtype, tf32, compute_type", [
    ("float32", False, 68), ("float32", True, 77), ("float64", True, 70)])
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True),
                                              (True, True)])
def test_the_ctypes_calls_follow_cublas_signatures(monkeypatch, emulated_gpu, fake_libcublas,
                                                   rng, dtype, tf32, compute_type, trans_a,
                                                   trans_b):
    xp = emulated_gpu.xp
    monkeypatch.setattr(xp.cuda, "Device", lambda: types.SimpleNamespace(compute_capability="90"),
                        raising=False)
    monkeypatch.setattr(xp.cuda.runtime, "CUDA_R_32F", 0, raising=False)
    monkeypatch.setattr(xp.cuda.runtime, "CUDA_R_64F", 1, raising=False)
    gemm = CaptureGemm(xp, fake_libcublas, CUBLAS_ENUMS)
    gemm.bind(4242, tf32)
    A = rng.standard_normal((7, 5) if trans_a else (5, 7)).astype(dtype)
    B = rng.standard_normal((4, 7) if trans_b else (7, 4)).astype(dtype)
    out = xp.full((5, 4), np.nan, dtype)  # beta = 0 must not read it
    assert gemm.gemm(xp.asarray(A), xp.asarray(B), trans_a, trans_b, out=out) is out
    expected = (A.T if trans_a else A) @ (B.T if trans_b else B)
    np.testing.assert_allclose(emulated_gpu.to_numpy(out), expected,
                               rtol=1e-5 if dtype == "float32" else 1e-12)
    handle = gemm.handle
    assert fake_libcublas.fake_cublas_stream(handle) == 4242
    assert fake_libcublas.fake_cublas_workspace(handle) == gemm.workspace.data.ptr
    assert fake_libcublas.fake_cublas_compute_type(handle) == compute_type
    assert fake_libcublas.fake_cublas_products(handle) == 1
    with pytest.raises(ValueError, match="a capture GEMM takes 2-D C-contiguous"):
        gemm.gemm(xp.asarray(A).T, xp.asarray(B), not trans_a, trans_b, out=out)
