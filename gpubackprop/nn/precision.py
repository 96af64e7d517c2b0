"""The precision policy: which dtype each kind of array of a model and its step has.

One :class:`Precision` names four dtypes:

``param``
    The parameters ``W``, ``b`` and their gradients, as stored between steps.
``compute``
    Activations, pre-activations and the gradients that flow between layers.
``accumulate``
    Sums across a batch: the loss, the hit count's companion figures, bias
    gradients' partial sums where a kernel keeps them apart.
``optimizer_state``
    The optimizer's per-parameter slots (momentum buffers, Adam's moments).

Today every supported policy is *uniform*: all four are float32, or all four
float64 (``Precision.uniform(dtype)``, what the ``dtype=`` argument of a model
makes). Layers allocate parameters in ``param``; the optimizer's slots follow
``optimizer_state``; step compilers read the policy from the plan and decline
one they cannot run.

Where bfloat16 would plug in (a later addition, not a redesign): add it to
:data:`DTYPES` (NumPy has no bfloat16; ``ml_dtypes.bfloat16`` is the usual
host type, CuPy would hold it as raw 16-bit storage), admit the mixed policy
``Precision(param=bfloat16, compute=bfloat16, accumulate=float32,
optimizer_state=float32)`` in :meth:`Precision.check`, and give the kernels a
second type parameter for the state (``adam_step<__nv_bfloat16, float>``).
Each CUDA launch already checks every array against its own parameter's type
as the kernel source declares it (``T*`` or a fixed ``const double*``; see
``CupyBackend._launch``), and :func:`gpubackprop.backends.base.kernel_can_take`
takes one expected dtype per array, so a kernel reading bfloat16 weights and
float32 moments is checked argument by argument, and a step compiler that
cannot run a policy declines with the reason.

It imports no layer, loss, optimizer or backend: backends may import it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..validation import DTYPES as DTYPE_NAMES, check_dtype

#: The dtypes a policy may name today.
DTYPES = tuple(np.dtype(name) for name in DTYPE_NAMES)
#: The roles, in the order :class:`Precision` lists them.
ROLES = ("param", "compute", "accumulate", "optimizer_state")


def _dtype(value, what: str) -> np.dtype:
    """``value`` as one of :data:`DTYPES`; ``what`` names it in the error ("param dtype")."""
    return np.dtype(check_dtype(value, what))


@dataclass(frozen=True)
class Precision:
    """The dtypes of a model's arrays, by role (see the module docstring).

    Parameters
    ----------
    param, compute, accumulate, optimizer_state : dtype or str
        Each float32 or float64 today, and all four equal (:meth:`check`).
    """

    param: np.dtype
    compute: np.dtype
    accumulate: np.dtype
    optimizer_state: np.dtype

    def __post_init__(self):
        for role in ROLES:
            object.__setattr__(self, role, _dtype(getattr(self, role), f"{role} dtype"))
        self.check()

    @classmethod
    def uniform(cls, dtype) -> "Precision":
        """Every role in ``dtype``: what ``Sequential(..., dtype=...)`` makes."""
        dtype = _dtype(dtype, "dtype")
        return cls(dtype, dtype, dtype, dtype)

    def check(self) -> None:
        """Raise :class:`InputError` for a policy no layer or kernel can run today."""
        if not self.is_uniform:
            raise InputError(f"precision {self}: mixed dtypes are not supported yet; every "
                             f"role must have the same dtype (float32 or float64)")

    @property
    def is_uniform(self) -> bool:
        """Whether all four roles have one dtype."""
        return len({getattr(self, role) for role in ROLES}) == 1

    @property
    def name(self) -> str:
        """``"float32"`` for a uniform policy, else ``"param/compute/accumulate/state"``."""
        if self.is_uniform:
            return self.param.name
        return "/".join(getattr(self, role).name for role in ROLES)

    def __str__(self) -> str:
        return self.name


class _DefaultDtype:
    """The ``dtype`` a caller did not give: float32, unless a precision says otherwise."""

    def __repr__(self) -> str:
        return "'float32'"


#: The default of every ``dtype=`` argument that a ``precision=`` may replace.
DEFAULT_DTYPE = _DefaultDtype()


def get_precision(precision=None, dtype=DEFAULT_DTYPE) -> Precision:
    """A policy from either argument: a :class:`Precision`, or a dtype made uniform.

    Parameters
    ----------
    precision : Precision, dtype or str, optional
    dtype : dtype or str, optional
        The older spelling; float32 when neither is given.

    Raises
    ------
    InputError
        Both given and disagreeing, or an unsupported dtype.
    """
    if precision is None:
        return Precision.uniform("float32" if dtype is DEFAULT_DTYPE else dtype)
    policy = precision if isinstance(precision, Precision) else Precision.uniform(precision)
    if dtype is not DEFAULT_DTYPE and Precision.uniform(dtype) != policy:
        raise InputError(f"dtype={np.dtype(dtype).name} disagrees with precision={policy}; "
                         f"give one of them")
    return policy


__all__ = ["DEFAULT_DTYPE", "DTYPES", "Precision", "ROLES", "get_precision"]
