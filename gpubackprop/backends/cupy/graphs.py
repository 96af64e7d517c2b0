"""CUDA graphs of the device step: recorded once per batch shape, replayed every step.

:class:`StepGraphs` runs a step body (a function of no arguments that only
launches work on preallocated device arrays) through a graph:

- the first time for a key (a batch shape, with what the body reads from
  outside: the data's device addresses, the TF32 setting), it runs the body on
  the current stream (kernels compile, cuBLAS picks its kernels, the step
  happens), then records it on a stream of its own, which runs nothing;
- every later time for that key it launches the recorded graph on the current
  stream: one launch instead of one per kernel.

Recording can fail: an operation capture forbids (a read to the host, a
synchronisation, a library that refuses capture), or an allocation, which
capture would not refuse, but whose memory the pool may hand to another
array while the graph still writes it; :class:`AllocationGuard` counts them.
Then :attr:`StepGraphs.failure` says why, and the caller runs its body
uncaptured from then on.

A body that allocates (the eager interpreter's step: its layers' temporaries)
is recorded as PyTorch records one: with ``private_pools``, each recording
(its uncaptured first run included) allocates from a CuPy ``MemoryPool`` of
its own, kept with the step, so the memory a graph writes is never handed to
another array; the arrays the recorded body returned are the graph's outputs,
rewritten by every replay.

This module imports no CuPy: it works through the ``xp`` it is given (the
``cupy`` module, or the emulation's), as :mod:`.step` does.
"""

from __future__ import annotations

import contextlib
import os
import traceback
from pathlib import Path

#: The environment variable that turns the graphs off ("0"), on for every step ("1",
#: "all", unset), or on for the MLP device step alone ("device").
GRAPHS_ENV = "GPUBACKPROP_CUDA_GRAPHS"
#: The value that records every step (the default): the device step and the eager one.
ALL = "all"
#: The value that records the MLP device step alone, the eager interpreter's step not.
DEVICE_ONLY = "device"
_OFF, _ON = ("0", "false", "no", "off"), ("", "1", "true", "yes", "on", ALL, DEVICE_ONLY)


def graphs_turned_off() -> str | None:
    """Why the environment turns CUDA graphs off (:data:`GRAPHS_ENV`), or None."""
    value = os.environ.get(GRAPHS_ENV, "")
    if value.strip().lower() in _ON:
        return None
    if value.strip().lower() in _OFF:
        return f"turned off by {GRAPHS_ENV}={value}"
    return f"{GRAPHS_ENV}={value!r} is neither 0, 1, {ALL} nor {DEVICE_ONLY}"


def eager_graphs_not_chosen() -> str | None:
    """Why the eager step stays unrecorded where graphs are on (``GRAPHS_ENV=device``),
    or None. Ask :func:`graphs_turned_off` first."""
    if os.environ.get(GRAPHS_ENV, "").strip().lower() == DEVICE_ONLY:
        return f"{GRAPHS_ENV}={DEVICE_ONLY} records the MLP device step alone"
    return None


def allocation_guard(xp):
    """A CuPy memory hook counting every allocation made while it is installed.

    ``with guard:`` installs it for the current thread; ``guard.allocations``
    counts the requests to CuPy's memory pool, served from the pool or not.
    """

    class AllocationGuard(xp.cuda.MemoryHook):
        name = "gpubackprop-capture-guard"

        def __init__(self):
            super().__init__()
            self.allocations = 0

        def malloc_preprocess(self, **kwargs):
            self.allocations += 1

    return AllocationGuard()


