"""Matrix products inside Numba code, through NumPy's own BLAS where it can be found.

Why: ``np.dot`` inside Numba calls SciPy's BLAS, and NumPy's wheels carry
a different OpenBLAS build. On the 2-core development VM, single-threaded
float32 products of the shapes in :mod:`.parallel` ran 5-25% slower
through SciPy's (OpenBLAS 0.3.30) than through NumPy's (0.3.31), and epochs
of the parallel step 10-11% longer; the benchmark's reference, the matrix
products alone, runs through NumPy's.

NumPy's PyPI wheels bundle ``scipy-openblas64``, whose CBLAS interface
(``scipy_cblas_sgemm64_``, ``scipy_cblas_dgemm64_``, 64-bit integers) is
registered with LLVM under names of our own. Compiled code refers only to
those names, so Numba's on-disk cache stays valid whichever library backs
them. Where NumPy has no such library (a conda build on MKL, a source
build), the names are bound to stand-ins that are never called:
:data:`NUMPY_BLAS` is False and :func:`gemm` takes ``np.dot``.
"""

from __future__ import annotations

import ctypes
import glob
import os

import llvmlite.binding
import numba
import numpy as np
from numba import types

#: CBLAS constants (row-major order; no transpose, transpose).
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112

_INT = ctypes.c_int
_I64 = ctypes.c_int64
_PTR = ctypes.c_void_p


def _cblas_prototype(real):
    """``cblas_?gemm(order, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)``."""
    return ctypes.CFUNCTYPE(None, _INT, _INT, _INT, _I64, _I64, _I64, real, _PTR, _I64, _PTR,
                            _I64, real, _PTR, _I64)


def _numpy_openblas():
    """NumPy's bundled scipy-openblas64 as a ctypes library, or None.

    Linux and Windows wheels keep it in ``numpy.libs`` beside the package,
    macOS wheels in ``numpy/.dylibs``.
    """
    folders = (os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs"),
               os.path.join(os.path.dirname(np.__file__), ".dylibs"))
    candidates = [path for folder in folders
                  for path in sorted(glob.glob(os.path.join(folder, "libscipy_openblas64_*")))]
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        if hasattr(lib, "scipy_cblas_sgemm64_") and hasattr(lib, "scipy_cblas_dgemm64_"):
            return lib
    return None


def _never_called(*args):
    raise AssertionError("gpubackprop's BLAS stand-in was called")


def _register():
    """Bind our symbol names to NumPy's CBLAS, or to stand-ins; returns whether NumPy's."""
    lib = _numpy_openblas()
    for name, real in (("sgemm", ctypes.c_float), ("dgemm", ctypes.c_double)):
        if lib is not None:
            address = ctypes.cast(getattr(lib, f"scipy_cblas_{name}64_"), _PTR).value
        else:
            stand_in = _cblas_prototype(real)(_never_called)
            _STAND_INS.append(stand_in)
            address = ctypes.cast(stand_in, _PTR).value
        llvmlite.binding.add_symbol(f"gpubackprop_cblas_{name}", address)
    return lib is not None


_STAND_INS: list = []  # keeps the stand-ins' ctypes thunks alive
#: Whether :func:`gemm` calls NumPy's BLAS (else ``np.dot``, SciPy's).
NUMPY_BLAS = _register()


_THREAD_LIB = _numpy_openblas()


def numpy_blas_threads() -> int | None:
    """Threads of NumPy's OpenBLAS (the library :func:`gemm` calls), or None without it."""
    if _THREAD_LIB is None:
        return None
    return int(_THREAD_LIB.scipy_openblas_get_num_threads64_())


def set_numpy_blas_threads(n: int) -> None:
    """Let NumPy's OpenBLAS use ``n`` threads (a no-op without it)."""
    if _THREAD_LIB is not None:
        _THREAD_LIB.scipy_openblas_set_num_threads64_(ctypes.c_int(n))


def _external(name, real):
    return types.ExternalFunction(
        f"gpubackprop_cblas_{name}",
        types.void(types.int32, types.int32, types.int32, types.int64, types.int64,
                   types.int64, real, types.voidptr, types.int64, types.voidptr, types.int64,
                   real, types.voidptr, types.int64))


_sgemm = _external("sgemm", types.float32)
_dgemm = _external("dgemm", types.float64)


@numba.njit(cache=True, nogil=True)
def gemm(A, B, C, transpose_a, transpose_b, numpy_blas):
    """``C = op(A) @ op(B)``, ``op`` the transpose where asked, single-threaded.

    Parameters
    ----------
    A : array (M, K), or (K, M) with ``transpose_a``
    B : array (K, N), or (N, K) with ``transpose_b`` (not both transposed)
    C : array (M, N), C-contiguous
        Written in place. All three share a dtype (float32 or float64); the
        rows of A and B are contiguous (``strides[1]`` is the item size).
    numpy_blas : bool
        Call NumPy's BLAS (pass :data:`NUMPY_BLAS`); else ``np.dot``.
    """
    if not numpy_blas:
        if transpose_a:
            np.dot(A.T, B, C)
        elif transpose_b:
            np.dot(A, B.T, C)
        else:
            np.dot(A, B, C)
        return
    cblas_gemm(A, B, C, transpose_a, transpose_b)


@numba.njit(cache=True, nogil=True)
def cblas_gemm(A, B, C, transpose_a, transpose_b):
    """:func:`gemm` through NumPy's OpenBLAS alone (:data:`NUMPY_BLAS` must be True); the
    rows of A and B contiguous, their leading dimensions read from their strides, so a
    block of columns (``A[:, lo:hi]``) is taken as it is."""
    m, n = C.shape
    k = A.shape[0] if transpose_a else A.shape[1]
    size = A.itemsize
    ta = TRANS if transpose_a else NO_TRANS
    tb = TRANS if transpose_b else NO_TRANS
    lda, ldb, ldc = A.strides[0] // size, B.strides[0] // size, C.strides[0] // size
    if size == 4:
        _sgemm(ROW_MAJOR, ta, tb, m, n, k, np.float32(1), A.ctypes, lda, B.ctypes, ldb,
               np.float32(0), C.ctypes, ldc)
    else:
        _dgemm(ROW_MAJOR, ta, tb, m, n, k, np.float64(1), A.ctypes, lda, B.ctypes, ldb,
               np.float64(0), C.ctypes, ldc)


__all__ = ["cblas_gemm", "gemm", "NUMPY_BLAS", "numpy_blas_threads", "set_numpy_blas_threads"]
