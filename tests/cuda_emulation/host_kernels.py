"""Compile ``kernels/*.cu`` with the host C++ compiler and launch them on the CPU.

The sources are compiled unchanged, with ``cuda_host.h`` standing in for the
CUDA built-ins (see that header for how threads and warp shuffles run). Each
kernel template gets one ``extern "C"`` launcher per float type T and index
type I, generated from its signature in the source, and :class:`HostKernel`
checks every launch argument against that signature the way the GPU would need
it: arrays of the kernel's dtype for ``T*`` (float64 for ``double*``), the instantiation's ``np.int32``
or ``np.int64`` for ``I``, ``np.int32`` for ``int``, a scalar of the kernel's
dtype for ``T``. A wrong scalar type, which
on a GPU silently reads garbage, is a ``TypeError`` here; a launch that does
what a GPU leaves undefined (a warp shuffle some lanes have exited before, see
``cuda_host.h``) is a ``RuntimeError`` naming the kernel.

What this cannot show: CUDA's own maths library (``tanhf`` and the rest come
from the host's libm), memory-model effects between blocks, and anything
cuBLAS or CuPy do. Those still need a real GPU.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

from gpubackprop.backends.cupy.library import (CTYPES, INDEX_CTYPES, KERNEL_FILES, Parameter,
                                               include_options, kernel_dir, name_expression,
                                               signatures)

from . import fake_cupy

HEADER = Path(__file__).with_name("cuda_host.h")
#: ``-ffp-contract=off`` matches NVRTC's ``--fmad=false``: no fused multiply-adds.
COMPILE = ("-std=c++17", "-O2", "-fPIC", "-shared", "-ffp-contract=off", "-x", "c++")
SCALAR_TYPES = {"long long": (np.int64, ctypes.c_longlong), "int": (np.int32, ctypes.c_int)}
#: The emulator keeps its thread and warp state in globals: one launch at a time.
LAUNCH_LOCK = threading.Lock()


#: Why the emulation cannot run where :func:`compiler` finds nothing.
NO_COMPILER = "no C++ compiler (g++, c++ or clang++) on the PATH to build the kernels for the host"


def compiler() -> str | None:
    """The C++ compiler on the PATH (``$CXX`` first), or None."""
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        path = shutil.which(name) if name else None
        if path:
            return path
    return None


#: A folder where host builds are kept by the digest of what went into them, so the
#: processes of one test run (pytest's, the self-test's steps, MPI ranks) build each
#: source once; unset, every :class:`HostKernels` builds its own.
BUILD_CACHE_ENV = "GPUBACKPROP_HOST_KERNEL_CACHE"


def _build_digest(command: list, launchers: str, directory: Path) -> str:
    """The digest of a build: the compiler command (the launcher file's path left out),
    the launchers' text, and every file of the kernel folder and of ``cuda_host.h``."""
    digest = hashlib.sha256("\0".join([*command[:-1], launchers]).encode())
    for path in [HEADER, *sorted(p for p in Path(directory).iterdir() if p.is_file())]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:32]


def _cache_path(command: list, launchers: str, directory: Path) -> Path | None:
    folder = os.environ.get(BUILD_CACHE_ENV)
    if not folder:
        return None
    return Path(folder) / f"libhostkernels-{_build_digest(command, launchers, directory)}.so"


def _cached_build(command: list, launchers: str, directory: Path) -> Path | None:
    """The cached library of this build, or None (no cache, or not built yet)."""
    path = _cache_path(command, launchers, directory)
    return path if path is not None and path.is_file() else None


def _keep_build(library: Path, command: list, launchers: str, directory: Path) -> None:
    """Put a finished build in the cache (atomically: a rank building the same source at
    the same time replaces it with identical bytes)."""
    path = _cache_path(command, launchers, directory)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".so.part", delete=False) as part:
        part.write(library.read_bytes())
    os.replace(part.name, path)


def _launcher_source(directory: Path, kernels: dict) -> str:
    lines = ['#include "cuda_host.h"',
             "gbp_dim3 threadIdx, blockIdx, blockDim, gridDim;",
             "gbp_emu::WarpReplay gbp_emu::warp;"]
    lines += [f'#include "{directory / filename}"' for filename in KERNEL_FILES]
    for name, params in kernels.items():
        for dtype, ctype in CTYPES.items():
            for index, index_ctype in INDEX_CTYPES.items():
                args = ", ".join(f"{p.resolved(ctype, index_ctype)} {p.name}" for p in params)
                names = ", ".join(p.name for p in params)
                lines.append(
                    f'extern "C" const char* {_launcher(name, dtype, index)}(unsigned int grid, '
                    f"unsigned int block, {args}) {{ return gbp_emu::guarded([&] {{ "
                    f"gbp_emu::launch(grid, block, [&] {{ "
                    f"{name_expression(name, dtype, index)}({names}); }}); }}); }}")
    return "\n".join(lines) + "\n"


