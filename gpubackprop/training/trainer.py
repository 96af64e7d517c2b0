"""Trainer: mini-batches, epochs, history, callbacks and a progress bar.

The training data is moved to the model's backend once and stays there;
batches are gathered on the backend. On a GPU the loop reads nothing back
to the host inside an epoch: batch losses and correct counts stay on the
device and are fetched together at the end of the epoch.

With ``distributed=`` (launched by ``mpiexec -n K``), every rank runs this
loop over the same global batches (one seed draws the order, whatever K),
the compiled step trains on the rank's block of each and all-reduces the
gradients (:class:`~gpubackprop.nn.plan.ReduceOp`), and rank 0 alone prints
and writes checkpoints.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np

from .._version import __version__
from ..distributed import check_same_everywhere, communicator_for, stop_all_on_error
from ..distributed.startup import digest
from ..errors import InputError, OutOfMemoryError, TrainingDivergedError
from ..memory import check_fits, data_bytes, optimizer_state_specs, training_estimate
from ..nn.model import planned_activations
from ..nn.losses import Loss, get_loss
from ..nn.optim import Optimizer, get_optimizer
from ..nn.plan import NO_MASK_IN_DATA_PARALLEL, count_hits
from ..validation import (as_array, check_features, check_int, check_labels, check_mask,
                          check_positive, check_scalar_fits, check_seed, check_targets)


@dataclass
class History:
    """What training measured, as plain Python floats.

    Attributes
    ----------
    loss : list of float
        Loss of every iteration (mini-batch), in order.
    epoch_loss, accuracy : list of float
        Mean training loss and running training accuracy of each epoch
        (accuracy is ``nan`` for regression targets).
    val_loss, val_accuracy : list of float
        Per epoch, when validation data was given.
    epoch_time : list of float
        Seconds per epoch, wall clock.
    lr : list of float
        Learning rate used in each epoch.
    """

    loss: list = field(default_factory=list)
    epoch_loss: list = field(default_factory=list)
    accuracy: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    val_accuracy: list = field(default_factory=list)
    epoch_time: list = field(default_factory=list)
    lr: list = field(default_factory=list)

    @property
    def epochs(self) -> int:
        return len(self.epoch_loss)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "History":
        names = cls.__dataclass_fields__
        return cls(**{key: [float(v) for v in value] for key, value in data.items()
                      if key in names})


class Prepared(NamedTuple):
    """A data set checked and moved to the backend.

    Attributes
    ----------
    X : array, shape (N, D) or (N, T, D)
    T : array, shape (N, K), or (N, T, K) for a model with sequence outputs
        Targets (one-hot rows for class labels).
    labels : array, shape (N,) or (N, T), int64, or None for real-valued targets
    mask : array, shape (N, T), 0/1 in the model's dtype, or None (every step counts)
    count : int
        How many predictions the loss and accuracy average over: N, N*T, or
        the number of steps the mask selects.
    """

    X: Any
    T: Any
    labels: Any
    mask: Any
    count: int


class Callback:
    """Hooks called by :meth:`Trainer.fit`; set ``trainer.stop_training`` to stop."""

    def on_train_begin(self, trainer) -> None:
        """Before the first epoch."""

    def on_epoch_begin(self, trainer, epoch: int) -> None:
        """Before epoch ``epoch`` (counted from 1 over the whole history)."""

    def on_epoch_end(self, trainer, epoch: int, logs: dict) -> None:
        """After an epoch; ``logs`` holds that epoch's figures as floats."""

    def on_train_end(self, trainer) -> None:
        """After the last epoch, also when a callback stopped training."""


