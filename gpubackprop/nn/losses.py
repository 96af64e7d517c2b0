"""Loss functions: each returns the mean loss and its gradient in one call."""

from __future__ import annotations

from ..errors import InputError
from ..validation import check_choice
from .plan import LossOp


class Loss:
    """A loss over a batch.

    ``__call__(backend, Y, T, weights=None)`` takes model outputs ``Y`` (N, K),
    targets ``T`` (N, K) and optional row weights (N,) summing to 1 (sample
    weights; a plain mean over the rows without them), and returns
    ``(loss, dY)``: a 0-d array (kept on the device, no host sync) and the
    gradient (N, K).
    """

    name = "loss"
    #: What :meth:`probabilities` applies to the outputs: "identity", "softmax" or "sigmoid".
    output_activation = "identity"

    def __call__(self, backend, Y, T, weights=None):
        raise NotImplementedError

    def masked(self, backend, Y, T, mask):
        """The loss over the time steps ``mask`` selects, and its gradient.

        The steps are read as rows, each selected one weighted ``1 / count``:
        the mean over the selected steps (PyTorch's ``cross_entropy`` with
        ``ignore_index`` on the others), and a gradient that is exactly zero at
        every step left out. A mask selecting nothing gives loss 0, gradient 0.

        Parameters
        ----------
        Y, T : arrays, shape (N, T, K)
            Outputs and targets.
        mask : array, shape (N, T)
            1 for a step that counts, 0 for padding; ``Y``'s dtype.

        Returns
        -------
        loss : 0-d array
        dY : array, shape (N, T, K)
        """
        n_outputs = Y.shape[-1]
        weights = mask.reshape(-1) / backend.xp.maximum(mask.sum(), mask.dtype.type(1))
        loss, dY = self(backend, Y.reshape(-1, n_outputs), T.reshape(-1, n_outputs), weights)
        return loss, dY.reshape(Y.shape)

    def probabilities(self, backend, Y):
        """Class scores a user would read from the model outputs ``Y``."""
        return Y

    def readable(self, loss, Y):
        """The loss as reported in histories: a mean, whatever the reduction."""
        return loss

    def options(self) -> dict:
        """The settings that change the formula (none by default)."""
        return {}

    def plan_op(self) -> LossOp:
        """This loss in a step plan: its registry name and options.

        A class that is not the registered one for its name gets a name no
        compiler knows, so only the eager interpreter (which calls it) runs it.
        """
        registered = LOSSES.get(self.name) is type(self)
        name = self.name if registered else f"{type(self).__name__} (not registered)"
        return LossOp(name, self.options(), self)


class MeanSquaredError(Loss):
    """Squared error ``(Y - T)**2`` over all N*K elements.

    Parameters
    ----------
    reduction : {"mean", "sum", "half"}
        "mean" (the default, as in PyTorch) averages the squared errors;
        "sum" adds them, so the gradient sums over the samples of a batch as
        in classic batch backpropagation (Rumelhart, Hinton and Williams).
        Divide a "sum" loss by N*K to read it as a mean squared error.
        "half" is half the sum over the K outputs, averaged over the N rows,
        with gradient ``(Y - T) / N``: scikit-learn's squared error (whose
        reported ``loss_`` is this divided by K).
    """

    name = "mse"
    REDUCTIONS = ("mean", "sum", "half")

    def __init__(self, reduction: str = "mean"):
        self.reduction = check_choice(reduction, self.REDUCTIONS, "reduction")

    def __call__(self, backend, Y, T, weights=None):
        return backend.mse(Y, T, self.reduction, weights)

    def masked(self, backend, Y, T, mask):
        if self.reduction == "sum":
            raise InputError("a mask takes the mean over the steps it selects; use the mse "
                             "reduction 'mean' or 'half', not 'sum'")
        return super().masked(backend, Y, T, mask)

    def readable(self, loss, Y):
        return loss / Y.size if self.reduction == "sum" else loss

    def options(self) -> dict:
        return {"reduction": self.reduction}


class SoftmaxCrossEntropy(Loss):
    """Cross-entropy of ``softmax(Y)`` against ``T``; ``Y`` are logits.

    Computed through log-softmax with the row maximum subtracted, so large
    logits neither overflow nor warn. The gradient is ``(softmax(Y) - T) / N``.
    """

    name = "cross_entropy"
    output_activation = "softmax"

    def __call__(self, backend, Y, T, weights=None):
        return backend.softmax_cross_entropy(Y, T, weights)

    def probabilities(self, backend, Y):
        return backend.softmax(Y)


class BinaryCrossEntropy(Loss):
    """Binary cross-entropy of ``sigmoid(Y)`` against ``T`` in [0, 1]; ``Y`` are logits.

    One independent yes/no output per column: binary classification (K = 1)
    and multilabel targets. Sums over the K columns and averages over the
    rows, through the stable softplus form; the gradient is
    ``(sigmoid(Y) - T) / N``. scikit-learn's logistic output with its binary
    log loss.
    """

    name = "binary_cross_entropy"
    output_activation = "sigmoid"

    def __call__(self, backend, Y, T, weights=None):
        return backend.sigmoid_cross_entropy(Y, T, weights)

    def probabilities(self, backend, Y):
        return backend.activation(Y, "sigmoid")


LOSSES = {"mse": MeanSquaredError, "cross_entropy": SoftmaxCrossEntropy,
          "binary_cross_entropy": BinaryCrossEntropy}
ALIASES = {"cross-entropy": "cross_entropy", "crossentropy": "cross_entropy", "ce": "cross_entropy",
           "mean_squared_error": "mse", "bce": "binary_cross_entropy"}


def get_loss(name) -> Loss:
    """A loss by name (see :data:`LOSSES`) or an instance as it is."""
    if isinstance(name, Loss):
        return name
    key = ALIASES.get(str(name).lower(), str(name).lower())
    return LOSSES[check_choice(key, LOSSES, "loss")]()
