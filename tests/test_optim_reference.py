"""Every optimizer against torch.optim (and the sklearn conventions against scikit-learn),
in float64 over several steps with a learning rate that changes every step.

torch is optional: these tests skip without it, except under ``CI=true``
(``.ci/run`` installs it), where a missing torch fails them.
"""


import numpy as np
import pytest

from gpubackprop.nn.model import mlp
from gpubackprop.nn.optim import get_optimizer

#: Learning-rate factors of the steps (a schedule that moves both ways).
LR_FACTORS = (1.0, 0.5, 2.0, 0.1, 0.7, 1.3)

#: id: (our optimizer and settings, torch.optim class and arguments, base learning rate)
TORCH_CASES = {
    "sgd": (("sgd", {}), ("SGD", {}), 0.1),
    "sgd weight_decay": (("sgd", {"weight_decay": 0.1}), ("SGD", {"weight_decay": 0.1}), 0.1),
    "momentum": (("momentum", {"momentum": 0.9}), ("SGD", {"momentum": 0.9}), 0.1),
    "momentum nesterov weight_decay": (
        ("momentum", {"momentum": 0.8, "nesterov": True, "weight_decay": 0.05}),
        ("SGD", {"momentum": 0.8, "nesterov": True, "weight_decay": 0.05}), 0.1),
    "adam": (("adam", {}), ("Adam", {}), 0.01),
    "adam weight_decay": (("adam", {"weight_decay": 0.1, "beta1": 0.8, "eps": 1e-3}),
                          ("Adam", {"weight_decay": 0.1, "betas": (0.8, 0.999), "eps": 1e-3}),
                          0.01),
    "adamw default decay": (("adamw", {}), ("AdamW", {}), 0.01),
    "adamw": (("adamw", {"weight_decay": 0.5, "beta2": 0.99}),
              ("AdamW", {"weight_decay": 0.5, "betas": (0.9, 0.99)}), 0.05),
    "rmsprop": (("rmsprop", {}), ("RMSprop", {}), 0.01),
    "rmsprop centered momentum weight_decay": (
        ("rmsprop", {"centered": True, "momentum": 0.9, "weight_decay": 0.1, "alpha": 0.9}),
        ("RMSprop", {"centered": True, "momentum": 0.9, "weight_decay": 0.1, "alpha": 0.9}),
        0.01),
    "rmsprop momentum": (("rmsprop", {"momentum": 0.5}), ("RMSprop", {"momentum": 0.5}), 0.01),
}


def gradient_sequence(model, steps):
    """Per step, a gradient for every parameter (host float64 arrays)."""
    rng = np.random.default_rng(42)
    return [{name: rng.standard_normal(W.shape) for name, W, _ in
             model.parameters_and_gradients()} for _ in range(steps)]


def run_ours(backend_name, name, settings, base_lr, grads):
    """Our parameters after one step per gradient set, the rate changed before each step."""
    model = mlp(3, [4], 2, device=backend_name, dtype="float64", seed=0)
    initial = {name_: model.backend.to_numpy(W).copy()
               for name_, W, _ in model.parameters_and_gradients()}
    optimizer = get_optimizer(name, lr=base_lr, **settings)
    for factor, step_grads in zip(LR_FACTORS, grads):
        optimizer.lr = base_lr * factor
        for param, _, dW in model.parameters_and_gradients():
            dW[...] = model.backend.asarray(step_grads[param])
        optimizer.step(model)
    assert optimizer.step_count == len(grads)
    return initial, model.state_arrays()


