"""The optimizer's step state: on the backend's device, advanced by the step, read by the
kernels, written by schedules, saved and restored by checkpoints."""

from types import SimpleNamespace

import numpy as np
import pytest
from cuda_emulation.fake_cupy import DeviceArray
from cuda_emulation.host_kernels import signatures

from gpubackprop.backends.cupy import library
from gpubackprop.nn.model import mlp
from gpubackprop.nn.optim import LR, OPTIMIZERS, STATE_DTYPE, STEP, get_optimizer
from gpubackprop.training.callbacks import LearningRateSchedule
from gpubackprop.training.checkpoint import load_checkpoint, save_checkpoint
from gpubackprop.training.trainer import Trainer

#: Settings that take each optimizer through its widest kernel path.
WIDEST = {"sgd": {"weight_decay": 0.01}, "momentum": {"nesterov": True, "weight_decay": 0.01},
          "adam": {"weight_decay": 0.01}, "adamw": {},
          "rmsprop": {"centered": True, "momentum": 0.9, "weight_decay": 0.01}}


def model_with_grads(device, rng, dtype="float64"):
    model = mlp(3, [5], 2, device=device, dtype=dtype, seed=0)
    for _, _, dW in model.parameters_and_gradients():
        dW[...] = model.backend.asarray(rng.standard_normal(dW.shape).astype(dtype))
    return model


def launches(backend) -> int:
    return sum(kernel.launches for kernel in backend.kernels._kernels.values())


def test_every_optimizer_has_widest_settings():
    assert set(WIDEST) == set(OPTIMIZERS)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_steps_on_the_emulated_gpu_copy_nothing_between_host_and_device(emulated_gpu, rng,
                                                                         name):
    model = model_with_grads(emulated_gpu, rng, "float32")
    optimizer = get_optimizer(name, **WIDEST[name])
    writes = DeviceArray.host_writes
    optimizer.step(model)  # the first step puts the step state on the device
    assert DeviceArray.host_writes - writes == 1
    writes, reads, launched = DeviceArray.host_writes, DeviceArray.host_reads, \
        launches(emulated_gpu)
    for _ in range(50):
        optimizer.step(model)
    assert (DeviceArray.host_writes - writes, DeviceArray.host_reads - reads) == (0, 0)
    # Kernels, not the generic fallbacks: an advance and one update per parameter a step.
    assert launches(emulated_gpu) - launched == 50 * (1 + len(model.parameters_and_gradients()))
    assert optimizer.step_count == 51  # read back from the device


def test_optimizer_kernels_take_the_state_array_not_scalars():
    found = signatures()
    for name in library.KERNEL_FILES["optimizers.cu"]:
        params = found[name]
        scalars = [f"{p.ctype} {p.name}" for p in params if not p.is_pointer]
        # Only the element count of an update, or the rule of the advance.
        advance = name == "optimizer_advance"
        assert scalars == (["int rule"] if advance else ["I n"]), name
        assert [p.name for p in params if p.name == "state"] == ["state"], name


def test_a_schedule_writes_the_device_state_and_the_next_step_uses_it(emulated_gpu, rng):
    schedule = LearningRateSchedule("step", base_lr=0.01, epochs=4, step_size=1, gamma=0.5)
    results = {}
    for device in ("numpy", emulated_gpu):
        for scheduled in (True, False):
            model = model_with_grads(device, np.random.default_rng(5))
            optimizer = get_optimizer("adam", lr=0.01)
            trainer = SimpleNamespace(optimizer=optimizer)
            for epoch in range(1, 5):
                writes = DeviceArray.host_writes
                if scheduled:
                    schedule.on_epoch_begin(trainer, epoch)
                assert DeviceArray.host_writes == writes  # a write in place, not a copy
                for _ in range(3):
                    optimizer.step(model)
            results[getattr(device, "name", device), scheduled] = model.state_arrays()
            assert optimizer.lr == (schedule.lr_at(4) if scheduled else 0.01)
    for name, W in results["numpy", True].items():
        np.testing.assert_allclose(results["cupy-emulated", True][name], W, rtol=1e-12)
    assert not np.allclose(results["cupy-emulated", True]["0.W"],
                           results["cupy-emulated", False]["0.W"], rtol=1e-6)


