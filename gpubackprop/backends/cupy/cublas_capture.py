"""cuBLAS matrix products that may be recorded into a CUDA graph.

CuPy refuses every cuBLAS call while a stream captures: each of its wrappers
first sets the handle's stream, and its ``cublas.setStream`` raises
``NotImplementedError`` when that stream is capturing (cupy#6290; so in CuPy
14.2.0 and 15.0.0a1). cuBLAS itself supports capture. :class:`CaptureGemm`
therefore calls cuBLAS's C API through ctypes, on the libcublas CuPy loaded
(found the way CuPy finds it, through ``cuda.pathfinder``), with a handle of
its own:

- bound to a stream by :meth:`CaptureGemm.bind` before a run of products (the
  stream being captured, or the current stream for a run outside capture);
- given a workspace allocated once, with ``cublasSetWorkspace`` after every
  ``cublasSetStream`` (which resets it): without one cuBLAS allocates its own,
  which capture forbids;
- ``cublasGemmEx`` with the compute type and algorithm CuPy's own ``matmul``
  picks (TF32 when the backend allows it, read at :meth:`bind`).

Arrays are row-major and cuBLAS is column-major: a C-contiguous (r, c) array
is the column-major (c, r) matrix, its transpose, so ``C = op(A) op(B)`` is
computed as ``C^T = op(B)^T op(A)^T`` (:func:`gemm_arguments`).

Importing this module imports neither CuPy nor cuBLAS; :func:`load` does.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

#: Workspace handed to cuBLAS: NVIDIA recommends 32 MiB on Hopper, 4 MiB before it.
WORKSPACE_BYTES = 32 * 2 ** 20


@dataclass(frozen=True)
class GemmArguments:
    """A row-major ``out (M, P) = op(A) (M, K) @ op(B) (K, P)`` as one column-major GEMM.

    cuBLAS computes ``C (m, n) = op(first) (m, k) @ op(second) (k, n)``
    column-major; here ``first`` is B's memory and ``second`` A's.
    """

    transpose_first: bool
    transpose_second: bool
    m: int
    n: int
    k: int
    ld_first: int
    ld_second: int
    ldc: int


def gemm_arguments(a_shape: tuple, b_shape: tuple, trans_a: bool, trans_b: bool,
                   out_shape: tuple) -> GemmArguments:
    """The cuBLAS arguments of a row-major product of C-contiguous 2-D arrays.

    Parameters
    ----------
    a_shape : (M, K), or (K, M) when ``trans_a``
    b_shape : (K, P), or (P, K) when ``trans_b``
    out_shape : (M, P)

    Raises
    ------
    ValueError
        When the shapes do not multiply into ``out_shape``.
    """
    M, K = a_shape[::-1] if trans_a else a_shape
    K_b, P = b_shape[::-1] if trans_b else b_shape
    if K != K_b or tuple(out_shape) != (M, P):
        raise ValueError(f"cannot multiply {a_shape}{'^T' if trans_a else ''} by "
                         f"{b_shape}{'^T' if trans_b else ''} into {tuple(out_shape)}")
    return GemmArguments(transpose_first=trans_b, transpose_second=trans_a, m=P, n=M, k=K,
                         ld_first=b_shape[1], ld_second=a_shape[1], ldc=P)


def check_operands(A, B, trans_a: bool, trans_b: bool, out) -> GemmArguments:
    """:func:`gemm_arguments` of arrays a capture GEMM takes, else ``ValueError``.

    Every array 2-D, C-contiguous, float32 or float64, one dtype; ``out`` given
    (a recorded product must write memory allocated before capture).
    """
    if out is None or not all(X.ndim == 2 and X.flags.c_contiguous and X.dtype == out.dtype
                              for X in (A, B, out)) or out.dtype not in (np.float32, np.float64):
        raise ValueError("a capture GEMM takes 2-D C-contiguous float32 or float64 arrays of "
                         "one dtype and out=")
    return gemm_arguments(A.shape, B.shape, trans_a, trans_b, out.shape)


def load(xp) -> "CaptureGemm":
    """A :class:`CaptureGemm` on the libcublas CuPy uses (``xp`` is the ``cupy`` module).

    Raises
    ------
    Exception
        ``cuda.pathfinder``'s ``DynamicLibNotFoundError`` or ``OSError`` when
        libcublas cannot be loaded, ``AttributeError`` when it lacks a function
        of :attr:`CaptureGemm.FUNCTIONS`, ``RuntimeError`` when cuBLAS refuses
        to create the handle.
    """
    return CaptureGemm(xp, _libcublas(xp))


def _libcublas(xp):
    from cuda import pathfinder

    loaded = pathfinder.load_nvidia_dynamic_lib("cublas")
    if loaded.abs_path:
        return ctypes.CDLL(loaded.abs_path)
    # Loaded by the system's loader from elsewhere: its soname finds that same copy.
    major = xp.cuda.runtime.runtimeGetVersion() // 1000
    return ctypes.CDLL(f"libcublas.so.{major}")


def _check(status: int, call: str) -> None:
    if status != 0:
        raise RuntimeError(f"{call} returned cuBLAS status {status}")


class CaptureGemm:
    """``gemm(A, B, trans_a, trans_b, out)`` through a cuBLAS handle of its own.

    One per backend, kept for the process's life (as CuPy keeps its own handles).

    Parameters
    ----------
    xp : module
        ``cupy``.
    library : ctypes.CDLL
        libcublas.
    cublas : module, optional
        Where the cuBLAS enumerations (``CUBLAS_OP_T``, ``CUBLAS_COMPUTE_32F``,
        ...) are read: CuPy's ``cupy_backends.cuda.libs.cublas`` when omitted.
    """

    #: Functions of libcublas called here, with their argument types.
    FUNCTIONS = {
        "cublasCreate_v2": (ctypes.POINTER(ctypes.c_void_p),),
        "cublasSetStream_v2": (ctypes.c_void_p, ctypes.c_void_p),
        "cublasSetWorkspace_v2": (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t),
        "cublasSetMathMode": (ctypes.c_void_p, ctypes.c_int),
        "cublasGemmEx": (ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                         ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                         ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
                         ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                         ctypes.c_int, ctypes.c_int, ctypes.c_int),
    }

    def __init__(self, xp, library, cublas=None):
        if cublas is None:
            from cupy_backends.cuda.libs import cublas

        self.xp, self._cublas = xp, cublas
        self._functions = {}
        for name, argtypes in self.FUNCTIONS.items():
            function = getattr(library, name)  # AttributeError: an older cuBLAS
            function.argtypes, function.restype = argtypes, ctypes.c_int
            self._functions[name] = function
        handle = ctypes.c_void_p()
        _check(self._functions["cublasCreate_v2"](ctypes.byref(handle)), "cublasCreate")
        self.handle = handle
        _check(self._functions["cublasSetMathMode"](handle, cublas.CUBLAS_DEFAULT_MATH),
               "cublasSetMathMode")
        self.workspace = xp.empty((WORKSPACE_BYTES,), np.uint8)
        # CuPy's rule (tensordot_core): tensor-op algorithms from compute capability 8.0.
        self._algo = (cublas.CUBLAS_GEMM_DEFAULT_TENSOR_OP
                      if int(xp.cuda.Device().compute_capability) >= 80
                      else cublas.CUBLAS_GEMM_DEFAULT)
        self._compute = {}
        # Host scalars alpha = 1, beta = 0 per dtype; read by cuBLAS when a product is issued.
        self._one_zero = {np.dtype(np.float32): (ctypes.c_float(1), ctypes.c_float(0)),
                          np.dtype(np.float64): (ctypes.c_double(1), ctypes.c_double(0))}

    def bind(self, stream_ptr: int, tf32: bool) -> None:
        """Issue the next products on ``stream_ptr``; float32 ones in TF32 when ``tf32``."""
        cublas, runtime = self._cublas, self.xp.cuda.runtime
        call = self._functions
        _check(call["cublasSetStream_v2"](self.handle, ctypes.c_void_p(stream_ptr)),
               "cublasSetStream")
        _check(call["cublasSetWorkspace_v2"](self.handle, ctypes.c_void_p(self.workspace.data.ptr),
                                             WORKSPACE_BYTES), "cublasSetWorkspace")
        self._compute = {
            np.dtype(np.float32): (runtime.CUDA_R_32F, cublas.CUBLAS_COMPUTE_32F_FAST_TF32 if tf32
                                   else cublas.CUBLAS_COMPUTE_32F),
            np.dtype(np.float64): (runtime.CUDA_R_64F, cublas.CUBLAS_COMPUTE_64F)}

    def gemm(self, A, B, trans_a: bool = False, trans_b: bool = False, out=None):
        """``out = op(A) @ op(B)``, as ``Backend.gemm``; every array C-contiguous, one dtype.

        Parameters
        ----------
        A : (M, K), or (K, M) when ``trans_a``
        B : (K, P), or (P, K) when ``trans_b``
        out : (M, P)

        Returns
        -------
        out
        """
        if not self._compute:
            raise RuntimeError("CaptureGemm.gemm before bind(): no stream chosen")
        args = check_operands(A, B, trans_a, trans_b, out)
        data_type, compute_type = self._compute[out.dtype]
        one, zero = self._one_zero[out.dtype]
        op = {False: self._cublas.CUBLAS_OP_N, True: self._cublas.CUBLAS_OP_T}
        _check(self._functions["cublasGemmEx"](
            self.handle, op[args.transpose_first], op[args.transpose_second],
            args.m, args.n, args.k, ctypes.byref(one),
            B.data.ptr, data_type, args.ld_first, A.data.ptr, data_type, args.ld_second,
            ctypes.byref(zero), out.data.ptr, data_type, args.ldc, compute_type, self._algo),
            "cublasGemmEx")
        return out


__all__ = ["CaptureGemm", "GemmArguments", "WORKSPACE_BYTES", "check_operands", "gemm_arguments",
           "load"]
