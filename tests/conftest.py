"""Shared fixtures: tests run once per usable backend; real datasets from ../shared.

Besides NumPy, Numba and a real GPU, every backend test also runs on
``cupy-emulated``: the CuPy backend's code with a NumPy-backed ``cupy`` and
the CUDA kernels compiled for the host (see ``tests/cuda_emulation``).
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpubackprop.backends import cpu_status, get_backend, gpu_status
from gpubackprop.backends.numba.background import BACKGROUND_ENV

# Compiled steps compile before their first batch (in this process and the CLI processes
# tests start), so a test of the fused step tests it from the first batch on; the tests of
# the background compile (test_background_compile.py) set it for the processes they start.
os.environ[BACKGROUND_ENV] = "0"

REPO = Path(__file__).resolve().parents[1]
BACKENDS = [pytest.param("numpy", id="numpy"),
            pytest.param("numba", id="numba", marks=pytest.mark.numba),
            pytest.param("gpu", id="cupy", marks=pytest.mark.gpu),
            pytest.param("cupy-emulated", id="cupy-emulated")]
#: Grid cap of the emulated CuPy backend: small, so modest arrays span several grids.
EMULATED_MAX_BLOCKS = 64


@pytest.fixture(scope="session", autouse=True)
def host_kernel_build_cache(tmp_path_factory):
    """One host build of each kernel source for the whole run: this process, the CLI and
    self-test processes tests start, and MPI ranks share a cache folder (unless the caller
    named one); a test that changes a source builds that source anew."""
    from cuda_emulation.host_kernels import BUILD_CACHE_ENV

    if not os.environ.get(BUILD_CACHE_ENV):
        os.environ[BUILD_CACHE_ENV] = str(tmp_path_factory.mktemp("host-kernel-builds"))
    return Path(os.environ[BUILD_CACHE_ENV])


@pytest.fixture(scope="session", autouse=True)
def numba_cache_warmed_in_background():
    """Numba's disk cache filled by another process (``python -m
    gpubackprop.precompile``, at low priority) while the run starts: the fused
    CPU backend's compiles take about a minute on a cold cache, one core; meanwhile most
    tests need none and leave the second core idle. A test that needs a signature before
    the warm-up has it compiles it itself, as without; the process is ended with the run."""
    if not cpu_status().fused:
        yield None
        return
    process = subprocess.Popen([sys.executable, "-m", "gpubackprop.precompile",
                                "--quiet"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL,
                               preexec_fn=(lambda: os.nice(10)) if hasattr(os, "nice") else None)
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()


def pytest_collection_modifyitems(config, items):
    """Skip ``gpu`` tests where no GPU is usable and ``numba`` tests where Numba
    does not import, with the reason. Numba is a dependency, so under
    ``CI=true`` those tests run and fail (``get_backend("numba")`` raises) instead.
    """
    status = gpu_status()
    skip_gpu = pytest.mark.skip(reason=f"no usable GPU: {status.reason}")
    cpu = cpu_status()
    in_ci = os.environ.get("CI") == "true"
    for item in items:
        if not status.usable and item.get_closest_marker("gpu") is not None:
            item.add_marker(skip_gpu)
        if not cpu.fused and not in_ci and item.get_closest_marker("numba") is not None:
            item.add_marker(pytest.mark.skip(reason=cpu.reason))


@pytest.fixture(scope="session")
def emulated_gpu(tmp_path_factory):
    """The CuPy backend on the CPU, its kernels built with the host C++ compiler.

    Skipped with the reason where no C++ compiler is found, except under
    ``CI=true``, where the build must succeed.
    """
    from cuda_emulation import NO_COMPILER, compiler, emulated_backend

    if compiler() is None:
        if os.environ.get("CI") == "true":
            pytest.fail(NO_COMPILER)
        pytest.skip(NO_COMPILER)
    return emulated_backend(tmp_path_factory.mktemp("host-kernels"), EMULATED_MAX_BLOCKS)


@pytest.fixture(params=[pytest.param("cupy-emulated", id="cupy-emulated"),
                        pytest.param("gpu", id="cupy", marks=pytest.mark.gpu)])
def graph_backend(request):
    """The CuPy backend, emulated or on the GPU, with TF32 off while the test runs."""
    if request.param == "cupy-emulated":
        backend = request.getfixturevalue("emulated_gpu")
    else:
        backend = get_backend("gpu")
    previous = backend.set_tf32(False)
    yield backend
    backend.set_tf32(previous)


@pytest.fixture(params=BACKENDS)
def backend_name(request):
    """"numpy", "numba" where Numba imports, "gpu" where a GPU is usable, and the
    emulated CuPy backend itself (``get_backend`` and ``device=`` take instances).
    """
    if request.param == "cupy-emulated":
        return request.getfixturevalue("emulated_gpu")
    return request.param


@pytest.fixture
def backend(backend_name):
    return get_backend(backend_name)


@pytest.fixture(scope="session")
def torch():
    """PyTorch, the reference some tests compare against.

    Skipped with the reason where it does not import, except under ``CI=true``:
    ``.ci/run`` installs it, so there a missing torch fails the test.
    """
    try:
        import torch
    except ImportError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PyTorch does not import under CI=true ({exc}); .ci/run installs it")
        pytest.skip(f"PyTorch does not import: {exc}")
    return torch


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The folder holding mnist/ and fashion-mnist/ IDX files (see ../shared/datasets).

    ``$GPUBACKPROP_DATA`` if set, else ``<repo>/../shared/datasets``. Missing
    data skips the test with the reason, except in CI (``CI=true``), where
    the data must be there and its absence fails.
    """
    folder = Path(os.environ.get("GPUBACKPROP_DATA") or REPO.parent / "shared" / "datasets")
    if not (folder / "mnist").is_dir():
        message = (f"real IDX data not found in {folder}/mnist; set GPUBACKPROP_DATA "
                   f"to the folder holding mnist/ and fashion-mnist/")
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return folder
