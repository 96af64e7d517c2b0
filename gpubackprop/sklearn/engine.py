"""The estimators' engine: scikit-learn's network and stochastic solver on a gpubackprop backend.

The estimators keep scikit-learn's fitted attributes (``coefs_``,
``intercepts_``) as host arrays; for each ``fit`` or ``partial_fit`` the
engine builds a :class:`~gpubackprop.nn.model.Sequential` of fused Linear
layers from them on the chosen backend, moves the training rows there once,
runs scikit-learn's epochs (same batches, same shuffle order, same losses and
L2 term, same update conventions) and hands the weights back.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

from ..nn.layers import Linear
from ..nn.losses import BinaryCrossEntropy, MeanSquaredError, SoftmaxCrossEntropy
from ..nn.model import Sequential
from ..nn.optim import get_optimizer

#: scikit-learn's hidden activations and ours.
ACTIVATION_NAMES = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh",
                    "relu": "relu"}
#: scikit-learn's output activation (``out_activation_``) and the loss on the logits it implies.
OUTPUT_LOSSES = {"softmax": SoftmaxCrossEntropy(), "logistic": BinaryCrossEntropy(),
                 "identity": MeanSquaredError("half")}
#: Rows per forward pass when predicting.
PREDICT_CHUNK = 4096


def build_network(coefs, intercepts, activation: str, backend, dtype) -> Sequential:
    """A Sequential of Linear layers holding ``coefs`` and ``intercepts`` on ``backend``.

    Parameters
    ----------
    coefs : list of ndarray, shapes (n_in, n_out) per layer
    intercepts : list of ndarray, shapes (n_out,) per layer
    activation : str
        scikit-learn's name of the hidden activation.
    backend : Backend
    dtype : numpy dtype
        The network's dtype (float32 or float64).

    The last layer outputs logits (identity); the output activation belongs
    to the loss (:data:`OUTPUT_LOSSES`).
    """
    hidden = ACTIVATION_NAMES[activation]
    layers = [Linear(W.shape[1], hidden) for W in coefs[:-1]]
    layers.append(Linear(coefs[-1].shape[1], "identity"))
    network = Sequential(layers, n_inputs=coefs[0].shape[0], device=backend, dtype=dtype)
    arrays = {}
    for i, (W, b) in enumerate(zip(coefs, intercepts)):
        arrays[f"{i}.W"], arrays[f"{i}.b"] = W, b
    network.load_state_arrays(arrays)
    return network


def network_weights(network) -> tuple[list, list]:
    """The network's (coefs, intercepts) as host arrays, as scikit-learn lays them out."""
    state = network.state_arrays()
    n_layers = len(network.layers)
    return ([np.array(state[f"{i}.W"]) for i in range(n_layers)],
            [np.array(state[f"{i}.b"]) for i in range(n_layers)])


def make_optimizer(estimator):
    """The optimizer scikit-learn's ``solver`` and settings describe, in its conventions.

    "sgd": heavy-ball momentum (convention "sklearn"), Nesterov as
    ``nesterovs_momentum``; plain SGD when ``momentum`` is 0, which is what
    scikit-learn's formulas reduce to. "adam": epsilon added to the raw
    ``sqrt(v)`` (convention "sklearn").
    """
    if estimator.solver == "adam":
        return get_optimizer("adam", lr=estimator.learning_rate_init, beta1=estimator.beta_1,
                             beta2=estimator.beta_2, eps=estimator.epsilon, convention="sklearn")
    if estimator.momentum == 0:
        return get_optimizer("sgd", lr=estimator.learning_rate_init)
    return get_optimizer("momentum", lr=estimator.learning_rate_init,
                         momentum=estimator.momentum, nesterov=bool(estimator.nesterovs_momentum),
                         convention="sklearn")


