"""Fixtures of the benchmark suite (``pytest benchmarks/``), kept apart from ``tests/``.

Backends are parameters; the GPU one is skipped with the reason
:func:`gpubackprop.backends.gpu_status` gives. Timed callables end with
:meth:`Backend.synchronize`, so GPU work is finished inside the timed region,
and every benchmark warms up first (kernel compilation is never timed).
Inputs are random and non-zero, or real MNIST when ``$GPUBACKPROP_DATA`` is set.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpubackprop.backends import cpu_status, get_backend, gpu_status
from gpubackprop.bench.config import BenchConfig, load_data


@pytest.fixture(params=["numpy", "numba", "gpu"])
def backend(request):
    """The NumPy reference; the fused CPU backend where Numba imports; the CuPy
    backend where a GPU is usable."""
    if request.param == "gpu" and not gpu_status().usable:
        pytest.skip(gpu_status().reason)
    if request.param == "numba" and not cpu_status().fused:
        pytest.skip(cpu_status().reason)
    return get_backend(request.param)


@pytest.fixture(scope="session")
def data():
    """Training and test data of MNIST's shape (MNIST itself when $GPUBACKPROP_DATA is set)."""
    return load_data(BenchConfig())


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def timed(backend, function):
    """``function`` followed by a device synchronisation, for the timed region."""
    def call(*args, **kwargs):
        result = function(*args, **kwargs)
        backend.synchronize()
        return result
    return call
