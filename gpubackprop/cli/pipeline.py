"""The training pipeline behind ``gpubackprop train``: data, model, fit, test.

Each dataset has a preset (the configuration that trains it well); any
option given explicitly replaces the preset's value. A recurrent model
(``model="rnn"``, ``"lstm"`` or ``"gru"``) reads each image row by row as a
sequence (the recurrent layer, then a Linear classifier) and takes the
dataset's entry in ``RECURRENT_PRESETS[model]`` on top of its preset. A run can
write a checkpoint after every epoch and be resumed from it.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..training.callbacks import (CheckpointCadence, EarlyStopping, LearningRateSchedule,
                                  ModelCheckpoint)
from ..training.checkpoint import Checkpoint, remove_unreferenced_arrays
from ..training.checkpoint_schema import check_generator_state
from ..data.datasets import Dataset, load_dataset, standardize, validation_split
from ..distributed.rank_zero import rank_0_first
from ..errors import DataFileError, InputError, OutputError
from ..fileio import remove_if_empty, remove_stale_temporaries
from ..outputs import OutputLock, check_free_space, prepare_folder
from ..nn.layers import Linear
from ..nn.losses import MeanSquaredError, get_loss
from ..backends import get_backend
from ..memory import (check_fits, data_bytes, optimizer_state_specs, parameter_bytes,
                      training_estimate)
from ..nn.model import Sequential, planned_activations, planned_shapes
from ..nn.optim import get_optimizer
from ..nn.gated_recurrent import GRU, LSTM
from ..nn.recurrent import RNN
from ..training.trainer import History, Trainer
from ..validation import check_choice, check_scalar_fits
from .options import MODELS, OPTIONS, RECURRENT_MODELS, check_option

PRESETS = {
    # The tutorial's network: 4-4-3 sigmoid, MSE, lr 0.1, 1000 full-batch iterations.
    # The gradient sums over the samples (classic batch backpropagation).
    "iris": dict(hidden=[4], activation="sigmoid", output_activation="sigmoid", loss="mse",
                 reduction="sum", optimizer="sgd", lr=0.1, epochs=1000, batch_size=None,
                 log_every=100, standardize=True),
    "digits": dict(hidden=[128], activation="relu", output_activation="identity",
                   loss="cross_entropy", reduction="mean", optimizer="adam", lr=1e-3,
                   epochs=30, batch_size=32, log_every=1, standardize=False,
                   validation_size=300),
    # 784-512-256-10 ReLU, Adam with a cosine schedule; 5000 training images held out for
    # validation. Measured on 2 CPU cores (README): 98.29% MNIST test accuracy in 10 epochs
    # (27.8 s of training).
    "mnist": dict(hidden=[512, 256], activation="relu", output_activation="identity",
                  loss="cross_entropy", reduction="mean", optimizer="adam", lr=1e-3,
                  epochs=10, batch_size=128, log_every=1, standardize=False,
                  validation_size=5000, schedule="cosine"),
}
# The same network needs 15 epochs for Fashion-MNIST: 89.97% test accuracy (45.1 s).
PRESETS["fashion-mnist"] = dict(PRESETS["mnist"], epochs=15)
# A character-level language model of a text file (gpubackprop train text FILE): one
# recurrent layer over windows of 64 characters, predicting every next character.
PRESETS["text"] = dict(model="rnn", hidden=[128], activation="tanh",
                       output_activation="identity", loss="cross_entropy", reduction="mean",
                       optimizer="adam", lr=3e-3, epochs=20, batch_size=32, log_every=1,
                       standardize=False, clip_norm=5.0, seq_length=64)
#: Bytes the report of a run (history.json and the pictures) may take on disk.
REPORT_BYTES = 8 << 20
#: Options that may differ from the checkpoint's when a run is resumed.
RESUME_OPTIONS = ("epochs", "patience", "device", "log_every", "distributed")

#: Replaces preset values for ``model="rnn"``: image rows are the time steps.
RNN_PRESETS = {
    "digits": dict(hidden=[64], activation="tanh", lr=3e-3, clip_norm=1.0, epochs=20),
    "mnist": dict(hidden=[128], activation="tanh", lr=1e-3, clip_norm=5.0,
                  batch_size=128, epochs=8, schedule="none"),
}
RNN_PRESETS["fashion-mnist"] = dict(RNN_PRESETS["mnist"])
#: Replaces preset values for ``model="lstm"`` and ``"gru"`` (figures in README).
GATED_PRESETS = {
    "digits": dict(hidden=[64], lr=3e-3, clip_norm=1.0, epochs=20),
    "mnist": dict(hidden=[128], lr=2e-3, clip_norm=5.0, batch_size=128, epochs=6,
                  schedule="cosine"),
}
GATED_PRESETS["fashion-mnist"] = dict(GATED_PRESETS["mnist"])
#: The presets of each recurrent model, by dataset.
RECURRENT_PRESETS = {"rnn": RNN_PRESETS, "lstm": GATED_PRESETS, "gru": GATED_PRESETS}
#: The layer class of each recurrent model.
RECURRENT_LAYERS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}


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
    weight_decay: float | None = None
    epochs: int = 10
    batch_size: int | None = 128
    log_every: int = 1
    standardize: bool = False
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    clip_norm: float | None = None
    bptt_steps: int | None = None
    validation_size: int = 0
    schedule: str = "none"
    patience: int | None = None
    distributed: str = "none"
    seq_length: int = 64
    temperature: float = 0.7
    sample_length: int = 300
    prime: str | None = None

    def __post_init__(self):
        """Check every field through :data:`~gpubackprop.cli.options.OPTIONS` and store
        its canonical value (``dtype`` "float32", never "float")."""
        self.dataset = check_choice(self.dataset, PRESETS, "dataset")
        for name in OPTIONS:
            setattr(self, name, check_option(name, getattr(self, name)))
        check_scalar_fits(self.lr, self.dtype, "lr")
        if self.clip_norm is not None:
            check_scalar_fits(self.clip_norm, self.dtype, "clip_norm")

    @classmethod
    def for_dataset(cls, dataset: str, model: str | None = None, **overrides) -> "TrainConfig":
        """The dataset's preset (and RNN preset) with every non-None override applied.

        ``model`` None is the dataset's default: mlp, or rnn for text.
        """
        name = check_choice(dataset, PRESETS, "dataset")
        if name == "text":
            model = check_choice(model or "rnn", RECURRENT_MODELS, "text model")
        else:
            model = check_choice(model or "mlp", MODELS, "model")
        options = dict(PRESETS[name], model=model)
        if name != "text" and model in RECURRENT_MODELS:
            presets = RECURRENT_PRESETS[model]
            if name not in presets:
                raise InputError(f"the {model} model reads images row by row; {name!r} has no "
                                 f"images ({model} presets: {', '.join(presets)})")
            options.update(presets[name])
        elif name != "text" and overrides.get("bptt_steps") is not None:
            raise InputError(f"bptt_steps applies to the recurrent models only "
                             f"({', '.join(RECURRENT_MODELS)})")
        options.update({key: value for key, value in overrides.items() if value is not None})
        if "loss" in overrides and overrides["loss"] is not None and \
                "output_activation" not in overrides:
            loss = get_loss(options["loss"]).name
            options["output_activation"] = "sigmoid" if loss == "mse" else "identity"
            if loss != "mse":
                options["reduction"] = "mean"
        return cls(dataset=name, **options)

    @classmethod
    def resuming(cls, checkpoint: Checkpoint, dataset: str, **overrides) -> "TrainConfig":
        """The configuration saved in ``checkpoint``, with the allowed overrides.

        Only :data:`RESUME_OPTIONS` may change; ``epochs`` is the total the
        resumed run trains to. Any other option given with a different value
        raises :class:`InputError`.
        """
        saved = checkpoint.extra.get("config")
        if saved is None:
            raise DataFileError("the checkpoint holds no training configuration; only "
                                "checkpoints written by 'gpubackprop train' can be resumed")
        try:
            config = cls(**saved)
        except (TypeError, InputError) as exc:
            raise DataFileError(f"the checkpoint's training configuration is not one this "
                                f"gpubackprop reads: {exc}") from None
        if "trainer_rng" in checkpoint.extra:
            check_generator_state(checkpoint.extra["trainer_rng"], "the checkpoint")
        # How the saved run was launched is not inherited: --distributed says how this one is.
        config.distributed = "none"
        if check_choice(dataset, PRESETS, "dataset") != config.dataset:
            raise InputError(f"the checkpoint was trained on {config.dataset}, not {dataset}")
        for key, value in overrides.items():
            if value is None:
                continue
            value = check_option(key, value)
            if value == getattr(config, key):
                continue
            if key not in RESUME_OPTIONS:
                raise InputError(f"--{key.replace('_', '-')} cannot change when resuming (the "
                                 f"checkpoint has {getattr(config, key)!r}); leave it out")
            setattr(config, key, value)
        config.__post_init__()
        return config

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class TrainResult:
    """What a run produced: the model, its history and the test figures."""

    config: TrainConfig
    dataset: Dataset
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
                "n_validation": self.config.validation_size,
                "train_seconds": self.train_seconds, "history": self.history.to_dict()}


def build_loss(config: TrainConfig):
    loss = get_loss(config.loss)
    if isinstance(loss, MeanSquaredError):
        loss = MeanSquaredError(config.reduction)
    return loss


def prepare_data(config: TrainConfig, dataset: Dataset):
    """(X_train, X_test) as float32, standardised on training statistics if asked.

    For a recurrent model each flattened image (N, rows * cols) becomes a
    sequence (N, rows, cols): one image row per time step.
    """
    X_train, X_test = dataset.X_train, dataset.X_test
    if config.standardize:
        X_train, X_test = standardize(X_train, X_test)
    if config.model in RECURRENT_MODELS:
        X_train, X_test = (X.reshape(len(X), *dataset.image_shape) for X in (X_train, X_test))
    return X_train, X_test


def build_layers(config: TrainConfig, dataset: Dataset) -> tuple[list, int]:
    """The model's layers (unbuilt) and its input width.

    An MLP, or recurrent layers (stacked when ``hidden`` has several widths) and Linear;
    ``activation`` is the Elman RNN's (LSTM and GRU have their fixed gates).
    """
    if config.model == "mlp":
        layers = [Linear(width, config.activation) for width in config.hidden]
        layers.append(Linear(dataset.n_classes, config.output_activation))
        return layers, dataset.n_features
    if not config.hidden:
        raise InputError(f"the {config.model} model needs a hidden width, e.g. --hidden 128")
    layers = [recurrent_layer(config, width, return_sequences=i < len(config.hidden) - 1)
              for i, width in enumerate(config.hidden)]
    layers.append(Linear(dataset.n_classes, config.output_activation))
    return layers, dataset.image_shape[1]


def recurrent_layer(config: TrainConfig, width: int, return_sequences: bool):
    """A layer of ``config.model`` (:data:`RECURRENT_LAYERS`) with ``width`` units;
    ``activation`` is the Elman RNN's (LSTM and GRU have their fixed gates)."""
    options = {"activation": config.activation} if config.model == "rnn" else {}
    return RECURRENT_LAYERS[config.model](width, return_sequences=return_sequences,
                                          bptt_steps=config.bptt_steps, **options)


