"""The CuPy backend's step compiler: a whole MLP step on preallocated device buffers.

:class:`DeviceStepCompiler` takes plans of Linear ops trained with softmax
cross-entropy and an optimizer whose update has a CUDA kernel, and returns a
:class:`DeviceStep`. After its first call for a batch shape, a call performs
no allocation and no copy between host and device: every array it writes
was allocated on that first call, per batch shape,

- the gathered batch rows, targets and labels (``xp.take(..., out=)``),
- every layer's output and the gradient flowing into it,
- the loss's gradient and per-row losses, the predicted classes and hits,

plus one ring of per-step loss and hit slots shared by all shapes, which the
Trainer stacks once per epoch. Every scalar that changes from step to step
(learning rate, step count, Adam's corrections) is read by the update kernels
from the optimizer's step state on the device (``plan.update.begin_step``),
so a schedule's write of the learning rate needs no step of its own.

Capture as a CUDA graph (not done here; what it would still need):

- GEMMs that may run during stream capture: CuPy refuses cuBLAS calls while
  a stream captures (``cublas.setStream`` raises, cupy#6290), so either GEMM
  kernels of our own, one graph per segment between GEMMs, or a capture-safe
  GEMM library;
- the batch's row indices copied into a fixed device buffer first (a graph
  records pointers, and ``index`` is a new view every step);
- the result slot chosen on the device (a counter in device memory), not by
  the host as :attr:`DeviceStep.calls` is here;
- one graph per batch shape: the row count and ``1 / n`` are launch arguments.

This module imports no CuPy: it works through ``plan.backend`` (its ``xp``,
its kernels), so the emulated backend runs it unchanged.
"""

from __future__ import annotations

import numpy as np

from ...errors import InputError
from ...nn.activations import ACTIVATIONS
from ...nn.plan import Declined, LinearOp, Step
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
    X : (n, D0); T : (n, C); labels, predicted : (n,) int64; correct : (n,) bool
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
        self.X = xp.empty((n, ops[0].W.shape[0]), dtype)
        self.T = xp.empty((n, classes), dtype)
        self.labels = xp.empty((n,), np.int64)
        self.predicted = xp.empty((n,), np.int64)
        self.correct = xp.empty((n,), np.bool_)
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
    of :attr:`slots` results, valid until as many later calls have run.

    Attributes
    ----------
    calls : int
        Steps taken; the next result goes to slot ``calls % slots``.
    """

    compiler = DeviceStepCompiler.name

    def __init__(self, plan):
        super().__init__(plan)
        self.xp = plan.backend.xp
        self.buffers: dict = {}
        self.losses = self.hits = None
        self.calls = 0

    def _results(self, X):
        """The ring of loss and hit slots: at least one epoch of batches over ``X``."""
        if self.losses is None:
            slots = max(MIN_RESULT_SLOTS, -(-X.shape[0] // self.plan.batch_size))
            self.losses = self.xp.empty((slots,), self.plan.precision.compute)
            self.hits = self.xp.zeros((slots,), np.int64)
        return self.losses, self.hits

    def __call__(self, X, T, labels, index):
        xp, plan, backend = self.xp, self.plan, self.plan.backend
        n = len(range(*index.indices(X.shape[0]))) if isinstance(index, slice) else len(index)
        if not 0 < n <= plan.batch_size:
            raise InputError(f"a batch of {n} rows; this step was built for "
                             f"1 to {plan.batch_size}")
        buffers = self.buffers.get(n)
        if buffers is None:
            buffers = self.buffers[n] = _Buffers(xp, plan, n)
        losses, hits = self._results(X)
        slot = self.calls % losses.shape[0]
        self.calls += 1
        loss, hit = losses[slot:slot + 1], hits[slot:slot + 1]
        # The batch's rows, targets and labels, gathered into this shape's buffers.
        self._gather(X, index, buffers.X)
        self._gather(T, index, buffers.T)
        if labels is not None:
            self._gather(labels, index, buffers.labels)
        # Forward pass, layer by layer: A = f(A_below W + b), bias and activation fused
        # (in place, or beside Z = A_below W + b when the derivative needs Z).
        below = buffers.X
        for op, A, S in zip(plan.ops, buffers.A, buffers.S):
            backend.gemm(below, op.W, out=S)
            backend.bias_activation(S, op.b, op.activation, out=None if S is A else A)
            below = A
        # Loss of the logits and its gradient (softmax - T) / n, one warp per row.
        logits, dZ = buffers.A[-1], buffers.dZ
        backend.softmax_cross_entropy_into(logits, buffers.T, dZ, buffers.row_losses)
        xp.sum(buffers.row_losses, keepdims=True, out=loss)
        xp.divide(loss, loss.dtype.type(n), out=loss)
        if labels is not None:
            xp.argmax(logits, axis=1, out=buffers.predicted)
            xp.equal(buffers.predicted, buffers.labels, out=buffers.correct)
            xp.sum(buffers.correct, keepdims=True, out=hit)
        # Backward pass: each layer's dW = A_below^T dZ, db = column sums of dZ, and,
        # below the first layer, dA_below = dZ W^T through the activation below.
        for i in range(len(plan.ops) - 1, -1, -1):
            op = plan.ops[i]
            below = buffers.X if i == 0 else buffers.A[i - 1]
            backend.gemm(below, dZ, trans_a=True, out=op.dW)
            backend.sum_rows(dZ, out=op.db)
            if i > 0:
                dA = buffers.dA[i]
                backend.gemm(dZ, op.W, trans_b=True, out=dA)
                dZ = backend.backprop_activation(dA, buffers.S[i - 1],
                                                 plan.ops[i - 1].activation, out=dA)
        # Update: start the step on the device (step + 1, corrections), then every parameter.
        update = plan.update
        state = update.begin_step()
        rule = getattr(backend, f"{update.rule}_update")
        for param in update.params:
            rule(param.W, param.dW, state, *param.slots)
        return loss.reshape(()), (None if labels is None else hit.reshape(()))

    def _gather(self, source, index, out) -> None:
        """``out = source[index]`` without a new array."""
        if isinstance(index, slice):
            out[...] = source[index]
        else:
            self.xp.take(source, index, axis=0, out=out)


__all__ = ["DeviceStep", "DeviceStepCompiler", "MIN_RESULT_SLOTS", "unsupported"]
