"""A training step as plain data, and the compilers that turn it into something to run.

:meth:`gpubackprop.nn.model.Sequential.compile_step` asks each layer, the loss
and the optimizer to describe its part of one step (``plan_ops``,
``plan_op``, ``plan_update``) and gets a :class:`StepPlan`:

    ops     = (LinearOp(W, b, dW, db, "relu"), ..., LayerOp("RNN"))   forward order
    loss    = LossOp("cross_entropy", {})
    update  = UpdateOp("adam", rule "adam", settings, per-parameter slots, step state, clip)
    reduce  = ReduceOp(communicator, fused gradient buffer) or None   data parallel only

Then each step compiler of the model's backend (``Backend.step_compilers``,
in order) either accepts the plan, returning a :class:`Step`, or declines it
with a :class:`Declined` reason; a compiler that raises is caught and counts
as a decline naming the exception. :class:`EagerStep`, the interpreter of the
plan (each layer's forward, the loss, each layer's backward, the optimizer's
step: the reference path), runs whatever no compiler took.

Compilers read arrays, registry names and numbers from the plan, never the
objects behind them: this module imports nothing from the layers, losses,
optimizers, models or the trainer, so backends import it without reaching
back up. The ``layer``, ``loss`` and ``apply`` fields are the eager
interpreter's handles on those objects; a compiler must not use them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import InputError
from .precision import Precision

#: Why a mask and data-parallel training do not go together (the Trainer says it too).
NO_MASK_IN_DATA_PARALLEL = ("data-parallel training takes no mask: each rank's loss is a mean "
                            "over its rows, not over the steps a mask selects")
#: The name of the eager interpreter, as a Step reports its compiler.
EAGER = "eager"


@dataclass(frozen=True)
class Declined:
    """A compiler's answer when it cannot take a plan: why, in one sentence."""

    reason: str


# ---------------------------------------------------------------------- ops
def block(total: int, parts: int, part: int) -> tuple[int, int]:
    """``(start, stop)`` of block ``part`` when ``total`` items are split into ``parts``
    contiguous blocks whose sizes differ by at most one."""
    return total * part // parts, total * (part + 1) // parts


@dataclass(frozen=True, eq=False)
class LinearOp:
    """``Y = f(X W + b)``: a Linear layer with its fused activation.

    Attributes
    ----------
    name : str
        Where it sits in the model (the layer's index), for messages.
    W, dW : arrays (D_in, D_out)
    b, db : arrays (D_out,)
    activation : str
        An activation's registry name.
    layer : object
        The eager interpreter's handle (compilers never use it).
    """

    name: str
    W: Any
    b: Any
    dW: Any
    db: Any
    activation: str
    layer: Any = field(repr=False)


@dataclass(frozen=True, eq=False)
class LayerOp:
    """A layer no compiler needs to know: only the eager interpreter runs it.

    Attributes
    ----------
    name : str
        Its index in the model.
    kind : str
        Its class name, for decline reasons ("RNN", "ReLU", ...).
    layer : object
        The layer, run through its own ``forward`` and ``backward``.
    """

    name: str
    kind: str
    layer: Any = field(repr=False)


@dataclass(frozen=True, eq=False)
class LossOp:
    """The loss on the last op's output.

    Attributes
    ----------
    name : str
        The loss's registry name ("cross_entropy", "mse"), or a description
        no compiler matches for a class that is not registered.
    options : dict
        Its settings (``{"reduction": "sum"}`` for a summed MSE).
    loss : object
        The eager interpreter's handle: ``loss(backend, Y, T) -> (loss, dY)``
        and ``loss.readable(loss, Y)``.
    """

    name: str
    options: dict
    loss: Any = field(repr=False)


@dataclass(frozen=True, eq=False)
class ParamSlots:
    """One parameter, its gradient and its optimizer state arrays (shaped like ``W``)."""

    name: str
    W: Any
    dW: Any
    slots: tuple