class StepGraphs:
    """One CUDA graph per batch shape of a step body, and their replays.

    Parameters
    ----------
    xp : module
        ``cupy`` (or the emulation's stand-in).
    gemm : object
        The GEMM the body calls while graphs are on: ``bind(stream_ptr, tf32)``
        before each run of the body, then ``gemm(A, B, trans_a, trans_b, out)``
        (:class:`.cublas_capture.CaptureGemm`).
    private_pools : bool
        Let the body allocate: each recording takes its memory from a pool of
        its own (see the module docstring). Otherwise an allocation while
        recording is a failure.

    Attributes
    ----------
    failure : str or None
        Why recording failed (then nothing is recorded any more), None so far.
    captures, replays : int
        Graphs recorded, and graph launches.
    """

    def __init__(self, xp, gemm, private_pools: bool = False):
        self.xp, self.gemm = xp, gemm
        self.private_pools = private_pools
        self.failure: str | None = None
        self.captures = self.replays = 0
        # batch shape -> (key it was recorded for, graph, its outputs); one graph per shape.
        self._graphs: dict = {}
        # Every private pool made, kept while the step lives: a graph replaced by a new key
        # may have left arrays (a layer's buffers) that a later graph writes.
        self._pools: list = []
        self._stream = None

    def run(self, shape, key, body, tf32: bool):
        """Run ``body`` once: replay ``shape``'s graph if recorded for ``key``, else record it.

        Parameters
        ----------
        shape : hashable
            The batch shape; a new ``key`` for a shape replaces its graph.
        key : hashable
            What the recorded body reads from outside its own buffers.
        body : callable
            One step, launching work only (no allocation, no host transfer).
        tf32 : bool
            Whether the recorded float32 products may use TF32.

        Returns
        -------
        What ``body`` returned: on a replay, the arrays the recorded run
        returned, which the replay has rewritten.
        """
        entry = self._graphs.get(shape)
        current = self.xp.cuda.get_current_stream()
        if entry is not None and entry[0] == key:
            entry[1].launch(stream=current)
            self.replays += 1
            return entry[2]
        pool = None
        if self.private_pools:
            pool = self.xp.cuda.MemoryPool()
            self._pools.append(pool)
        # Uncaptured first: compiles every kernel (which capture forbids) and takes the step.
        self.gemm.bind(current.ptr, tf32)
        with _allocating_from(self.xp, pool):
            result = body()
        recorded = self._record(body, tf32, pool)
        if recorded is not None:
            self._graphs[shape] = (key, *recorded)
            self.captures += 1
        return result

    def _record(self, body, tf32: bool, pool):
        """``(graph, outputs)`` of ``body`` recorded on a stream of its own, allocating from
        ``pool`` (None: allocating nothing), or None (see :attr:`failure`)."""
        xp = self.xp
        guard = allocation_guard(xp)
        try:
            if self._stream is None:
                self._stream = xp.cuda.Stream(non_blocking=True)
            stream = self._stream
            with stream, _allocating_from(xp, pool):
                self.gemm.bind(stream.ptr, tf32)
                stream.begin_capture()
                try:
                    with guard:
                        outputs = body()
                except BaseException:
                    _end_capture_quietly(stream)
                    raise
                graph = stream.end_capture()
        except Exception as exc:  # any CUDA or library refusal: run uncaptured, say why
            self.failure = (f"recording the step failed: {type(exc).__name__}: {exc}"
                            f"{where_in_package(exc)}")
            return None
        if guard.allocations and pool is None:
            self.failure = (f"the step allocated device memory {guard.allocations} time(s) "
                            f"while recorded")
            return None
        return graph, outputs


def _allocating_from(xp, pool):
    """A context in which CuPy allocates from ``pool``; None leaves the allocator alone."""
    return contextlib.nullcontext() if pool is None else xp.cuda.using_allocator(pool.malloc)


#: The package's root folder: a traceback's frames below it are gpubackprop's own.
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def where_in_package(exc: BaseException) -> str:
    """`` (at gpubackprop/<file>:<line> in <function>)``: the innermost frame of
    ``exc``'s traceback in this package, the call that met the refusal; "" if none."""
    ours = [frame for frame in traceback.extract_tb(exc.__traceback__)
            if Path(frame.filename).resolve().is_relative_to(PACKAGE_ROOT)]
    if not ours:
        return ""
    frame = ours[-1]
    path = Path(frame.filename).resolve().relative_to(PACKAGE_ROOT.parent).as_posix()
    return f" (at {path}:{frame.lineno} in {frame.name})"


def _end_capture_quietly(stream) -> None:
    """End a capture that an error interrupted; CUDA may refuse its graph, which is dropped."""
    try:
        stream.end_capture()
    except Exception:  # the capture was invalidated: nothing to keep
        pass


__all__ = ["GRAPHS_ENV", "StepGraphs", "allocation_guard", "graphs_turned_off"]