def test_a_new_rate_takes_effect_at_the_next_step(backend_name, rng):
    model = model_with_grads(backend_name, rng)
    optimizer = get_optimizer("sgd", lr=0.1)
    optimizer.step(model)
    before = {name: np.array(W) for name, W in model.state_arrays().items()}
    optimizer.lr = 0.025
    optimizer.step(model)
    gradients = {name: model.backend.to_numpy(dW) for name, _, dW in
                 model.parameters_and_gradients()}
    for name, W in model.state_arrays().items():
        np.testing.assert_allclose(before[name] - W, 0.025 * gradients[name], rtol=1e-12)


def test_adam_corrections_are_computed_on_the_device(backend_name, rng):
    model = model_with_grads(backend_name, rng)
    optimizer = get_optimizer("adam", lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6)
    for _ in range(3):
        optimizer.step(model)
    state = optimizer.host_step_state()
    assert state.dtype == STATE_DTYPE and state[STEP] == 3 and state[LR] == 0.01
    index = optimizer.rule.index
    correction2 = np.sqrt(1 - 0.99 ** 3)
    np.testing.assert_allclose(state[index("step_size")], 0.01 * correction2 / (1 - 0.8 ** 3),
                               rtol=1e-14)
    np.testing.assert_allclose(state[index("eps_hat")], 1e-6 * correction2, rtol=1e-14)


def test_step_count_is_settable_and_restarts_the_corrections(rng):
    model = model_with_grads("numpy", rng)
    optimizer = get_optimizer("adam")
    optimizer.step(model)
    optimizer.step(model)
    optimizer.step_count = 0
    optimizer.step(model)
    assert optimizer.step_count == 1
    assert optimizer.host_step_state()[optimizer.rule.index("step_size")] == pytest.approx(
        1e-3 * np.sqrt(1 - 0.999) / (1 - 0.9))


@pytest.mark.parametrize("device", ["numpy", pytest.param("numba", marks=pytest.mark.numba)])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_resume_from_a_checkpoint_is_bit_identical(tmp_path, rng, device, name):
    X, y = rng.standard_normal((60, 4)), rng.integers(0, 3, size=60)

    def trainer(model, optimizer):
        schedule = LearningRateSchedule("step", 0.01, epochs=3, step_size=1, gamma=0.5)
        return Trainer(model, optimizer=optimizer, batch_size=16, shuffle=False, verbose=0,
                       callbacks=[schedule])

    settings = dict(WIDEST[name], lr=0.01)
    whole = trainer(mlp(4, [6], 3, device=device, seed=1), get_optimizer(name, **settings))
    whole.fit(X, y, epochs=3)
    part = trainer(mlp(4, [6], 3, device=device, seed=1), get_optimizer(name, **settings))
    part.fit(X, y, epochs=2)
    save_checkpoint(tmp_path, part.model, part.optimizer, part.history)
    loaded = load_checkpoint(tmp_path, device=device)
    assert loaded.optimizer.config() == part.optimizer.config()
    assert loaded.optimizer.step_count == part.optimizer.step_count == 8
    resumed = trainer(loaded.model, loaded.optimizer)
    resumed.history = loaded.history
    resumed.fit(X, y, epochs=1)
    for key, W in whole.model.state_arrays().items():
        np.testing.assert_array_equal(resumed.model.state_arrays()[key], W, err_msg=key)


def test_a_checkpoint_from_before_the_conventions_resumes_as_the_heavy_ball(tmp_path, rng):
    """Rewritten as an old version saved it: no convention, a step count, no step state."""
    from checkpoint_edits import read, write

    model = model_with_grads("numpy", rng)
    optimizer = get_optimizer("momentum", lr=0.1, convention="sklearn")
    for _ in range(3):
        optimizer.step(model)
    save_checkpoint(tmp_path, model, optimizer)
    metadata, arrays = read(tmp_path)
    del metadata["optimizer"]["convention"], metadata["optimizer"]["nesterov"]
    del metadata["optimizer"]["weight_decay"]
    arrays["optimizer/step_count"] = np.asarray(3)
    del arrays["optimizer/step_state"]
    write(tmp_path, metadata, arrays)
    loaded = load_checkpoint(tmp_path, device="numpy").optimizer
    assert loaded.config() == optimizer.config() and loaded.step_count == 3
    # Its next step is the heavy ball's, continuing from the saved velocity.
    for _, _, dW in model.parameters_and_gradients():
        dW[...] = 1.0
    optimizer.step(model)
    loaded_model = load_checkpoint(tmp_path, device="numpy").model
    for _, _, dW in loaded_model.parameters_and_gradients():
        dW[...] = 1.0
    loaded.step(loaded_model)
    for name, W in model.state_arrays().items():
        np.testing.assert_array_equal(loaded_model.state_arrays()[name], W)
