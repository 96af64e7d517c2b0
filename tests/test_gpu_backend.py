"""The CuPy backend's fused kernels against the generic NumPy results, and GPU detection.

Kernel tests run on a real GPU where one is usable and, everywhere, on the
emulated CuPy backend (``tests/cuda_emulation``: the same backend code and
kernel sources, run on the CPU). They use arrays larger than one launch grid
(``max_blocks`` blocks of ``BLOCK`` threads), so the kernels' grid-stride
loops run more than once. Tolerances are the elementwise ones of the parity check.
"""

import sys
import types

import numpy as np
import pytest

from gpubackprop.nn.optim import OPTIMIZERS, get_optimizer
from gpubackprop.verify.parity import SECOND_MOMENTS

import gpubackprop.backends as backends
from gpubackprop.verify import parity
from gpubackprop.backends import GPUStatus, NumpyBackend, get_backend, gpu_status
from gpubackprop.backends.base import DERIVATIVES
from gpubackprop.backends.cupy import library as _kernels
from gpubackprop.errors import GPUUnavailableError
from gpubackprop.nn.activations import ACTIVATIONS, NAMES as ACTIVATION_NAMES, RECURRENT_NAMES

TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-10, atol=1e-12)}
DTYPES = [np.float32, np.float64]
BLOCK = 256  # threads per block of every launch (cupy_backend.BLOCK)
SHAPE = (1031, 1031)  # 1,062,961 elements: more than one grid of 4096 blocks


@pytest.fixture(scope="module", params=[pytest.param("gpu", id="cupy", marks=pytest.mark.gpu),
                                        pytest.param("emulated", id="cupy-emulated")])
def gpu(request):
    """The CuPy backend on the GPU, or emulated on the CPU."""
    if request.param == "emulated":
        return request.getfixturevalue("emulated_gpu")
    from gpubackprop.backends.cupy.backend import BLOCK as block
    assert block == BLOCK
    return get_backend("gpu")


def grid_elements(backend) -> int:
    """Threads in the largest grid ``backend`` launches."""
    return backend.max_blocks * BLOCK


@pytest.fixture(scope="module")
def cpu():
    return NumpyBackend()


def _random(shape, dtype, scale=1.0, seed=0):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(dtype)


def _check(gpu, actual, expected, dtype):
    np.testing.assert_allclose(gpu.to_numpy(actual), expected, **TOL[dtype])


