"""A whole MLP training step on the CPU, split across threads that each own a block of rows.

Why: on a multi-core CPU, a multi-threaded BLAS splits each matrix product
its own way, and the elementwise passes that follow (the optimizer step
above all) then read and write lines of the weights that another core
holds. On the 2-core development VM that made Adam's update of a 784x512
weight cost 0.43-0.51 ms instead of 0.17 ms (README, "Speed"). Here thread
``k`` owns rows ``K_k`` of every weight matrix ``W`` (a contiguous block of
memory) and alone reads, differentiates and updates them:

forward, layer ``l``
    thread ``k``: its input columns ``X[:, K_k]`` (the batch rows gathered,
    or ``f(sum_p Zp_below[p] + b_below)`` for those columns of the layer
    below), then ``Zp[k] = X[:, K_k] @ W[K_k]``, a partial pre-activation;
    after the last layer, over batch rows ``R_k``: logits, loss, ``dZ``.
backward, layer ``l``
    thread ``k``: ``dW[K_k] = X[:, K_k]^T dZ`` and, before its rows change,
    ``dX[:, K_k] = dZ W[K_k]^T``; ``dZ_below[:, K_k] = dX * f'(X[:, K_k])``
    with the bias gradient and step of those columns; then the optimizer
    step of ``W[K_k]``.

Matrix products are single-threaded BLAS calls (:func:`.blas.gemm`:
NumPy's OpenBLAS where it can be found, else ``np.dot``), one per thread and
layer, run with every BLAS limited to one thread (the step's context,
:meth:`.backend.NumbaBackend.step_context`, sets this). The arrays arrive as tuples, which Numba
unboxes in microseconds (a typed list took 13-24 us each, 0.2 ms a step),
so the step compiles once per dtype and number of layers, then is cached
on disk; a first run compiles it in a background process (:mod:`.background`).
The arithmetic is that of the backend's fused kernels; only the order of the
sums over ``K_k`` differs, so results agree with the NumPy backend within
float tolerance and depend on the number of threads.

Importing this module imports Numba.
"""

from __future__ import annotations

import time

import numba
import numpy as np
from numba import prange

from ...errors import InputError
from ...cpu_threads import chooser_for
from ...nn.plan import Declined, EagerStep, LinearOp, Step
from ...nn.update_rules import UPDATE_RULES
from ..base import KERNEL_DTYPES
from .background import CompileGate
from .blas import NUMPY_BLAS, gemm
from .kernels import (ACTIVATION_CODES, FUSED_RULES, JIT_OPTIONS, NEEDS_INPUT, RELU, activate,
                      derivative, jit, optimizer_step, softmax_cross_entropy_rows)

#: Most threads one step is split across.
MAX_PARTS = 8
#: Most per-parameter state slots an optimizer may use here (S1 and S2).
MAX_SLOTS = 2
#: A rule code no update rule has: :func:`train_step` computes the gradients and steps
#: nothing (the data-parallel split: the update waits for the all-reduce).
NO_UPDATE = -1

parallel_jit = numba.njit(**JIT_OPTIONS, parallel=True)


@jit
def _optimizer_step(code, W, dW, S1, S2, s):
    """One update of flat (P,) views; ``s`` is the optimizer's step state.

    S2 is also the third slot: an optimizer reaches here only with at most
    :data:`MAX_SLOTS` slots in use, so it reads at most two of them.
    """
    optimizer_step(code, W, dW, S1, S2, S2, s)


@jit
def _split(n, parts, k):
    """Start of part ``k`` when ``n`` items are split into ``parts`` near-equal blocks."""
    return n * k // parts


