"""The emulated CuPy backend of a source checkout, for checks on machines without a GPU.

``tests/cuda_emulation/`` (the CuPy backend's code on a NumPy-backed ``cupy``,
the kernels compiled for the host) ships with the source tree, not with the
wheel. This module finds it beside the package, says why it cannot be used
when it cannot, and builds the backend or its kernels for the host.
"""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path

import gpubackprop

from ..errors import GPUUnavailableError

#: The source tree holding the package (the repository root in a checkout).
SOURCE_ROOT = Path(gpubackprop.__file__).resolve().parents[1]
TESTS = SOURCE_ROOT / "tests"
EMULATION = TESTS / "cuda_emulation"
#: The compilers ``cuda_emulation.compiler()`` looks for, besides ``$CXX``.
HOST_COMPILERS = ("g++", "c++", "clang++")


def unavailable_reason() -> str | None:
    """Why the emulation cannot run here, or None when it can."""
    if not (EMULATION / "__init__.py").is_file():
        return (f"tests/cuda_emulation/ is not beside the package in {SOURCE_ROOT} "
                "(it ships only in a source checkout)")
    if not any(shutil.which(name) for name in HOST_COMPILERS):
        return "no host C++ compiler (g++, c++ or clang++) to build the kernels for the CPU"
    return None


def _package():
    reason = unavailable_reason()
    if reason is not None:
        raise GPUUnavailableError(f"the emulated CuPy backend is not available: {reason}")
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    return importlib.import_module("cuda_emulation")


def emulated_backend(build_dir: Path):
    """The CuPy backend on the CPU, its kernels built for the host in ``build_dir``."""
    return _package().emulated_backend(Path(build_dir))


def host_kernel_library(build_dir: Path):
    """A fresh host build of every kernel file, with ``KernelLibrary``'s ``get``."""
    _package()
    return importlib.import_module("cuda_emulation.host_kernels").HostKernels(Path(build_dir))