# ------------------------------------------------------------------- GPU: kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ACTIVATION_NAMES)
@pytest.mark.parametrize("keep_input", [False, True], ids=["in place", "keeping Z"])
def test_bias_activation(gpu, cpu, name, dtype, keep_input):
    assert SHAPE[0] * SHAPE[1] > grid_elements(gpu)
    Z, b = _random(SHAPE, dtype, 4.0), _random(SHAPE[1:], dtype, seed=1)
    kept = Z + b  # before the launch: the emulated device may share Z's memory
    expected = cpu.bias_activation(Z.copy(), b, name)
    Z_gpu = gpu.asarray(Z)
    Y_gpu = gpu.empty(SHAPE, dtype) if keep_input else None
    out = gpu.bias_activation(Z_gpu, gpu.asarray(b), name, out=Y_gpu)
    assert out is (Y_gpu if keep_input else Z_gpu)
    _check(gpu, out, expected, dtype)
    if keep_input:
        _check(gpu, Z_gpu, kept, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_activation(gpu, cpu, name, dtype):
    Z = _random(SHAPE, dtype, 4.0)
    _check(gpu, gpu.activation(gpu.asarray(Z), name), cpu.activation(Z, name), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ACTIVATION_NAMES)
@pytest.mark.parametrize("in_place", [False, True])
def test_backprop_activation(gpu, cpu, name, dtype, in_place):
    # The saved array: the output, or the input where the derivative needs it.
    Z = _random(SHAPE, dtype, 3.0)
    S = Z if ACTIVATIONS[name].needs_input else cpu.activation(Z, name)
    dY = _random(SHAPE, dtype, seed=1)
    expected = cpu.backprop_activation(dY, S, name)
    dY_gpu = gpu.asarray(dY)
    out = gpu.backprop_activation(dY_gpu, gpu.asarray(S), name,
                                  out=dY_gpu if in_place else None)
    # f' = 1 (identity) returns dY itself, as the generic method does.
    assert (out is dY_gpu) == (in_place or DERIVATIVES[name] is None)
    _check(gpu, out, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", RECURRENT_NAMES)
def test_recurrent_activation(gpu, cpu, name, dtype):
    XW, HU, b = _random(SHAPE, dtype), _random(SHAPE, dtype, seed=1), _random(SHAPE[1:], dtype)
    expected = cpu.recurrent_activation(XW, HU.copy(), b, name)
    HU_gpu = gpu.asarray(HU)
    out = gpu.recurrent_activation(gpu.asarray(XW), HU_gpu, gpu.asarray(b), name)
    assert out is HU_gpu
    _check(gpu, out, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("wide", [False, True])
def test_softmax_cross_entropy(gpu, cpu, wide, dtype):
    # One warp per row: 10 columns and more rows than a grid has warps, or 1000 columns.
    shape = (300, 1000) if wide else (grid_elements(gpu) // 32 * 5 // 4, 10)
    Z = _random(shape, dtype, 10.0)
    Z[0, 0] = 80  # exp(80) overflows float32: the row max must be subtracted
    T = np.eye(shape[1], dtype=dtype)[np.random.default_rng(2).integers(0, shape[1], shape[0])]
    loss, dZ = cpu.softmax_cross_entropy(Z, T)
    loss_gpu, dZ_gpu = gpu.softmax_cross_entropy(gpu.asarray(Z), gpu.asarray(T))
    assert loss_gpu.shape == () and loss_gpu.dtype == dtype
    _check(gpu, loss_gpu, loss, dtype)
    _check(gpu, dZ_gpu, dZ, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_optimizer_updates(gpu, cpu, optimizer, dtype):
    W, dW = _random(SHAPE, dtype), _random(SHAPE, dtype, seed=1)
    settings = {"rmsprop": {"centered": True}}.get(optimizer, {})
    probe = get_optimizer(optimizer, **settings)
    roles = probe.spec.slot_roles(probe.settings)
    # Second moments positive and above the squared first moments.
    slots = [None if role is None else
             np.abs(_random(SHAPE, dtype, 0.1, seed=3)) + np.dtype(dtype).type(0.01)
             if role in SECOND_MOMENTS else _random(SHAPE, dtype, 0.01, seed=2)
             for role in roles]
    host = [W.copy(), dW] + slots
    device = [None if A is None else gpu.asarray(A) for A in host]
    for backend, (W_, dW_, *arrays) in ((cpu, host), (gpu, device)):
        opt = get_optimizer(optimizer, weight_decay=0.01, **settings)
        update = getattr(backend, f"{opt.rule.name}_update")
        for _ in range(5):
            update(W_, dW_, opt.begin_step(backend), *arrays)
    for expected, actual in zip(host, device):
        if expected is not None:
            _check(gpu, actual, expected, dtype)


def test_kernels_serve_supported_arrays_and_the_generic_code_the_rest(gpu, cpu, monkeypatch):
    backend = gpu
    launched = []
    launch = backend._launch

    def spy(name, *args):
        launched.append(name)
        launch(name, *args)

    monkeypatch.setattr(backend, "_launch", spy)
    b = _random((33,), np.float32)
    backend.bias_activation(backend.asarray(_random((64, 33), np.float32)), backend.asarray(b),
                            "tanh")
    assert launched == ["bias_act"]

    launched.clear()
    fallbacks = {
        "float16": backend.asarray(_random((64, 33), np.float16)),
        "Fortran order": backend.xp.asfortranarray(backend.asarray(_random((64, 33),
                                                                           np.float32))),
        "strided": backend.asarray(_random((64, 66), np.float32))[:, ::2],
    }
    for label, Z in fallbacks.items():
        b_ = backend.asarray(b.astype(Z.dtype))
        expected = cpu.bias_activation(np.ascontiguousarray(backend.to_numpy(Z)),
                                       backend.to_numpy(b_), "tanh")
        out = backend.bias_activation(Z, b_, "tanh")
        np.testing.assert_allclose(backend.to_numpy(out), expected, rtol=1e-3, atol=1e-3,
                                   err_msg=label)
    assert launched == [], "the fallback cases must take the generic path"

    # out overlapping Y shifted by one row: the generic code, step by step, as NumPy does it.
    dY, storage = _random((64, 33), np.float32), _random((65, 33), np.float32)
    cpu.backprop_activation(dY, storage[1:], "sigmoid", out=storage[:-1])
    storage_gpu = backend.asarray(_random((65, 33), np.float32))
    backend.backprop_activation(backend.asarray(dY), storage_gpu[1:], "sigmoid",
                                out=storage_gpu[:-1])
    assert launched == [], "an out= partially overlapping an input must take the generic path"
    np.testing.assert_allclose(backend.to_numpy(storage_gpu), storage, rtol=1e-5, atol=1e-6)


def test_each_kernel_is_looked_up_once_per_name_and_dtypes(gpu):
    class CountingLibrary:
        def __init__(self, library):
            self.library, self.asked = library, []

        def get(self, name, dtype, index_dtype):
            self.asked.append((name, np.dtype(dtype).name, np.dtype(index_dtype).name))
            return self.library.get(name, dtype, index_dtype)

        def array_dtypes(self, name, dtype, index_dtype):
            return self.library.array_dtypes(name, dtype, index_dtype)

    original = gpu.kernels
    gpu.kernels = counting = CountingLibrary(original)
    try:
        for dtype in (np.float32, np.float32, np.float64, np.float32):
            Z = gpu.asarray(_random((8, 5), dtype))
            gpu.bias_activation(Z, gpu.asarray(_random((5,), dtype)), "relu")
        assert counting.asked == [("bias_act", "float32", "int32"),
                                  ("bias_act", "float64", "int32")]
        gpu.kernels = counting  # a new library: its kernels are looked up afresh
        gpu.bias_activation(Z, gpu.asarray(_random((5,), np.float32)), "relu")
        assert counting.asked[2:] == [("bias_act", "float32", "int32")]
    finally:
        gpu.kernels = original


@pytest.mark.parametrize("offset, expected", [(0, "int32"), (-1, "int64")])
def test_a_launch_takes_32_bit_indices_up_to_the_limit(gpu, monkeypatch, offset, expected):
    taken = []
    get = gpu.kernels.get
    monkeypatch.setattr(gpu.kernels, "get", lambda name, dtype, index_dtype: taken.append(
        np.dtype(index_dtype).name) or get(name, dtype, index_dtype))
    monkeypatch.setattr(gpu, "_functions", {})
    Z, b = _random((64, 33), np.float32), _random((33,), np.float32)
    n = Z.size
    grid = min(-(-n // BLOCK), gpu.max_blocks) * BLOCK
    # The largest index the kernel forms is n - 1 + grid (its last grid-stride step).
    monkeypatch.setattr(gpu, "int32_index_limit", n - 1 + grid + offset)
    out = gpu.bias_activation(gpu.asarray(Z), gpu.asarray(b), "tanh")
    assert taken == [expected]
    np.testing.assert_allclose(gpu.to_numpy(out), np.tanh(Z + b), **TOL[np.float32])


def test_the_index_type_is_32_bit_exactly_while_every_index_fits():
    stride = 4096 * BLOCK  # a full grid of the default cap
    assert _kernels.index_dtype(2 ** 31 - stride, stride) is np.int32  # last index 2**31 - 1
    assert _kernels.index_dtype(2 ** 31 - stride + 1, stride) is np.int64
    assert _kernels.index_dtype(3 * 2 ** 31, stride) is np.int64
    assert _kernels.index_dtype(10, BLOCK) is np.int32
    assert _kernels.index_dtype(10, BLOCK, limit=10 + BLOCK - 2) is np.int64


def test_a_parameter_group_is_checked_once_while_it_lives(gpu, cpu, monkeypatch):
    backend_globals = type(gpu).adam_update.__globals__
    checks = []
    kernel_ready = backend_globals["_kernel_ready"]
    monkeypatch.setitem(backend_globals, "_kernel_ready",
                        lambda *arrays: checks.append(len(arrays)) or kernel_ready(*arrays))
    W, dW = _random((40, 7), np.float32, seed=1), _random((40, 7), np.float32, seed=2)
    M, V = np.zeros_like(W), np.zeros_like(W)
    group = [gpu.asarray(X) for X in (W, dW, M, V)]
    tracked = len(gpu._checked)
    on_gpu, on_cpu = get_optimizer("adam", lr=1e-2), get_optimizer("adam", lr=1e-2)
    for _ in range(3):
        gpu.adam_update(group[0], group[1], on_gpu.begin_step(gpu), *group[2:])
        cpu.adam_update(W, dW, on_cpu.begin_step(cpu), M, V)
    assert checks == [4], "one check for three updates of the same arrays"
    np.testing.assert_allclose(gpu.to_numpy(group[0]), W, **TOL[np.float32])
    assert len(gpu._checked) == tracked + 1

    # A moment buffer overlapping the weights is still refused (the generic code runs).
    state = get_optimizer("momentum", lr=0.1).begin_step(gpu)
    launched = []
    launch = gpu._launch
    monkeypatch.setattr(gpu, "_launch", lambda name, *args: launched.append(name) or
                        launch(name, *args))
    storage = gpu.asarray(np.zeros((41, 7), np.float32))
    gpu.momentum_update(storage[1:], group[1], state, storage[:-1])
    assert launched == [] and checks[-1] == 3

    # Freed arrays take their group with them.
    del group
    assert len(gpu._checked) == tracked


def test_adam_corrections_are_advanced_once_per_step_on_the_device(gpu, monkeypatch):
    from gpubackprop import mlp

    model = mlp(6, [5], 3, device=gpu, seed=0)  # four parameter arrays
    for _, W, dW in model.parameters_and_gradients():
        dW += gpu.asarray(_random(W.shape, np.float32))
    optimizer = get_optimizer("adam", lr=0.01)
    launched = []
    launch = gpu._launch
    monkeypatch.setattr(gpu, "_launch", lambda name, *args: launched.append(name) or
                        launch(name, *args))
    for _ in range(3):
        optimizer.step(model)
    assert launched == ["optimizer_advance", *["adam_step"] * 4] * 3


@pytest.mark.gpu
def test_second_load_does_not_recompile():
    library = _kernels.KernelLibrary()
    first = library.get("sgd_step", np.float32)
    assert library.compilations == 1
    assert library.get("sgd_step", np.float32) is first
    library.get("sgd_step", np.float64)  # same file, already compiled
    assert library.compilations == 1
    library.get("softmax_xent", np.float32)
    assert library.compilations == 2


@pytest.mark.gpu
def test_tf32_switch():
    # The real backend only: the emulated one has no cuBLAS, and TF32 stays off there.
    gpu = get_backend("gpu")
    previous = gpu.set_tf32(False)
    try:
        assert gpu.tf32_enabled() is False
        gpu.set_tf32(True)
        import cupy
        if int(cupy.cuda.Device().compute_capability) >= 80:
            assert gpu.tf32_enabled() is True
    finally:
        gpu.set_tf32(previous)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_parity_passes(dtype):
    report = parity.run_parity(dtype)
    assert report.tf32 is False
    assert report.passed, parity.format_report(report)


@pytest.mark.gpu
def test_check_main_prints_the_table_and_returns_0(capsys):
    assert parity.check_main("float32") == 0
    assert "PASS" in capsys.readouterr().out


# --------------------------------------------------------------- CPU: detection
def test_kernel_library_compiles_each_file_once(monkeypatch):
    compiled = []

    class FakeRawModule:
        def __init__(self, code, options, name_expressions):
            self.code, self.options, self.names = code, options, name_expressions

        def compile(self):
            compiled.append(self.names)

        def get_function(self, expression):
            assert expression in self.names
            return (self, expression)

    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(RawModule=FakeRawModule))
    library = _kernels.KernelLibrary()
    module, expression = library.get("adam_step", "float64")
    assert expression == "adam_step<double, long long>"
    assert "__global__ void adam_step(" in module.code
    assert module.options == _kernels.nvrtc_options()
    assert library.get("adam_step", np.float64) == (module, expression)
    assert library.get("sgd_step", np.float32, np.int32)[1] == "sgd_step<float, int>"
    assert compiled == [_kernels.name_expressions("optimizers.cu")]
    assert library.compilations == 1


def test_gpu_status_gives_a_reason():
    status = gpu_status()
    assert isinstance(status.reason, str) and status.reason


def test_get_backend_gpu_raises_with_the_reason(monkeypatch):
    status = GPUStatus(False, "CuPy is not installed (test)")
    monkeypatch.setattr(backends, "gpu_status", lambda: status)
    with pytest.raises(GPUUnavailableError, match=r"no usable GPU: CuPy is not installed \(test\)"):
        get_backend("gpu")
    assert get_backend("auto").device == "cpu"


def test_get_backend_gpu_raises_here_without_a_gpu():
    status = gpu_status()
    if status.usable:
        pytest.skip("this machine has a usable GPU")
    with pytest.raises(GPUUnavailableError) as error:
        get_backend("gpu")
    assert status.reason in str(error.value)


def test_check_main_returns_2_without_a_gpu(monkeypatch, capsys):
    monkeypatch.setattr(parity, "gpu_status", lambda: GPUStatus(False, "no CUDA driver (test)"))
    assert parity.check_main("float32") == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == "gpubackprop check: no usable GPU: no CUDA driver (test)"


def test_run_parity_raises_without_a_gpu(monkeypatch):
    monkeypatch.setattr(parity, "gpu_status", lambda: GPUStatus(False, "no device (test)"))
    with pytest.raises(GPUUnavailableError, match="no device"):
        parity.run_parity("float64")


# ------------------------------------------------------------ both backends
def test_a_model_learns_on_every_backend(backend_name):
    from gpubackprop import Adam, SoftmaxCrossEntropy, mlp

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 8)) * 3
    labels = rng.integers(0, 3, size=96)
    X = (centres[labels] + rng.standard_normal((96, 8))).astype(np.float32)
    T = np.eye(3, dtype=np.float32)[labels]
    model = mlp(8, [16], 3, activation="tanh", device=backend_name, seed=0)
    backend, loss_fn, optimizer = model.backend, SoftmaxCrossEntropy(), Adam(lr=0.05)
    X_, T_ = backend.asarray(X), backend.asarray(T)
    losses = []
    for _ in range(30):
        loss, dY = loss_fn(backend, model.forward(X_), T_)
        model.backward(dY)
        optimizer.step(model)
        losses.append(float(backend.to_numpy(loss)))
    assert losses[-1] < 0.25 * losses[0]


def test_a_launch_checks_each_array_against_its_parameter_type(gpu):
    W, dW = gpu.asarray(np.ones(8, np.float32)), gpu.asarray(np.zeros(8, np.float32))
    # sgd_step<float> reads W and dW as T and the optimizer's step state as double.
    assert gpu.kernels.array_dtypes("sgd_step", np.float32, np.int32) == (
        np.float32, np.float32, np.float64)
    assert gpu.kernels.array_dtypes("softmax_xent", np.float64, np.int64) == (np.float64,) * 4
    state = gpu.asarray(np.zeros(3, np.float32))  # a step state in the weights' dtype
    with pytest.raises(TypeError, match=r"sgd_step<float32>: arrays of dtypes \['float32', "
                                        r"'float32', 'float32'\], its parameters read "
                                        r"\['float32', 'float32', 'float64'\]"):
        gpu._launch("sgd_step", 8, (W, dW, state), (8,), ())
    assert (gpu.to_numpy(W) == 1).all()
