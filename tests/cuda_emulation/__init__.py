"""The CuPy backend run on the CPU: its Python code against a NumPy-backed ``cupy``,
its kernels compiled from ``kernels/*.cu`` for the host, its capture-safe
GEMM :mod:`.capture_gemm` (and ``fake_cublas.cpp``, a host libcublas for the
ctypes calls of the real capture GEMM).

:func:`emulated_backend` loads a private copy of
``gpubackprop/backends/cupy/backend.py`` with :mod:`.fake_cupy` as its
``cupy`` and :mod:`.host_kernels` as its kernel library, so CPU CI runs the
same dispatch, argument marshalling and kernel sources a GPU would, without
touching the real ``cupy`` import of a machine that has one. Matrix products
are NumPy's, so it says nothing about cuBLAS, TF32 or device memory; CUDA
graphs are recorded and replayed by the fake ``cupy`` (see :mod:`.fake_cupy`).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import gpubackprop.backends.cupy

from . import fake_cupy
from .capture_gemm import EmulatedCaptureGemm
from .host_kernels import NO_COMPILER, HostKernels, compiler

__all__ = ["emulated_backend", "compiler", "NO_COMPILER"]

CUPY_BACKEND = Path(gpubackprop.backends.__file__).with_name("cupy") / "backend.py"


def _load_cupy_backend_module(cupy_module):
    name = "gpubackprop.backends.cupy._backend_emulated"
    spec = importlib.util.spec_from_file_location(name, CUPY_BACKEND)
    module = importlib.util.module_from_spec(spec)
    saved = sys.modules.get("cupy")
    sys.modules["cupy"] = cupy_module
    try:
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            del sys.modules["cupy"]
        else:
            sys.modules["cupy"] = saved
    return module


def emulated_backend(build_dir: Path, max_blocks: int | None = None):
    """A ``CupyBackend`` whose ``cupy`` is NumPy and whose kernels run on the host.

    Parameters
    ----------
    build_dir : Path
        Where the host build of the kernels goes.
    max_blocks : int, optional
        Grid cap of each launch; the backend's default when omitted.
    """
    module = _load_cupy_backend_module(fake_cupy.make_module())
    kernels = HostKernels(build_dir)

    class EmulatedCupyBackend(module.CupyBackend):
        """``CupyBackend`` on the CPU; TF32 does not exist here and stays off."""

        name = "cupy-emulated"

        def tf32_enabled(self) -> bool:
            return False

        def set_tf32(self, enabled: bool) -> bool:
            return False

    options = {} if max_blocks is None else {"max_blocks": max_blocks}
    backend = EmulatedCupyBackend(**options)
    backend.kernels = kernels
    backend.capture_gemm_loader = EmulatedCaptureGemm
    backend.module = module
    return backend
