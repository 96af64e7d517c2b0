"""The emulated CuPy backend: its parity table, and proof that it can fail.

``tests/cuda_emulation`` runs the CuPy backend's code and the CUDA kernel
sources on the CPU (see its docstring for what that does not cover). These
tests show that the emulation runs the kernels rather than the fallbacks,
that it rejects launch arguments a GPU would misread, and that a wrong
kernel source makes it disagree with the NumPy reference.
"""

import shutil

import numpy as np
import pytest

from gpubackprop.backends import NumpyBackend
from gpubackprop.backends.cupy import library as _kernels
from gpubackprop.verify.parity import compare_backends


def _launches(backend, index_dtype=None) -> int:
    """Launches so far, of the kernels with 32- or 64-bit indices or of all."""
    return sum(kernel.launches for kernel in backend.kernels._kernels.values()
               if index_dtype is None or kernel.index_dtype == index_dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_parity_row_passes_on_the_emulated_gpu(emulated_gpu, dtype):
    before = _launches(emulated_gpu, np.int32)
    rows = compare_backends(NumpyBackend(), emulated_gpu, dtype)
    failed = [row.name for row in rows if not row.passed]
    assert rows and not failed, f"parity rows failing: {failed}"
    assert _launches(emulated_gpu, np.int32) - before > 100, \
        "the 32-bit kernels, not the fallbacks, must run"


def test_the_64_bit_index_kernels_pass_the_parity_table(emulated_gpu, monkeypatch):
    # Arrays past 2**31 elements do not fit here: lower the limit to force the 64-bit path.
    monkeypatch.setattr(emulated_gpu, "int32_index_limit", 0)
    before = {index: _launches(emulated_gpu, index) for index in (np.int32, np.int64)}
    rows = compare_backends(NumpyBackend(), emulated_gpu, "float64")
    failed = [row.name for row in rows if not row.passed]
    assert rows and not failed, f"parity rows failing on 64-bit indices: {failed}"
    assert _launches(emulated_gpu, np.int64) - before[np.int64] > 100
    assert _launches(emulated_gpu, np.int32) == before[np.int32]


def test_a_scalar_of_the_wrong_c_type_is_refused(emulated_gpu):
    Z = emulated_gpu.asarray(np.ones((2, 4), np.float32))
    xent = emulated_gpu.kernels.get("softmax_xent", np.float32, np.int64)
    with pytest.raises(TypeError, match=r"softmax_xent<float, long long> parameter T inv_n: "
                                        r"needs float32, got float"):
        xent((1,), (256,), (Z, Z, Z, Z[0], np.int64(2), np.int64(4), 0.5))
    W = Z.reshape(-1)
    state = emulated_gpu.asarray(np.zeros(3, np.float64))
    kernel = emulated_gpu.kernels.get("sgd_step", np.float32, np.int64)
    with pytest.raises(TypeError, match=r"parameter I n: needs int64, got int32"):
        kernel((1,), (256,), (W, W, state, np.int32(8)))
    with pytest.raises(TypeError, match=r"sgd_step<float, int> parameter I n: needs int32, "
                                        r"got int64"):
        emulated_gpu.kernels.get("sgd_step", np.float32, np.int32)(
            (1,), (256,), (W, W, state, np.int64(8)))
    with pytest.raises(TypeError, match=r"parameter T\* dW: needs a C-contiguous float32"):
        kernel((1,), (256,), (W, W.astype(np.float64), state, np.int64(8)))
    with pytest.raises(TypeError, match=r"parameter double\* state: needs a C-contiguous "
                                        r"float64 array"):
        kernel((1,), (256,), (W, W, state.astype(np.float32), np.int64(8)))


@pytest.mark.slow
def test_a_wrong_kernel_source_fails_against_the_reference(emulated_gpu, tmp_path):
    from cuda_emulation.host_kernels import HostKernels

    sources = _mutated_sources(tmp_path, {
        "softmax_xent.cu": ("offset > 0; offset >>= 1) s +=",  # drops a shuffle
                            "offset > 1; offset >>= 1) s +="),
        "optimizers.cu": ("step_size * m /", "step_size * g /")})  # Adam steps by g
    build = tmp_path / "build"
    build.mkdir()
    correct = emulated_gpu.kernels
    emulated_gpu.kernels = HostKernels(build, directory=sources)
    try:
        rows = {row.name: row.passed for row in compare_backends(NumpyBackend(), emulated_gpu,
                                                                 "float64")}
    finally:
        emulated_gpu.kernels = correct
    broken = {"softmax_cross_entropy loss", "softmax_cross_entropy dZ", "adam W", "adamw W",
              "ce loss"}
    assert not any(rows[name] for name in broken), rows
    assert rows["sgd weight_decay W"] and rows["bias_activation tanh"], \
        "unmutated kernels still pass"


def test_numpy_functions_on_device_arrays_are_refused_as_cupy_refuses_them(emulated_gpu):
    X = emulated_gpu.asarray(np.arange(6.0).reshape(2, 3))
    assert isinstance(X, emulated_gpu.xp.ndarray)
    with pytest.raises(TypeError, match="numpy.concatenate called on a device array"):
        np.concatenate([X, X])
    joined = emulated_gpu.xp.concatenate([X, X])
    assert isinstance(joined, emulated_gpu.xp.ndarray) and joined.shape == (4, 3)
    np.testing.assert_array_equal(emulated_gpu.to_numpy(joined)[2:], np.arange(6.0).reshape(2, 3))


def test_training_reads_back_to_the_host_once_per_epoch(emulated_gpu):
    from cuda_emulation.fake_cupy import DeviceArray

    from gpubackprop.nn.model import mlp
    from gpubackprop.training.trainer import Trainer

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=96)
    X = (rng.standard_normal((3, 8))[labels] * 3 + rng.standard_normal((96, 8)))
    trainer = Trainer(mlp(8, [16], 3, device=emulated_gpu, seed=0), batch_size=16, verbose=0)
    before = DeviceArray.host_reads
    history = trainer.fit(X.astype(np.float32), labels, epochs=3)  # 6 batches an epoch
    assert DeviceArray.host_reads - before == 3
    assert len(history.loss) == 18 and history.accuracy[-1] > 0.5


