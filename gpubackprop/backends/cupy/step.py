"""The CuPy backend's step compiler: a whole MLP step on preallocated device buffers,
recorded as a CUDA graph and replayed.

:class:`DeviceStepCompiler` takes plans of Linear ops trained with softmax
cross-entropy and an optimizer whose update has a CUDA kernel, and returns a
:class:`DeviceStep`. After its first call for a batch shape, a call performs
no allocation and no copy between host and device: every array it writes
was allocated on that first call, per batch shape,

- the batch's row indices (copied there first: a slice becomes ``start + step
  * offsets``), the gathered rows, targets and labels (``xp.take(..., out=)``),
- every layer's output and the gradient flowing into it,
- the loss's gradient and per-row losses,

plus one ring of per-step loss and hit slots shared by all shapes, which the
Trainer stacks once per epoch, and its counter on the device: the
``step_result`` kernel stores each step's mean loss and hits in the slot the
counter names and moves it on, so the slot is chosen on the device.
Every scalar that changes from step to step (learning rate, step count,
Adam's corrections) is read by the update kernels from the optimizer's step
state on the device (``plan.update.begin_step``), so a schedule's write of
the learning rate needs no step of its own.

So the step after the row copy reads nothing from the host, and it is
recorded as a CUDA graph (:class:`.graphs.StepGraphs`): per batch shape, the
first call runs it uncaptured and then records it, and every later call
copies the rows and launches the graph (two launches instead of one per
kernel and product). The key of a graph holds the data's device addresses
and shapes and the TF32 setting, which it baked in; a new key records again.
Its matrix products are cuBLAS calls through ctypes on a handle of our own
(:mod:`.cublas_capture`): CuPy's cuBLAS wrappers refuse to run while a stream
captures (cupy#6290). Graphs are off with ``GPUBACKPROP_CUDA_GRAPHS=0`` or
``CupyBackend(cuda_graphs=False)``, and where recording fails (the reason is
kept in :attr:`DeviceStep.no_graph` and shown by :meth:`DeviceStep.describe`);
then the same launches run one by one, the products through ``backend.gemm``.
Recurrent models never get here: their step is the eager interpreter's.

A data-parallel plan (``plan.reduce``) is split: the step without its update
(recorded or not, as above), then one NCCL all-reduce on the current stream
over the fused gradient buffer (the ``dW`` arrays are views of it), then the
update kernels, launched one by one outside the graph.

This module imports no CuPy: it works through ``plan.backend`` (its ``xp``,
its kernels, its capture GEMM), so the emulated backend runs it unchanged.
"""

from __future__ import annotations

import numpy as np

from ...errors import InputError
from ...nn.activations import ACTIVATIONS
from ...nn.plan import Declined, LinearOp, Step
from .graphs import StepGraphs, graphs_turned_off
from ..base import KERNEL_DTYPES

#: Loss and hit slots kept per step: a Trainer epoch of up to this many batches
#: reads each of its steps' results before a slot is written again.
MIN_RESULT_SLOTS = 64


def unsupported(plan) -> str | None:
    """Why :class:`DeviceStep` cannot run this plan, or None when it can."""
    if plan.sequence_outputs:
        return "the outputs are sequences (N, T, K): per-step targets and masks run eagerly"
    backend = plan.backend
    for op in plan.ops:
        if not isinstance(op, LinearOp):
            return f"layer {op.name} is a {op.kind}, not Linear"
        if not backend.has_activation_kernel(op.activation):
            return f"layer {op.name}'s activation {op.activation!r} has no CUDA kernel"
    if plan.ops[-1].activation != "identity":
        return "the output layer has an activation (cross-entropy takes logits)"
    if plan.loss.name != "cross_entropy":
        return f"the loss is {plan.loss.name}, not cross_entropy"
    if not backend.has_kernel(f"{plan.update.rule}_step"):
        return f"no CUDA kernel for the optimizer {plan.update.name!r}"
    if plan.update.clip_norm is not None:
        return "gradient clipping is not compiled (its norm is a reduction over every gradient)"
    precision = plan.precision
    if not precision.is_uniform or precision.param not in KERNEL_DTYPES:
        return f"precision {precision} is not one of the kernels' dtypes in every role"
    for param in plan.update.params:
        if not all(A.flags.c_contiguous for A in (param.W, param.dW, *param.slots)
                   if A is not None):
            return f"parameter {param.name}, its gradient or its state is not C-contiguous"
    return None


class DeviceStepCompiler:
    """The step compiler of the CuPy backend: plans :func:`unsupported` accepts."""

    name = "cupy-device-step"

    def compile(self, plan) -> "DeviceStep | Declined":
        reason = unsupported(plan)
        if reason is not None:
            return Declined(reason)
        return DeviceStep(plan)


