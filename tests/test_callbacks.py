"""EarlyStopping and LearningRateSchedule."""

import io
import math

import numpy as np
import pytest

from gpubackprop import InputError
from gpubackprop.training.callbacks import EarlyStopping, LearningRateSchedule
from gpubackprop.nn.model import mlp
from gpubackprop.training.trainer import History, Trainer

NAN = float("nan")


class ScriptedTrainer:
    """Just what the callbacks touch: model, optimizer, history, flags."""

    def __init__(self):
        self.model = mlp(3, [4], 2, device="cpu", seed=0)
        self.history = History()
        self.stop_training = False
        self.verbose = 1
        self.stream = io.StringIO()


def run_scripted(callback, values, monitor="val_loss"):
    """Epoch e sets every weight to e, then reports values[e - 1]; returns the trainer."""
    trainer = ScriptedTrainer()
    callback.on_train_begin(trainer)
    for epoch, value in enumerate(values, start=1):
        for W in trainer.model.parameters().values():
            W[...] = epoch
        trainer.history.epoch_loss.append(0.0)
        callback.on_epoch_end(trainer, epoch, {monitor: value})
        if trainer.stop_training:
            break
    callback.on_train_end(trainer)
    return trainer


def weights_epoch(trainer):
    values = {float(v) for W in trainer.model.parameters().values() for v in np.unique(W)}
    assert len(values) == 1
    return values.pop()


def test_early_stopping_restores_the_best_epoch():
    stopper = EarlyStopping(patience=2)
    trainer = run_scripted(stopper, [0.9, 0.5, 0.7, 0.6, 0.1])
    assert trainer.history.epochs == 4
    assert (stopper.best, stopper.best_epoch, stopper.stopped_epoch) == (0.5, 2, 4)
    assert weights_epoch(trainer) == 2
    assert "restored the weights of epoch 2" in trainer.stream.getvalue()


def test_nan_never_counts_as_an_improvement():
    stopper = EarlyStopping(patience=2)
    trainer = run_scripted(stopper, [0.9, NAN, NAN, 0.1])
    assert (stopper.best_epoch, stopper.stopped_epoch) == (1, 3)
    assert weights_epoch(trainer) == 1


def test_nan_from_the_start_stops_without_restoring():
    stopper = EarlyStopping(patience=2)
    trainer = run_scripted(stopper, [NAN, NAN, 0.5])
    assert stopper.best_epoch is None and stopper.stopped_epoch == 2
    assert weights_epoch(trainer) == 2


def test_accuracy_is_maximised_and_min_delta_applies():
    stopper = EarlyStopping("val_accuracy", patience=2, min_delta=0.01)
    trainer = run_scripted(stopper, [0.90, 0.95, 0.955, 0.958, 0.99], monitor="val_accuracy")
    assert (stopper.best, stopper.best_epoch, stopper.stopped_epoch) == (0.95, 2, 4)
    assert weights_epoch(trainer) == 2


def test_no_restore_when_the_last_epoch_was_best_or_restore_is_off():
    stopper = EarlyStopping(patience=3)
    assert weights_epoch(run_scripted(stopper, [0.9, 0.5, 0.4])) == 3
    stopper = EarlyStopping(patience=1, restore_best=False)
    assert weights_epoch(run_scripted(stopper, [0.5, 0.9])) == 2


def test_early_stopping_needs_the_monitored_figure():
    with pytest.raises(InputError, match="give validation data"):
        run_scripted(EarlyStopping("val_loss", patience=1), [0.5], monitor="loss")


def test_early_stopping_in_a_real_fit_stops_and_keeps_the_best_weights():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 3)), rng.integers(0, 2, size=40)
    X_val, y_val = rng.normal(size=(40, 3)), rng.integers(0, 2, size=40)  # pure noise
    model = mlp(3, [32], 2, device="cpu", seed=0)
    stopper = EarlyStopping(patience=3)
    trainer = Trainer(model, lr=0.05, batch_size=8, verbose=0, callbacks=[stopper])
    history = trainer.fit(X, y, epochs=200, validation_data=(X_val, y_val))
    assert history.epochs == stopper.stopped_epoch < 200
    assert stopper.best == min(history.val_loss)
    assert trainer.evaluate(X_val, y_val)["loss"] == pytest.approx(stopper.best, rel=1e-6)


def test_step_schedule():
    schedule = LearningRateSchedule("step", 0.1, epochs=9, gamma=0.5)
    assert schedule.step_size == 3
    assert [schedule.lr_at(e) for e in range(1, 8)] == \
        [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025]


def test_cosine_schedule_falls_from_base_towards_min_and_stays_positive():
    schedule = LearningRateSchedule("cosine", 1e-3, epochs=4, min_lr=1e-5)
    expected = [1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert [schedule.lr_at(e) for e in range(1, 5)] == pytest.approx(expected, rel=1e-12)
    assert schedule.lr_at(1) == pytest.approx(1e-3)
    assert schedule.lr_at(6) == schedule.lr_at(4) > 1e-5


def test_schedule_sets_the_optimizer_rate_by_epoch_over_the_whole_history():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(16, 3)), rng.integers(0, 2, size=16)
    schedule = LearningRateSchedule("step", 0.1, epochs=4, step_size=1, gamma=0.5)
    trainer = Trainer(mlp(3, [4], 2, device="cpu"), optimizer="sgd", lr=0.1, verbose=0,
                      callbacks=[schedule])
    trainer.fit(X, y, epochs=2)
    trainer.fit(X, y, epochs=2)
    assert trainer.history.lr == [0.1, 0.05, 0.025, 0.0125]


@pytest.mark.parametrize("options, message", [
    (dict(kind="linear"), "unknown learning-rate schedule"),
    (dict(gamma=0.0), "gamma must be in"),
    (dict(min_lr=1.0), "min_lr must be in"),
])
def test_schedule_rejects_bad_options(options, message):
    arguments = dict(kind="step", base_lr=0.1, epochs=3)
    arguments.update(options)
    with pytest.raises(InputError, match=message):
        LearningRateSchedule(**arguments)
