"""Optimizer updates against their formulas, and global-norm clipping."""

import numpy as np
import pytest

from gpubackprop.errors import InputError
from gpubackprop.nn.model import mlp
from gpubackprop.nn.optim import OPTIMIZERS, Adam, Momentum, SGD, get_optimizer


def model_with_grads(backend_name, rng):
    model = mlp(3, [4], 2, device=backend_name, dtype="float64", seed=0)
    for _, _, dW in model.parameters_and_gradients():
        dW[...] = model.backend.asarray(rng.standard_normal(dW.shape))
    return model


def host(model):
    return {name: (model.backend.to_numpy(W).copy(), model.backend.to_numpy(dW).copy())
            for name, W, dW in model.parameters_and_gradients()}


def test_sgd(backend_name, rng):
    model = model_with_grads(backend_name, rng)
    before = host(model)
    SGD(lr=0.3).step(model)
    for name, W in model.state_arrays().items():
        W0, dW = before[name]
        np.testing.assert_allclose(W, W0 - 0.3 * dW, rtol=1e-13)


def test_momentum_two_steps(backend_name, rng):
    model = model_with_grads(backend_name, rng)
    before = host(model)
    optimizer = Momentum(lr=0.1, momentum=0.9)
    optimizer.step(model)
    optimizer.step(model)  # same gradients twice: V1 = -lr g, V2 = mu V1 - lr g
    for name, W in model.state_arrays().items():
        W0, dW = before[name]
        np.testing.assert_allclose(W, W0 - 0.1 * dW + (-0.9 * 0.1 - 0.1) * dW, rtol=1e-12)


def test_adam_matches_the_paper(backend_name, rng):
    model = model_with_grads(backend_name, rng)
    before = host(model)
    optimizer = Adam(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8)
    for _ in range(3):
        optimizer.step(model)
    for name, W in model.state_arrays().items():
        W_ref, g = before[name]
        m = np.zeros_like(g)
        v = np.zeros_like(g)
        for t in range(1, 4):
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            m_hat, v_hat = m / (1 - 0.9 ** t), v / (1 - 0.999 ** t)
            W_ref = W_ref - 0.01 * m_hat / (np.sqrt(v_hat) + 1e-8)
        np.testing.assert_allclose(W, W_ref, rtol=1e-10)


def test_clipping_scales_to_the_global_norm(backend_name, rng):
    model = model_with_grads(backend_name, rng)
    norm_before = np.sqrt(sum((dW ** 2).sum() for _, dW in host(model).values()))
    assert norm_before > 1.0
    model.backend.clip_by_global_norm([dW for _, _, dW in model.parameters_and_gradients()], 1.0)
    norm_after = np.sqrt(sum((dW ** 2).sum() for _, dW in host(model).values()))
    assert norm_after == pytest.approx(1.0, rel=1e-9)


def test_clipping_leaves_small_gradients_alone(backend_name, rng):
    model = model_with_grads(backend_name, rng)
    before = host(model)
    model.backend.clip_by_global_norm([dW for _, _, dW in model.parameters_and_gradients()], 1e6)
    for name, (_, dW) in host(model).items():
        np.testing.assert_array_equal(dW, before[name][1])


@pytest.mark.parametrize("lr", [0, -0.1, float("nan")])
def test_learning_rate_must_be_positive(lr):
    with pytest.raises(InputError, match="learning rate must be a positive number"):
        SGD(lr=lr)


def test_unknown_optimizer_lists_valid_names():
    with pytest.raises(InputError, match="unknown optimizer 'adagrad'; valid names: " +
                       ", ".join(OPTIMIZERS)):
        get_optimizer("adagrad")
