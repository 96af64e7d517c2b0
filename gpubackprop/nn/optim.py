"""Optimizers: one registry of update rules, and the optimizer objects built from it.

The registry (:data:`UPDATE_RULES`, :data:`SPECS`) is plain data that backends
import without importing layers or the trainer. An optimizer is one
:class:`OptimizerSpec` (name, hyperparameters with defaults and checks, state
slots per parameter, default learning rate) over an :class:`UpdateRule`, the
family of formulas every backend implements once:

=========  ===================================  =======================  =====================
rule       generic xp code (backends/base.py)   Numba loop (kernels.py)  CUDA (optimizers.cu)
=========  ===================================  =======================  =====================
sgd        ``Backend.sgd_update``               ``sgd_step``             ``sgd_step``
momentum   ``Backend.momentum_update``          ``momentum_step``        ``momentum_step``
adam       ``Backend.adam_update``              ``adam_step``            ``adam_step``
rmsprop    ``Backend.rmsprop_update``           ``rmsprop_step``         ``rmsprop_step``
=========  ===================================  =======================  =====================

AdamW is the adam rule with decoupled weight decay; every other optimizer's
``weight_decay`` is PyTorch's coupled L2 term ``g = dW + weight_decay * W``,
applied to every parameter (biases included, as ``torch.optim`` does).

The step state
--------------
Whatever changes from step to step lives on the backend's device, in one
float64 vector per optimizer (:meth:`Optimizer.step_state`), laid out by
:meth:`UpdateRule.layout`: ``[step, lr, weight_decay, <the rule's
hyperparameters>, <its derived values>]``. Indices come from
:meth:`UpdateRule.index` (Python, Numba) and from the generated header
``backends/cupy/kernels/gbp_constants.h`` (CUDA, ``GBP_<RULE>_<ENTRY>``).
Each step first *advances* it on the device (``Backend.advance_optimizer``:
``step += 1``, then the rule's derived values, e.g. Adam's ``step_size`` and
``eps_hat``, from ``lr`` and ``step``), then every update kernel reads it:
a kernel takes a pointer to the vector, never host scalars, and casts each
entry to the weights' dtype (``(T) state[GBP_LR]``; Numba:
``W.dtype.type(state[LR])``). Flags (``nesterov``, ``centered``) and choices
(``convention``) are stored as 0.0/1.0 and choice indices. The host writes
only when something is set from Python (``optimizer.lr = ...`` by a
schedule, ``step_count = ...``): such a write takes effect at the next step.
A recorded or compiled step therefore stays right when the learning rate
changes.

For a step compiler: take ``state = optimizer.step_state(backend)`` once (the
array stays the same object; host writes go into it in place), and per step
run ``backend.advance_optimizer(optimizer.rule.name, state)`` (or the Numba
``kernels.advance(rule.code, state)`` / CUDA ``optimizer_advance`` inside the
compiled step), then the rule's update for every parameter with its slots
from ``optimizer.state_slots(backend, name, W)``, roles as in
:attr:`UpdateRule.slots` (None where the settings leave a slot unused).
``optimizer.begin_step(backend)`` is the advance and returns the state.

Conventions
-----------
Momentum follows PyTorch (``convention="pytorch"``, the default):
``buf = mu buf + g; W -= lr buf`` (Nesterov: ``W -= lr (g + mu buf)``);
``convention="sklearn"`` is the heavy-ball form of scikit-learn's MLP,
``V = mu V - lr g; W += V`` (Nesterov: ``W += mu V - lr g``). The two agree
while the learning rate is constant and differ once a schedule changes it.
Configurations saved without a convention (before it existed) are read as
heavy-ball, the form they were trained with.

Adam with ``convention="pytorch"`` (default, the paper's form) adds eps to the
bias-corrected ``sqrt(v_hat)``; ``"sklearn"`` adds it to the raw ``sqrt(v)``:
``W -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import InputError
from ..validation import check_choice, check_non_negative, check_number, check_positive
from .plan import ParamSlots, UpdateOp
from .update_rules import (COMMON_ENTRIES, LR, STATE_DTYPE, STEP, UPDATE_RULES,  # noqa: F401
                           WEIGHT_DECAY, UpdateRule)

#: The step state's name among :meth:`Optimizer.state_arrays` (older checkpoints: "step_count").
STEP_STATE_KEY = "step_state"



# ---------------------------------------------------------------- hyperparameters
def _fraction(value, name):
    """A number in [0, 1)."""
    number = check_number(value, name)
    if not 0 <= number < 1:
        raise InputError(f"{name} must be in [0, 1), got {value!r}")
    return number


def _flag(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name} must be true or false, got {value!r}")
    return bool(value)


@dataclass(frozen=True)
class Hyperparameter:
    """One setting of an optimizer.

    Attributes
    ----------
    name : str
        Keyword argument, config key and step-state entry.
    default : float, bool or str
    check : callable
        ``check(value, name)`` returns the normalised value or raises InputError.
    choices : tuple of str
        For a string setting: its valid values, stored in the state as their index.
    legacy : float, bool or str, optional
        The value a saved configuration that lacks this key was trained with
        (the default when None).
    """

    name: str
    default: object
    check: Callable = check_number
    choices: tuple = ()
    legacy: object = None
    doc: str = ""

    def validate(self, value):
        if self.choices:
            return check_choice(value, self.choices, self.name)
        return self.check(value, self.name)

    def encode(self, value) -> float:
        """The value as the step state stores it."""
        return float(self.choices.index(value)) if self.choices else float(value)


def _weight_decay(default=0.0, doc="coupled L2 penalty: g = dW + weight_decay W"):
    return Hyperparameter("weight_decay", default, check_non_negative, doc=doc)


def _convention(default, legacy=None, doc=""):
    return Hyperparameter("convention", default, choices=("pytorch", "sklearn"),
                          legacy=legacy, doc=doc)


@dataclass(frozen=True)
class OptimizerSpec:
    """One registered optimizer: an update rule with its settings.

    Attributes
    ----------
    name : str
    rule : UpdateRule
    default_lr : float
    hyperparameters : tuple of Hyperparameter
        ``weight_decay`` and the rule's entries the user may set.
    fixed : dict
        Rule entries this optimizer fixes (AdamW: ``decoupled = True``).
    active_slots : callable
        ``active_slots(settings) -> tuple of bool``, which of the rule's slots
        the settings use (all by default).
    checks : callable, optional
        ``checks(settings)`` raises InputError for a bad combination.
    """

    name: str
    rule: UpdateRule
    default_lr: float
    hyperparameters: tuple
    fixed: dict = field(default_factory=dict)
    active_slots: Callable | None = None
    checks: Callable | None = None
    doc: str = ""

    def settings(self, options: dict, legacy: bool = False) -> dict:
        """Validated settings from keyword ``options``; defaults (or legacy values) fill in.

        Raises
        ------
        InputError
            An unknown name, a bad value or a bad combination.
        """
        known = {h.name: h for h in self.hyperparameters}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise InputError(f"the {self.name} optimizer has no setting {unknown[0]!r}; its "
                             f"settings: lr, clip_norm, {', '.join(known)}")
        values = {}
        for name, h in known.items():
            if name in options:
                values[name] = h.validate(options[name])
            else:
                values[name] = h.legacy if legacy and h.legacy is not None else h.default
        if self.checks is not None:
            self.checks(values)
        return values

    def initial_state(self, lr: float, settings: dict, step: int = 0) -> np.ndarray:
        """The host step state (float64, :attr:`UpdateRule.layout`) before any advance."""
        state = np.zeros(len(self.rule.layout), STATE_DTYPE)
        state[STEP], state[LR] = step, lr
        for h in self.hyperparameters:
            state[self.rule.index(h.name)] = h.encode(settings[h.name])
        for name, value in self.fixed.items():
            state[self.rule.index(name)] = float(value)
        return state

    def slot_roles(self, settings: dict) -> tuple:
        """The rule's slot names, None where these settings leave a slot unused."""
        active = self.active_slots(settings) if self.active_slots else (True,) * len(
            self.rule.slots)
        return tuple(name if on else None for name, on in zip(self.rule.slots, active))


