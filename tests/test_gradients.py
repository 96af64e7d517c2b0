"""Gradient checks: every layer, both losses and a whole 3-layer model."""

import numpy as np
import pytest

from gpubackprop.verify.gradient_check import (check_backward, check_layer, check_loss, check_model,
                                        compare_gradients)
from gpubackprop.nn.activations import NAMES as ACTIVATION_NAMES
from gpubackprop.nn.layers import Activation, Linear, ReLU, Sigmoid, Tanh
from gpubackprop.nn.losses import MeanSquaredError, SoftmaxCrossEntropy
from gpubackprop.nn.model import mlp

RTOL = 1e-6

#: Every activation of the registry fused into a Linear layer and as a layer of its own.
LAYERS = {
    **{f"linear+{name}": (lambda name=name: Linear(5, name)) for name in ACTIVATION_NAMES},
    **{name: (lambda name=name: Activation(name)) for name in ACTIVATION_NAMES},
    "Sigmoid": Sigmoid,
    "Tanh": Tanh,
    "ReLU": ReLU,
}


@pytest.mark.parametrize("make_layer", LAYERS.values(), ids=LAYERS.keys())
def test_layer_gradients(backend, rng, make_layer):
    layer = make_layer()
    layer.build(backend, 4, rng, np.float64)
    X = backend.asarray(rng.standard_normal((6, 4)))
    errors = check_layer(layer, X, rtol=RTOL)
    assert set(errors) == {"X", *layer.params}
    assert max(errors.values()) <= RTOL


@pytest.mark.parametrize("loss", [SoftmaxCrossEntropy(), MeanSquaredError(),
                                  MeanSquaredError("sum")], ids=["cross_entropy", "mse", "sse"])
def test_loss_gradients(backend, rng, loss):
    Y = backend.asarray(rng.standard_normal((7, 3)) * 4)
    T = backend.asarray(np.eye(3)[rng.integers(0, 3, 7)])
    assert check_loss(loss, backend, Y, T, rtol=RTOL)["Y"] <= RTOL


@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
@pytest.mark.parametrize("loss", [SoftmaxCrossEntropy(), MeanSquaredError()],
                         ids=["cross_entropy", "mse"])
def test_three_layer_model_gradients(backend_name, rng, activation, loss):
    model = mlp(5, [7, 6], 3, activation=activation,
                output_activation="sigmoid" if loss.name == "mse" else "identity",
                device=backend_name, dtype="float64", seed=3)
    backend = model.backend
    X = backend.asarray(rng.standard_normal((8, 5)))
    T = backend.asarray(np.eye(3)[rng.integers(0, 3, 8)])
    errors = check_model(model, loss, X, T, rtol=RTOL)
    assert set(errors) == {"X", "0.W", "0.b", "1.W", "1.b", "2.W", "2.b"}
    assert max(errors.values()) <= RTOL


def test_failure_names_parameter_and_worst_element():
    analytic = {"W": np.array([[1.0, 2.0], [3.0, 4.0]])}
    numerical = {"W": np.array([[1.0, 2.0], [3.1, 4.0]])}
    with pytest.raises(AssertionError, match=r"'W'.*index \(1, 0\).*analytic 3.*numerical 3.1"):
        compare_gradients(analytic, numerical)


def test_check_backward_catches_a_wrong_gradient(rng):
    X = rng.standard_normal(5)
    wrong = 2 * X * 1.001  # d/dX sum(X**2) is 2X; a 0.1% error must be caught

    with pytest.raises(AssertionError, match="gradient check failed for 'X'"):
        check_backward(lambda: float((X ** 2).sum()), {"X": X}, {"X": wrong})