class _Buffers:
    """Every array one step writes for batches of ``n`` rows.

    Attributes
    ----------
    rows : (n,) int64
        The batch's row indices, copied here before each step (a recorded
        step reads them from this fixed address); ``offsets`` (n,) int64 is
        ``0 .. n-1``, for a batch given as a slice.
    X : (n, D0); T : (n, C); labels : (n,) int64
        The gathered batch.
    A : list of (n, D_{l+1})
        Each layer's output ``f(X W + b)``; the last holds the logits.
    S : list of (n, D_{l+1})
        What each layer's backward pass reads: ``A`` itself, or for an
        activation whose derivative needs its input, ``Z = X W + b`` beside it.
    dA : list of (n, D_l) or None
        The gradient of each layer's input (None for the first layer's).
    dZ : (n, C); row_losses : (n,)
        The loss's gradient and each row's loss (the softmax kernel writes both).
    """

    def __init__(self, xp, plan, n: int):
        dtype = plan.precision.compute
        ops = plan.ops
        classes = ops[-1].W.shape[1]
        self.rows = xp.empty((n,), np.int64)
        self.offsets = xp.arange(n, dtype=np.int64)
        self.X = xp.empty((n, ops[0].W.shape[0]), dtype)
        self.T = xp.empty((n, classes), dtype)
        self.labels = xp.empty((n,), np.int64)
        self.A = [xp.empty((n, op.W.shape[1]), dtype) for op in ops]
        self.S = [xp.empty_like(A) if ACTIVATIONS[op.activation].needs_input else A
                  for op, A in zip(ops, self.A)]
        self.dA = [None] + [xp.empty((n, op.W.shape[0]), dtype) for op in ops[1:]]
        self.dZ = xp.empty((n, classes), dtype)
        self.row_losses = xp.empty((n,), dtype)