@parallel_jit
def train_step(X, T, labels, index, Ws, bs, dWs, dbs, S1, S2, bS1, bS2, activations,
               optimizer, s, Xp, Zp, Gs, Gp, logits, db_out, Tb, losses, hits, numpy_blas):
    """Forward, backward and optimizer step for one batch; returns (loss, hits).

    Thread ``k`` keeps, per layer, its columns ``K_k`` of the layer's input
    (``Xp``): the activations below it, computed by itself, so the gradient
    through them needs no other thread's data.

    Parameters
    ----------
    X : array (N, D0)
        The training inputs; ``index`` (n,) int64 picks the batch rows.
    T : array (N, C)
        Target distributions; ``labels`` (N,) int64 for counting hits, or empty.
    Ws, bs, dWs, dbs : tuples
        Per layer ``l``: ``W`` (D_l, D_{l+1}), ``b`` (D_{l+1},) and their gradients.
    S1, S2, bS1, bS2 : tuples
        Optimizer state of every W and b (momentum: S1 the velocity; Adam: S1
        the first and S2 the second moment; unused entries are placeholders).
    activations : array (L,) int64
        :data:`ACTIVATION_CODES`; the last layer's is 0 (logits).
    optimizer : int
        The update rule's code (:data:`gpubackprop.nn.update_rules.UPDATE_RULES`); ``s``
        is the optimizer's step state, already advanced for this step.
    Xp, Gp : tuples of (P, B * max |K_k|)
        Per thread and layer: its input columns, and the gradient for them.
    Zp : tuple of (P, B, D_{l+1})
        Per thread and layer: the partial pre-activation ``X[:, K_k] @ W[K_k]``.
    Gs : tuple of (B, D_{l+1})
        Gradients of the pre-activations.
    logits : (B, C); db_out : (P, C); Tb : (B, C)
        The outputs, the output bias gradient's per-thread sums, the batch's targets.
    losses, hits : (P,) float64 and int64
        Per-thread sums.
    numpy_blas : bool
        Products through NumPy's BLAS (:data:`.blas.NUMPY_BLAS`), else ``np.dot``.
    """
    n = index.shape[0]
    parts = losses.shape[0]
    depth = len(Ws)
    inv_n = X.dtype.type(1.0 / n)
    zero, one = X.dtype.type(0), X.dtype.type(1)
    for layer in range(depth):
        W, Z, Xl = Ws[layer], Zp[layer], Xp[layer]
        rows = W.shape[0]
        for k in prange(parts):
            lo, hi = _split(rows, parts, k), _split(rows, parts, k + 1)
            Xk = Xl[k, :n * (hi - lo)].reshape((n, hi - lo))
            if layer == 0:
                # This thread's columns of the batch, gathered from the training rows.
                for i in range(n):
                    _copy_row(X[index[i], lo:hi], Xk[i])
            else:
                # Its columns of the layer below's output: sum the partials, add the bias,
                # apply the activation.
                below, b, code = Zp[layer - 1], bs[layer - 1], activations[layer - 1]
                for i in range(n):
                    _pre_activation_row(below, b, i, lo, hi, Xk[i])
                    _activate_row(Xk[i], code, zero, one)
            # Partial pre-activation from this thread's rows of W.
            if hi > lo:
                gemm(Xk, W[lo:hi], Z[k, :n], False, False, numpy_blas)
            else:
                Z[k, :n] = 0
    last = depth - 1
    Z, b, G = Zp[last], bs[last], Gs[last]
    for k in prange(parts):
        r0, r1 = _split(n, parts, k), _split(n, parts, k + 1)
        # Logits of rows r0:r1, the loss, its gradient (softmax - T) / n, and the hits.
        for i in range(r0, r1):
            for j in range(logits.shape[1]):
                z = Z[0, i, j]
                for p in range(1, parts):
                    z += Z[p, i, j]
                logits[i, j] = z + b[j]
            Tb[i, :] = T[index[i]]
        losses[k] = softmax_cross_entropy_rows(logits, Tb, G, r0, r1, inv_n)
        count = 0
        if labels.shape[0] > 0:
            for i in range(r0, r1):
                count += np.argmax(logits[i]) == labels[index[i]]
        hits[k] = count
        _column_sums(G, r0, r1, 0, G.shape[1], db_out[k])
    for layer in range(depth - 1, -1, -1):
        W, dW, G, Xl = Ws[layer], dWs[layer], Gs[layer][:n], Xp[layer]
        rows = W.shape[0]
        for k in prange(parts):
            lo, hi = _split(rows, parts, k), _split(rows, parts, k + 1)
            if hi > lo:
                Xk = Xl[k, :n * (hi - lo)].reshape((n, hi - lo))
                # Weight gradient of this thread's rows: dW[K_k] = X[:, K_k]^T dZ.
                gemm(Xk, G, dW[lo:hi], True, False, numpy_blas)
                if layer > 0:
                    # Gradient for the input columns K_k, from the rows before they change,
                    # then through the activation that made them: dZ_below = dX * f'(Z),
                    # f' from the output X, or from the pre-activation Z (summed again,
                    # as in the forward pass; b is not stepped yet) where f' needs it.
                    dX = Gp[layer][k, :n * (hi - lo)].reshape((n, hi - lo))
                    gemm(G, W[lo:hi], dX, False, True, numpy_blas)
                    G_below, code = Gs[layer - 1], activations[layer - 1]
                    below, b = Zp[layer - 1], bs[layer - 1]
                    for i in range(n):
                        out = G_below[i, lo:hi]
                        if NEEDS_INPUT[code]:
                            # Z summed into the output row, then read back element by element.
                            _pre_activation_row(below, b, i, lo, hi, out)
                            _times_derivative(dX[i], out, out, code, zero, one)
                        else:
                            _times_derivative(dX[i], Xk[i], out, code, zero, one)
                    # The bias below: its gradient and step for columns K_k.
                    db = dbs[layer - 1]
                    _column_sums(G_below, 0, n, lo, hi, db[lo:hi])
                    _optimizer_step(optimizer, bs[layer - 1][lo:hi], db[lo:hi],
                                    bS1[layer - 1][lo:hi], bS2[layer - 1][lo:hi], s)
                # Optimizer step of this thread's rows of W.
                _optimizer_step(optimizer, W[lo:hi].ravel(), dW[lo:hi].ravel(),
                                S1[layer][lo:hi].ravel(), S2[layer][lo:hi].ravel(), s)
    # The output bias: its gradient from the per-thread sums, and its step.
    db = dbs[last]
    db[:] = db_out[0]
    for p in range(1, parts):
        db += db_out[p]
    _optimizer_step(optimizer, bs[last], db, bS1[last], bS2[last], s)
    return losses.sum() / n, hits.sum()


