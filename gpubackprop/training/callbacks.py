"""Training conveniences as :class:`~gpubackprop.training.trainer.Callback` objects.

``EarlyStopping`` stops when a monitored figure stops improving and puts the
best weights back; ``LearningRateSchedule`` sets the learning rate of each
epoch from its number; ``ModelCheckpoint`` saves a checkpoint at a cadence
(every epoch, every N epochs or every S seconds) and at the end, so an
interrupted run can be resumed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from ..errors import InputError
from .trainer import Callback
from ..validation import check_choice, check_positive

SCHEDULES = ("none", "step", "cosine")


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs.

    Parameters
    ----------
    monitor : {"val_loss", "val_accuracy", "loss", "accuracy"}
        A key of the epoch logs; losses must fall, accuracies rise.
    patience : int
        Epochs without improvement tolerated before stopping.
    min_delta : float
        An improvement must beat the best value by more than this.
    restore_best : bool
        At the end of training, put back the weights of the best epoch.

    Notes
    -----
    A NaN (or infinite) value never counts as an improvement. The count
    starts afresh in every :meth:`Trainer.fit` call, so after a resume the
    resumed weights are the baseline.

    Attributes
    ----------
    best : float
        Best monitored value seen so far.
    best_epoch : int or None
        Epoch (counted over the whole history) that reached ``best``.
    stopped_epoch : int or None
        Epoch after which training was stopped, if it was.
    """

    MONITORS = ("val_loss", "val_accuracy", "loss", "accuracy")

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0,
                 restore_best: bool = True):
        self.monitor = check_choice(monitor, self.MONITORS, "monitored figure")
        self.patience = check_positive(patience, "patience", integer=True)
        if not min_delta >= 0:
            raise InputError(f"min_delta must be >= 0, got {min_delta!r}")
        self.min_delta = float(min_delta)
        self.restore_best = bool(restore_best)
        self.sign = 1.0 if self.monitor.endswith("loss") else -1.0

    @property
    def best(self) -> float:
        return self.sign * self._score

    def on_train_begin(self, trainer) -> None:
        # _score is the monitored value signed so that lower is better.
        self._score, self.best_epoch, self.wait = math.inf, None, 0
        self.stopped_epoch = None
        self._best_weights = None

    def on_epoch_end(self, trainer, epoch: int, logs: dict) -> None:
        if self.monitor not in logs:
            raise InputError(f"early stopping monitors {self.monitor!r}, which training does "
                             f"not report (give validation data to monitor val_*)")
        score = self.sign * logs[self.monitor]
        if math.isfinite(score) and score < self._score - self.min_delta:
            self._score, self.best_epoch, self.wait = score, epoch, 0
            if self.restore_best:
                # On-device copies: no host transfer at every improvement.
                self._best_weights = {name: W.copy()
                                      for name, W in trainer.model.parameters().items()}
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            trainer.stop_training = True

    def on_train_end(self, trainer) -> None:
        restore = self.restore_best and self._best_weights is not None and \
            self.best_epoch != trainer.history.epochs
        if restore:
            for name, W in trainer.model.parameters().items():
                W[...] = self._best_weights[name]
        self._best_weights = None
        if trainer.verbose and self.stopped_epoch is not None:
            note = f"; restored the weights of epoch {self.best_epoch}" if restore else ""
            print(f"early stopping: {self.monitor} did not improve for {self.patience} epochs "
                  f"(best {self.best:.5f} in epoch {self.best_epoch}){note}",
                  file=trainer.stream, flush=True)


