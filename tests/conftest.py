"""Shared test fixtures: the backends to run on, and skipping GPU tests without a GPU.

A test marked ``@pytest.mark.gpu`` is skipped, with the reason from
``gpu_status()``, on a machine without a usable GPU.
"""

import pytest

from gpubackprop.backends import gpu_status


def pytest_collection_modifyitems(config, items):
    status = gpu_status()
    if status.usable:
        return
    skip_gpu = pytest.mark.skip(reason=f"no usable GPU: {status.reason}")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip_gpu)


@pytest.fixture(params=["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def backend_name(request) -> str:
    """Each backend name, "cpu" always and "gpu" where a GPU is usable."""
    return request.param
