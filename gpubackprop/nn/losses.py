"""Loss functions: each returns the mean loss and its gradient in one call."""

from __future__ import annotations

from ..validation import check_choice


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

    def probabilities(self, backend, Y):
        """Class scores a user would read from the model outputs ``Y``."""
        return Y

    def readable(self, loss, Y):
        """The loss as reported in histories: a mean, whatever the reduction."""
        return loss


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

    def readable(self, loss, Y):
        return loss / Y.size if self.reduction == "sum" else loss


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
