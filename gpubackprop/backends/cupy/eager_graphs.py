"""The eager interpreter's step recorded as a CUDA graph per batch shape, and replayed.

Plans the device step declines (recurrent layers, other losses, clipping)
run on the eager interpreter (:class:`~...nn.plan.EagerStep`): each layer's
forward and backward, the loss, the optimizer, every time step's products
and kernels launched from Python. :class:`RecordedEagerStep` runs that same
interpreter, but records it once per batch shape and replays it, as PyTorch's
``torch.cuda.graph`` records a training step:

- the batch's row indices are copied into a fixed index buffer of the shape,
  and the recorded step gathers its rows, targets, labels (and sequence
  mask) from the data into fixed input buffers (``take(..., out=)``), so a replay reads a new
  batch from the same addresses;
- the first call for a shape runs the step uncaptured (kernels compile, the
  layers allocate their buffers), then records it on a stream of its own;
  both allocate from a CuPy memory pool of the recording's own
  (:class:`.graphs.StepGraphs` with ``private_pools``), so memory a graph
  writes, the layers' buffers and temporaries, is never handed to another
  array; the pools live as long as the step, and so do the buffers the
  layers reused when a graph was recorded (a layer keeps those of two batch
  shapes, and may drop a shape's that a graph still writes);
- the products go through the capture-safe cuBLAS GEMM
  (:meth:`.backend.CupyBackend.routed_products`): CuPy's own refuse capture;
- every scalar that changes from step to step lives on the device already
  (the optimizer's step state: learning rate, step count, corrections;
  clipping's norm and scale), so nothing is read back to the host;
- a replay rewrites the loss and hit count the recorded step returned; they
  are copied into a ring of per-step slots (as many as an epoch's batches),
  which the Trainer stacks once per epoch.

Whatever the step does that capture forbids (a read back to the host, a
synchronisation, a library call that refuses capture) makes the recording
fail: the step says why (:attr:`RecordedEagerStep.no_graph`, shown by
:meth:`RecordedEagerStep.describe`) and runs uncaptured from then on. The
``GPUBACKPROP_CUDA_GRAPHS`` switch (``0``) and ``CupyBackend(cuda_graphs=False)``
turn recording off, as for the device step; ``GPUBACKPROP_CUDA_GRAPHS=device``
records the device step alone. A data-parallel plan is not recorded (its
all-reduce comes between backward and update).

This module imports no CuPy: it works through ``plan.backend``, so the
emulated backend runs it unchanged.
"""

from __future__ import annotations

import numpy as np

from ...nn.plan import EAGER, EagerStep
from .graphs import StepGraphs, eager_graphs_not_chosen
from .step import MIN_RESULT_SLOTS, address, batch_rows, graphs_off, write_rows


class EagerGraphCompiler:
    """Takes every plan: the eager interpreter's step, recorded where it can be."""

    name = "cupy-eager-graph"

    def compile(self, plan) -> "RecordedEagerStep":
        return RecordedEagerStep(plan)


class _Batch:
    """The fixed buffers a recorded step of ``n`` rows reads its batch from.

    Attributes
    ----------
    rows : (n,) int64
        The batch's row indices, written before each step; ``offsets`` (n,)
        int64 is ``0 .. n-1``, for a batch given as a slice.
    X : (n, ...); T : (n, ...); labels : (n, ...) int64 or None; mask : (n, T) or None
        The rows, targets, labels and mask, gathered by the recorded step.
    """

    def __init__(self, xp, n: int, X, T, labels, mask):
        self.rows = xp.empty((n,), np.int64)
        self.offsets = xp.arange(n, dtype=np.int64)
        self.X = xp.empty((n, *X.shape[1:]), X.dtype)
        self.T = xp.empty((n, *T.shape[1:]), T.dtype)
        self.labels, self.mask = (None if A is None else xp.empty((n, *A.shape[1:]), A.dtype)
                                  for A in (labels, mask))