@jit
def _copy_row(source, out):
    """``out[:] = source``, both (w,)."""
    for j in range(out.shape[0]):
        out[j] = source[j]


@jit
def _pre_activation_row(Zp, b, i, lo, hi, out):
    """``out = sum_p Zp[p, i, lo:hi] + b[lo:hi]``: the partials of all threads, then the bias.

    Row views indexed from 0, one pass per term, so the loops vectorize.
    """
    _copy_row(Zp[0, i, lo:hi], out)
    for p in range(1, Zp.shape[0]):
        partial = Zp[p, i, lo:hi]
        for j in range(out.shape[0]):
            out[j] += partial[j]
    bias = b[lo:hi]
    for j in range(out.shape[0]):
        out[j] += bias[j]


@jit
def _activate_row(row, code, zero, one):
    """``row = f(row)`` in place, (w,); ReLU's loop has its code constant, so it vectorizes."""
    if code == RELU:
        for j in range(row.shape[0]):
            row[j] = activate(row[j], RELU, zero, one)
    else:
        for j in range(row.shape[0]):
            row[j] = activate(row[j], code, zero, one)


@jit
def _times_derivative(dX, saved, out, code, zero, one):
    """``out = dX * f'(saved)`` (:func:`.kernels.derivative`), all (w,); ``out`` may be
    ``saved``."""
    for j in range(out.shape[0]):
        out[j] = dX[j] * derivative(saved[j], code, zero, one)


@jit
def _column_sums(G, r0, r1, c0, c1, out):
    """``out = G[r0:r1, c0:c1].sum(axis=0)``."""
    out[:] = 0
    for i in range(r0, r1):
        row = G[i, c0:c1]
        for j in range(out.shape[0]):
            out[j] += row[j]


def unsupported(plan) -> str | None:
    """Why :class:`ParallelMLPStep` cannot run this plan, or None when it can."""
    if plan.sequence_outputs:
        return "the outputs are sequences (N, T, K): per-step targets and masks run eagerly"
    for op in plan.ops:
        if not isinstance(op, LinearOp):
            return f"layer {op.name} is a {op.kind}, not Linear"
        if op.activation not in ACTIVATION_CODES:
            return f"layer {op.name}'s activation {op.activation!r} has no Numba code"
    if plan.ops[-1].activation != "identity":
        return "the output layer has an activation (cross-entropy takes logits)"
    if plan.loss.name != "cross_entropy":
        return f"the loss is {plan.loss.name}, not cross_entropy"
    update = plan.update
    if update.rule not in FUSED_RULES:
        return f"no fused loop for the {update.rule} update rule"
    used = [role for role in update.slot_roles if role is not None]
    if len(used) > MAX_SLOTS:
        return (f"the {update.name} optimizer uses {len(used)} state slots per parameter "
                f"({', '.join(used)}); this step holds {MAX_SLOTS}")
    if update.clip_norm is not None:
        return "gradient clipping needs every gradient before any step"
    precision = plan.precision
    if not precision.is_uniform or precision.param not in KERNEL_DTYPES:
        return f"precision {precision} is not one of the kernels' dtypes in every role"
    for param in update.params:
        if not all(A.flags.c_contiguous for A in (param.W, param.dW, *param.slots)
                   if A is not None):
            return f"parameter {param.name}, its gradient or its state is not C-contiguous"
    return None


