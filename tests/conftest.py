"""Shared fixtures: tests run once per usable backend."""

import numpy as np
import pytest

from gpubackprop.backends import get_backend, gpu_status

GPU_REASON = gpu_status().reason
BACKENDS = [
    pytest.param("cpu", id="numpy"),
    pytest.param("gpu", id="cupy", marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not gpu_status().usable, reason=f"no usable GPU: {GPU_REASON}")]),
]


@pytest.fixture(params=BACKENDS)
def backend_name(request) -> str:
    """"cpu" and, where a GPU is usable, "gpu"."""
    return request.param


@pytest.fixture
def backend(backend_name):
    return get_backend(backend_name)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
