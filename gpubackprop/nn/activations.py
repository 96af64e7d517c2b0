"""The activation registry: one entry per activation, read by every layer, backend and kernel.

An entry names the activation, gives it the code every kernel switches on
(the fused Numba loops and the CUDA kernels share one numbering, written into
the generated header ``backends/cupy/kernels/gbp_constants.h``), says
whether its derivative is computed from the activation's output ``Y`` or
from its input ``Z`` (which decides what a layer keeps for its backward
pass), and carries the formulas as text for documentation. The formulas as
code live where each backend keeps its formulas: ``backends/base.py``
(NumPy/CuPy array code), ``backends/numba/kernels.py`` and
``backends/cupy/kernels/activations.cu`` (sigmoid and tanh, which the
recurrent cell kernels share, in ``activation_functions.cuh`` beside it).

This module imports nothing from the backends, layers or trainer, so any of
them can import it. ``python -m gpubackprop.backends.cupy.constants_header``
regenerates the CUDA header from the entries below.
"""

from __future__ import annotations

from dataclasses import dataclass

#: What a derivative is computed from: the activation's output or its input.
FROM_OUTPUT, FROM_INPUT = "output", "input"


@dataclass(frozen=True)
class ActivationSpec:
    """One activation.

    Attributes
    ----------
    name : str
        The name layers, checkpoints and the CLI use.
    code : int
        Its number in every kernel (``act`` in CUDA, ``code`` in Numba).
    derivative_from : {"output", "input"}
        Whether ``f'`` is computed from the saved output ``Y = f(Z)`` or needs
        the pre-activation ``Z`` itself.
    forward, derivative : str
        The formulas, as text (the code is in each backend).
    init : {"he", "xavier"}
        The weight initialisation ``init="auto"`` picks for a layer using it.
    bounded : bool
        Whether its output lies in a bounded interval; an RNN accepts only
        bounded activations whose derivative comes from the output (the
        hidden states it keeps).
    """

    name: str
    code: int
    derivative_from: str
    forward: str
    derivative: str
    init: str = "xavier"
    bounded: bool = False

    @property
    def needs_input(self) -> bool:
        """True when the backward pass needs the pre-activation ``Z`` rather than ``Y``."""
        return self.derivative_from == FROM_INPUT


#: Every activation, by name; codes are the kernels' numbering.
ACTIVATIONS: dict[str, ActivationSpec] = {spec.name: spec for spec in (
    ActivationSpec("identity", 0, FROM_OUTPUT, "z", "1"),
    ActivationSpec("relu", 1, FROM_OUTPUT, "max(z, 0)", "1 if y > 0 else 0", init="he"),
    ActivationSpec("sigmoid", 2, FROM_OUTPUT,
                   "1 / (1 + exp(-z)) for z >= 0, exp(z) / (1 + exp(z)) for z < 0",
                   "y (1 - y)", bounded=True),
    ActivationSpec("tanh", 3, FROM_OUTPUT, "tanh(z)", "1 - y^2", bounded=True),
    ActivationSpec("silu", 4, FROM_INPUT, "z sigmoid(z)", "s (1 + z (1 - s)), s = sigmoid(z)",
                   init="he"),
)}

#: Activation names, in code order.
NAMES: tuple[str, ...] = tuple(sorted(ACTIVATIONS, key=lambda name: ACTIVATIONS[name].code))
#: The activations an RNN accepts (see :attr:`ActivationSpec.bounded`).
RECURRENT_NAMES: tuple[str, ...] = tuple(
    name for name in NAMES if ACTIVATIONS[name].bounded and not ACTIVATIONS[name].needs_input)
#: Kernel code of each activation, by name.
CODES: dict[str, int] = {name: ACTIVATIONS[name].code for name in NAMES}
