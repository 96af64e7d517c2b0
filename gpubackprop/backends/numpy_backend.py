"""The NumPy backend: the CPU reference implementation."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .base import Backend


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


class NumpyBackend(Backend):
    """Runs every operation with NumPy on the host, with the generic formulas.

    NumPy's elementwise operations use one core; BLAS already uses them all.
    The optimizer updates of large parameters, the largest elementwise work
    of a training step, are therefore split into contiguous pieces updated
    in parallel threads (NumPy releases the GIL inside ufuncs). Each piece
    runs the generic formula, so the results are bit-identical to one piece.

    Parameters
    ----------
    threads : int, optional
        Threads for those updates; default: the CPUs this process may use.
        Nothing global is set (BLAS keeps its own thread pool).
    """

    name = "numpy"
    host_reads_are_free = True
    #: Parameters with fewer elements per thread than this are updated in one piece.
    min_elements_per_thread = 1 << 16

    def __init__(self, threads: int | None = None):
        super().__init__(np)
        self.threads = max(1, int(threads or available_cpus()))
        self._pool = None
        self._local = threading.local()

    def sgd_update(self, W, dW, lr):
        self._in_parts(super().sgd_update, (W, dW), lr)

    def momentum_update(self, W, dW, V, lr, momentum):
        self._in_parts(super().momentum_update, (W, dW, V), lr, momentum)

    def adam_update(self, W, dW, M, V, lr, beta1, beta2, eps, step, work=None):
        A, B = work if work is not None else self._scratch_pair(W)
        update = super().adam_update

        def piece(W, dW, M, V, A, B):
            update(W, dW, M, V, lr, beta1, beta2, eps, step, work=(A, B))

        self._in_parts(piece, (W, dW, M, V, A, B))

    def _scratch_pair(self, W):
        """Two scratch arrays shaped like ``W``, views of buffers reused by every call
        (per thread), so an optimizer step allocates nothing."""
        buffers = getattr(self._local, "scratch", ())
        if not buffers or buffers[0].size < W.size or buffers[0].dtype != W.dtype:
            buffers = self._local.scratch = (np.empty(W.size, W.dtype), np.empty(W.size, W.dtype))
        return tuple(buffer[:W.size].reshape(W.shape) for buffer in buffers)

    def _in_parts(self, update, arrays, *args) -> None:
        """Call ``update(*arrays, *args)`` on aligned contiguous pieces in parallel."""
        n = arrays[0].size
        parts = min(self.threads, n // self.min_elements_per_thread)
        if parts < 2 or not all(A.flags.c_contiguous for A in arrays):
            update(*arrays, *args)
            return
        flat = [A.reshape(-1) for A in arrays]
        # Piece boundaries on 64-byte lines, so no cache line is written by two threads.
        bounds = [0] + [n * k // parts // 16 * 16 for k in range(1, parts)] + [n]
        pieces = [[A[lo:hi] for A in flat] for lo, hi in zip(bounds[:-1], bounds[1:])]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="gpubackprop")
        futures = [self._pool.submit(update, *piece, *args) for piece in pieces[1:]]
        update(*pieces[0], *args)
        for future in futures:
            future.result()
