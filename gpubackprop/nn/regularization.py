"""An L2 penalty on the weight matrices (not the biases), as scikit-learn's MLP ``alpha``.

A batch's loss becomes ``data_loss + alpha / (2 n) * sum(W ** 2)`` over every
weight matrix ``W`` (arrays of two or more dimensions; biases are vectors and
are left alone), where ``n`` is the batch's total sample weight (its number of
rows without sample weights). Its gradient ``(alpha / n) W`` is added to
``dW`` after the backward pass and before the optimizer step, so it works with
every optimizer and backend. This differs from an optimizer's
``weight_decay`` (``gpubackprop.nn.optim``) in two ways: biases are not
decayed, and the coefficient shrinks as the batch grows.
"""

from __future__ import annotations

from ..errors import InputError


class L2Penalty:
    """``alpha / (2 n) * sum(W ** 2)`` over the weight matrices of a model.

    Parameters
    ----------
    alpha : float
        Strength (>= 0); 0 adds nothing.
    """

    def __init__(self, alpha: float):
        alpha = float(alpha)
        if not alpha >= 0:
            raise InputError(f"alpha must be a non-negative number, got {alpha!r}")
        self.alpha = alpha

    @staticmethod
    def weight_matrices(model) -> list:
        """``[(W, dW), ...]`` of the parameters with two or more dimensions."""
        return [(W, dW) for _, W, dW in model.parameters_and_gradients() if W.ndim >= 2]

    def value(self, model, total_weight: float):
        """The penalty for a batch of total sample weight ``total_weight``, a 0-d array
        on the model's backend (no host read)."""
        xp = model.backend.xp
        squares = [xp.vdot(W.reshape(-1), W.reshape(-1)) for W, _ in self.weight_matrices(model)]
        return xp.stack(squares).sum() * (0.5 * self.alpha / total_weight)

    def add_gradient(self, model, total_weight: float) -> None:
        """``dW += (alpha / total_weight) W`` in place, for every weight matrix."""
        if self.alpha == 0:
            return
        for W, dW in self.weight_matrices(model):
            dW += W * W.dtype.type(self.alpha / total_weight)
