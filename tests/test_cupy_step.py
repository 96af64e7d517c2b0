"""The CuPy backend's compiled step, run on the emulated backend.

After its first call for a batch shape the step allocates nothing and copies
nothing between host and device, also while a schedule changes the learning
rate; its weights match the eager interpreter's. Counters: see
``tests/cuda_emulation/fake_cupy.py``.
"""

import dataclasses

import numpy as np
import pytest

from gpubackprop import RNN, Linear, Sequential, Trainer, mlp
from gpubackprop.backends.cupy.step import DeviceStep
from gpubackprop.errors import InputError
from gpubackprop.nn.plan import Declined
from gpubackprop.training.callbacks import LearningRateSchedule

COMPILER = "cupy-device-step"


def counters():
    from cuda_emulation.fake_cupy import DeviceArray

    return np.array([DeviceArray.allocations, DeviceArray.host_reads, DeviceArray.host_writes])


@pytest.fixture
def data(rng):
    X = rng.standard_normal((320, 12)).astype(np.float32)
    y = (X[:, 0] - X[:, 1] + 0.5 * X[:, 2] > 0).astype(np.int64) + (X[:, 3] > 0.8)
    return X, y


def fit(backend, data, optimizer="adam", epochs=5, activation="tanh", **options):
    """Five epochs of ten batches (50 steps), the learning rate cut by 10 every 2 epochs."""
    model = mlp(12, [16, 8], 3, activation=activation, device=backend, seed=4)
    schedule = LearningRateSchedule("step", base_lr=0.01, epochs=epochs, step_size=2)
    trainer = Trainer(model, optimizer=optimizer, lr=0.01, batch_size=32, seed=1, verbose=0,
                      callbacks=[schedule], **options)
    trainer.fit(*data, epochs=epochs)
    return trainer


@pytest.mark.parametrize("optimizer, activation", [
    ("sgd", "relu"), ("momentum", "sigmoid"), ("adam", "tanh"), ("adam", "silu")])
def test_no_allocation_or_transfer_after_the_first_call(monkeypatch, emulated_gpu, data,
                                                         optimizer, activation):
    per_call = []
    original = DeviceStep.__call__

    def counted(step, *args):
        before = counters()
        result = original(step, *args)
        per_call.append(counters() - before)
        return result

    monkeypatch.setattr(DeviceStep, "__call__", counted)
    trainer = fit(emulated_gpu, data, optimizer, activation=activation)
    assert trainer.step.compiler == COMPILER and trainer.step.declined == ()
    assert trainer.history.lr == pytest.approx([0.01, 0.01, 0.001, 0.001, 0.0001])
    assert len(per_call) == 50
    allocations, reads, writes = np.array(per_call).T
    assert allocations[0] > 0, "the first call allocates the buffers"
    assert allocations[1:].tolist() == [0] * 49, "an allocation after the first call"
    assert reads.tolist() == [0] * 50, "a read back to the host inside a step"
    assert writes[1:].tolist() == [0] * 49, "a copy to the device after the first call"
    # The same run through the eager interpreter (the layers' own passes) on the same backend.
    monkeypatch.setattr(type(emulated_gpu), "step_compilers", ())
    eager = fit(emulated_gpu, data, optimizer, activation=activation)
    assert eager.step.compiler == "eager"
    np.testing.assert_allclose(trainer.history.loss, eager.history.loss, rtol=2e-6)
    assert trainer.history.accuracy == eager.history.accuracy
    for name, W in eager.model.state_arrays().items():
        np.testing.assert_allclose(trainer.model.state_arrays()[name], W, rtol=1e-5,
                                   atol=1e-6, err_msg=name)


def test_a_short_last_batch_gets_buffers_of_its_own(emulated_gpu, data, rng):
    X, y = data
    trainer = fit(emulated_gpu, (X[:300], y[:300]), epochs=2)  # batches of 32 and one of 12
    assert sorted(trainer.step.buffers) == [12, 32]
    assert trainer.step.calls == 20


def test_a_slice_index_and_targets_without_labels(emulated_gpu, rng):
    model = mlp(5, [6], 3, device=emulated_gpu, dtype="float64", seed=0)
    step = model.compile_step("cross_entropy", "sgd", 10)
    assert isinstance(step, DeviceStep)
    X = emulated_gpu.asarray(rng.standard_normal((20, 5)))
    T = emulated_gpu.asarray(rng.dirichlet(np.ones(3), size=20))
    reference = mlp(5, [6], 3, device="numpy", dtype="float64", seed=0)
    expected = reference.compile_step("cross_entropy", "sgd", 10)
    for index in (slice(0, 10), slice(10, 20)):
        loss, hits = step(X, T, None, index)
        want, _ = expected(emulated_gpu.to_numpy(X), emulated_gpu.to_numpy(T), None, index)
        assert hits is None and float(loss) == pytest.approx(float(want), rel=1e-12)
    with pytest.raises(InputError, match="a batch of 11 rows; this step was built for 1 to 10"):
        step(X, T, None, slice(0, 11))


class MixedPolicy:
    """A mixed policy as a compiler sees it (Precision itself refuses one today)."""

    is_uniform = False
    param = np.dtype(np.float32)

    def __str__(self):
        return "float32/float32/float32/float64"


def test_the_compiler_declines_what_it_cannot_run(emulated_gpu):
    from gpubackprop.backends.cupy.step import DeviceStepCompiler

    compiler = DeviceStepCompiler()

    def reason(plan):
        answer = compiler.compile(plan)
        return answer.reason if isinstance(answer, Declined) else None

    model = mlp(4, [5], 3, device=emulated_gpu, seed=0)
    plan = model.plan("cross_entropy", "adam", 8)
    assert reason(plan) is None
    silu = dataclasses.replace(plan.ops[0], activation="no-such-activation")
    assert reason(dataclasses.replace(plan, ops=(silu, plan.ops[1]))) == \
        "layer 0's activation 'no-such-activation' has no CUDA kernel"
    assert reason(dataclasses.replace(plan, precision=MixedPolicy())) == \
        "precision float32/float32/float32/float64 is not one of the kernels' dtypes in every role"
    unknown_rule = dataclasses.replace(plan.update, name="lion", rule="lion")
    assert reason(dataclasses.replace(plan, update=unknown_rule)) == \
        "no CUDA kernel for the optimizer 'lion'"
    assert reason(model.plan("mse", "adam", 8)) == "the loss is mse, not cross_entropy"
    assert reason(model.plan("cross_entropy", Trainer(model, clip_norm=1.0).optimizer, 8)) == \
        "gradient clipping is not compiled (its norm is a reduction over every gradient)"
    sigmoid_out = mlp(4, [5], 3, device=emulated_gpu, output_activation="sigmoid")
    assert reason(sigmoid_out.plan("cross_entropy", "sgd", 8)) == \
        "the output layer has an activation (cross-entropy takes logits)"
    rnn = Sequential([RNN(4), Linear(3)], n_inputs=2, device=emulated_gpu)
    assert reason(rnn.plan("cross_entropy", "sgd", 8)) == "layer 0 is a RNN, not Linear"
    W = model.layers[0].params["W"]
    model.layers[0].params["W"] = W.T.copy().T  # the same values in Fortran order
    assert reason(model.plan("cross_entropy", "sgd", 8)) == \
        "parameter 0.W, its gradient or its state is not C-contiguous"
