"""Backend selection and the reason a GPU is not used."""

import numpy as np
import pytest

import gpubackprop
from gpubackprop.backends import (NumpyBackend, cpu_status, describe_auto_choice, get_backend,
                                  gpu_status)
from gpubackprop.errors import GPUUnavailableError, InputError
from gpubackprop.nn.model import mlp


def test_cpu_is_the_fused_backend_when_numba_imports():
    cpu = get_backend("cpu")
    assert isinstance(cpu, NumpyBackend) and cpu.device == "cpu"
    assert cpu.name == ("numba" if cpu_status().fused else "numpy")
    assert get_backend("numpy").name == "numpy"
    assert type(get_backend("numpy")) is NumpyBackend


def test_cpu_status_has_a_reason():
    status = cpu_status()
    assert status.reason and (status.numba_version is not None) == status.fused


def test_numba_without_numba_names_the_reason(monkeypatch):
    from gpubackprop import backends

    missing = backends.CPUStatus(False, "Numba is not installed (test)")
    monkeypatch.setattr(backends, "cpu_status", lambda: missing)
    with pytest.raises(InputError, match="numba backend is not available: Numba is not inst"):
        get_backend("numba")
    assert type(get_backend("cpu")) is NumpyBackend


def test_status_always_has_a_reason():
    status = gpu_status()
    assert isinstance(status.reason, str) and status.reason


@pytest.mark.skipif(gpu_status().usable, reason="this machine has a usable GPU")
def test_without_gpu_auto_falls_back_and_says_why():
    assert get_backend("auto") is get_backend("cpu")
    assert describe_auto_choice() == f"{get_backend('cpu').name} (no GPU: {gpu_status().reason})"
    with pytest.raises(GPUUnavailableError, match="no usable GPU: " + gpu_status().reason[:20]):
        get_backend("gpu")
    with pytest.raises(GPUUnavailableError):
        mlp(2, [2], 2, device="gpu")


def test_import_never_needs_a_gpu():
    assert gpubackprop.__version__


def test_same_seed_same_initial_weights_on_every_backend(backend_name):
    reference = mlp(6, [5], 3, device="numpy", seed=11).state_arrays()
    other = mlp(6, [5], 3, device=backend_name, seed=11).state_arrays()
    for name, W in reference.items():
        assert (other[name] == W).all()


def test_host_arrays_arrive_in_c_order_whatever_their_layout(backend):
    # CuPy keeps a Fortran-ordered host array in Fortran order; a product of such a
    # parameter could not be recorded in a CUDA graph (it ran on an H200: the LSTM's
    # weights were Fortran-ordered and its recorded step fell back to launches).
    fortran = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    arrived = backend.asarray(fortran, dtype=np.float32)
    assert arrived.flags.c_contiguous and arrived.dtype == np.float32
    assert (backend.to_numpy(arrived) == fortran).all()


@pytest.mark.parametrize("layers", [
    lambda: [gpubackprop.LSTM(4), gpubackprop.Linear(3)],
    lambda: [gpubackprop.GRU(4, h0="learn"), gpubackprop.Linear(3)],
    lambda: [gpubackprop.RNN(4), gpubackprop.Linear(3)]], ids=["LSTM", "GRU", "RNN"])
def test_every_parameter_and_gradient_is_c_contiguous(backend, layers):
    model = gpubackprop.Sequential(layers(), n_inputs=2, device=backend, seed=0)
    for layer in model.layers:
        for kind, arrays in (("parameter", layer.params), ("gradient", layer.grads)):
            for name, W in arrays.items():
                assert W.flags.c_contiguous, (type(layer).__name__, kind, name)


@pytest.fixture(params=[pytest.param("numba", marks=pytest.mark.numba), "cupy-emulated"])
def kernel_rule(request):
    """(backend, the function deciding whether its fused kernels take some arrays)."""
    if request.param == "numba":
        from gpubackprop.backends.numba.backend import kernel_fits
        return get_backend("numba"), kernel_fits
    backend = request.getfixturevalue("emulated_gpu")
    return backend, backend.module._kernel_ready


def test_fused_kernels_take_only_arrays_they_can_serve(kernel_rule):
    backend, fits = kernel_rule
    storage = backend.asarray(np.zeros((9, 4), np.float32))
    A, B = storage[:8], backend.asarray(np.ones((8, 4), np.float32))
    assert fits(A, B) and fits(A, A) and fits(A, storage[:8])  # disjoint, or the same memory
    assert not fits(A, storage[1:])  # shifted by one row: partial overlap
    assert not fits(storage[:, 0], B[:, 0])  # strided
    assert not fits(A, backend.asarray(np.ones((8, 4), np.float64)))  # mixed dtypes
    assert not fits(backend.asarray(np.ones((8, 4), np.float16)))
    assert not fits(backend.asarray(np.ones((0, 4), np.float32)))
    assert not fits(A, np.ones((8, 4), np.float32) if backend.device == "gpu" else [[0.0] * 4])


def test_kernel_can_take_checks_each_array_against_its_own_dtype():
    from gpubackprop.backends.base import kernel_can_take

    W, state = np.ones((4, 3), np.float32), np.zeros(6, np.float64)
    address = lambda X: X.__array_interface__["data"][0]  # noqa: E731
    assert not kernel_can_take((W, state), np, address)  # one T for all by default
    assert kernel_can_take((W, state), np, address, (np.float32, np.float64))
    assert not kernel_can_take((W, state), np, address, (np.float32, np.float32))
    assert not kernel_can_take((W, W.astype(np.float64)), np, address, (np.float64, np.float64))