@dataclass(frozen=True, eq=False)
class UpdateOp:
    """The optimizer's step over every parameter.

    Attributes
    ----------
    name : str
        The optimizer's registry name ("adam"), or a description no compiler
        matches for a class that is not registered.
    rule : str
        The family of formulas the update runs ("adam" also for AdamW).
    settings : dict
        Hyperparameters fixed for the run (momentum, betas, eps, ...).
    params : tuple of ParamSlots
        Every parameter of the model, in the model's order.
    slot_roles : tuple of str or None
        What each of a parameter's slots holds ("m", "v", ...), None for a slot
        these settings leave unused (its array is None too).
    clip_norm : float or None
        Global-norm clipping of all gradients before any update.
    begin_step : callable
        ``begin_step()`` starts one step (step count + 1) and returns the step
        state the update kernels read: what changes from step to step (the
        learning rate a schedule sets, the step count, bias corrections).
    apply : callable
        The eager interpreter's handle: one whole optimizer step.
    """

    name: str
    rule: str
    settings: dict
    params: tuple
    slot_roles: tuple
    clip_norm: float | None
    begin_step: Callable[[], Any] = field(repr=False)
    apply: Callable[[], None] = field(repr=False)

    def slots_of(self, W) -> tuple:
        """The state arrays of the parameter array ``W`` (matched by identity)."""
        for param in self.params:
            if param.W is W:
                return param.slots
        raise KeyError(f"no parameter of the plan is this array {getattr(W, 'shape', '')}")


@dataclass(frozen=True, eq=False)
class ReduceOp:
    """Data parallelism: the gradients summed over every rank, after backward, before update.

    Each rank trains on its block of the global batch (:meth:`shard`), then
    :meth:`combine` scales its gradients by its share of the batch's rows
    (for a loss whose gradient is a batch mean), sums them with every other
    rank's in one call on one buffer, and returns the global batch's loss and
    hits, so every rank updates with the gradient one process would have.

    Attributes
    ----------
    communicator : object
        ``rank``, ``size`` and ``allreduce_sum(buffer)``, which sums a
        contiguous 1-D array of the plan's backend in place over all ranks
        (:mod:`gpubackprop.distributed`).
    buffer : array (size + 2,)
        Every parameter's gradient (the plan's ``dW`` arrays are views of its
        first ``size`` entries), then the batch's loss and hit count.
    size : int
        Gradient entries in ``buffer``.
    mean : bool
        The loss's gradient is a mean over the batch's rows (cross-entropy,
        MSE with ``reduction="mean"``), so each rank's is weighted by its
        rows / the batch's rows; else it is a sum, added as it is.
    """

    communicator: Any
    buffer: Any
    size: int
    mean: bool

    def shard(self, index, n: int) -> tuple:
        """This rank's rows of the global batch ``index`` into ``n`` rows of data.

        Returns
        -------
        (rows, count, total)
            ``rows`` indexes this rank's contiguous block of the batch (a
            slice for a slice), ``count`` its length (0 when the batch has
            fewer rows than there are ranks), ``total`` the batch's length.
        """
        comm = self.communicator
        if isinstance(index, slice):
            start, stop, step = index.indices(n)
            total = len(range(start, stop, step))
            lo, hi = block(total, comm.size, comm.rank)
            return slice(start + lo * step, start + hi * step, step), hi - lo, total
        total = len(index)
        lo, hi = block(total, comm.size, comm.rank)
        return index[lo:hi], hi - lo, total

    def combine(self, loss, hits, count: int, total: int) -> tuple:
        """Sum this rank's gradients, loss and hits with every rank's; returns (loss, hits).

        ``loss`` is the rank's readable (mean) loss over its ``count`` rows
        (ignored when ``count`` is 0: its gradients are zeroed), ``hits`` its
        correct predictions or None. The global loss and hits come back as
        0-d arrays of the buffer's dtype, copies that stay valid.
        """
        buffer, size = self.buffer, self.size
        weight = count / total
        gradients = buffer[:size]
        if count == 0:
            gradients[...] = 0
        elif self.mean:
            gradients *= weight
        buffer[size] = loss * weight if count else 0
        buffer[size + 1] = 0 if hits is None or not count else hits
        # One all-reduce of every gradient (and the two figures) over all ranks.
        self.communicator.allreduce_sum(buffer)
        figures = buffer[size:].copy()
        return figures[0], None if hits is None else figures[1]


