"""The training pipeline behind ``gpubackprop train``: data, model, fit, test.

Each dataset has a preset (the configuration that trains it well); any
option given explicitly replaces the preset's value. ``model="rnn"`` reads each
image row by row as a sequence (an Elman RNN, then a Linear classifier) and
takes the dataset's entry in ``RNN_PRESETS`` on top of its preset.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .datasets import Dataset, load_dataset, standardize
from .errors import InputError
from .layers import Linear
from .losses import MeanSquaredError, get_loss
from .model import Sequential, mlp
from .recurrent import RNN
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
    "mnist": dict(hidden=[256], activation="relu", output_activation="identity",
                  loss="cross_entropy", reduction="mean", optimizer="adam", lr=1e-3,
                  epochs=10, batch_size=128, log_every=1, standardize=False),
}
PRESETS["fashion-mnist"] = dict(PRESETS["mnist"])

MODELS = ("mlp", "rnn")
#: Replaces preset values for ``model="rnn"``: image rows are the time steps.
RNN_PRESETS = {
    "digits": dict(hidden=[64], activation="tanh", lr=3e-3, clip_norm=1.0, epochs=20),
    "mnist": dict(hidden=[128], activation="tanh", lr=1e-3, clip_norm=5.0,
                  batch_size=128, epochs=8),
}
RNN_PRESETS["fashion-mnist"] = dict(RNN_PRESETS["mnist"])


@dataclass
class TrainConfig:
    """Everything that defines one training run (JSON-serialisable)."""

    dataset: str
    model: str = "mlp"
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
    bptt_steps: int | None = None

    @classmethod
    def for_dataset(cls, dataset: str, model: str = "mlp", **overrides) -> "TrainConfig":
        """The dataset's preset (and RNN preset) with every non-None override applied."""
        name = check_choice(dataset, PRESETS, "dataset")
        model = check_choice(model, MODELS, "model")
        options = dict(PRESETS[name], model=model)
        if model == "rnn":
            if name not in RNN_PRESETS:
                raise InputError(f"the rnn model reads images row by row; {name!r} has no "
                                 f"images (RNN presets: {', '.join(RNN_PRESETS)})")
            options.update(RNN_PRESETS[name])
        elif overrides.get("bptt_steps") is not None:
            raise InputError("bptt_steps applies to the rnn model only")
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
    """(X_train, X_test) as float32, standardised on training statistics if asked.

    For the rnn model each flattened image (N, rows * cols) becomes a
    sequence (N, rows, cols): one image row per time step.
    """
    X_train, X_test = dataset.X_train, dataset.X_test
    if config.standardize:
        X_train, X_test = standardize(X_train, X_test)
    if config.model == "rnn":
        X_train, X_test = (X.reshape(len(X), *dataset.image_shape) for X in (X_train, X_test))
    return X_train, X_test


def build_model(config: TrainConfig, dataset: Dataset) -> Sequential:
    """An MLP, or RNN layers (stacked when ``hidden`` has several widths) and Linear."""
    options = dict(device=config.device, dtype=config.dtype, seed=config.seed)
    if config.model == "mlp":
        return mlp(dataset.n_features, config.hidden, dataset.n_classes,
                   activation=config.activation, output_activation=config.output_activation,
                   **options)
    if not config.hidden:
        raise InputError("the rnn model needs a hidden width, e.g. --hidden 128")
    layers = [RNN(width, config.activation, return_sequences=i < len(config.hidden) - 1,
                  bptt_steps=config.bptt_steps) for i, width in enumerate(config.hidden)]
    layers.append(Linear(dataset.n_classes, config.output_activation))
    return Sequential(layers, n_inputs=dataset.image_shape[1], **options)


def run(config: TrainConfig, verbose: int = 1, stream=None) -> TrainResult:
    """Load the data, build the model, train it and measure it on the test set."""
    dataset = load_dataset(config.dataset, seed=config.seed)
    X_train, X_test = prepare_data(config, dataset)
    model = build_model(config, dataset)
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
