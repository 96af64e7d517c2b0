"""Losses: values against direct formulas, stability for large logits."""

import warnings

import numpy as np
import pytest

from gpubackprop.errors import InputError
from gpubackprop.nn.losses import MeanSquaredError, SoftmaxCrossEntropy, get_loss


def test_cross_entropy_value(backend, rng):
    Z = rng.standard_normal((5, 4))
    T = np.eye(4)[rng.integers(0, 4, 5)]
    loss, dZ = SoftmaxCrossEntropy()(backend, backend.asarray(Z), backend.asarray(T))
    P = np.exp(Z) / np.exp(Z).sum(axis=1, keepdims=True)
    assert float(loss) == pytest.approx(-(T * np.log(P)).sum() / 5, rel=1e-12)
    np.testing.assert_allclose(backend.to_numpy(dZ), (P - T) / 5, rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cross_entropy_is_stable_for_huge_logits(backend, dtype):
    Z = np.array([[1e4, -1e4, 0.0], [-3e4, 3e4, 2.9e4]], dtype=dtype)
    T = np.array([[0, 1, 0], [1, 0, 0]], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow or divide warning fails the test
        loss, dZ = SoftmaxCrossEntropy()(backend, backend.asarray(Z), backend.asarray(T))
    # Row 1: -log_softmax = 2e4; row 2: -log_softmax = 6e4; mean 4e4.
    assert float(loss) == pytest.approx(4e4, rel=1e-6)
    assert np.isfinite(backend.to_numpy(dZ)).all()


def test_sigmoid_is_stable_for_huge_inputs(backend):
    Z = backend.asarray(np.array([[-1e4, -100.0, 0.0, 100.0, 1e4]], dtype=np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Y = backend.to_numpy(backend.activation(Z, "sigmoid"))
    np.testing.assert_allclose(Y, [[0.0, 0.0, 0.5, 1.0, 1.0]], atol=1e-30)


def test_mse_reductions(backend, rng):
    Y, T = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    mean, d_mean = MeanSquaredError()(backend, backend.asarray(Y), backend.asarray(T))
    total, d_sum = MeanSquaredError("sum")(backend, backend.asarray(Y), backend.asarray(T))
    assert float(mean) == pytest.approx(((Y - T) ** 2).mean(), rel=1e-12)
    assert float(total) == pytest.approx(((Y - T) ** 2).sum(), rel=1e-12)
    np.testing.assert_allclose(backend.to_numpy(d_sum), 2 * (Y - T), rtol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(d_mean), 2 * (Y - T) / 12, rtol=1e-12)


def test_unknown_loss_lists_valid_names():
    with pytest.raises(InputError, match="unknown loss 'hinge'; valid names: mse, cross_entropy"):
        get_loss("hinge")


# ------------------------------------------------ per-step cross-entropy (N, T, K)
@pytest.mark.parametrize("shape", [(3, 5, 4), (7, 33, 10)])
@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-12), ("float32", 2e-6)])
def test_sequence_cross_entropy_matches_torch(backend, torch, rng, shape, dtype, rtol):
    """Softmax over the classes of every step; mean over N*T; gradient as torch's
    ``cross_entropy`` on the flattened (N*T, K), computed in float64."""
    N, T, K = shape
    Z = (3 * rng.standard_normal(shape)).astype(dtype)
    labels = rng.integers(0, K, (N, T))
    targets = np.eye(K, dtype=dtype)[labels]

    loss, dZ = SoftmaxCrossEntropy()(backend, backend.asarray(Z), backend.asarray(targets))

    logits = torch.tensor(Z.reshape(-1, K), dtype=torch.float64, requires_grad=True)
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor(labels.reshape(-1)))
    expected.backward()
    assert backend.to_numpy(dZ).shape == shape
    assert float(loss) == pytest.approx(expected.item(), rel=rtol)
    grad = logits.grad.numpy()  # entries far below the largest are not held to rtol
    np.testing.assert_allclose(backend.to_numpy(dZ).reshape(-1, K), grad,
                               rtol=rtol, atol=rtol * np.abs(grad).max())


