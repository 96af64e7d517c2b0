"""Trainer: learning, history, reproducibility, divergence, progress output."""

import io
import math

import numpy as np
import pytest

from gpubackprop.data.datasets import load_iris, standardize
from gpubackprop.errors import TrainingDivergedError
from gpubackprop.nn.model import mlp
from gpubackprop.training.trainer import Trainer


@pytest.fixture(scope="module")
def iris():
    data = load_iris(seed=0)
    X_train, X_test = standardize(data.X_train, data.X_test)
    return X_train, data.y_train, X_test, data.y_test


def make_trainer(backend_name="cpu", seed=0, **options):
    model = mlp(4, [8], 3, activation="tanh", device=backend_name, seed=seed)
    options = {"optimizer": "adam", "lr": 0.02, "batch_size": 16, "seed": seed, "verbose": 0,
               **options}
    return Trainer(model, **options)


def test_learns_iris(backend_name, iris):
    X_train, y_train, X_test, y_test = iris
    trainer = make_trainer(backend_name)
    history = trainer.fit(X_train, y_train, epochs=30, validation_data=(X_test, y_test))
    assert history.epoch_loss[-1] < 0.5 * history.epoch_loss[0]
    assert trainer.evaluate(X_test, y_test)["accuracy"] >= 0.9
    assert history.val_accuracy[-1] >= 0.9
    assert (trainer.predict(X_test) == y_test).mean() >= 0.9


def test_history_has_plain_floats_per_iteration_and_epoch(iris):
    X_train, y_train, _, _ = iris
    history = make_trainer().fit(X_train, y_train, epochs=3)
    batches = math.ceil(len(X_train) / 16)
    assert len(history.loss) == 3 * batches
    assert len(history.epoch_loss) == len(history.accuracy) == len(history.epoch_time) == 3
    values = history.loss + history.epoch_loss + history.accuracy + history.lr
    assert all(type(v) is float for v in values)
    assert history.epoch_loss[0] == pytest.approx(np.mean(history.loss[:batches]))


def test_same_seed_gives_bit_identical_history(iris):
    X_train, y_train, _, _ = iris
    first = make_trainer(seed=5).fit(X_train, y_train, epochs=4)
    second = make_trainer(seed=5).fit(X_train, y_train, epochs=4)
    other = make_trainer(seed=6).fit(X_train, y_train, epochs=4)
    assert first.loss == second.loss and first.accuracy == second.accuracy
    assert first.loss != other.loss


def test_fit_twice_continues_the_history(iris):
    X_train, y_train, _, _ = iris
    trainer = make_trainer()
    trainer.fit(X_train, y_train, epochs=2)
    history = trainer.fit(X_train, y_train, epochs=3)
    assert history.epochs == 5


def test_regression_targets_have_no_accuracy(rng):
    X = rng.standard_normal((64, 3))
    T = (X @ rng.standard_normal((3, 2))).astype(np.float32)
    model = mlp(3, [16], 2, activation="tanh", device="cpu", seed=0)
    trainer = Trainer(model, loss="mse", optimizer="adam", lr=0.01, batch_size=16, verbose=0)
    history = trainer.fit(X, T, epochs=40)
    assert history.epoch_loss[-1] < 0.2 * history.epoch_loss[0]
    assert math.isnan(history.accuracy[-1])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow is the point here
def test_non_finite_loss_names_epoch_and_batch(backend_name, iris):
    X_train, y_train, _, _ = iris
    trainer = make_trainer(backend_name, optimizer="sgd", lr=1e30, loss="mse")
    with pytest.raises(TrainingDivergedError,
                       match=r"epoch \d+, batch \d+; try a smaller learning rate"):
        trainer.fit(X_train * 1e3, y_train, epochs=5)


def test_epoch_lines_and_silence(iris):
    X_train, y_train, X_test, y_test = iris
    out = io.StringIO()
    make_trainer(verbose=1, stream=out).fit(X_train, y_train, epochs=2,
                                            validation_data=(X_test, y_test))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].startswith("epoch 2/2  loss ")
    assert "val acc" in lines[1]
    quiet = io.StringIO()
    make_trainer(verbose=0, stream=quiet).fit(X_train, y_train, epochs=2)
    assert quiet.getvalue() == ""


def test_no_progress_bar_when_stderr_is_not_a_terminal(iris, capsys):
    X_train, y_train, _, _ = iris
    make_trainer(verbose=1).fit(X_train, y_train, epochs=1)
    assert capsys.readouterr().err == ""


def test_one_host_read_per_epoch(backend_name, iris, monkeypatch):
    X_train, y_train, X_test, y_test = iris
    trainer = make_trainer(backend_name)
    reads = []
    original = type(trainer.backend).to_numpy
    monkeypatch.setattr(type(trainer.backend), "to_numpy",
                        lambda self, X: reads.append(1) or original(self, X))
    trainer.fit(X_train, y_train, epochs=3, validation_data=(X_test, y_test))
    assert len(reads) == 3
