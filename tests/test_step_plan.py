"""The step plan, its compilers' declines, the eager fallback, shapes and the precision policy."""

import dataclasses

import numpy as np
import pytest

from gpubackprop import (GRU, LSTM, RNN, InputError, Linear, Precision, ReLU, Sequential,
                         TimeDistributed, Trainer, mlp)
from gpubackprop.nn import optim
from gpubackprop.nn.optim import OPTIMIZERS, Momentum
from gpubackprop.nn.plan import (Declined, EagerStep, LayerOp, LinearOp, compile_plan)

NUMBA = pytest.param("numba", marks=pytest.mark.numba)


def test_a_plan_describes_layers_loss_and_update(backend, rng):
    model = Sequential([Linear(5, "tanh"), ReLU(), Linear(3)], n_inputs=4, device=backend,
                       dtype="float64", seed=0)
    plan = model.plan("mse", "adam", 16)
    assert [type(op) for op in plan.ops] == [LinearOp, LayerOp, LinearOp]
    first, relu, last = plan.ops
    assert first.W is model.layers[0].params["W"] and first.db is model.layers[0].grads["b"]
    assert (first.activation, relu.kind, relu.name, last.activation) == ("tanh", "ReLU", "1",
                                                                          "identity")
    assert (plan.loss.name, plan.loss.options) == ("mse", {"reduction": "mean"})
    update = plan.update
    assert (update.name, update.rule, update.clip_norm) == ("adam", "adam", None)
    assert update.settings == {"weight_decay": 0.0, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                               "convention": "pytorch"}
    assert update.slot_roles == ("m", "v")
    assert [param.name for param in update.params] == ["0.W", "0.b", "2.W", "2.b"]
    # Adam's two moments per parameter, created by the plan, shaped like the parameter.
    M, V = update.slots_of(last.W)
    assert M.shape == V.shape == last.W.shape and M is not V
    assert (plan.batch_size, plan.precision, plan.input_shape) == (16, Precision.uniform(
        "float64"), (4,))


def test_the_eager_step_is_the_layer_path_bit_for_bit(rng):
    X, y = rng.standard_normal((40, 4)), rng.integers(0, 3, 40)
    T = np.eye(3)[y]
    models = [mlp(4, [6], 3, device="numpy", dtype="float64", seed=1) for _ in range(2)]
    step = models[0].compile_step("cross_entropy", "momentum", 20)
    assert isinstance(step, EagerStep) and step.compiler == "eager"
    optimizer = OPTIMIZERS["momentum"](lr=0.1)
    from gpubackprop.nn.losses import get_loss

    loss = get_loss("cross_entropy")
    for index in (np.arange(20), np.arange(20, 40)):
        got, hits = step(X, T, y, index)
        Y = models[1].forward(X[index])
        expected, dY = loss(models[1].backend, Y, T[index])
        models[1].backward(dY)
        optimizer.step(models[1])
        assert float(got) == float(expected) and int(hits) == int((Y.argmax(1) == y[index]).sum())
    for name, W in models[1].state_arrays().items():
        assert (models[0].state_arrays()[name] == W).all(), name


class Raising:
    name = "raising"

    def compile(self, plan):
        raise RuntimeError("boom")


class Refusing:
    name = "refusing"

    def compile(self, plan):
        return Declined("it never accepts")


def test_a_compiler_that_raises_is_a_decline_naming_the_exception(monkeypatch, backend):
    model = mlp(4, [5], 3, device=backend, seed=0)
    monkeypatch.setattr(type(backend), "step_compilers", (Raising(), Refusing()))
    step = model.compile_step("cross_entropy", "sgd", 8)
    assert step.compiler == "eager"
    assert step.declined == (("raising", "raised RuntimeError: boom"),
                             ("refusing", "it never accepts"))
    assert step.describe() == ("eager; raising declined: raised RuntimeError: boom; "
                               "refusing declined: it never accepts")


def test_the_first_compiler_that_accepts_wins(rng):
    model = mlp(4, [5], 3, device="numpy", seed=0)

    class Accepting:
        name = "accepting"

        def compile(self, plan):
            step = EagerStep(plan)
            step.compiler = self.name
            return step

    step = compile_plan(model.plan("cross_entropy", "sgd", 8), (Refusing(), Accepting(), Raising()))
    assert step.compiler == "accepting" and step.declined == (("refusing", "it never accepts"),)


class SignSGD(optim.Optimizer):
    """``W -= lr sign(dW)``: a newly registered optimizer, with an update rule no backend fuses."""

    spec = optim.OptimizerSpec("signsgd", optim.UpdateRule("sign", len(optim.UPDATE_RULES)),
                               0.01, ())

    def update(self, backend, name, W, dW, state):
        W -= W.dtype.type(self.lr) * backend.xp.sign(dW)