@dataclass(frozen=True, eq=False)
class StepPlan:
    """One training step, as data.

    Attributes
    ----------
    ops : tuple of LinearOp or LayerOp
        The model's layers in forward order.
    loss : LossOp
    update : UpdateOp
    batch_size : int
        The largest batch the step will be given.
    precision : Precision
    backend : Backend
        Where every array of the plan lives.
    input_shape : tuple
        One sample's shape (no batch axis; None for a variable length).
    output_shape : tuple
        One sample's output shape: ``(K,)``, or ``(None, K)`` for a sequence
        output (one prediction per time step, with an optional mask).
    reduce : ReduceOp or None
        Data-parallel training: the all-reduce between backward and update;
        ``batch_size`` is then the largest block of a global batch one rank takes.
    """

    ops: tuple
    loss: LossOp
    update: UpdateOp
    batch_size: int
    precision: Precision
    backend: Any
    input_shape: tuple
    output_shape: tuple
    reduce: ReduceOp | None = None

    @property
    def sequence_outputs(self) -> bool:
        """Whether the model predicts at every time step: outputs (N, T, K)."""
        return len(self.output_shape) > 1


# --------------------------------------------------------------------- steps
class Step:
    """A compiled training step: ``step(X, T, labels, index) -> (loss, hits)``.

    ``X`` (N, ...) and ``T`` (N, K) are the whole training set on the backend,
    ``labels`` (N,) int64 or None, ``index`` the batch's rows (an int64
    array or a slice). ``loss`` is the batch's readable loss and ``hits`` its
    count of correct predictions (None without labels); either may stay on
    the device. Use the step as a context around a run of calls (a compiled
    step may set up threads or streams there).

    A call is :meth:`gradients` then :meth:`update`; with a ``plan.reduce``
    (data parallel), ``index`` is the global batch: the rank's gradients are
    computed on its block of it and summed over all ranks in between. A
    compiler that fuses the update into the backward pass keeps its own
    ``__call__`` for plans without ``reduce``.

    A plan with sequence outputs (:attr:`StepPlan.sequence_outputs`) has ``T``
    (N, T, K) and ``labels`` (N, T), and may be called with a fifth argument,
    ``mask`` (N, T) of 0/1 in the model's dtype: the loss is then the mean over
    the selected steps and ``hits`` counts only those. Only the
    :class:`EagerStep` takes such plans (compilers decline them).

    Attributes
    ----------
    compiler : str
        The name of the compiler that built it (:data:`EAGER` for the interpreter).
    declined : tuple of (str, str)
        ``(compiler name, reason)`` of every compiler that declined the plan first.
    """

    compiler = EAGER
    #: What a data-parallel plan's step gives up, for :meth:`describe` (empty: nothing).
    split_note = ""

    def __init__(self, plan: StepPlan):
        self.plan = plan
        self.declined: tuple = ()

    def __call__(self, X, T, labels, index, mask=None):
        reduce = self.plan.reduce
        if reduce is None:
            # The mask travels only when there is one: compiled steps take four arguments.
            result = self.gradients(X, T, labels, index, *(() if mask is None else (mask,)))
            self.update()
            return result
        if mask is not None:
            raise InputError(NO_MASK_IN_DATA_PARALLEL)
        rows, count, total = reduce.shard(index, X.shape[0])
        loss, hits = self.gradients(X, T, labels, rows) if count else \
            (0.0, None if labels is None else 0)
        # Between backward and update: every rank's gradients summed (data parallel).
        loss, hits = reduce.combine(loss, hits, count, total)
        self.update()
        return loss, hits

    def gradients(self, X, T, labels, index):
        """Forward, loss and backward of the batch ``index``: fills the gradients,
        returns (loss, hits) as :meth:`__call__` does."""
        raise NotImplementedError

    def update(self) -> None:
        """The optimizer's step over every parameter from the gradients."""
        raise NotImplementedError

    def __enter__(self):
        # The backend's settings for a run of steps (the fused CPU backend: one BLAS thread).
        self._context = self.plan.backend.step_context()
        self._context.__enter__()
        return self

    def __exit__(self, *exc):
        context, self._context = getattr(self, "_context", None), None
        return False if context is None else context.__exit__(*exc)

    def describe(self) -> str:
        """``"<compiler>"``, its all-reduce if any, then why each earlier compiler declined."""
        text = self.compiler
        reduce = self.plan.reduce
        if reduce is not None:
            text += (f" with an all-reduce of {reduce.size} gradients in one buffer over "
                     f"{reduce.communicator.size} ranks ({reduce.communicator.name})"
                     f"{self.split_note}")
        for name, reason in self.declined:
            text += f"; {name} declined: {reason}"
        return text