def build_model(config: TrainConfig, dataset: Dataset) -> Sequential:
    """The model of ``config`` for ``dataset``, its memory checked before it is built."""
    layers, n_inputs = build_layers(config, dataset)
    check_training_memory(config, dataset, layers, n_inputs)
    return Sequential(layers, n_inputs=n_inputs, device=config.device, dtype=config.dtype,
                      seed=config.seed)


def check_training_memory(config: TrainConfig, dataset: Dataset, layers: list,
                          n_inputs: int) -> None:
    """What the run will need (parameters, optimizer state, a batch, the data) against
    the free memory of the device it runs on; the error names the options to reduce."""
    backend = get_backend(config.device)
    dtype = np.dtype(config.dtype)  # canonical already: TrainConfig checked it
    shapes = planned_shapes(layers, n_inputs)
    widths, kept_per_step = planned_activations(layers, n_inputs)
    optimizer = get_optimizer(config.optimizer, lr=config.lr, clip_norm=config.clip_norm)
    state = optimizer_state_specs(optimizer, shapes, dtype)
    n_train = len(dataset.X_train)
    steps = dataset.image_shape[0] if config.model in RECURRENT_MODELS else 1
    estimate = training_estimate(
        dtype.itemsize, widths, min(config.batch_size or n_train, n_train), steps=steps,
        kept_per_step=kept_per_step,
        parameters=parameter_bytes(shapes.values(), dtype.itemsize),
        state=sum(spec.nbytes for spec in state.values()),
        data=data_bytes([dataset.X_train.shape, dataset.X_test.shape], dataset.n_classes,
                        dtype.itemsize),
        threads=backend.batch_copies(), advice="--hidden or --batch-size")
    check_fits(estimate, backend.free_memory(), f"{backend.device} memory")


