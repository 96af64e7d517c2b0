"""A training step as plain data, and the compilers that turn it into something to run.

:meth:`gpubackprop.nn.model.Sequential.compile_step` asks each layer, the loss
and the optimizer to describe its part of one step (``plan_ops``,
``plan_op``, ``plan_update``) and gets a :class:`StepPlan`:

    ops     = (LinearOp(W, b, dW, db, "relu"), ..., LayerOp("RNN"))   forward order
    loss    = LossOp("cross_entropy", {})
    update  = UpdateOp("adam", rule "adam", settings, per-parameter slots, step state, clip)

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

from .precision import Precision

#: The name of the eager interpreter, as a Step reports its compiler.
EAGER = "eager"


@dataclass(frozen=True)
class Declined:
    """A compiler's answer when it cannot take a plan: why, in one sentence."""

    reason: str


# ---------------------------------------------------------------------- ops
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
    """

    ops: tuple
    loss: LossOp
    update: UpdateOp
    batch_size: int
    precision: Precision
    backend: Any
    input_shape: tuple
    output_shape: tuple

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

    def __init__(self, plan: StepPlan):
        self.plan = plan
        self.declined: tuple = ()

    def __call__(self, X, T, labels, index):
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def describe(self) -> str:
        """``"<compiler>"``, then why each earlier compiler declined."""
        text = self.compiler
        for name, reason in self.declined:
            text += f"; {name} declined: {reason}"
        return text


class EagerStep(Step):
    """The interpreter of a plan: each layer's forward, the loss, each backward, the update."""

    def __call__(self, X, T, labels, index, mask=None):
        plan = self.plan
        backend = plan.backend
        X, T = X[index], T[index]
        # Forward pass: outputs of the mini-batch, caching what backward needs.
        Y = X
        for op in plan.ops:
            Y = op.layer.forward(Y, train=True)
        # Loss and its gradient with respect to the outputs (masked steps: exactly zero).
        if mask is None:
            loss, dY = plan.loss.loss(backend, Y, T)
        else:
            loss, dY = plan.loss.loss.masked(backend, Y, T, mask[index])
        # Backward pass: every layer's parameter gradients (stops where no dX is needed).
        for op in reversed(plan.ops):
            dY = op.layer.backward(dY)
            if dY is None:
                break
        # Update: one optimizer step over all parameters.
        plan.update.apply()
        return plan.loss.loss.readable(loss, Y), count_hits(backend, Y, labels, index, mask)


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
           "Step", "StepPlan", "UpdateOp", "compile_plan", "count_hits"]