class WholeStepCompiler:
    """The step compiler of the fused CPU backend: plans :func:`unsupported` accepts.

    Parameters
    ----------
    parts : int, optional
        Threads each step is split across (see :class:`ParallelMLPStep`).
    """

    name = "numba-whole-step"

    def __init__(self, parts: int | None = None):
        self.parts = parts

    def compile(self, plan) -> "ParallelMLPStep | Declined":
        reason = unsupported(plan)
        if reason is not None:
            return Declined(reason)
        return ParallelMLPStep(plan, self.parts)


class ParallelMLPStep(Step):
    """A plan of Linear ops, cross-entropy and a fused optimizer, run by :func:`train_step`.

    With a ``plan.reduce`` (data parallel) the step is split: :func:`train_step`
    with :data:`NO_UPDATE` fills the gradients, the base class all-reduces
    them, and the optimizer's own step (the backend's update kernels, one
    parameter after another) updates. That costs the fused update's locality
    (each thread stepping the rows it has just differentiated) and one more
    pass over the parameters; the host all-reduce cannot run inside the
    compiled function.

    Use as a context: inside it every BLAS library runs single-threaded (the
    parallelism is this class's), and ``step(X, T, labels, index)`` trains one
    batch. When :func:`train_step` is neither compiled in this process nor in
    Numba's disk cache for the call's types (a first run), the batches run on
    the eager path (:class:`~gpubackprop.nn.plan.EagerStep`) while another
    process compiles it (:mod:`.background`); data-parallel plans, and every
    plan under ``GPUBACKPROP_BACKGROUND_COMPILE=0``, compile before their
    first batch instead. It holds the plan's arrays (parameters, gradients, optimizer
    slots): compile a new step when the optimizer's state arrays are replaced
    (a checkpoint loaded into it).

    Parameters
    ----------
    plan : StepPlan
        One that :func:`unsupported` accepts; ``plan.batch_size`` is the
        largest batch it will be given.
    parts : int, optional
        Blocks to split across; Numba's thread count (at most :data:`MAX_PARTS`)
        by default. Fixed for the step, so results do not depend on how many
        threads run them: :func:`~gpubackprop.cpu_threads.chooser_for` picks
        one thread or ``parts`` per step, whichever it measures faster.
    """

    compiler = WholeStepCompiler.name
    split_note = ", split: the whole step's gradients, then the optimizer's update"

    def __init__(self, plan, parts: int | None = None):
        super().__init__(plan)
        self.parts = parts or min(numba.get_num_threads(), MAX_PARTS)
        self.batch_size = plan.batch_size
        dtype, P, B = plan.precision.compute, self.parts, plan.batch_size
        update = plan.update
        self.Ws = tuple(op.W for op in plan.ops)
        self.bs = tuple(op.b for op in plan.ops)
        self.dWs = tuple(op.dW for op in plan.ops)
        self.dbs = tuple(op.db for op in plan.ops)
        # The optimizer's slots in use, the gradient standing in for the rest.
        fill = lambda W, dW: (*(S for S in update.slots_of(W) if S is not None),  # noqa: E731
                              dW, dW)[:MAX_SLOTS]
        self.S1, self.S2 = zip(*(fill(op.W, op.dW) for op in plan.ops))
        self.bS1, self.bS2 = zip(*(fill(op.b, op.db) for op in plan.ops))
        self.activations = np.array([ACTIVATION_CODES[op.activation] for op in plan.ops],
                                    dtype=np.int64)
        self.code = UPDATE_RULES[update.rule].code
        # The step state train_step reads under NO_UPDATE (never: nothing is stepped).
        self._no_state = np.zeros(len(UPDATE_RULES[update.rule].layout), np.float64)
        widths = [W.shape[0] for W in self.Ws]
        outputs = [W.shape[1] for W in self.Ws]
        block = lambda d: B * -(-d // P)  # noqa: E731  (rows of the widest part, times B)
        self.Xp = tuple(np.empty((P, block(d)), dtype) for d in widths)
        self.Gp = tuple(np.empty((P, block(d)), dtype) for d in widths)
        self.Zp = tuple(np.empty((P, B, d), dtype) for d in outputs)
        self.Gs = tuple(np.empty((B, d), dtype) for d in outputs)
        self.logits, self.Tb = np.empty((B, outputs[-1]), dtype), np.empty((B, outputs[-1]), dtype)
        self.db_out = np.empty((P, outputs[-1]), dtype)
        self.losses, self.hits = np.zeros(P, np.float64), np.zeros(P, np.int64)
        self.no_labels = np.empty(0, np.int64)
        #: Batches run on the eager path while :func:`train_step` compiled in the background.
        self.eager_batches = 0
        self._eager = None
        self._gate = CompileGate(train_step)
        #: Picks one thread or ``parts`` per step from measured steps (None: fixed).
        self.chooser = chooser_for((tuple(W.shape for W in self.Ws), B, str(dtype)),
                                   min(P, numba.config.NUMBA_NUM_THREADS))

    def describe(self) -> str:
        text = super().describe()
        if self.eager_batches:
            text += (f"; its first {self.eager_batches} batches ran on the eager path while "
                     f"it compiled in a background process")
        return text

    def __call__(self, X, T, labels, index):
        """Train one batch; returns (loss, hits) as a float and an int.

        Parameters
        ----------
        X : array (N, D0), T : array (N, C)
            The whole training set and its targets, C-contiguous, the model's dtype.
        labels : array (N,) int64 or None
        index : array (n,) int64 or slice
            The batch's rows.
        """
        if self.plan.reduce is not None:
            return super().__call__(X, T, labels, index)
        if not self._gate(lambda: self._arguments(X, T, labels, self._indices(X, index),
                                                  NO_UPDATE, self._no_state)):
            # A first run: this batch on the eager path while train_step compiles elsewhere.
            self.eager_batches += 1
            if self._eager is None:
                self._eager = EagerStep(self.plan)
            with self.plan.backend.unsplit_products():
                return self._eager(X, T, labels, index)
        return self._run(X, T, labels, index, self.code, self.plan.update.begin_step())

    def gradients(self, X, T, labels, index):
        """The batch's gradients, loss and hits; no parameter changes."""
        return self._run(X, T, labels, index, NO_UPDATE, self._no_state)

    def update(self) -> None:
        self.plan.update.apply()

    def _run(self, X, T, labels, index, code: int, state):
        """:func:`train_step` with update rule ``code`` and step state ``state``."""
        index = self._indices(X, index)
        # The chooser's thread count runs the same parts (same arithmetic), one thread or all.
        threads = self.chooser.threads() if self.chooser is not None else None
        previous = numba.get_num_threads()
        if threads is not None and threads != previous:
            numba.set_num_threads(threads)
        try:
            started = time.perf_counter()
            loss, hits = train_step(*self._arguments(X, T, labels, index, code, state))
            if threads is not None:
                self.chooser.record(threads, time.perf_counter() - started)
        finally:
            if numba.get_num_threads() != previous:
                numba.set_num_threads(previous)
        return float(loss), int(hits)

    def _indices(self, X, index):
        """The batch's rows as an int64 array of 1 to ``batch_size`` entries."""
        if isinstance(index, slice):
            index = np.arange(*index.indices(X.shape[0]), dtype=np.int64)
        if not 0 < len(index) <= self.batch_size:
            raise InputError(f"a batch of {len(index)} rows; this step was built for "
                             f"1 to {self.batch_size}")
        return index

    def _arguments(self, X, T, labels, index, code: int, state) -> tuple:
        """:func:`train_step`'s arguments for one batch."""
        return (X, T, self.no_labels if labels is None else labels, index, self.Ws, self.bs,
                self.dWs, self.dbs, self.S1, self.S2, self.bS1, self.bS2, self.activations,
                code, state, self.Xp, self.Zp, self.Gs, self.Gp, self.logits,
                self.db_out, self.Tb, self.losses, self.hits, NUMPY_BLAS)


__all__ = ["MAX_PARTS", "NO_UPDATE", "ParallelMLPStep", "WholeStepCompiler", "train_step",
           "unsupported"]
