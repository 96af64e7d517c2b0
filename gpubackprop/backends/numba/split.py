"""Work split into blocks of rows, one thread each, every product inside single-threaded.

Why: a product of the sizes a recurrent step makes (128x128 by 128x128 in the
row-MNIST RNN) is too small for OpenBLAS's own threads, which meet at every
call; on the 2-core development VM two of them were slower than one. Worse,
after a multi-threaded OpenBLAS call its idle threads spin for a while, taking
the core a Numba thread needs next. So inside a training step (its context
keeps NumPy's OpenBLAS at one thread, see :meth:`.backend.NumbaBackend.step_context`)
products and time loops split their output rows across Numba's threads
instead (their columns, where there are too few rows), each block a single-threaded
BLAS call on rows of contiguous memory, and
a :class:`~gpubackprop.cpu_threads.ThreadChooser` per shape decides from
measured calls whether the split beats one thread (under contention it may not).

Importing this module imports Numba.
"""

from __future__ import annotations

import time

import numba
from numba import prange

from ...cpu_threads import chooser_for
from .blas import cblas_gemm, numpy_blas_threads, set_numpy_blas_threads
from .kernels import JIT_OPTIONS

parallel_jit = numba.njit(**JIT_OPTIONS, parallel=True)


@parallel_jit
def gemm_blocks(A, B, C, transpose_a, transpose_b, parts, by_columns):
    """``C = op(A) @ op(B)`` (:func:`.blas.cblas_gemm`: NumPy's OpenBLAS must be found) as
    ``parts`` blocks of C's rows, or of its columns with ``by_columns``, at once.

    Parameters
    ----------
    A : (M, K), or (K, M) with ``transpose_a``; B : (K, N), or (N, K) with ``transpose_b``
    C : (M, N), C-contiguous
        As :func:`.blas.cblas_gemm`; block ``k`` takes rows ``M k / parts`` to
        ``M (k + 1) / parts`` of C and of op(A), or those columns (of N) of C and op(B).
    """
    m, n = C.shape
    for k in prange(parts):
        if by_columns:
            lo, hi = n * k // parts, n * (k + 1) // parts
            if transpose_b:
                cblas_gemm(A, B[lo:hi], C[:, lo:hi], transpose_a, True)
            else:
                cblas_gemm(A, B[:, lo:hi], C[:, lo:hi], transpose_a, False)
        else:
            lo, hi = m * k // parts, m * (k + 1) // parts
            if transpose_a:
                cblas_gemm(A[:, lo:hi], B, C[lo:hi], True, transpose_b)
            else:
                cblas_gemm(A[lo:hi], B, C[lo:hi], False, transpose_b)


class rows_split_chosen:
    """Run work split into blocks of rows, one block per Numba thread, on all threads or
    on one, as its :class:`~gpubackprop.cpu_threads.ThreadChooser` (one per ``key``)
    picks; ``with`` gives the number of blocks. The blocks are the same either way, so
    the arithmetic is too: a result does not depend on the choice. NumPy's OpenBLAS is
    held at one thread while the work runs.

    A time loop splits its batch rows: a step's rows depend on the same rows of the
    step before only, so each thread runs all the steps of its rows and the threads
    meet once per pass.
    """

    def __init__(self, key):
        self.parts = numba.get_num_threads()
        self.chooser = chooser_for(key, self.parts)
        self.blas = numpy_blas_threads()

    def __enter__(self) -> int:
        self.threads = self.chooser.threads() if self.chooser is not None else self.parts
        if self.threads != self.parts:
            numba.set_num_threads(self.threads)
        if self.blas is not None and self.blas != 1:
            set_numpy_blas_threads(1)
        self.started = time.perf_counter()
        return self.parts

    def __exit__(self, *exc):
        if self.chooser is not None:
            self.chooser.record(self.threads, time.perf_counter() - self.started)
        if self.threads != self.parts:
            numba.set_num_threads(self.parts)
        if self.blas is not None and self.blas != 1:
            set_numpy_blas_threads(self.blas)
        return False


__all__ = ["gemm_blocks", "parallel_jit", "rows_split_chosen"]