@contextlib.contextmanager
def own_output_folder(out, option: str):
    """Make the folder ``out`` if need be, hold its :class:`~gpubackprop.outputs.OutputLock`
    (an OutputError when another training holds it) and, on taking it, clear what an
    interrupted run left there. ``option`` names ``out`` in messages ("--out")."""
    created = prepare_folder(out, option)
    try:
        with OutputLock(out, option) as lock:
            if lock.note:
                print(f"gpubackprop: note: {lock.note}", file=sys.stderr)
            left = remove_stale_temporaries(out) + remove_unreferenced_arrays(out) \
                if lock.outermost else []
            if left:
                print(f"gpubackprop: note: removed {len(left)} file(s) an interrupted run left "
                      f"in {out}: {', '.join(path.name for path in left)}", file=sys.stderr)
            yield
    finally:
        remove_if_empty(created)


def run(config: TrainConfig, verbose: int = 1, stream=None, data_dir=None,
        download: bool = True, out=None, checkpoint: Checkpoint | None = None,
        checkpoint_every: CheckpointCadence | None = None, communicator=None) -> TrainResult:
    """Load the data, build (or restore) the model, train it and measure it on the test set.

    Parameters
    ----------
    config : TrainConfig
        ``epochs`` is the total over the history, resumed epochs included.
    data_dir : str or Path, optional
        Folder searched first for IDX datasets.
    download : bool
        Whether an IDX dataset may be downloaded when no folder has it.
    out : str or Path, optional
        Folder for ``checkpoint.json`` and its arrays, saved at the cadence
        ``checkpoint_every`` and at the end.
    checkpoint : Checkpoint, optional
        Resume from it: weights, optimizer state, history, shuffling state.
    checkpoint_every : CheckpointCadence, optional
        Default: :meth:`CheckpointCadence.default` (every epoch for mini-batch
        training; by time for full-batch runs, whose epochs are single iterations).
    communicator : Communicator, optional
        Train data parallel over its ranks (made before the model, so that NCCL
        picks each rank's GPU first); ranks other than 0 print nothing and
        write nothing (``out`` is ignored there).
    """
    done = checkpoint.history.epochs if checkpoint is not None and checkpoint.history else 0
    if config.epochs <= done:
        raise InputError(f"the run has trained {done} of its {config.epochs} epochs already; "
                         f"pass --epochs N with N > {done} to train on")
    if communicator is not None and communicator.rank != 0:
        verbose, out = 0, None
    with own_output_folder(out, "out") if out is not None else contextlib.nullcontext():
        return _run(config, verbose, stream, data_dir, download, out, checkpoint,
                    checkpoint_every, communicator, done)