class DeviceStep(Step):
    """One training step of an MLP on the device, writing only preallocated arrays.

    ``step(X, T, labels, index)`` with ``X`` (N, D0) and ``T`` (N, C) on the
    device in the plan's dtype, ``labels`` (N,) int64 or None, ``index`` an
    int64 device array or a slice of at most ``plan.batch_size`` rows. Returns
    the batch's mean loss and hit count as 0-d device arrays: views of a ring
    of result slots, valid until as many later calls have run.

    Where the backend allows (see :func:`graphs_off`), the step after the
    batch's rows are copied into place is recorded as a CUDA graph, one per
    batch shape, and replayed (:class:`.graphs.StepGraphs`); otherwise, or
    when recording fails, it runs uncaptured, the same launches one by one.

    Attributes
    ----------
    calls : int
        Steps taken. The device's counter, which chooses the slot each step
        writes, moves with it: the next result is in slot ``calls % slots``.
    graphs : StepGraphs or None
        The recorded graphs; None when graphs are off (:attr:`no_graph` says why).
    no_graph : str or None
        Why the step runs uncaptured, None while graphs are on.
    """

    compiler = DeviceStepCompiler.name
    split_note = ", split: the step without its update, then the update kernels ungraphed"

    def __init__(self, plan):
        super().__init__(plan)
        backend = plan.backend
        self.xp = backend.xp
        self.buffers: dict = {}
        self.losses = self.hits = self.counter = None
        self.calls = 0
        self.graphs = None
        self.no_graph = graphs_off(backend)
        if self.no_graph is None:
            try:
                self.graphs = StepGraphs(self.xp, backend.capture_gemm())
            except Exception as exc:  # no capture-safe GEMM here: run uncaptured, say why
                self.no_graph = f"no capture-safe GEMM ({type(exc).__name__}: {exc})"

    def describe(self) -> str:
        """The compiler, whether it runs as a CUDA graph (or why not), then the declines."""
        graph = "CUDA graph" if self.no_graph is None else f"no CUDA graph: {self.no_graph}"
        return super().describe().replace(self.compiler, f"{self.compiler} ({graph})", 1)

    def _results(self, X):
        """The ring of loss and hit slots (an epoch of batches over ``X`` at least), and its
        counter on the device, allocated on the first call."""
        if self.losses is None:
            slots = max(MIN_RESULT_SLOTS, -(-X.shape[0] // self.plan.batch_size))
            self.losses = self.xp.empty((slots,), self.plan.precision.compute)
            self.hits = self.xp.zeros((slots,), np.int64)
            self.counter = self.xp.zeros((1,), np.int64)
        return self.losses, self.hits

    def __call__(self, X, T, labels, index):
        if self.plan.reduce is not None:
            return super().__call__(X, T, labels, index)  # gradients, all-reduce, update
        return self._run(X, T, labels, index, update=True)

    def gradients(self, X, T, labels, index):
        """The step without its update: (loss, hits) as :meth:`__call__` returns them."""
        return self._run(X, T, labels, index, update=False)

    def update(self) -> None:
        # Start the step on the device (step + 1, corrections), then update every parameter.
        update, backend = self.plan.update, self.plan.backend
        state = update.begin_step()
        rule = getattr(backend, f"{update.rule}_update")
        for param in update.params:
            rule(param.W, param.dW, state, *param.slots)

    def _run(self, X, T, labels, index, update: bool):
        """Copy the batch's rows into place, then run :meth:`_body` (as a graph where on)."""
        xp, plan, backend = self.xp, self.plan, self.plan.backend
        n = len(range(*index.indices(X.shape[0]))) if isinstance(index, slice) else len(index)
        if not 0 < n <= plan.batch_size:
            raise InputError(f"a batch of {n} rows; this step was built for "
                             f"1 to {plan.batch_size}")
        buffers = self.buffers.get(n)
        if buffers is None:
            buffers = self.buffers[n] = _Buffers(xp, plan, n)
        losses, hits = self._results(X)
        # The batch's row indices into this shape's fixed index buffer.
        if isinstance(index, slice):
            start, _, stride = index.indices(X.shape[0])
            xp.multiply(buffers.offsets, stride, out=buffers.rows)
            xp.add(buffers.rows, start, out=buffers.rows)
        else:
            buffers.rows[...] = index
        if self.graphs is not None:
            # One graph per batch shape, recorded for these data arrays and TF32 setting.
            tf32, gemm = backend.tf32_enabled(), self.graphs.gemm.gemm
            sources = (_address(X), X.shape, _address(T), T.shape, _address(labels), tf32)
            self.graphs.run(n, sources, lambda: self._body(X, T, labels, buffers, gemm, update),
                            tf32)
            if self.graphs.failure is not None:
                self.no_graph, self.graphs = self.graphs.failure, None
        else:
            self._body(X, T, labels, buffers, backend.gemm, update)
        slot = self.calls % losses.shape[0]
        self.calls += 1
        return (losses[slot:slot + 1].reshape(()),
                None if labels is None else hits[slot:slot + 1].reshape(()))

    def _body(self, X, T, labels, buffers, gemm, update: bool) -> None:
        """One step from the rows in ``buffers.rows``: launches only, on preallocated arrays.

        ``gemm`` is ``backend.gemm``, or the capture-safe GEMM while graphs are on;
        ``update`` False stops after the gradients (a data-parallel step's first part).
        """
        xp, plan, backend = self.xp, self.plan, self.plan.backend
        # The batch's rows, targets and labels, gathered into this shape's buffers.
        xp.take(X, buffers.rows, axis=0, out=buffers.X)
        xp.take(T, buffers.rows, axis=0, out=buffers.T)
        if labels is not None:
            xp.take(labels, buffers.rows, axis=0, out=buffers.labels)
        # Forward pass, layer by layer: A = f(A_below W + b), bias and activation fused
        # (in place, or beside Z = A_below W + b when the derivative needs Z).
        below = buffers.X
        for op, A, S in zip(plan.ops, buffers.A, buffers.S):
            gemm(below, op.W, out=S)
            backend.bias_activation(S, op.b, op.activation, out=None if S is A else A)
            below = A
        # Loss of the logits and its gradient (softmax - T) / n, one warp per row; the
        # batch's mean loss and hits into the result slot the device's counter names.
        logits, dZ = buffers.A[-1], buffers.dZ
        backend.softmax_cross_entropy_into(logits, buffers.T, dZ, buffers.row_losses)
        backend.store_step_result(logits, buffers.row_losses,
                                  None if labels is None else buffers.labels,
                                  self.losses, self.hits, self.counter)
        # Backward pass: each layer's dW = A_below^T dZ, db = column sums of dZ, and,
        # below the first layer, dA_below = dZ W^T through the activation below.
        for i in range(len(plan.ops) - 1, -1, -1):
            op = plan.ops[i]
            below = buffers.X if i == 0 else buffers.A[i - 1]
            gemm(below, dZ, trans_a=True, out=op.dW)
            backend.sum_rows(dZ, out=op.db)
            if i > 0:
                dA = buffers.dA[i]
                gemm(dZ, op.W, trans_b=True, out=dA)
                dZ = backend.backprop_activation(dA, buffers.S[i - 1],
                                                 plan.ops[i - 1].activation, out=dA)
        if update:
            self.update()


def graphs_off(backend) -> str | None:
    """Why ``backend`` runs device steps uncaptured (its ``cuda_graphs`` switch, then
    :data:`.graphs.GRAPHS_ENV`), or None when it records them as CUDA graphs."""
    if not getattr(backend, "cuda_graphs", False):
        return "turned off on the backend (cuda_graphs=False)"
    return graphs_turned_off()


def _address(array) -> int | None:
    """The device address of ``array`` (None for None): a recorded step reads from there."""
    return None if array is None else array.data.ptr


__all__ = ["DeviceStep", "DeviceStepCompiler", "MIN_RESULT_SLOTS", "graphs_off", "unsupported"]