def test_a_newly_registered_optimizer_trains_through_the_eager_fallback(monkeypatch, rng):
    monkeypatch.setitem(OPTIMIZERS, "signsgd", SignSGD)
    X = rng.standard_normal((120, 5))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    trainer = Trainer(mlp(5, [8], 2, seed=0), optimizer="signsgd", lr=0.01, batch_size=30,
                      verbose=0)  # the default CPU backend
    history = trainer.fit(X, y, epochs=15)
    assert trainer.step.compiler == "eager"
    if trainer.backend.name == "numba":
        assert trainer.step.declined == (("numba-whole-step",
                                          "no fused loop for the sign update rule"),)
    assert trainer.optimizer.step_count == 60
    assert history.loss[-1] < history.loss[0] and history.accuracy[-1] > 0.9


@pytest.mark.parametrize("device", ["numpy", NUMBA])
def test_an_unregistered_subclass_is_not_taken_for_its_parent(device):
    class Quiet(Momentum):
        pass

    step = mlp(4, [5], 3, device=device, seed=0).compile_step("cross_entropy", Quiet(lr=0.1), 8)
    assert step.plan.update.name == step.plan.update.rule == "Quiet (not registered)"
    assert step.compiler == "eager"
    if device == "numba":
        assert step.declined == (("numba-whole-step",
                                  "no fused loop for the Quiet (not registered) update rule"),)


class MixedPolicy:
    """A mixed policy as a compiler sees it (Precision itself refuses one today)."""

    is_uniform = False
    param = np.dtype(np.float32)

    def __str__(self):
        return "float32/float32/float32/float64"


@pytest.mark.numba
def test_the_numba_compiler_declines_what_it_has_no_kernel_for(rng):
    from gpubackprop.backends.numba.parallel import WholeStepCompiler

    compiler = WholeStepCompiler()
    plan = mlp(4, [5], 3, device="numba", seed=0).plan("cross_entropy", "adam", 8)
    assert not isinstance(compiler.compile(plan), Declined)
    # An activation that has no code in the Numba kernels.
    unknown = dataclasses.replace(plan, ops=(dataclasses.replace(plan.ops[0], activation="gelu"),
                                             plan.ops[1]))
    assert compiler.compile(unknown) == Declined("layer 0's activation 'gelu' has no Numba code")
    # A precision policy the kernels cannot run (mixed dtypes; bfloat16 later).
    mixed = dataclasses.replace(plan, precision=MixedPolicy())
    assert compiler.compile(mixed) == Declined(
        "precision float32/float32/float32/float64 is not one of the kernels' dtypes in every role")
    rnn = Sequential([RNN(4), Linear(3)], n_inputs=2, device="numba").plan("ce", "sgd", 4)
    assert compiler.compile(rnn) == Declined("layer 0 is a RNN, not Linear")
    for layer in (LSTM(4), GRU(4)):
        gated = Sequential([layer, Linear(3)], n_inputs=2, device="numba")
        assert compiler.compile(gated.plan("ce", "sgd", 4)) == Declined(
            f"layer 0 is a {type(layer).__name__}, not Linear")
        assert gated.compile_step("ce", "sgd", 4).describe().startswith("eager; ")


def test_a_step_in_another_precision_than_the_models_is_refused():
    model = mlp(4, [5], 3, device="numpy", dtype="float32")
    with pytest.raises(InputError, match="a step in precision float64 needs a model built "
                                         "with it; this one is float32"):
        model.compile_step("cross_entropy", "sgd", 8, precision="float64")
    assert model.compile_step("ce", "sgd", 8, precision=Precision.uniform("float32")).plan


def test_precision_policy():
    policy = Precision.uniform("float64")
    assert policy.param == policy.compute == policy.accumulate == policy.optimizer_state == \
        np.dtype(np.float64)
    assert str(policy) == "float64" and policy.is_uniform
    model = mlp(3, [2], 2, device="numpy", precision=policy)
    assert model.dtype == np.float64 and model.precision is policy
    assert all(W.dtype == np.float64 for W in model.parameters().values())
    with pytest.raises(InputError, match="mixed dtypes are not supported yet"):
        Precision("float32", "float32", "float32", "float64")
    with pytest.raises(InputError, match="unknown optimizer_state dtype 'float16'"):
        Precision("float32", "float32", "float32", "float16")
    with pytest.raises(InputError, match="dtype=float32 disagrees with precision=float64"):
        mlp(3, [2], 2, device="numpy", precision=policy, dtype="float32")


def test_shapes_propagate_through_the_layers():
    model = Sequential([RNN(6, return_sequences=True), TimeDistributed(Linear(4, "relu")),
                        RNN(5), Linear(2)], n_inputs=3, device="numpy")
    assert model.input_shape == (None, 3) and model.output_shape == (2,)
    assert model.n_outputs == 2 and model.input_ndim == 3
    sequences = Sequential([RNN(6, return_sequences=True)], n_inputs=3, device="numpy")
    assert sequences.output_shape == (None, 6)
    with pytest.raises(InputError, match=r"Linear takes rows of shape \(features,\), got samples "
                                         r"of shape \(None, 6\); wrap it in TimeDistributed"):
        Sequential([RNN(6, return_sequences=True), Linear(2)], n_inputs=3, device="numpy")
    with pytest.raises(InputError, match=r"RNN takes sequences of shape \(time steps, features\)"):
        Sequential([Linear(3), RNN(2)], n_inputs=3, device="numpy")