@pytest.mark.parametrize("case", list(TORCH_CASES))
def test_matches_torch_optim(torch, backend_name, case):
    (name, settings), (torch_name, torch_settings), base_lr = TORCH_CASES[case]
    probe = mlp(3, [4], 2, device="numpy", dtype="float64", seed=0)
    grads = gradient_sequence(probe, len(LR_FACTORS))
    initial, ours = run_ours(backend_name, name, settings, base_lr, grads)
    params = {key: torch.tensor(value, dtype=torch.float64, requires_grad=True)
              for key, value in initial.items()}
    reference = getattr(torch.optim, torch_name)(list(params.values()), lr=base_lr,
                                                 **torch_settings)
    for factor, step_grads in zip(LR_FACTORS, grads):
        for group in reference.param_groups:
            group["lr"] = base_lr * factor
        for key, tensor in params.items():
            tensor.grad = torch.tensor(step_grads[key], dtype=torch.float64)
        reference.step()
    for key, tensor in params.items():
        expected = tensor.detach().numpy()
        assert not np.allclose(expected, initial[key]), "the steps must move the weights"
        np.testing.assert_allclose(ours[key], expected, rtol=1e-11, atol=1e-13,
                                   err_msg=f"{case}: parameter {key}")


def sklearn_reference(kind, initial, grads, base_lr, **options):
    """scikit-learn's MLP optimizers (SGD with momentum, Adam) over the same steps."""
    from sklearn.neural_network._stochastic_optimizers import AdamOptimizer, SGDOptimizer

    names = list(initial)
    params = [initial[key].copy() for key in names]
    if kind == "sgd":
        optimizer = SGDOptimizer(params, learning_rate_init=base_lr, **options)
    else:
        optimizer = AdamOptimizer(params, learning_rate_init=base_lr, **options)
    for factor, step_grads in zip(LR_FACTORS, grads):
        # SGDOptimizer reads learning_rate; AdamOptimizer recomputes it from learning_rate_init.
        optimizer.learning_rate = optimizer.learning_rate_init = base_lr * factor
        optimizer.update_params(params, [step_grads[key] for key in names])
    return dict(zip(names, params))


@pytest.mark.parametrize("nesterov", [False, True])
def test_sklearn_convention_is_scikit_learns_momentum(backend_name, nesterov):
    probe = mlp(3, [4], 2, device="numpy", dtype="float64", seed=0)
    grads = gradient_sequence(probe, len(LR_FACTORS))
    initial, ours = run_ours(backend_name, "momentum", {"momentum": 0.9, "nesterov": nesterov,
                                                        "convention": "sklearn"}, 0.1, grads)
    expected = sklearn_reference("sgd", initial, grads, 0.1, momentum=0.9, nesterov=nesterov)
    for key, W in expected.items():
        np.testing.assert_allclose(ours[key], W, rtol=1e-11, atol=1e-13, err_msg=key)


def test_sklearn_convention_is_scikit_learns_adam(backend_name):
    probe = mlp(3, [4], 2, device="numpy", dtype="float64", seed=0)
    grads = gradient_sequence(probe, len(LR_FACTORS))
    settings = {"beta1": 0.8, "eps": 1e-3, "convention": "sklearn"}
    initial, ours = run_ours(backend_name, "adam", settings, 0.01, grads)
    expected = sklearn_reference("adam", initial, grads, 0.01, beta_1=0.8, epsilon=1e-3)
    for key, W in expected.items():
        np.testing.assert_allclose(ours[key], W, rtol=1e-11, atol=1e-13, err_msg=key)


def test_momentum_conventions_agree_until_the_rate_changes():
    probe = mlp(3, [4], 2, device="numpy", dtype="float64", seed=0)
    grads = gradient_sequence(probe, len(LR_FACTORS))
    runs = {}
    for convention in ("pytorch", "sklearn"):
        settings = {"momentum": 0.9, "convention": convention}
        constant = get_optimizer("momentum", lr=0.1, **settings)
        model = mlp(3, [4], 2, device="numpy", dtype="float64", seed=0)
        for step_grads in grads:
            for name, _, dW in model.parameters_and_gradients():
                dW[...] = step_grads[name]
            constant.step(model)
        runs[convention, "constant"] = model.state_arrays()
        runs[convention, "scheduled"] = run_ours("numpy", "momentum", settings, 0.1, grads)[1]
    for name, W in runs["pytorch", "constant"].items():
        np.testing.assert_allclose(runs["sklearn", "constant"][name], W, rtol=1e-12)
    assert not np.allclose(runs["sklearn", "scheduled"]["0.W"],
                           runs["pytorch", "scheduled"]["0.W"], rtol=1e-6)