def _mutated_sources(tmp_path, mutations: dict):
    """A copy of the kernel sources and headers in ``tmp_path/kernels``, with each
    ``{filename: (old, new)}`` replacement made."""
    sources = tmp_path / "kernels"
    sources.mkdir()
    for filename in (*_kernels.KERNEL_FILES, *_kernels.HEADER_FILES):
        shutil.copy(_kernels.kernel_dir() / filename, sources)
    for filename, (old, new) in mutations.items():
        text = (sources / filename).read_text()
        assert old in text
        (sources / filename).write_text(text.replace(old, new))
    return sources


def _kernels_with(tmp_path, filename, old, new):
    """HostKernels built from the kernel sources with ``old`` replaced by ``new`` in one file."""
    from cuda_emulation.host_kernels import HostKernels

    build = tmp_path / "build"
    build.mkdir()
    return HostKernels(build, directory=_mutated_sources(tmp_path, {filename: (old, new)}))


def test_a_warp_shuffle_after_lanes_exited_is_refused(emulated_gpu, tmp_path):
    # Lanes past the last column leave the kernel: the row's shuffles then miss them.
    kernels = _kernels_with(tmp_path, "softmax_xent.cu", "const T* z = Z + row * n_cols;",
                            "if (lane >= n_cols) return;\n        const T* z = Z + row * n_cols;")
    Z = np.zeros((2, 10), np.float64)
    dZ, loss = np.empty_like(Z), np.empty(2)
    kernel = kernels.get("softmax_xent", np.float64)
    with pytest.raises(RuntimeError, match=r"softmax_xent<double, long long>: __shfl_xor_sync "
                                           r"number 1 of "
                                           r"warp 0 in block 0 is reached by 10 lanes while 22 "
                                           r"have exited"):
        kernel((1,), (256,), (Z, Z, dZ, loss, np.int64(2), np.int64(10), np.float64(0.5)))
    # The same launch of the unchanged source runs: the refusal is the exited lanes'.
    emulated_gpu.kernels.get("softmax_xent", np.float64)(
        (1,), (256,), (Z, Z, dZ, loss, np.int64(2), np.int64(10), np.float64(0.5)))
    np.testing.assert_allclose(loss, np.zeros(2))


def test_asarray_of_a_host_array_copies_it_as_cupy_does(emulated_gpu):
    xp = emulated_gpu.xp
    host = np.arange(4.0)
    for to_device in (xp.asarray, xp.array, xp.ascontiguousarray, emulated_gpu.asarray):
        device = to_device(host)
        device[0] = 99.0
        assert host[0] == 0.0, f"{to_device.__name__} aliased the host array"
    device = xp.asarray(host)
    assert xp.may_share_memory(xp.asarray(device), device), "a device array is not copied"


