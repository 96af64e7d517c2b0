"""What ``gpubackprop bench`` measures and the data it trains on."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from .runners import BenchData

#: Folder holding MNIST (``mnist/``); synthetic data of MNIST's shape without it.
DATA_ENV = "GPUBACKPROP_DATA"
#: The models measured when none are named.
DEFAULT_MODELS = ("784-128-10", "784-512-10", "784-1024-1024-10", "rnn-28x28-128-10",
                  "lstm-28x28-128-10")


@dataclass
class BenchConfig:
    """What to measure.

    ``n_train`` / ``n_test`` take the first samples only (for quick checks;
    the table says so); ``None`` uses all 60000 / 10000. ``contention`` adds
    :mod:`.contention`'s measurement (CPU only), ``epochs`` rounds of it.
    """

    device: str = "cpu"
    models: list = field(default_factory=lambda: list(DEFAULT_MODELS))
    epochs: int = 3
    batch_size: int = 128
    optimizer: str = "adam"
    seed: int = 0
    n_train: int | None = None
    n_test: int | None = None
    note: str = ""
    contention: bool = False
    #: Runner keys to measure (``ours`` always runs: every ratio is against it); None: all.
    runners: list | None = None


def load_data(config: BenchConfig) -> BenchData:
    """Real MNIST when ``$GPUBACKPROP_DATA`` is set, else synthetic data of its shape.

    The synthetic pixels are uniform in [0, 1) (never all zero) and the
    labels come from a fixed random linear teacher, so accuracy means
    something and every implementation sees the same task.
    """
    folder = os.environ.get(DATA_ENV)
    if folder:
        from ..data.datasets import load_dataset

        dataset = load_dataset("mnist", data_dir=folder, download=False)
        data = BenchData(dataset.X_train, dataset.y_train, dataset.X_test, dataset.y_test,
                         f"MNIST from ${DATA_ENV}")
    else:
        rng = np.random.default_rng(1234)
        X = rng.random((70000, 784), dtype=np.float32)
        teacher = rng.standard_normal((784, 10)).astype(np.float32)
        y = ((X - np.float32(0.5)) @ teacher).argmax(axis=1).astype(np.int64)
        data = BenchData(X[:60000], y[:60000], X[60000:], y[60000:],
                         "synthetic (uniform pixels, labels of a random linear teacher; "
                         f"set ${DATA_ENV} for MNIST)")
    if config.n_train:
        data.X_train, data.y_train = data.X_train[:config.n_train], data.y_train[:config.n_train]
        data.source += f"; first {len(data.X_train)} training samples only"
    if config.n_test:
        data.X_test, data.y_test = data.X_test[:config.n_test], data.y_test[:config.n_test]
    return data


__all__ = ["BenchConfig", "DATA_ENV", "DEFAULT_MODELS", "load_data"]
