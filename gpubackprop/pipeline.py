"""The training pipeline behind ``gpubackprop train``: data, model, fit, test.

Each dataset has a preset (the configuration that trains it well); any
option given explicitly replaces the preset's value.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .datasets import Dataset, load_dataset, standardize
from .losses import MeanSquaredError, get_loss
from .model import Sequential, mlp
from .train import History, Trainer
from .validation import check_choice

PRESETS = {
    # The tutorial's network: 4-4-3 sigmoid, MSE, lr 0.1, 1000 full-batch iterations.
    # The gradient sums over the samples (classic batch backpropagation).
    "iris": dict(hidden=[4], activation="sigmoid", output_activation="sigmoid", loss="mse",
                 reduction="sum", optimizer="sgd", lr=0.1, epochs=1000, batch_size=None,
                 log_every=100, standardize=True),
    "digits": dict(hidden=[128], activation="relu", output_activation="identity",
                   loss="cross_entropy", reduction="mean", optimizer="adam", lr=1e-3,
                   epochs=30, batch_size=32, log_every=1, standardize=False),
}


@dataclass
class TrainConfig:
    """Everything that defines one training run (JSON-serialisable)."""

    dataset: str
    hidden: list = field(default_factory=list)
    activation: str = "relu"
    output_activation: str = "identity"
    loss: str = "cross_entropy"
    reduction: str = "mean"
    optimizer: str = "adam"
    lr: float = 1e-3
    epochs: int = 10
    batch_size: int | None = 128
    log_every: int = 1
    standardize: bool = False
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    clip_norm: float | None = None

    @classmethod
    def for_dataset(cls, dataset: str, **overrides) -> "TrainConfig":
        """The dataset's preset with every non-None override applied."""
        name = check_choice(dataset, PRESETS, "dataset")
        options = dict(PRESETS[name])
        options.update({key: value for key, value in overrides.items() if value is not None})
        if "loss" in overrides and overrides["loss"] is not None and \
                "output_activation" not in overrides:
            loss = get_loss(options["loss"]).name
            options["output_activation"] = "sigmoid" if loss == "mse" else "identity"
            if loss != "mse":
                options["reduction"] = "mean"
        return cls(dataset=name, **options)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class TrainResult:
    """What a run produced: the model, its history and the test figures."""

    config: TrainConfig
    model: Sequential
    trainer: Trainer
    history: History
    test_loss: float
    test_accuracy: float
    n_test: int
    train_seconds: float

    def summary(self) -> dict:
        """history.json content."""
        return {"dataset": self.config.dataset, "config": self.config.to_dict(),
                "backend": self.model.backend.name, "test_loss": self.test_loss,
                "test_accuracy": self.test_accuracy, "n_test": self.n_test,
                "train_seconds": self.train_seconds, "history": self.history.to_dict()}


def build_loss(config: TrainConfig):
    loss = get_loss(config.loss)
    if isinstance(loss, MeanSquaredError):
        loss = MeanSquaredError(config.reduction)
    return loss


def prepare_data(config: TrainConfig, dataset: Dataset):
    """(X_train, X_test) as float32, standardised on training statistics if asked."""
    if config.standardize:
        return standardize(dataset.X_train, dataset.X_test)
    return dataset.X_train, dataset.X_test


def run(config: TrainConfig, verbose: int = 1, stream=None) -> TrainResult:
    """Load the data, build the model, train it and measure it on the test set."""
    dataset = load_dataset(config.dataset, seed=config.seed)
    X_train, X_test = prepare_data(config, dataset)
    model = mlp(dataset.n_features, config.hidden, dataset.n_classes,
                activation=config.activation, output_activation=config.output_activation,
                device=config.device, dtype=config.dtype, seed=config.seed)
    trainer = Trainer(model, loss=build_loss(config), optimizer=config.optimizer, lr=config.lr,
                      batch_size=config.batch_size, seed=config.seed,
                      clip_norm=config.clip_norm, verbose=verbose,
                      log_every=config.log_every, stream=stream)
    started = time.perf_counter()
    history = trainer.fit(X_train, dataset.y_train, epochs=config.epochs)
    seconds = time.perf_counter() - started
    metrics = trainer.evaluate(X_test, dataset.y_test)
    return TrainResult(config, model, trainer, history, metrics["loss"], metrics["accuracy"],
                       int(np.asarray(dataset.y_test).shape[0]), seconds)