@pytest.mark.parametrize("call, refused", [
    (lambda xp, X: xp.multiply(X, X, where=X > 0), "cupy.multiply .*where"),
    (lambda xp, X: xp.zeros(3, like=X), "cupy.zeros .*like"),
    (lambda xp, X: xp.asarray(X, device="cpu"), "cupy.asarray .*device"),
    (lambda xp, X: xp.argsort(X, stable=True), "cupy.argsort .*stable"),
    (lambda xp, X: xp.clip(X, 0, 1, out=X), "cupy.clip .*out.*CuPy 14 takes: none"),
])
def test_keywords_cupy_does_not_take_are_refused(emulated_gpu, call, refused):
    xp = emulated_gpu.xp
    X = xp.asarray(np.arange(4.0))
    with pytest.raises(TypeError, match=refused):
        call(xp, X)
    # The keywords CuPy does take still pass.
    xp.multiply(X, X, out=X, casting="same_kind")
    assert xp.zeros(3, dtype=np.float32, order="C").dtype == np.float32


def _capture(xp, work):
    """``work()`` recorded on a stream of its own; returns the graph."""
    stream = xp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        work()
        return stream.end_capture()


def test_a_captured_stream_runs_nothing_until_its_graph_is_launched(emulated_gpu):
    xp = emulated_gpu.xp
    X, out, dW = xp.ones((4, 3)), xp.zeros((3,)), xp.zeros((3, 3))
    kernel_launches = _launches(emulated_gpu)
    gemm = emulated_gpu.capture_gemm()

    def step():
        xp.add(X[0], 1.0, out=out)  # a module function with out=
        X.sum(axis=0, out=out[...])  # a ufunc reduction through a method
        out[...] += X[1]  # an operator in place
        emulated_gpu.activation(out, "relu", out=out)  # a kernel
        gemm.bind(xp.cuda.get_current_stream().ptr, tf32=False)
        gemm.gemm(X, X, trans_a=True, out=dW)  # the capture GEMM's product

    graph = _capture(xp, step)
    assert not out.any() and not dW.any() and _launches(emulated_gpu) == kernel_launches
    for launch in (1, 2):
        graph.launch()
        np.testing.assert_array_equal(emulated_gpu.to_numpy(out), [5.0, 5.0, 5.0])
        np.testing.assert_array_equal(emulated_gpu.to_numpy(dW), np.full((3, 3), 4.0))
        assert _launches(emulated_gpu) == kernel_launches + launch


@pytest.mark.parametrize("forbidden, what", [
    (lambda xp, X: xp.zeros((2,)), "an allocation"),
    (lambda xp, X: X + 1, r"an allocation \(numpy.add.__call__ without out=\)"),
    (lambda xp, X: X.copy(), "an allocation"),
    (lambda xp, X: float(X[0, 0:1].reshape(())), "a read back to the host"),
    (lambda xp, X: X.get(), "a read back to the host"),
    (lambda xp, X: X.__setitem__(0, np.ones(3)), "a copy from the host"),
    (lambda xp, X: xp.asarray(np.ones(3)), "a copy from the host"),
    (lambda xp, X: xp.cuda.get_current_stream().synchronize(), "a synchronisation")])
def test_what_capture_forbids_raises_and_invalidates_it(emulated_gpu, forbidden, what):
    from cuda_emulation.fake_cupy import CaptureError

    xp = emulated_gpu.xp
    X = xp.ones((4, 3))
    stream = xp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        with pytest.raises(CaptureError, match=f"^{what} while stream"):
            forbidden(xp, X)
        with pytest.raises(CaptureError, match="invalidated"):
            stream.end_capture()
    # Outside a capture all of them are allowed again.
    forbidden(xp, X)
    assert X.sum() == 12


def test_memory_hooks_see_every_allocation(emulated_gpu):
    from gpubackprop.backends.cupy.graphs import allocation_guard

    xp = emulated_gpu.xp
    X = xp.ones((4, 3))
    guard = allocation_guard(xp)
    with guard:
        xp.add(X, X, out=X)  # into an existing array
        Y = X * 2  # a new one
        xp.empty((5,))
    assert guard.allocations == 2 and float(Y[0, 0:1].reshape(())) == 4.0
