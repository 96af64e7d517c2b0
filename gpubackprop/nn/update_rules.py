"""The optimizers' update rules and the layout of their step state: plain data.

Backends import this module, never :mod:`.optim` (whose optimizer objects sit
above them): each rule names the update ``Backend.<name>_update``, the Numba
loop ``kernels.<name>_step`` and the CUDA kernel ``<name>_step`` that
implement it, and the step state's layout, which the kernels index. What the
step state is and how a step uses it: see :mod:`.optim`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Entries at the start of every step state, in order.
COMMON_ENTRIES = ("step", "lr", "weight_decay")
STEP, LR, WEIGHT_DECAY = range(len(COMMON_ENTRIES))
#: The dtype of every step state (exact step counts up to 2**53, corrections in full precision).
STATE_DTYPE = np.dtype(np.float64)


@dataclass(frozen=True)
class UpdateRule:
    """A family of update formulas, implemented once per backend under its name.

    Attributes
    ----------
    name : str
        ``Backend.<name>_update``, Numba ``kernels.<name>_step``, CUDA ``<name>_step``.
    code : int
        Its number in the Numba dispatcher and the generated CUDA header.
    entries : tuple of str
        Its hyperparameters in the step state, after :data:`COMMON_ENTRIES`.
    derived : tuple of str
        Values the advance recomputes every step from ``lr``, ``step`` and the
        hyperparameters, after ``entries``: everything a kernel needs that is
        not a plain entry, computed once in float64 (a float32 kernel only
        loads and converts, it never computes in double).
    slots : tuple of str
        The roles of its per-parameter state arrays, in the order the update takes them.
    """

    name: str
    code: int
    entries: tuple = ()
    derived: tuple = ()
    slots: tuple = ()

    @property
    def layout(self) -> tuple:
        """Names of the step state's entries, in order."""
        return COMMON_ENTRIES + self.entries + self.derived

    def index(self, entry: str) -> int:
        """Position of ``entry`` in the step state."""
        return self.layout.index(entry)


#: Update rules by name; ``code`` is the position here.
UPDATE_RULES = {rule.name: rule for rule in (
    UpdateRule("sgd", 0),
    UpdateRule("momentum", 1, ("momentum", "nesterov", "convention"), slots=("velocity",)),
    UpdateRule("adam", 2, ("beta1", "beta2", "eps", "convention", "decoupled"),
               ("one_minus_beta1", "one_minus_beta2", "shrink", "step_size", "eps_hat"),
               slots=("m", "v")),
    UpdateRule("rmsprop", 3, ("alpha", "eps", "momentum", "centered"), ("one_minus_alpha",),
               slots=("square_avg", "momentum_buffer", "grad_avg")),
)}
assert [rule.code for rule in UPDATE_RULES.values()] == list(range(len(UPDATE_RULES)))


__all__ = ["COMMON_ENTRIES", "LR", "STATE_DTYPE", "STEP", "UPDATE_RULES", "UpdateRule",
           "WEIGHT_DECAY"]
