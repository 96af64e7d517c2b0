"""A 2-2-1 sigmoid network, one SGD step, worked out by hand with scalar arithmetic.

Weights, input and target are fixed; every intermediate below is the chain
rule written out for each scalar, independently of the library's matrix code.
Loss: MSE over the single output, L = (y - t)**2, so dL/dy = 2 (y - t).
"""

import math

import numpy as np
import pytest

from gpubackprop.nn.losses import MeanSquaredError
from gpubackprop.nn.model import mlp
from gpubackprop.nn.optim import SGD


def sig(z):
    return 1.0 / (1.0 + math.exp(-z))


# Input x, target t, learning rate.
x1, x2, t, lr = 0.5, -1.0, 1.0, 0.5
# Hidden layer: W1[i][j] connects input i to hidden unit j.
w11, w12, w21, w22, b1, b2 = 0.1, -0.2, 0.4, 0.3, 0.05, -0.1
# Output layer.
v1, v2, c = 0.7, -0.5, 0.2

# Forward: hidden pre-activations and outputs.
z1 = x1 * w11 + x2 * w21 + b1          # 0.05 - 0.4 + 0.05 = -0.30
z2 = x1 * w12 + x2 * w22 + b2          # -0.1 - 0.3 - 0.1 = -0.50
h1, h2 = sig(z1), sig(z2)
y = sig(h1 * v1 + h2 * v2 + c)
loss = (y - t) ** 2
# Backward: output delta, then hidden deltas through v and sigmoid'(z) = h (1 - h).
dy = 2 * (y - t)
dz_out = dy * y * (1 - y)
dv1, dv2, dc = dz_out * h1, dz_out * h2, dz_out
dz1 = dz_out * v1 * h1 * (1 - h1)
dz2 = dz_out * v2 * h2 * (1 - h2)
dw11, dw21, db1 = dz1 * x1, dz1 * x2, dz1
dw12, dw22, db2 = dz2 * x1, dz2 * x2, dz2


def test_hand_worked_numbers_are_what_we_think():
    # The same numbers to 6 digits, computed once with a calculator from the lines above.
    assert z1 == pytest.approx(-0.30) and z2 == pytest.approx(-0.50)
    assert h1 == pytest.approx(0.425557, abs=1e-6)
    assert h2 == pytest.approx(0.377541, abs=1e-6)
    assert h1 * v1 + h2 * v2 + c == pytest.approx(0.309120, abs=1e-6)
    assert y == pytest.approx(0.576670, abs=1e-6)
    assert dz_out == pytest.approx(-0.206688, abs=1e-6)


def test_one_sgd_step_matches_hand_computation(backend_name):
    model = mlp(2, [2], 1, activation="sigmoid", output_activation="sigmoid",
                device=backend_name, dtype="float64")
    model.load_state_arrays({"0.W": np.array([[w11, w12], [w21, w22]]), "0.b": np.array([b1, b2]),
                             "1.W": np.array([[v1], [v2]]), "1.b": np.array([c])})
    backend = model.backend
    X = backend.asarray(np.array([[x1, x2]]))
    T = backend.asarray(np.array([[t]]))

    Y = model.forward(X)
    value, dY = MeanSquaredError()(backend, Y, T)
    assert float(value) == pytest.approx(loss, rel=1e-12)
    model.backward(dY)
    grads = {k: backend.to_numpy(v) for k, v in model.gradients().items()}
    np.testing.assert_allclose(grads["0.W"], [[dw11, dw12], [dw21, dw22]], rtol=1e-12)
    np.testing.assert_allclose(grads["0.b"], [db1, db2], rtol=1e-12)
    np.testing.assert_allclose(grads["1.W"], [[dv1], [dv2]], rtol=1e-12)
    np.testing.assert_allclose(grads["1.b"], [dc], rtol=1e-12)

    SGD(lr=lr).step(model)
    params = model.state_arrays()
    np.testing.assert_allclose(params["0.W"], [[w11 - lr * dw11, w12 - lr * dw12],
                                               [w21 - lr * dw21, w22 - lr * dw22]], rtol=1e-12)
    np.testing.assert_allclose(params["1.W"], [[v1 - lr * dv1], [v2 - lr * dv2]], rtol=1e-12)
    np.testing.assert_allclose(params["1.b"], [c - lr * dc], rtol=1e-12)