def _nesterov_needs_momentum(settings):
    if settings["nesterov"] and settings["momentum"] == 0:
        raise InputError("nesterov momentum needs a momentum above 0")


_ADAM_SETTINGS = (
    Hyperparameter("beta1", 0.9, _fraction, doc="decay of the first moment"),
    Hyperparameter("beta2", 0.999, _fraction, doc="decay of the second moment"),
    Hyperparameter("eps", 1e-8, check_positive, doc="added to the denominator"),
    _convention("pytorch", doc="pytorch: eps added to sqrt(v_hat); sklearn: to sqrt(v)"),
)

#: Registered optimizers by name.
SPECS = {spec.name: spec for spec in (
    OptimizerSpec("sgd", UPDATE_RULES["sgd"], 0.1, (_weight_decay(),),
                  doc="W -= lr g"),
    OptimizerSpec(
        "momentum", UPDATE_RULES["momentum"], 0.1,
        (_weight_decay(),
         Hyperparameter("momentum", 0.9, _fraction, doc="mu"),
         Hyperparameter("nesterov", False, _flag, doc="Nesterov's look-ahead"),
         _convention("pytorch", legacy="sklearn",
                     doc="pytorch: buf = mu buf + g, W -= lr buf; "
                         "sklearn (heavy ball): V = mu V - lr g, W += V")),
        checks=_nesterov_needs_momentum, doc="SGD with momentum"),
    OptimizerSpec("adam", UPDATE_RULES["adam"], 1e-3, (_weight_decay(), *_ADAM_SETTINGS),
                  doc="Adam (Kingma and Ba 2015), bias-corrected"),
    OptimizerSpec("adamw", UPDATE_RULES["adam"], 1e-3,
                  (_weight_decay(0.01, "decoupled: W -= lr weight_decay W before the step"),
                   *_ADAM_SETTINGS),
                  fixed={"decoupled": True},
                  doc="Adam with decoupled weight decay (Loshchilov and Hutter 2019)"),
    OptimizerSpec(
        "rmsprop", UPDATE_RULES["rmsprop"], 0.01,
        (_weight_decay(),
         Hyperparameter("alpha", 0.99, _fraction, doc="decay of the squared-gradient average"),
         Hyperparameter("eps", 1e-8, check_positive, doc="added to the denominator"),
         Hyperparameter("momentum", 0.0, _fraction, doc="momentum of the scaled step"),
         Hyperparameter("centered", False, _flag, doc="divide by the gradient's variance")),
        active_slots=lambda s: (True, s["momentum"] > 0, s["centered"]),
        doc="RMSprop as torch.optim.RMSprop"),
)}


