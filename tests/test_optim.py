"""Optimizer updates against their formulas, and global-norm clipping."""

import numpy as np
import pytest

from gpubackprop.backends.base import CLIP_EPSILON
from gpubackprop.errors import InputError
from gpubackprop.nn.model import mlp
from gpubackprop.nn.optim import (OPTIMIZERS, SGD, Adam, AdamW, Momentum, RMSprop,
                                  get_optimizer, optimizer_from_config)


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


@pytest.mark.parametrize("scale", [1.0, 1e-5], ids=["norm-about-10", "norm-about-1e-4"])
def test_clipping_follows_torch_with_the_stated_epsilon(backend, torch, rng, scale):
    """torch.nn.utils.clip_grad_norm_ scales by min(1, c / (norm + 1e-6)); ours adds the
    1e-12 that README and CLIP_EPSILON state. Same rule otherwise, so ours equals torch's
    result times (norm + 1e-6) / (norm + 1e-12) to 1e-12, and the two agree to the
    stated relative 1e-6 / norm (1.4e-7 for this norm of about 7)."""
    assert CLIP_EPSILON == 1e-12
    grads = [scale * rng.standard_normal(shape) for shape in ((7, 5), (5,), (5, 3))]
    norm = np.sqrt(sum((g ** 2).sum() for g in grads))
    max_norm = norm / 10
    ours = [backend.asarray(g.copy()) for g in grads]
    returned = backend.clip_by_global_norm(ours, max_norm)
    theirs = [torch.tensor(g, requires_grad=True) for g in grads]
    for tensor, g in zip(theirs, grads):
        tensor.grad = torch.tensor(g)
    torch_norm = torch.nn.utils.clip_grad_norm_(theirs, max_norm)

    assert float(returned) == pytest.approx(float(torch_norm), rel=1e-12)
    factor = (norm + 1e-6) / (norm + 1e-12)
    for got, tensor in zip(ours, theirs):
        np.testing.assert_allclose(backend.to_numpy(got), tensor.grad.numpy() * factor,
                                   rtol=1e-12)
        np.testing.assert_allclose(backend.to_numpy(got), tensor.grad.numpy(),
                                   rtol=1e-6 / norm)
    clipped = np.sqrt(sum((backend.to_numpy(g) ** 2).sum() for g in ours))
    assert clipped == pytest.approx(max_norm * norm / (norm + 1e-12), rel=1e-12)


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


# ------------------------------------------------------------------- registry
@pytest.mark.parametrize("name, settings, message", [
    ("momentum", {"momentum": 1.0}, "momentum must be in \\[0, 1\\)"),
    ("adam", {"beta1": -0.1}, "beta1 must be in \\[0, 1\\)"),
    ("sgd", {"weight_decay": -1}, "weight_decay must be a non-negative number"),
    ("rmsprop", {"eps": 0}, "eps must be a positive number"),
    ("momentum", {"momentum": 0.0, "nesterov": True}, "nesterov momentum needs a momentum"),
    ("momentum", {"convention": "keras"}, "unknown convention 'keras'; valid names: pytorch, "
                                          "sklearn"),
    ("rmsprop", {"centered": "yes"}, "centered must be true or false"),
    ("adamw", {"decoupled": False}, "the adamw optimizer has no setting 'decoupled'"),
    ("sgd", {"momentum": 0.9}, "the sgd optimizer has no setting 'momentum'"),
    ("adam", {"weight_decay": float("inf")}, "weight_decay must be a finite number"),
])
def test_bad_settings_are_input_errors(name, settings, message):
    with pytest.raises(InputError, match=message):
        get_optimizer(name, **settings)


def test_defaults_follow_pytorch():
    assert Momentum().convention == "pytorch" and not Momentum().nesterov
    assert AdamW().weight_decay == 0.01 and Adam().weight_decay == 0.0
    assert (RMSprop().lr, RMSprop().alpha, RMSprop().momentum) == (0.01, 0.99, 0.0)
    assert Adam().config() == {"name": "adam", "lr": 1e-3, "clip_norm": None,
                               "weight_decay": 0.0, "beta1": 0.9, "beta2": 0.999,
                               "eps": 1e-8, "convention": "pytorch"}


def test_settings_are_fixed_once_built():
    optimizer = Adam()
    with pytest.raises(AttributeError, match="beta1 is fixed when the optimizer is built"):
        optimizer.beta1 = 0.5
    optimizer.lr = 0.5  # the learning rate is not a setting: schedules change it
    assert optimizer.lr == 0.5


def test_rmsprop_allocates_only_the_slots_its_settings_use(rng):
    model = model_with_grads("numpy", rng)
    for settings, slots in [({}, {"square_avg"}),
                            ({"momentum": 0.5}, {"square_avg", "momentum_buffer"}),
                            ({"centered": True}, {"square_avg", "grad_avg"})]:
        optimizer = RMSprop(**settings)
        optimizer.step(model)
        assert {key.split(".")[-1] for key in optimizer.state} == slots


def test_a_configuration_without_a_convention_is_the_heavy_ball_it_was_trained_with():
    old = {"name": "momentum", "lr": 0.1, "clip_norm": None, "momentum": 0.9}
    assert optimizer_from_config(old).convention == "sklearn"
    assert optimizer_from_config(Momentum().config()).convention == "pytorch"
    assert optimizer_from_config({"name": "adam", "lr": 1e-3}).convention == "pytorch"
    with pytest.raises(InputError, match="unknown optimizer 'adagrad'"):
        optimizer_from_config({"name": "adagrad"})
    with pytest.raises(InputError, match="needs a name"):
        optimizer_from_config(["momentum"])


def test_an_old_step_count_loads_and_a_foreign_step_state_is_refused(rng):
    model = model_with_grads("numpy", rng)
    optimizer = Adam()
    optimizer.load_state_arrays(model.backend, {"step_count": np.asarray(7)})
    assert optimizer.step_count == 7
    saved = Adam(weight_decay=0.1).state_arrays(model.backend)["step_state"]
    with pytest.raises(InputError, match="does not match its settings"):
        Adam().load_state_arrays(model.backend, {"step_state": saved})
    with pytest.raises(InputError, match="must be float64 of shape \\(13,\\)"):
        Adam().load_state_arrays(model.backend, {"step_state": np.zeros(4)})
