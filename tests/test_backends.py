"""Backend selection and the reason a GPU is not used."""

import pytest

import gpubackprop
from gpubackprop.backends import NumpyBackend, describe_auto_choice, get_backend, gpu_status
from gpubackprop.errors import GPUUnavailableError
from gpubackprop.model import mlp


def test_cpu_is_numpy():
    assert isinstance(get_backend("cpu"), NumpyBackend)
    assert get_backend("numpy") is get_backend("cpu")


def test_status_always_has_a_reason():
    status = gpu_status()
    assert isinstance(status.reason, str) and status.reason


@pytest.mark.skipif(gpu_status().usable, reason="this machine has a usable GPU")
def test_without_gpu_auto_falls_back_and_says_why():
    assert isinstance(get_backend("auto"), NumpyBackend)
    assert describe_auto_choice() == f"numpy (no GPU: {gpu_status().reason})"
    with pytest.raises(GPUUnavailableError, match="no usable GPU: " + gpu_status().reason[:20]):
        get_backend("gpu")
    with pytest.raises(GPUUnavailableError):
        mlp(2, [2], 2, device="gpu")


def test_import_never_needs_a_gpu():
    assert gpubackprop.__version__


def test_same_seed_same_initial_weights_on_every_backend(backend_name):
    reference = mlp(6, [5], 3, device="cpu", seed=11).state_arrays()
    other = mlp(6, [5], 3, device=backend_name, seed=11).state_arrays()
    for name, W in reference.items():
        assert (other[name] == W).all()