class TrainingRows:
    """Training inputs, targets and sample weights, placed for batches.

    Dense inputs move to the backend once (no copy when they are already its
    arrays in its dtype); sparse inputs stay on the host in CSR form and each
    batch is densified on its way to the backend.

    Parameters
    ----------
    backend : Backend
    X : array, shape (N, D), or a SciPy sparse matrix
    T : ndarray, shape (N, K)
        Targets (one column per output; class indicators for classifiers).
    sample_weight : ndarray, shape (N,), optional
    dtype : numpy dtype
    """

    def __init__(self, backend, X, T, sample_weight, dtype):
        self.backend = backend
        self.sparse = scipy.sparse.issparse(X)
        self.X = X.tocsr().astype(dtype) if self.sparse else backend.asarray(X, dtype=dtype)
        self.T = backend.asarray(np.asarray(T, dtype=dtype))
        self.n = T.shape[0]
        self.host_weights = None if sample_weight is None else np.asarray(sample_weight,
                                                                           np.float64)
        self.weights = None if sample_weight is None else backend.asarray(
            self.host_weights, dtype=dtype)

    def batch(self, host_index, device_index):
        """Rows of one batch: (X, T, row weights summing to 1 or None, total weight).

        ``host_index`` selects the rows on the host (a slice or an int array),
        ``device_index`` the same rows on the backend.
        """
        if self.sparse:
            X = self.backend.asarray(self.X[host_index].toarray())
        else:
            X = self.X[device_index]
        T = self.T[device_index]
        if self.weights is None:
            return X, T, None, float(T.shape[0])
        total = float(self.host_weights[host_index].sum())
        return X, T, self.weights[device_index] / T.dtype.type(total), total


def run_epoch(network, loss, optimizer, penalty, rows: TrainingRows, order, batch_size: int,
              data_loss_scale: float = 1.0) -> float:
    """One epoch of scikit-learn's mini-batch solver; returns its mean batch loss.

    Parameters
    ----------
    network : Sequential
    loss : Loss
    optimizer : Optimizer
    penalty : L2Penalty
    rows : TrainingRows
    order : ndarray of int, shape (N,), or None
        The epoch's sample order (host), None for the rows in order.
    batch_size : int
    data_loss_scale : float
        Factor on the data term of the reported loss (``1 / K`` for the
        regressor, whose reported squared error averages over the K outputs).

    Returns
    -------
    float
        scikit-learn's ``loss_``: the batch losses (data term plus L2 term,
        before the batch's update) weighted by batch rows, over N. Read from
        the backend once, at the end of the epoch.
    """
    backend = network.backend
    xp = backend.xp
    device_order = None if order is None else backend.asarray(order)
    batch_losses, batch_rows = [], []
    for start in range(0, rows.n, batch_size):
        stop = min(start + batch_size, rows.n)
        host_index = slice(start, stop) if order is None else order[start:stop]
        device_index = slice(start, stop) if order is None else device_order[start:stop]
        X, T, weights, total_weight = rows.batch(host_index, device_index)
        # Forward pass to the logits, keeping what backward needs.
        Y = network.forward(X, train=True)
        # Data loss and its gradient at the logits; the L2 term on the weights before the update.
        value, dY = loss(backend, Y, T, weights)
        value = value * data_loss_scale
        if penalty.alpha:
            value = value + penalty.value(network, total_weight)
        # Backward pass, then the L2 gradient (alpha / n) W on the weight matrices.
        network.backward(dY)
        penalty.add_gradient(network, total_weight)
        # One optimizer step over every parameter.
        optimizer.step(network)
        batch_losses.append(xp.asarray(value, dtype=np.float64).reshape(()))
        batch_rows.append(stop - start)
    values = backend.to_numpy(xp.stack(batch_losses))
    accumulated = 0.0
    for value, n_rows in zip(values.tolist(), batch_rows):
        accumulated += value * n_rows
    return accumulated / rows.n


def predict_outputs(network, X, out_activation: str, dtype):
    """Outputs after the output activation, (N, K), on the network's backend.

    ``X`` is a dense array (host or the backend's) or a SciPy sparse matrix,
    taken ``PREDICT_CHUNK`` rows at a time.
    """
    backend = network.backend
    sparse = scipy.sparse.issparse(X)
    loss = OUTPUT_LOSSES[out_activation]
    parts = []
    for start in range(0, X.shape[0], PREDICT_CHUNK):
        rows = X[start:start + PREDICT_CHUNK]
        rows = backend.asarray(rows.toarray() if sparse else rows, dtype=dtype)
        logits = network.forward(rows, train=False)
        parts.append(loss.probabilities(backend, logits) if out_activation != "identity"
                     else logits)
    return parts[0] if len(parts) == 1 else backend.xp.concatenate(parts)