def test_sequence_cross_entropy_with_soft_targets_matches_torch(backend, torch, rng):
    N, T, K = 4, 6, 5
    Z = rng.standard_normal((N, T, K))
    targets = rng.dirichlet(np.ones(K), size=(N, T))
    loss, dZ = SoftmaxCrossEntropy()(backend, backend.asarray(Z), backend.asarray(targets))
    logits = torch.tensor(Z.reshape(-1, K), requires_grad=True)
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor(targets.reshape(-1, K)))
    expected.backward()
    assert float(loss) == pytest.approx(expected.item(), rel=1e-12)
    np.testing.assert_allclose(backend.to_numpy(dZ).reshape(-1, K), logits.grad.numpy(),
                               rtol=1e-12, atol=1e-15)


def test_sequence_cross_entropy_of_a_non_contiguous_view(backend, rng):
    """Time-major logits seen as (N, T, K) through a transpose: same answer as a copy."""
    Z_tm = rng.standard_normal((6, 4, 3))  # (T, N, K)
    targets = np.eye(3)[rng.integers(0, 3, (4, 6))]
    view = backend.asarray(Z_tm).transpose(1, 0, 2)
    loss, dZ = SoftmaxCrossEntropy()(backend, view, backend.asarray(targets))
    copy_loss, copy_dZ = SoftmaxCrossEntropy()(
        backend, backend.asarray(np.ascontiguousarray(Z_tm.transpose(1, 0, 2))),
        backend.asarray(targets))
    assert float(loss) == pytest.approx(float(copy_loss), rel=1e-12)
    np.testing.assert_allclose(backend.to_numpy(dZ), backend.to_numpy(copy_dZ), rtol=1e-12)


def test_time_distributed_outputs_get_per_step_loss_and_probabilities(backend, rng):
    """An RNN with per-step outputs: the loss is the mean of each step's own loss."""
    from gpubackprop.nn.layers import Linear
    from gpubackprop.nn.model import Sequential
    from gpubackprop.nn.recurrent import RNN, TimeDistributed

    model = Sequential([RNN(6, return_sequences=True), TimeDistributed(Linear(4))],
                       n_inputs=3, device=backend, dtype="float64", seed=3)
    X = backend.asarray(rng.standard_normal((5, 7, 3)))
    targets = np.eye(4)[rng.integers(0, 4, (5, 7))]
    Y = model.forward(X)
    loss, dY = SoftmaxCrossEntropy()(backend, Y, backend.asarray(targets))
    per_step = [float(SoftmaxCrossEntropy()(backend, Y[:, t].copy(),
                                            backend.asarray(targets[:, t]))[0])
                for t in range(7)]
    assert float(loss) == pytest.approx(np.mean(per_step), rel=1e-12)
    P = backend.to_numpy(SoftmaxCrossEntropy().probabilities(backend, Y))
    np.testing.assert_allclose(P.sum(axis=-1), np.ones((5, 7)), rtol=1e-12)
    model.backward(dY)  # the (N, T, K) gradient flows back through both layers
    assert all(np.isfinite(backend.to_numpy(g)).all() for g in model.gradients().values())


@pytest.mark.parametrize("Z_shape, T_shape", [((5,), (5,)), ((2, 3, 4), (6, 4)),
                                              ((2, 3, 4), (2, 4, 3))])
def test_cross_entropy_refuses_mismatched_shapes(backend, Z_shape, T_shape):
    with pytest.raises(InputError, match=r"softmax cross-entropy needs logits of shape "
                                         r"\(N, classes\) or \(N, steps, classes\)"):
        SoftmaxCrossEntropy()(backend, backend.asarray(np.zeros(Z_shape)),
                              backend.asarray(np.zeros(T_shape)))