class LearningRateSchedule(Callback):
    """Set ``trainer.optimizer.lr`` at the start of every epoch.

    Epochs are counted over the whole history (from 1), so a resumed run
    continues the schedule where it stopped.

    Parameters
    ----------
    kind : {"none", "step", "cosine"}
        "step": ``base_lr * gamma ** ((epoch - 1) // step_size)``.
        "cosine": from ``base_lr`` in epoch 1 down along half a cosine period
        towards ``min_lr`` over ``epochs`` epochs (never reaching it, so the
        rate stays positive); epochs past the end keep the last epoch's rate.
        "none": ``base_lr`` throughout.
    base_lr : float
    epochs : int
        Length of the schedule (the planned number of epochs).
    step_size : int, optional
        Epochs between steps; ``max(1, epochs // 3)`` when omitted.
    gamma : float
        Factor of each step, in (0, 1].
    min_lr : float
        Floor of the cosine schedule.
    """

    def __init__(self, kind: str, base_lr: float, epochs: int, step_size: int | None = None,
                 gamma: float = 0.1, min_lr: float = 0.0):
        self.kind = check_choice(kind, SCHEDULES, "learning-rate schedule")
        self.base_lr = check_positive(base_lr, "learning rate")
        self.epochs = check_positive(epochs, "schedule length", integer=True)
        self.step_size = (max(1, self.epochs // 3) if step_size is None
                          else check_positive(step_size, "step size", integer=True))
        if not 0 < gamma <= 1:
            raise InputError(f"the step factor gamma must be in (0, 1], got {gamma!r}")
        if not 0 <= min_lr < self.base_lr:
            raise InputError(f"min_lr must be in [0, base_lr), got {min_lr!r}")
        self.gamma, self.min_lr = float(gamma), float(min_lr)

    def lr_at(self, epoch: int) -> float:
        """Learning rate of epoch ``epoch`` (counted from 1)."""
        if self.kind == "step":
            return self.base_lr * self.gamma ** ((epoch - 1) // self.step_size)
        if self.kind == "cosine":
            progress = (min(epoch, self.epochs) - 1) / self.epochs
            cosine = 0.5 * (1 + math.cos(math.pi * progress))
            return self.min_lr + (self.base_lr - self.min_lr) * cosine
        return self.base_lr

    def on_epoch_begin(self, trainer, epoch: int) -> None:
        trainer.optimizer.lr = self.lr_at(epoch)


@dataclass(frozen=True)
class CheckpointCadence:
    """When :class:`ModelCheckpoint` saves: every ``epochs`` epochs or ``seconds`` seconds.

    Exactly one of the two is set. A count counts epochs over the whole
    history (epoch 10 is due for ``epochs=5`` also after a resume); a time
    counts from the last save, or from the start of training.
    """

    epochs: int | None = 1
    seconds: float | None = None

    def __post_init__(self):
        if (self.epochs is None) == (self.seconds is None):
            raise InputError("a checkpoint cadence is a number of epochs or of seconds, "
                             "exactly one of the two")
        if self.epochs is not None:
            check_positive(self.epochs, "checkpoint cadence (epochs)", integer=True)
        else:
            check_positive(self.seconds, "checkpoint cadence (seconds)")

    @classmethod
    def parse(cls, text: str) -> "CheckpointCadence":
        """``"N"`` (every N epochs) or ``"Ns"`` (every N seconds), e.g. ``"5"``, ``"30s"``."""
        spec = str(text).strip().lower()
        try:
            if spec.endswith("s"):
                return cls(epochs=None, seconds=float(spec[:-1]))
            return cls(epochs=int(spec))
        except ValueError:
            raise InputError(f"checkpoint cadence must be N (epochs) or Ns (seconds), e.g. 5 "
                             f"or 30s; got {text!r}") from None

    @classmethod
    def default(cls, full_batch: bool) -> "CheckpointCadence":
        """Every epoch for mini-batch training; every :data:`FULL_BATCH_SECONDS` s
        for full-batch runs, whose epochs are single iterations."""
        return cls(epochs=None, seconds=FULL_BATCH_SECONDS) if full_batch else cls(epochs=1)

    def due(self, epoch: int, seconds_since_save: float) -> bool:
        """Whether to save after ``epoch`` (counted from 1 over the whole history)."""
        if self.epochs is not None:
            return epoch % self.epochs == 0
        return seconds_since_save >= self.seconds

    def describe(self) -> str:
        if self.epochs is not None:
            return "every epoch" if self.epochs == 1 else f"every {self.epochs} epochs"
        return f"every {self.seconds:g} s"


#: Seconds between the checkpoints of a full-batch run by default.
FULL_BATCH_SECONDS = 60.0


class ModelCheckpoint(Callback):
    """Save a checkpoint (atomically) at a cadence and at the end, for ``--resume``.

    Parameters
    ----------
    path : str or Path
        Checkpoint metadata file or folder (see :func:`save_checkpoint`).
    extra : callable, optional
        ``extra(trainer) -> dict`` of JSON data stored with each checkpoint.
    cadence : CheckpointCadence, optional
        When to save during training; default: after every epoch.

    Notes
    -----
    The final state is always saved when training ends, after the callbacks
    listed before this one have ended (an :class:`EarlyStopping` listed first
    has put its best weights back by then).
    """

    def __init__(self, path, extra=None, cadence: CheckpointCadence | None = None):
        self.path = path
        self.extra = extra
        self.cadence = cadence or CheckpointCadence()
        #: Epochs after which a checkpoint was written during the last fit, in order.
        self.saved_epochs: list = []

    def on_train_begin(self, trainer) -> None:
        self._last_save = time.monotonic()
        self.saved_epochs = []

    def on_epoch_end(self, trainer, epoch: int, logs: dict) -> None:
        if self.cadence.due(epoch, time.monotonic() - self._last_save):
            self._save(trainer)

    def on_train_end(self, trainer) -> None:
        self._save(trainer)

    def _save(self, trainer) -> None:
        from .checkpoint import save_checkpoint

        if trainer.rank != 0:
            return  # in a distributed run, rank 0 alone writes (every rank holds the same state)

        save_checkpoint(self.path, trainer.model, trainer.optimizer, trainer.history,
                        extra=self.extra(trainer) if self.extra else None)
        self._last_save = time.monotonic()
        self.saved_epochs.append(trainer.history.epochs)