class Trainer:
    """Fits a model by mini-batch backpropagation.

    Parameters
    ----------
    model : Sequential
    loss : {"cross_entropy", "mse"} or Loss
    optimizer : str or Optimizer
        A name of :data:`~gpubackprop.nn.optim.OPTIMIZERS` ("sgd", "momentum",
        "adam", "adamw", "rmsprop") or an instance.
    lr : float, optional
        Learning rate (the optimizer's default when omitted).
    weight_decay : float, optional
        L2 weight decay of a named optimizer (decoupled for AdamW); its default when omitted.
    batch_size : int, optional
        Samples per iteration; ``None`` takes the whole training set (full batch).
    shuffle : bool
        Draw a new order of the training samples every epoch (unless one batch
        holds them all: then the order cannot matter).
    seed : int
        Seeds the shuffling (:attr:`rng`, drawn on the host; on the GPU one 64-bit
        key per epoch); the same seed gives the same order on every run.
    clip_norm : float, optional
        Clip the gradients to this global L2 norm.
    verbose : int
        0 silent; 1 a progress bar (on a terminal) and a line per logged epoch.
    log_every : int
        Print the summary line every this many epochs.
    callbacks : sequence of Callback
        Run on every rank of a distributed run (a schedule must step everywhere);
        :class:`~.callbacks.ModelCheckpoint` writes on rank 0 only.
    distributed : {"auto", "mpi", "nccl"} or Communicator, optional
        Data-parallel training across the ranks ``mpiexec -n K`` launched
        (:mod:`gpubackprop.distributed`): ``batch_size`` is the global batch,
        each rank trains on its block of it and the gradients are summed over
        all ranks before each update, so the weights follow single-process
        training. "auto" takes NCCL for the CuPy backend (build the model after
        ``communicator_for(backend)`` picked each rank's GPU), MPI otherwise.
        Rank 0 alone prints; the ranks' model, data and seed are checked to
        agree before the first step, and a rank that fails stops them all.
    """

    def __init__(self, model, loss="cross_entropy", optimizer="adam", lr: float | None = None,
                 batch_size: int | None = 32, shuffle: bool = True, seed: int = 0,
                 clip_norm: float | None = None, verbose: int = 1, log_every: int = 1,
                 callbacks=(), stream=None, weight_decay: float | None = None,
                 distributed=None):
        if not hasattr(model, "backend") or not hasattr(model, "parameters_and_gradients"):
            raise InputError(f"model must be a Sequential (from mlp(...) or Sequential([...])), "
                             f"got {type(model).__name__}")
        self.model = model
        self.backend = model.backend
        self.loss: Loss = get_loss(loss)
        if isinstance(optimizer, Optimizer):
            if lr is not None:
                optimizer.lr = check_positive(lr, "learning rate")
            self.optimizer = optimizer
        else:
            options = {} if weight_decay is None else {"weight_decay": weight_decay}
            self.optimizer = get_optimizer(optimizer, lr=lr, clip_norm=clip_norm, **options)
        check_scalar_fits(self.optimizer.lr, model.dtype, "learning rate")
        if self.optimizer.clip_norm is not None:
            check_scalar_fits(self.optimizer.clip_norm, model.dtype, "clip norm")
        if batch_size is not None:
            batch_size = check_positive(batch_size, "batch size", integer=True)
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.seed = check_seed(seed)
        self.rng = np.random.default_rng(self.seed)
        self.verbose = int(verbose) if isinstance(verbose, bool) else \
            check_int(verbose, "verbose", minimum=0)
        #: The ranks of a distributed run (None: this process alone).
        self.communicator = None if distributed is None or distributed is False else \
            communicator_for(self.backend, distributed)
        if self.communicator is not None:
            for W in model.parameters().values():
                self.communicator.check_placement(W)
        if self.rank != 0:
            self.verbose = 0
        self.log_every = check_positive(log_every, "log_every", integer=True)
        self.callbacks = list(callbacks)
        self.stream = stream if stream is not None else sys.stdout
        self.history = History()
        self.stop_training = False
        #: The compiled step of the last :meth:`fit` (``step.compiler`` names who built it).
        self.step = None

    @property
    def rank(self) -> int:
        """This process's rank in a distributed run; 0 otherwise."""
        return 0 if self.communicator is None else self.communicator.rank

    # ------------------------------------------------------------------ data
    @property
    def sequence_outputs(self) -> bool:
        """Whether the model predicts at every time step: outputs (N, T, K)."""
        return len(self.model.output_shape) > 1

    def _prepare(self, X, y, name: str = "X", mask=None) -> Prepared:
        """Check ``X``, ``y`` (and ``mask``) and move them to the backend."""
        model, backend = self.model, self.backend
        X = check_features(X, name=name, n_features=model.n_inputs, ndim=model.input_ndim,
                           dtype=model.dtype)
        y_name = "y" if name == "X" else f"{name}'s labels"
        if self.sequence_outputs:
            return self._prepare_sequences(X, as_array(y, y_name), mask, name, y_name)
        if mask is not None:
            raise InputError(f"a mask selects time steps of sequence outputs (N, T, K); this "
                             f"model's outputs are (N, {model.n_outputs})")
        y = as_array(y, y_name)
        is_labels = y.ndim == 1
        if is_labels:
            labels = check_labels(y, X.shape[0], n_classes=model.n_outputs, name=y_name)
            labels = backend.asarray(labels, dtype=np.int64)
            T = backend.one_hot(labels, model.n_outputs, model.dtype)
        else:
            T = backend.asarray(check_targets(y, X.shape[0], model.n_outputs, name=y_name,
                                              dtype=model.dtype), dtype=model.dtype)
            labels = None
        return Prepared(backend.asarray(X, dtype=model.dtype), T, labels, None, X.shape[0])

    def _prepare_sequences(self, X, y, mask, name: str, y_name: str) -> Prepared:
        """Per-step targets: labels (N, T) or targets (N, T, K), and an optional mask (N, T)."""
        model, backend = self.model, self.backend
        N, steps, K = X.shape[0], X.shape[1], model.n_outputs
        if y.ndim == 2:
            if tuple(y.shape) != (N, steps):
                raise InputError(f"{y_name} must hold one class label per time step, shape "
                                 f"({N}, {steps}) for {name} of shape {tuple(X.shape)}; got "
                                 f"shape {tuple(y.shape)}")
            labels = check_labels(y.reshape(-1), N * steps, n_classes=K, name=y_name)
            labels = backend.asarray(labels, dtype=np.int64)
            T = backend.one_hot(labels, K, model.dtype).reshape(N, steps, K)
            labels = labels.reshape(N, steps)
        elif y.ndim == 3:
            if tuple(y.shape) != (N, steps, K):
                raise InputError(f"{y_name} must have shape ({N}, {steps}, {K}) (samples, time "
                                 f"steps, model outputs) for {name} of shape {tuple(X.shape)}; "
                                 f"got shape {tuple(y.shape)}")
            T = backend.asarray(check_features(y, name=y_name, n_features=K, ndim=3,
                                               dtype=model.dtype), dtype=model.dtype)
            labels = None
        else:
            raise InputError(f"the model predicts at every time step: {y_name} must be class "
                             f"labels ({N}, {steps}) or targets ({N}, {steps}, {K}), got shape "
                             f"{tuple(y.shape)}")
        count = N * steps
        if mask is not None:
            mask, count = check_mask(mask, (N, steps), f"{name}'s mask" if name != "X"
                                     else "mask")
            mask = backend.asarray(mask, dtype=model.dtype)
        return Prepared(backend.asarray(X, dtype=model.dtype), T, labels, mask, count)

    def _batches(self, n: int):
        """Index arrays of the mini-batches of one epoch (on the backend)."""
        size = self.batch_size or n
        order = self.backend.permutation(n, self.rng) if self.shuffle and size < n else None
        for start in range(0, n, size):
            stop = min(start + size, n)
            yield slice(start, stop) if order is None else order[start:stop]

    # -------------------------------------------------------------- training
    def fit(self, X, y, epochs: int = 1, validation_data=None, mask=None) -> History:
        """Train for ``epochs`` more epochs; history continues across calls.

        Parameters
        ----------
        X : array_like, shape (N, n_inputs), or (N, T, n_inputs) for a recurrent model
        y : array_like
            For outputs (N, K): integer labels (N,) or targets (N, K). For a
            model with sequence outputs (N, T, K) (``return_sequences`` and a
            ``TimeDistributed`` output layer): one label per step (N, T) or
            targets (N, T, K); the loss is the mean over the steps.
        epochs : int
        validation_data : tuple (X_val, y_val) or (X_val, y_val, mask_val), optional
        mask : array_like, shape (N, T), bool or 0/1, optional
            Sequence outputs only: the steps that count (padding is 0). The
            loss is the mean over the selected steps, the others get a zero
            gradient, and accuracy counts only the selected steps.

        Returns
        -------
        History
        """
        epochs = check_positive(epochs, "epochs", integer=True)
        if self.communicator is not None:
            # A rank that fails (bad data, out of memory, a bug) stops every rank, named.
            with stop_all_on_error(self.communicator):
                return self._fit_checked(X, y, epochs, validation_data, mask)
        return self._fit_checked(X, y, epochs, validation_data, mask)

    def _fit_checked(self, X, y, epochs: int, validation_data, mask) -> History:
        self._check_memory(X, validation_data)
        try:
            return self._fit(X, y, epochs, validation_data, mask)
        except MemoryError as exc:
            if isinstance(exc, OutOfMemoryError):
                raise
            raise OutOfMemoryError(f"training ran out of memory ({type(exc).__name__}: "
                                   f"{exc}); reduce the batch size, the layer widths or the "
                                   f"data") from None

    def _check_memory(self, X, validation_data) -> None:
        """Optimizer state, a batch's activations and the data, against free memory.

        The parameters and gradients exist already (the model checked them).
        """
        model, backend = self.model, self.backend
        shapes = [_shape(X)]
        if isinstance(validation_data, (tuple, list)) and len(validation_data) in (2, 3):
            shapes.append(_shape(validation_data[0]))
        if len(shapes[0]) < 2:
            return  # not a batch of rows: _prepare says what is wrong with it
        n = shapes[0][0]
        parameters = {name: W.shape for name, W in model.parameters().items()}
        state = optimizer_state_specs(self.optimizer, parameters, model.dtype)
        widths, kept_per_step = planned_activations(model.layers, model.n_inputs)
        estimate = training_estimate(
            model.dtype.itemsize, widths, min(self.batch_size or n, n),
            kept_per_step=kept_per_step,
            steps=shapes[0][1] if model.input_ndim == 3 and len(shapes[0]) == 3 else 1,
            state=sum(spec.nbytes for spec in state.values()),
            data=data_bytes([shape for shape in shapes if len(shape) >= 2], model.n_outputs,
                            model.dtype.itemsize, sequences=self.sequence_outputs),
            threads=backend.batch_copies(),
            advice="the batch size, the layer widths or the data")
        check_fits(estimate, backend.free_memory(), f"{backend.device} memory")

    def _fit(self, X, y, epochs: int, validation_data, mask) -> History:
        data = self._prepare(X, y, mask=mask)
        val = None
        if validation_data is not None:
            X_val, y_val, mask_val = _validation_data(validation_data)
            val = self._prepare(X_val, y_val, name="X_val", mask=mask_val)
        self.stop_training = False
        # The backend compiles the step once per fit: the first compiler that takes the
        # plan, else the eager interpreter (the layers' own passes). A batch size above
        # n is the full batch: no step needs buffers for more rows.
        n = data.X.shape[0]
        if self.communicator is not None:
            if data.mask is not None or (val is not None and val.mask is not None):
                raise InputError(NO_MASK_IN_DATA_PARALLEL)
            check_same_everywhere(self.communicator,
                                  self._startup_facts(data.X, data.T, val, epochs))
        self.step = self.model.compile_step(self.loss, self.optimizer,
                                            min(self.batch_size or n, n),
                                            distributed=self.communicator)
        if self.communicator is not None and self.verbose:
            comm = self.communicator
            print(f"distributed: {comm.size} ranks, {comm.describe().rsplit(', rank', 1)[0]}; "
                  f"global batch {min(self.batch_size or n, n)}, up to "
                  f"{self.step.plan.batch_size} rows per rank; step {self.step.describe()}",
                  file=self.stream, flush=True)
        for callback in self.callbacks:
            callback.on_train_begin(self)
        first = self.history.epochs + 1
        for epoch in range(first, first + epochs):
            for callback in self.callbacks:
                callback.on_epoch_begin(self, epoch)
            logs = self._run_epoch(epoch, first + epochs - 1, data, val)
            for callback in self.callbacks:
                callback.on_epoch_end(self, epoch, logs)
            if self.stop_training:
                break
        for callback in self.callbacks:
            callback.on_train_end(self)
        return self.history

    def _startup_facts(self, X, T, val, epochs: int) -> dict:
        """What every rank of a distributed run must share before the first step."""
        model, to_host = self.model, self.backend.to_numpy
        facts = {
            "gpubackprop version": __version__,
            "backend": self.backend.name,
            "model configuration": model.config(),
            "parameter count": model.n_parameters(),
            "parameter digest": digest(*model.state_arrays().values()),
            "optimizer": (self.optimizer.config(), digest(*(
                to_host(A) for _, A in sorted(self.optimizer.state.items())),
                self.optimizer.host_step_state())),
            "loss": self.loss.name,
            "batch size": self.batch_size,
            "epochs": epochs,
            "seed": self.seed,
            "shuffling state": repr(self.rng.bit_generator.state),
            "data shape": (tuple(X.shape), tuple(T.shape)),
            "data fingerprint": digest(to_host(X), to_host(T)),
        }
        if val is not None:
            facts["validation data fingerprint"] = digest(to_host(val.X), to_host(val.T))
        return facts

    def _run_epoch(self, epoch: int, last: int, data: Prepared, val: Prepared | None) -> dict:
        backend, xp = self.backend, self.backend.xp
        X, T, labels = data.X, data.T, data.labels
        # The mask travels only when there is one: compiled steps take four arguments.
        masked = () if data.mask is None else (data.mask,)
        n = X.shape[0]
        n_batches = math.ceil(n / (self.batch_size or n))
        started = time.perf_counter()
        batch_losses, batch_hits = [], []
        with self.step, _progress(n_batches, epoch, last, self.verbose) as bar:
            for batch, index in enumerate(self._batches(n), start=1):
                # Forward, loss, backward and update of one batch, as the backend compiled them.
                loss, hits = self.step(X, T, labels, index, *masked)
                batch_losses.append(loss)
                if labels is not None:
                    batch_hits.append(hits)
                if backend.host_reads_are_free and not math.isfinite(float(loss)):
                    self._diverged(epoch, batch, float(loss))
                bar.update(1)
            # Validation inside the step's context: a step that holds the BLAS library to one
            # thread (its own threads split the work) keeps it so here, since BLAS threads
            # woken now would go on spinning into the next epoch's steps.
            validation = [] if val is None else self._evaluate_on_device(val)
        # One read back to the host per epoch: batch losses, hit count, validation figures.
        # (Stacked here, not summed per batch: nothing is allocated between steps.)
        extras = [xp.stack(batch_hits).sum() if labels is not None
                  else xp.zeros((), dtype=np.int64), *validation]
        figures = backend.to_numpy(xp.concatenate([xp.stack(batch_losses).astype(np.float64),
                                                   xp.stack(extras).astype(np.float64)]))
        losses, (hits, *val_figures) = figures[:n_batches], figures[n_batches:]
        bad = np.flatnonzero(~np.isfinite(losses))
        if bad.size:
            self._diverged(epoch, int(bad[0]) + 1, float(losses[bad[0]]))
        history = self.history
        history.loss.extend(losses.tolist())
        history.epoch_loss.append(float(losses.mean()))
        history.accuracy.append(float(hits) / data.count if labels is not None
                                else float("nan"))
        history.lr.append(float(self.optimizer.lr))
        if val is not None:
            history.val_loss.append(float(val_figures[0]) / val.count)
            history.val_accuracy.append(float(val_figures[1]) / val.count
                                        if val.labels is not None else float("nan"))
        history.epoch_time.append(time.perf_counter() - started)
        logs = {"epoch": epoch, "loss": history.epoch_loss[-1], "accuracy": history.accuracy[-1],
                "time": history.epoch_time[-1]}
        if val is not None:
            logs.update(val_loss=history.val_loss[-1], val_accuracy=history.val_accuracy[-1])
        if self.verbose and (epoch % self.log_every == 0 or epoch == last):
            step = "iteration" if n_batches == 1 else "epoch"
            print(_format_logs(logs, last, self.loss.name, step), file=self.stream, flush=True)
        return logs

    def _diverged(self, epoch: int, batch: int, value: float):
        raise TrainingDivergedError(
            f"the training loss became {value} in epoch {epoch}, batch {batch}; "
            f"try a smaller learning rate (now {self.optimizer.lr:g}) or gradient clipping")

    # ------------------------------------------------------------- inference
    def _evaluate_on_device(self, data: Prepared):
        """Loss summed over the predictions and hit count, two 0-d arrays on the backend.

        Each chunk's mean loss is weighted by its number of predictions (rows,
        or the steps its mask selects); divided by ``data.count`` it is the mean.
        """
        backend, xp = self.backend, self.backend.xp
        X, T, labels, mask = data.X, data.T, data.labels, data.mask
        n = X.shape[0]
        size = max(self.batch_size or n, 1024)
        total, correct = [], []
        for start in range(0, n, size):
            rows = slice(start, start + size)
            Y = self.model.forward(X[rows], train=False)
            if mask is None:
                loss, _ = self.loss(backend, Y, T[rows])
                weight = Y[..., 0].size  # predictions: rows, or rows times steps
            else:
                loss, _ = self.loss.masked(backend, Y, T[rows], mask[rows])
                weight = mask[rows].sum()
            total.append(self.loss.readable(loss, Y) * weight)
            if labels is not None:
                correct.append(count_hits(backend, Y, labels, rows, mask))
        hits = xp.stack(correct).sum() if correct else xp.zeros((), dtype=np.int64)
        return xp.stack(total).sum(), hits

    def _evaluate_prepared(self, data: Prepared) -> tuple[float, float]:
        total, hits = self.backend.to_numpy(
            self.backend.xp.stack([value.astype(np.float64)
                                   for value in self._evaluate_on_device(data)]))
        return float(total) / data.count, (float(hits) / data.count if data.labels is not None
                                           else float("nan"))

    def evaluate(self, X, y, mask=None) -> dict:
        """Mean loss and accuracy (nan for regression) of the model on ``X``, ``y``.

        For sequence outputs both are means over the time steps (those ``mask``
        selects, when given); arguments as for :meth:`fit`.
        """
        loss, accuracy = self._evaluate_prepared(self._prepare(X, y, mask=mask))
        return {"loss": loss, "accuracy": accuracy}

    def predict_outputs(self, X) -> np.ndarray:
        """Loss-transformed outputs (class probabilities for cross-entropy): (N, K), or
        (N, T, K) for a model with sequence outputs."""
        backend, model = self.backend, self.model
        X = backend.asarray(check_features(X, n_features=model.n_inputs, ndim=model.input_ndim,
                                           dtype=model.dtype), dtype=model.dtype)
        size = max(self.batch_size or X.shape[0], 1024)
        parts = [backend.to_numpy(self.loss.probabilities(
                    backend, model.forward(X[start:start + size], train=False)))
                 for start in range(0, X.shape[0], size)]
        return np.concatenate(parts)

    def predict(self, X) -> np.ndarray:
        """Predicted class labels: (N,) int64, or (N, T) for sequence outputs."""
        return self.predict_outputs(X).argmax(axis=-1).astype(np.int64)


