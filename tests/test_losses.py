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