def _run(config: TrainConfig, verbose: int, stream, data_dir, download: bool, out,
         checkpoint: Checkpoint | None, checkpoint_every: CheckpointCadence | None,
         communicator, done: int) -> TrainResult:
    """:func:`run`'s work once ``out`` is held (``done``: epochs trained before)."""
    # Rank 0 finds (or downloads) the data while the other ranks wait, then they read it.
    dataset = rank_0_first(communicator, lambda: load_dataset(
        config.dataset, seed=config.seed, data_dir=data_dir, download=download))
    X_train, X_test = prepare_data(config, dataset)
    model = build_model(config, dataset) if checkpoint is None else checkpoint.model
    y_train, validation = dataset.y_train, None
    if config.validation_size:
        X_train, y_train, X_val, y_val = validation_split(
            X_train, y_train, config.validation_size / len(X_train), seed=config.seed)
        validation = (X_val, y_val)
    optimizer = config.optimizer if checkpoint is None else checkpoint.optimizer
    callbacks = []
    if config.schedule != "none":
        callbacks.append(LearningRateSchedule(config.schedule, config.lr, config.epochs))
    if config.patience is not None:
        callbacks.append(EarlyStopping("val_loss" if validation else "loss", config.patience))
    trainer = Trainer(model, loss=build_loss(config), optimizer=optimizer, lr=config.lr,
                      weight_decay=config.weight_decay if checkpoint is None else None,
                      batch_size=config.batch_size, seed=config.seed,
                      clip_norm=config.clip_norm, verbose=verbose,
                      log_every=config.log_every, callbacks=callbacks, stream=stream,
                      distributed=communicator)

    def extra(trainer: Trainer) -> dict:
        return {"config": config.to_dict(), "trainer_rng": trainer.rng.bit_generator.state}

    if out is not None:
        # Two checkpoints (the new one is written before the old one goes) and the report.
        check_free_space(out, 2 * checkpoint_bytes(model, trainer.optimizer) + REPORT_BYTES)
        cadence = checkpoint_every or CheckpointCadence.default(config.batch_size is None)
        # Last in the list: it saves the final state after early stopping has restored its best.
        trainer.callbacks.append(ModelCheckpoint(out, extra, cadence))
    if checkpoint is not None:
        trainer.history = checkpoint.history or History()
        if "trainer_rng" in checkpoint.extra:
            trainer.rng.bit_generator.state = checkpoint.extra["trainer_rng"]
    started = time.perf_counter()
    history = trainer.fit(X_train, y_train, epochs=config.epochs - done,
                          validation_data=validation)
    seconds = time.perf_counter() - started
    metrics = trainer.evaluate(X_test, dataset.y_test)
    return TrainResult(config, dataset, model, trainer, history, metrics["loss"],
                       metrics["accuracy"], int(np.asarray(dataset.y_test).shape[0]), seconds)