def _shape(X) -> tuple:
    """Shape of an array or nested sequence, without copying an array; () for anything
    else (ragged rows, objects), which :meth:`Trainer._prepare` then names."""
    if hasattr(X, "shape"):
        return tuple(X.shape)
    try:
        return np.shape(X)
    except (TypeError, ValueError):
        return ()


def _validation_data(validation_data) -> tuple:
    """``(X_val, y_val, mask_val or None)`` from ``validation_data``, or an InputError
    saying what it is."""
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
        kind = type(validation_data).__name__
        size = f" of {len(validation_data)} items" if isinstance(
            validation_data, (tuple, list)) else ""
        raise InputError(f"validation_data must be a pair (X_val, y_val) or a triple (X_val, "
                         f"y_val, mask_val), got a {kind}{size}")
    X_val, y_val, *mask = validation_data
    if y_val is None:
        raise InputError("validation_data must be a pair (X_val, y_val); y_val is None")
    return X_val, y_val, (mask[0] if mask else None)


def _format_logs(logs: dict, last: int, loss_name: str, step: str = "epoch") -> str:
    width = len(str(last))
    label = "MSE" if loss_name == "mse" else "loss"
    parts = [f"{step} {logs['epoch']:>{width}}/{last}", f"{label} {logs['loss']:.5f}"]
    if not math.isnan(logs["accuracy"]):
        parts.append(f"train acc {logs['accuracy']:.4f}")
    if "val_loss" in logs:
        parts.append(f"val {label} {logs['val_loss']:.5f}")
        if not math.isnan(logs["val_accuracy"]):
            parts.append(f"val acc {logs['val_accuracy']:.4f}")
    parts.append(f"{logs['time']:.2f}s")
    return "  ".join(parts)


class _progress:
    """A tqdm bar over one epoch's batches; silent unless verbose and on a terminal."""

    def __init__(self, total: int, epoch: int, last: int, verbose: int):
        self.bar = None
        if verbose and total > 1 and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=f"epoch {epoch}/{last}", leave=False,
                            unit="batch", file=sys.stderr)

    def __enter__(self):
        return self

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
        return False


__all__ = ["Callback", "History", "Prepared", "Trainer"]