class RecordedEagerStep(EagerStep):
    """The eager interpreter's step, recorded as a CUDA graph per batch shape.

    Called as any :class:`~...nn.plan.Step`; returns the batch's loss and hits
    as 0-d device arrays, views of a ring of result slots, valid until as
    many later calls have run (an epoch of batches over the data at least).

    Attributes
    ----------
    graphs : StepGraphs or None
        The recorded graphs; None while the step runs uncaptured.
    no_graph : str or None
        Why the step runs uncaptured, None while graphs are on.
    calls : int
        Steps taken while graphs were on.
    recorded_buffers : list of list
        Per recording, the arrays the layers reused then (kept alive with the step).
    """

    compiler = EAGER

    def __init__(self, plan):
        super().__init__(plan)
        backend = plan.backend
        self.xp = backend.xp
        self.batches: dict = {}
        # Per recording, the layers' reused buffers when it was made (see __call__).
        self.recorded_buffers: list = []
        self.losses = self.hits = None
        self.calls = 0
        self.graphs = None
        self.no_graph = graphs_off(backend) or eager_graphs_not_chosen()
        if self.no_graph is None and plan.reduce is not None:
            self.no_graph = ("a data-parallel step (its all-reduce runs on the host's "
                             "communicator between backward and update)")
        if self.no_graph is None:
            try:
                self.graphs = StepGraphs(self.xp, backend.capture_gemm(), private_pools=True)
            except Exception as exc:  # no capture-safe GEMM here: run uncaptured, say why
                self.no_graph = f"no capture-safe GEMM ({type(exc).__name__}: {exc})"

    def describe(self) -> str:
        """``eager (CUDA graph)`` or ``eager (no CUDA graph: why)``, then the declines."""
        graph = "CUDA graph" if self.no_graph is None else f"no CUDA graph: {self.no_graph}"
        return super().describe().replace(self.compiler, f"{self.compiler} ({graph})", 1)

    def __call__(self, X, T, labels, index, mask=None):
        n = batch_rows(index, X.shape[0])
        if self.graphs is None or n == 0:  # unrecorded (or the interpreter's own error)
            return super().__call__(X, T, labels, index, mask)
        xp, backend = self.xp, self.plan.backend
        # A batch's buffers per row count and shapes and dtypes of a sample.
        layout = (n,) + tuple(None if A is None else (A.shape[1:], A.dtype)
                              for A in (X, T, labels, mask))
        batch = self.batches.get(layout)
        if batch is None:
            batch = self.batches[layout] = _Batch(xp, n, X, T, labels, mask)
        # The batch's row indices into this shape's fixed index buffer.
        write_rows(xp, index, X.shape[0], batch.offsets, batch.rows)
        # One graph per batch shape, recorded for these data arrays and TF32 setting.
        tf32, gemm = backend.tf32_enabled(), self.graphs.gemm
        sources = (tf32,) + tuple((address(A), None if A is None else A.shape)
                                  for A in (X, T, labels, mask))
        with backend.routed_products(gemm):
            loss, hits = self.graphs.run(n, sources,
                                         lambda: self._body(X, T, labels, mask, batch), tf32)
        if self.graphs.failure is not None:
            self.no_graph, self.graphs = self.graphs.failure, None
        elif self.graphs.captures != len(self.recorded_buffers):
            # The layers' buffers the new graph writes stay alive with the step, even when a
            # layer drops them for another batch shape's (freed, their memory could go to
            # another array while a replay still writes it).
            self.recorded_buffers.append(self.training_buffers())
        return self._keep(loss, hits, X.shape[0])

    def _body(self, X, T, labels, mask, batch):
        """The batch gathered into its fixed buffers, then the interpreter's step on them."""
        xp = self.xp
        for source, gathered in ((X, batch.X), (T, batch.T), (labels, batch.labels),
                                 (mask, batch.mask)):
            if source is not None:
                xp.take(source, batch.rows, axis=0, out=gathered)
        result = self.batch_gradients(batch.X, batch.T, batch.labels, batch.mask)
        self.update()
        return result

    def _keep(self, loss, hits, n_total: int):
        """``loss`` and ``hits`` copied into the next slot of the ring, as views of it."""
        xp = self.xp
        if self.losses is None:
            slots = max(MIN_RESULT_SLOTS, -(-n_total // self.plan.batch_size))
            self.losses = xp.empty((slots,), loss.dtype)
            self.hits = xp.zeros((slots,), np.int64)
        slot = self.calls % self.losses.shape[0]
        self.calls += 1
        loss_slot = self.losses[slot:slot + 1]
        loss_slot[...] = loss
        if hits is None:
            return loss_slot.reshape(()), None
        hits_slot = self.hits[slot:slot + 1]
        hits_slot[...] = hits
        return loss_slot.reshape(()), hits_slot.reshape(())


__all__ = ["EagerGraphCompiler", "RecordedEagerStep"]