class HostKernels:
    """Every kernel of ``kernels/*.cu``, compiled for the host into ``build_dir``.

    Raises
    ------
    RuntimeError
        When no C++ compiler is found or the sources do not compile (with its output).
    """

    def __init__(self, build_dir: Path, directory: Path | None = None):
        cxx = compiler()
        if cxx is None:
            raise RuntimeError(NO_COMPILER)
        directory = Path(directory or kernel_dir())
        self.signatures = signatures(directory)
        source = Path(build_dir) / "launchers.cpp"
        text = _launcher_source(directory, self.signatures)
        source.write_text(text)
        command = [cxx, *COMPILE, f"-I{HEADER.parent}", *include_options(directory), str(source)]
        library = _cached_build(command, text, directory)
        if library is None:
            library = Path(build_dir) / "libhostkernels.so"
            result = subprocess.run([*command, "-o", str(library)], capture_output=True,
                                    text=True)
            if result.returncode != 0:
                raise RuntimeError(f"compiling the kernels for the host failed:\n{result.stderr}")
            _keep_build(library, command, text, directory)
        self.library = ctypes.CDLL(str(library))
        self._kernels: dict = {}

    def array_dtypes(self, name: str, dtype, index_dtype) -> tuple:
        """Same as ``KernelLibrary.array_dtypes``."""
        return tuple(p.dtype(dtype, index_dtype) for p in self.signatures[name] if p.is_pointer)

    def get(self, name: str, dtype, index_dtype=np.int64) -> "HostKernel":
        """The kernel ``name<T, I>``; same interface as ``KernelLibrary.get``."""
        key = (name, np.dtype(dtype), np.dtype(index_dtype))
        if key not in self._kernels:
            self._kernels[key] = HostKernel(self.library, *key, self.signatures[name])
        return self._kernels[key]


class HostKernel:
    """A kernel called like ``cupy.RawKernel``: ``kernel(grid, block, args)``.

    Attributes
    ----------
    launches : int
        How many times it ran.
    """

    def __init__(self, library, name: str, dtype: np.dtype, index_dtype: np.dtype,
                 params: tuple):
        self.name, self.dtype, self.index_dtype, self.params = name, dtype, index_dtype, params
        self.expression = name_expression(name, dtype, index_dtype)
        self.function = getattr(library, _launcher(name, dtype, index_dtype))
        scalar = ctypes.c_float if dtype == np.float32 else ctypes.c_double
        self._types = [p.resolved(CTYPES[dtype], INDEX_CTYPES[index_dtype]) for p in params]
        self.function.argtypes = [ctypes.c_uint, ctypes.c_uint] + [
            ctypes.c_void_p if p.is_pointer else
            SCALAR_TYPES[t][1] if t in SCALAR_TYPES else scalar
            for p, t in zip(params, self._types)]
        self.function.restype = ctypes.c_char_p
        self.launches = 0

    def __call__(self, grid: tuple, block: tuple, args: tuple) -> None:
        if len(args) != len(self.params):
            raise TypeError(f"{self.name}: {len(args)} arguments for {len(self.params)} "
                            f"parameters")
        values = [self._argument(p, t, a) for p, t, a in zip(self.params, self._types, args)]
        (blocks,), (threads,) = grid, block
        if fake_cupy.capturing():
            # A graph records the launch with its arguments (the arrays' addresses; the
            # arrays are kept alive with it, which a real graph leaves to its owner).
            fake_cupy.record(lambda kept=args: self._run(blocks, threads, values))
            return
        self._run(blocks, threads, values)

    def _run(self, blocks: int, threads: int, values: list) -> None:
        with LAUNCH_LOCK:
            refused = self.function(blocks, threads, *values)
            self.launches += 1
        if refused is not None:
            raise RuntimeError(f"{self.expression}: {refused.decode()}")

    def _argument(self, param: Parameter, ctype: str, value):
        where = f"{self.expression} parameter {param.ctype} {param.name}"
        if param.is_pointer:
            # T* is the kernel's dtype; a named type (double* state) is that type.
            dtype = param.dtype(self.dtype, self.index_dtype)
            if not (isinstance(value, np.ndarray) and value.dtype == dtype
                    and value.flags.c_contiguous):
                raise TypeError(f"{where}: needs a C-contiguous {dtype} array, got "
                                f"{type(value).__name__} {getattr(value, 'dtype', '')}")
            return value.ctypes.data
        expected = SCALAR_TYPES[ctype][0] if ctype in SCALAR_TYPES else self.dtype.type
        if type(value) is not expected:
            raise TypeError(f"{where}: needs {np.dtype(expected).name}, got "
                            f"{type(value).__name__}")
        return value


def _launcher(name: str, dtype, index_dtype) -> str:
    """The C name of the host launcher of ``name<T, I>``, e.g. ``launch_sgd_step_float32_int64``."""
    return f"launch_{name}_{np.dtype(dtype).name}_{np.dtype(index_dtype).name}"