def checkpoint_bytes(model: Sequential, optimizer) -> int:
    """Bytes of a checkpoint of ``model`` with ``optimizer``'s state (arrays, uncompressed)."""
    shapes = {name: W.shape for name, W in model.parameters().items()}
    state = optimizer_state_specs(optimizer, shapes, model.dtype)
    return parameter_bytes(shapes.values(), model.dtype.itemsize) + \
        sum(spec.nbytes for spec in state.values())


def write_report(result: TrainResult, out, n_samples: int = 8) -> list:
    """history.json and the pictures of a run, in the folder ``out``.

    Writes ``history.json``, ``loss.png`` and ``accuracy.png``; for image
    datasets also ``weights.png`` (first-layer weights as image tiles) and
    ``activations.png`` (the first ``n_samples`` test images beside their
    hidden activations). Returns the paths written.
    """
    try:
        return _write_report(result, Path(out), n_samples)
    except OSError as exc:
        raise OutputError(f"could not write the report into {out}: "
                          f"{exc.strerror or exc}") from None


def _write_report(result: TrainResult, out: Path, n_samples: int) -> list:
    from ..fileio import write_json
    from .plots import plot_activations, plot_history, plot_weights

    config, dataset, model = result.config, result.dataset, result.model
    paths = [out / name for name in ("history.json", "loss.png", "accuracy.png")]
    write_json(paths[0], result.summary())
    plot_history(result.history, paths[1], paths[2], title=config.dataset,
                 test_accuracy=result.test_accuracy)
    if dataset.image_shape is not None:
        paths.append(out / "activations.png")
        if config.model == "mlp":
            # Each first-layer unit's weights over the pixels, as an image tile.
            paths.append(out / "weights.png")
            W = model.backend.to_numpy(model.layers[0].params["W"])
            plot_weights(W, dataset.image_shape, paths[-1], title=config.dataset)
        images, labels = dataset.X_test[:n_samples], dataset.y_test[:n_samples]
        X = prepare_data(config, dataset)[1][:n_samples]
        plot_activations(images, labels, model.layer_outputs(X), dataset.image_shape,
                         paths[3], title=config.dataset, class_names=dataset.class_names)
    return paths
