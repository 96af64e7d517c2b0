"""Backpropagation through time: the rules every recurrent time loop in Python shares.

The layers' loops and the backends' generic loops (:class:`~..backends.base.Backend`)
take them from here; the compiled loops of the fused CPU backend repeat them in Numba.
This module imports nothing of the package.
"""

from __future__ import annotations


def starts_block(t: int, T: int, block: int) -> bool:
    """Truncated BPTT in blocks of ``block`` steps counted from the last of ``T``: whether
    step t > 0 starts a block, so nothing flows from it into step t-1 (``block = T``:
    full BPTT)."""
    return t > 0 and (T - t) % block == 0


def step_gradient(t: int, T: int, dH, last, carry, pending: bool):
    """dh_t, shape (N, H): the step's own output gradient ``dH[t]`` plus, when
    ``pending``, the ``carry`` from step t+1 (added in place in ``dH``); without
    per-step outputs (``dH`` None), ``last`` for the last step and ``carry`` before it."""
    if dH is not None:
        if pending:
            dH[t] += carry
        return dH[t]
    return last if t == T - 1 else carry


__all__ = ["starts_block", "step_gradient"]