# ---------------------------------------------------------------- optimizers
class Optimizer:
    """An optimizer built from its :class:`OptimizerSpec`.

    Parameters
    ----------
    lr : float, optional
        Learning rate (> 0), the spec's default when omitted; a schedule may
        set ``optimizer.lr`` between steps.
    clip_norm : float, optional
        When given, gradients are scaled so their joint L2 norm is at most this.
    **settings
        The spec's hyperparameters (see :data:`SPECS`), e.g. ``weight_decay``.

    Attributes
    ----------
    state : dict
        Per-parameter state arrays by ``"<parameter>.<slot>"``.
    """

    spec: OptimizerSpec = SPECS["sgd"]

    def __init__(self, lr: float | None = None, clip_norm: float | None = None,
                 _legacy: bool = False, **settings):
        spec = self.spec
        self.settings = spec.settings(settings, legacy=_legacy)
        self.clip_norm = None if clip_norm is None else check_positive(clip_norm, "clip norm")
        lr = spec.default_lr if lr is None else check_positive(lr, "learning rate")
        self.state: dict = {}
        # Host copy of the step state; authoritative until the device copy exists.
        self._host_state = spec.initial_state(lr, self.settings)
        self._device_state = None
        self._device_backend = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def rule(self) -> UpdateRule:
        return self.spec.rule

    def __getattr__(self, name):
        settings = self.__dict__.get("settings", {})
        if name in settings:
            return settings[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name, value):
        if name in self.__dict__.get("settings", {}):
            raise AttributeError(f"{name} is fixed when the optimizer is built; build a new "
                                 f"{type(self).__name__} to change it")
        super().__setattr__(name, value)

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.settings.items())
        return f"{type(self).__name__}(lr={self.lr!r}, {settings})"

    # ---------------------------------------------------------- step state
    @property
    def lr(self) -> float:
        """The learning rate of the next step (read from the host: only the host writes it)."""
        return float(self._host_state[LR])

    @lr.setter
    def lr(self, value: float) -> None:
        self._write(LR, check_positive(value, "learning rate"))

    @property
    def step_count(self) -> int:
        """Steps taken so far (a read from the device once it holds the state)."""
        if self._device_state is None:
            return int(self._host_state[STEP])
        return int(self._device_backend.to_numpy(self._device_state[STEP]))

    @step_count.setter
    def step_count(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise InputError(f"step_count must be a non-negative integer, got {value!r}")
        self._write(STEP, int(value))

    def _write(self, index: int, value: float) -> None:
        self._host_state[index] = value
        if self._device_state is not None:
            self._device_state[index] = value

    def step_state(self, backend):
        """The step state on ``backend``'s device: a (len(rule.layout),) float64 array.

        Created from the host copy on first use (the one host-to-device copy);
        afterwards only the step itself and host writes (``lr``, ``step_count``)
        change it. See the module docstring for its layout.
        """
        if self._device_backend is not backend:
            if self._device_state is not None:
                self._host_state = np.array(self._device_backend.to_numpy(self._device_state),
                                            dtype=STATE_DTYPE)
            self._device_state = backend.asarray(self._host_state.copy(), dtype=STATE_DTYPE)
            self._device_backend = backend
        return self._device_state

    def host_step_state(self) -> np.ndarray:
        """A host copy of the step state (a device read once the device holds it)."""
        if self._device_state is None:
            return self._host_state.copy()
        return np.array(self._device_backend.to_numpy(self._device_state), dtype=STATE_DTYPE)

    def begin_step(self, backend):
        """Advance the step state on the device (step + 1, derived values); returns it."""
        state = self.step_state(backend)
        backend.advance_optimizer(self.rule.name, state)
        return state

    def plan_update(self, model) -> UpdateOp:
        """This optimizer's step over ``model``'s parameters, as a plan's update op.

        Creates the state slots that are missing (the plan holds every array a
        step touches; None stands for a slot these settings leave unused) and
        the step state on the model's device, so a compiled step's first call
        copies nothing to it. A class that is not the registered one for its
        name gets a name and rule no compiler knows (it may override
        :meth:`update`), so only the eager interpreter, which calls :meth:`step`, runs it.
        """
        backend = model.backend
        params = tuple(ParamSlots(name, W, dW, self.state_slots(backend, name, W))
                       for name, W, dW in model.parameters_and_gradients())
        registered = OPTIMIZERS.get(self.name) is type(self)
        name = self.name if registered else f"{type(self).__name__} (not registered)"
        self.step_state(backend)
        return UpdateOp(name, self.rule.name if registered else name, dict(self.settings), params,
                        self.spec.slot_roles(self.settings), self.clip_norm,
                        functools.partial(self.begin_step, backend),
                        functools.partial(self.step, model))

    # ---------------------------------------------------------------- steps
    def step(self, model) -> None:
        """Apply one update to every parameter of ``model`` from its gradients."""
        backend = model.backend
        named = model.parameters_and_gradients()
        if self.clip_norm is not None:
            backend.clip_by_global_norm([g for _, _, g in named], self.clip_norm)
        state = self.begin_step(backend)
        for name, W, dW in named:
            self.update(backend, name, W, dW, state)

    def update(self, backend, name: str, W, dW, state) -> None:
        """One parameter's update through ``Backend.<rule>_update``."""
        update = getattr(backend, f"{self.rule.name}_update")
        update(W, dW, state, *self.state_slots(backend, name, W))

    def state_slots(self, backend, name: str, W) -> tuple:
        """The state arrays of parameter ``name`` (shaped like ``W``), created when missing.

        One entry per slot of the rule (:attr:`UpdateRule.slots`), None for a
        slot these settings do not use: ``()`` for SGD, ``(velocity,)`` for
        momentum, ``(m, v)`` for Adam and AdamW, ``(square_avg,
        momentum_buffer or None, grad_avg or None)`` for RMSprop.
        """
        return tuple(None if role is None else self._slot(backend, f"{name}.{role}", W)
                     for role in self.spec.slot_roles(self.settings))

    def _slot(self, backend, key: str, W):
        if key not in self.state:
            self.state[key] = backend.zeros(W.shape, W.dtype)
        return self.state[key]

    # ---------------------------------------------------------- checkpoints
    def config(self) -> dict:
        """Name, learning rate, clipping and every setting (JSON-serialisable)."""
        return {"name": self.name, "lr": self.lr, "clip_norm": self.clip_norm, **self.settings}

    def state_arrays(self, backend) -> dict:
        """Optimizer state as host arrays, for checkpoints: the slots and ``step_state``."""
        arrays = {key: backend.to_numpy(value) for key, value in self.state.items()}
        arrays[STEP_STATE_KEY] = self.host_step_state()
        return arrays

    def load_state_arrays(self, backend, arrays: dict) -> None:
        """Restore :meth:`state_arrays` (or an older checkpoint's ``step_count``).

        Raises
        ------
        InputError
            A ``step_state`` that is not this optimizer's layout or disagrees
            with its settings.
        """
        arrays = dict(arrays)
        if STEP_STATE_KEY in arrays:
            self._load_step_state(np.asarray(arrays.pop(STEP_STATE_KEY)))
        else:
            self.step_count = int(arrays.pop("step_count", 0))
        self.state = {key: backend.asarray(value) for key, value in arrays.items()}

    def _load_step_state(self, saved: np.ndarray) -> None:
        layout = self.rule.layout
        if saved.dtype != STATE_DTYPE or saved.shape != (len(layout),):
            raise InputError(f"the {self.name} optimizer's step_state must be float64 of shape "
                             f"({len(layout)},), got {saved.dtype} {saved.shape}")
        expected = self.spec.initial_state(saved[LR], self.settings)
        settings = [i for i, entry in enumerate(layout)
                    if entry not in (("step", "lr") + self.rule.derived)]
        step = saved[STEP]
        if not (np.isfinite(saved).all() and step >= 0 and step == int(step)
                and saved[LR] > 0 and np.array_equal(saved[settings], expected[settings])):
            raise InputError(f"the {self.name} optimizer's step_state {saved.tolist()} does not "
                             f"match its settings {self.settings}")
        self._host_state = saved.astype(STATE_DTYPE, copy=True)
        self._device_state, self._device_backend = None, None


class SGD(Optimizer):
    """Plain gradient descent: ``W -= lr (dW + weight_decay W)``."""

    spec = SPECS["sgd"]


class Momentum(Optimizer):
    """SGD with momentum (``momentum``, ``nesterov``, ``convention``; see the module docstring)."""

    spec = SPECS["momentum"]


class Adam(Optimizer):
    """Adam with bias-corrected moments (``beta1``, ``beta2``, ``eps``, ``convention``)."""

    spec = SPECS["adam"]


class AdamW(Optimizer):
    """Adam with decoupled weight decay, as ``torch.optim.AdamW``: ``W -= lr wd W`` first."""

    spec = SPECS["adamw"]


class RMSprop(Optimizer):
    """RMSprop as ``torch.optim.RMSprop`` (``alpha``, ``eps``, ``momentum``, ``centered``)."""

    spec = SPECS["rmsprop"]


OPTIMIZERS = {cls.spec.name: cls for cls in (SGD, Momentum, Adam, AdamW, RMSprop)}
assert set(OPTIMIZERS) == set(SPECS)


def get_optimizer(name, lr: float | None = None, **options) -> Optimizer:
    """An optimizer by name (see :data:`OPTIMIZERS`) or an instance as it is."""
    if isinstance(name, Optimizer):
        return name
    return OPTIMIZERS[check_choice(name, OPTIMIZERS, "optimizer")](lr=lr, **options)


def optimizer_from_config(config: dict) -> Optimizer:
    """Rebuild an optimizer from :meth:`Optimizer.config`.

    Settings the configuration lacks take their legacy value, the one a run
    saved before the setting existed was trained with (momentum: heavy-ball).

    Raises
    ------
    InputError
        Not a dict with a known ``name``, or a bad setting.
    """
    if not isinstance(config, dict) or "name" not in config:
        raise InputError(f"an optimizer configuration needs a name, got {config!r}")
    options = dict(config)
    cls = OPTIMIZERS[check_choice(options.pop("name"), OPTIMIZERS, "optimizer")]
    return cls(_legacy=True, **options)