class EagerStep(Step):
    """The interpreter of a plan: each layer's forward, the loss, each backward, the update."""

    def gradients(self, X, T, labels, index, mask=None):
        return self.batch_gradients(X[index], T[index],
                                    None if labels is None else labels[index],
                                    None if mask is None else mask[index])

    def batch_gradients(self, X, T, labels, mask=None):
        """:meth:`gradients` of a gathered batch: ``X`` (n, ...), ``T`` (n, ...), ``labels``
        (n, ...) or None, ``mask`` (n, T) or None."""
        plan = self.plan
        backend = plan.backend
        # Forward pass: outputs of the mini-batch, caching what backward needs.
        Y = X
        for op in plan.ops:
            Y = op.layer.forward(Y, train=True)
        # Loss and its gradient with respect to the outputs (masked steps: exactly zero).
        if mask is None:
            loss, dY = plan.loss.loss(backend, Y, T)
        else:
            loss, dY = plan.loss.loss.masked(backend, Y, T, mask)
        # Backward pass: every layer's parameter gradients (stops where no dX is needed).
        for op in reversed(plan.ops):
            dY = op.layer.backward(dY)
            if dY is None:
                break
        return (plan.loss.loss.readable(loss, Y),
                count_hits(backend, Y, labels, slice(None), mask))

    def update(self) -> None:
        # Update: one optimizer step over all parameters.
        self.plan.update.apply()

    def training_buffers(self) -> list:
        """Every array the plan's layers reuse from one training pass to the next."""
        return [A for op in self.plan.ops for A in op.layer.training_buffers()]


def count_hits(backend, Y, labels, index, mask=None):
    """Correct predictions among a batch's outputs ``Y``, a 0-d array; None without labels.

    ``Y`` (n, K) or (n, T, K) against ``labels[index]`` (n,) or (n, T); with
    ``mask`` (the whole set's (N, T)), only the steps it selects count.
    """
    if labels is None:
        return None
    hits = backend.argmax_rows(Y) == labels[index]
    if mask is not None:
        hits &= mask[index] > 0
    return hits.sum()


def compile_plan(plan: StepPlan, compilers=None) -> Step:
    """The first compiler's step that accepts ``plan``, else the :class:`EagerStep`.

    Parameters
    ----------
    plan : StepPlan
    compilers : sequence, optional
        Objects with a ``name`` and ``compile(plan) -> Step | Declined``;
        ``plan.backend.step_compilers`` when omitted.
    """
    compilers = plan.backend.step_compilers if compilers is None else compilers
    declined = []
    for compiler in compilers:
        try:
            answer = compiler.compile(plan)
        except Exception as exc:  # a compiler must decline, never break training
            answer = Declined(f"raised {type(exc).__name__}: {exc}")
        if isinstance(answer, Declined):
            declined.append((compiler.name, answer.reason))
            continue
        answer.declined = tuple(declined)
        return answer
    step = EagerStep(plan)
    step.declined = tuple(declined)
    return step


__all__ = ["Declined", "EAGER", "EagerStep", "LayerOp", "LinearOp", "LossOp", "ParamSlots",
           "ReduceOp", "Step", "StepPlan", "UpdateOp", "block", "compile_plan", "count_hits"]
