"""EarlyStopping, LearningRateSchedule, and ModelCheckpoint's cadence."""

import io
import math

import numpy as np
import pytest

from gpubackprop import InputError
from gpubackprop.training import callbacks
from gpubackprop.training.callbacks import (FULL_BATCH_SECONDS, CheckpointCadence,
                                            EarlyStopping, LearningRateSchedule,
                                            ModelCheckpoint)
from gpubackprop.training.checkpoint import load_checkpoint
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


# ------------------------------------------------------------- checkpoint cadence
@pytest.mark.parametrize("cadence, epochs_due", [
    (CheckpointCadence(epochs=1), [1, 2, 3, 4, 5, 6, 7]),
    (CheckpointCadence(epochs=3), [3, 6]),
])
def test_a_count_cadence_saves_on_multiples_of_the_count(cadence, epochs_due):
    assert [e for e in range(1, 8) if cadence.due(e, seconds_since_save=0.0)] == epochs_due


def test_a_time_cadence_saves_once_its_seconds_have_passed():
    cadence = CheckpointCadence(epochs=None, seconds=30)
    assert not cadence.due(5, 29.9)
    assert cadence.due(5, 30.0) and cadence.due(1, 1e6)


@pytest.mark.parametrize("text, cadence", [("5", CheckpointCadence(epochs=5)),
                                           (" 30S", CheckpointCadence(None, 30.0)),
                                           ("0.5s", CheckpointCadence(None, 0.5))])
def test_cadence_parses_epochs_and_seconds(text, cadence):
    assert CheckpointCadence.parse(text) == cadence


@pytest.mark.parametrize("text, message", [("", "must be N"), ("5m", "must be N"),
                                           ("0", "epochs"), ("-2s", "seconds"),
                                           ("2.5", "must be N"), ("nans", "seconds")])
def test_bad_cadences_are_one_line_errors(text, message):
    with pytest.raises(InputError, match=message):
        CheckpointCadence.parse(text)


def test_default_cadence_is_per_epoch_unless_full_batch():
    assert CheckpointCadence.default(full_batch=False) == CheckpointCadence(epochs=1)
    assert CheckpointCadence.default(full_batch=True) == \
        CheckpointCadence(epochs=None, seconds=FULL_BATCH_SECONDS)


def _fit_with_checkpoint(tmp_path, cadence, epochs, batch_size=None):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 3)), rng.integers(0, 2, size=30)
    callback = ModelCheckpoint(tmp_path, cadence=cadence)
    trainer = Trainer(mlp(3, [4], 2, device="numpy", seed=0), optimizer="sgd", lr=0.1,
                      batch_size=batch_size, verbose=0, callbacks=[callback])
    trainer.fit(X, y, epochs=epochs)
    return callback, trainer


def test_full_batch_run_saves_only_its_final_state_within_the_time(tmp_path):
    callback, trainer = _fit_with_checkpoint(tmp_path, CheckpointCadence.default(True), 40)
    assert callback.saved_epochs == [40]
    saved = load_checkpoint(tmp_path, device="numpy")
    assert saved.history.epochs == 40
    for name, W in trainer.model.state_arrays().items():
        np.testing.assert_array_equal(saved.model.state_arrays()[name], W)


def test_time_cadence_saves_when_the_clock_says_so(tmp_path, monkeypatch):
    clock = iter(range(0, 1000, 10))  # each reading 10 s after the previous
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: next(clock))
    callback, _ = _fit_with_checkpoint(tmp_path, CheckpointCadence(None, 25.0), 6)
    # Begin at 0; epochs read 10, 20, 30 (save, reset to 40), 50, 60, 70 (save at 80), end.
    assert callback.saved_epochs == [3, 6, 6]


def test_count_cadence_and_the_final_save(tmp_path):
    callback, _ = _fit_with_checkpoint(tmp_path, CheckpointCadence(epochs=2), 5, batch_size=8)
    assert callback.saved_epochs == [2, 4, 5]
