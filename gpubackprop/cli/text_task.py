"""``gpubackprop train text FILE`` and ``gpubackprop sample RUN``: a character-level model.

The text (read as :mod:`gpubackprop.data.text` says) is split into a training
part and its last 10% held out. Both are cut into windows of ``seq_length``
characters (each read from a zero state; the last window padded and masked),
and a recurrent layer (``--model rnn|lstm|gru``) with a Linear read-out at
every step learns to predict each next character (many-to-many, per-step
cross-entropy). Every epoch reports bits per character on the training windows
and on the held-out tail: the mean of ``-log2 p(next character)`` over every
character of the tail after its first. At the end the model writes a sample
drawn at ``--temperature``. The checkpoint holds the vocabulary, so
``gpubackprop sample RUN`` draws more text from a saved run.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.text import Vocabulary, bits_per_character, read_text, split_tail, windows
from ..errors import DataFileError, InputError, OutputError
from ..memory import Estimate, available_host_memory, check_fits
from ..nn.layers import Linear
from ..nn.model import Sequential
from ..nn.recurrent import TimeDistributed
from ..nn.sampling import sample_sequence
from ..training.callbacks import CheckpointCadence, LearningRateSchedule, ModelCheckpoint
from ..training.trainer import Callback, History, Trainer
from .pipeline import TrainConfig, build_loss, checkpoint_bytes, recurrent_layer
from .options import check_option

#: Name of the sample file written into ``--out``.
SAMPLE_NAME = "sample.txt"


@dataclass
class TextData:
    """A text as windows: ``train`` and ``tail`` are (inputs one-hot (W, L, V), next-character
    ids (W, L), mask (W, L)); ``start`` is the text's first character (the default prime)."""

    vocabulary: Vocabulary
    train: tuple
    tail: tuple
    start: str

    @property
    def n_tail_targets(self) -> int:
        return int(self.tail[2].sum())


def load_text(path, seq_length: int, dtype) -> TextData:
    """Read ``path``, build its vocabulary, and cut both parts into one-hot windows."""
    text = read_text(path)
    vocabulary = Vocabulary.of(text)
    ids = vocabulary.encode(text)
    # The one-hot inputs and targets of every window, checked before they are allocated.
    itemsize = np.dtype(dtype).itemsize
    check_fits(Estimate({"one-hot windows": 2 * (len(ids) + 2 * seq_length) * len(vocabulary)
                         * itemsize}, "the text (a shorter file)"),
               available_host_memory(), "host memory")
    parts = []
    for part in split_tail(ids):
        inputs, targets, mask = windows(part, seq_length)
        parts.append((vocabulary.one_hot(inputs, dtype), targets, mask))
    return TextData(vocabulary, parts[0], parts[1], text[0])


def build_text_model(config: TrainConfig, n_characters: int) -> Sequential:
    """Recurrent layers (one per ``hidden`` width) and a Linear read-out at every step."""
    if not config.hidden:
        raise InputError("the text model needs a hidden width, e.g. --hidden 128")
    layers = [recurrent_layer(config, width, return_sequences=True) for width in config.hidden]
    layers.append(TimeDistributed(Linear(n_characters)))
    return Sequential(layers, n_inputs=n_characters, device=config.device, dtype=config.dtype,
                      seed=config.seed)


class BitsPerCharacterLog(Callback):
    """Prints each epoch's training and held-out bits per character (and the held-out
    accuracy of the next-character guess)."""

    def __init__(self, last: int, every: int, stream):
        self.last, self.every, self.stream = last, every, stream

    def on_epoch_end(self, trainer, epoch: int, logs: dict) -> None:
        if epoch % self.every and epoch != self.last:
            return
        width = len(str(self.last))
        print(f"epoch {epoch:>{width}}/{self.last}  train bpc "
              f"{bits_per_character(logs['loss']):.4f}  held-out bpc "
              f"{bits_per_character(logs['val_loss']):.4f}  held-out acc "
              f"{logs['val_accuracy']:.4f}  {logs['time']:.2f}s", file=self.stream, flush=True)


@dataclass
class TextResult:
    """What a text run produced."""

    config: TrainConfig
    source: str
    model: Sequential
    history: History
    vocabulary: Vocabulary
    held_out_bpc: float
    n_tail_targets: int
    sample: str
    train_seconds: float

    def summary(self) -> dict:
        """history.json content: bpc per epoch as well as the losses in nats."""
        history = self.history
        return {"dataset": "text", "source": self.source, "config": self.config.to_dict(),
                "backend": self.model.backend.name, "vocabulary_size": len(self.vocabulary),
                "held_out_bpc": self.held_out_bpc, "held_out_characters": self.n_tail_targets,
                "train_bpc": [bits_per_character(value) for value in history.epoch_loss],
                "val_bpc": [bits_per_character(value) for value in history.val_loss],
                "train_seconds": self.train_seconds, "sample": self.sample,
                "history": history.to_dict()}


def text_extra(config: TrainConfig, data: TextData, source: str) -> dict:
    """What a text checkpoint stores beside the model: configuration and vocabulary."""
    return {"config": config.to_dict(),
            "text": {"vocabulary": data.vocabulary.characters, "start": data.start,
                     "source": source}}


def run_text(config: TrainConfig, path, verbose: int = 1, stream=None, out=None,
             checkpoint_every: CheckpointCadence | None = None) -> TextResult:
    """Train the character model of ``config`` on the text file ``path`` and draw a sample."""
    stream = stream if stream is not None else sys.stdout
    if config.loss != "cross_entropy":
        raise InputError("the text model learns next-character probabilities: its loss is "
                         "cross_entropy (bits per character), not " + config.loss)
    data = load_text(path, config.seq_length, config.dtype)
    prime = data.vocabulary.encode(config.prime or data.start, "--prime")
    model = build_text_model(config, len(data.vocabulary))
    callbacks = [] if config.schedule == "none" else \
        [LearningRateSchedule(config.schedule, config.lr, config.epochs)]
    if verbose:
        callbacks.append(BitsPerCharacterLog(config.epochs, config.log_every, stream))
    trainer = Trainer(model, loss=build_loss(config), optimizer=config.optimizer, lr=config.lr,
                      weight_decay=config.weight_decay, batch_size=config.batch_size,
                      seed=config.seed, clip_norm=config.clip_norm, verbose=0,
                      callbacks=callbacks, stream=stream)
    if out is not None:
        from ..outputs import check_free_space

        check_free_space(out, 2 * checkpoint_bytes(model, trainer.optimizer) + (1 << 20))
        trainer.callbacks.append(ModelCheckpoint(
            out, lambda trainer: text_extra(config, data, str(path)),
            checkpoint_every or CheckpointCadence.default(config.batch_size is None)))
    X, y, mask = data.train
    started = time.perf_counter()
    history = trainer.fit(X, y, mask=mask, epochs=config.epochs, validation_data=data.tail)
    seconds = time.perf_counter() - started
    held_out = trainer.evaluate(*data.tail[:2], mask=data.tail[2])
    sample = data.vocabulary.decode(sample_sequence(
        model, prime, config.sample_length, config.temperature, config.seed,
        config.seq_length))
    return TextResult(config, str(path), model, history, data.vocabulary,
                      bits_per_character(held_out["loss"]), data.n_tail_targets,
                      sample, seconds)


def write_text_report(result: TextResult, out) -> list:
    """history.json and sample.txt in ``out``; returns their paths."""
    from ..fileio import atomic_path, write_json

    out = Path(out)
    paths = [out / "history.json", out / SAMPLE_NAME]
    try:
        write_json(paths[0], result.summary())
        with atomic_path(paths[1]) as temporary:
            Path(temporary).write_text(result.sample, encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"could not write the report into {out}: "
                          f"{exc.strerror or exc}") from None
    return paths


def sample_from_checkpoint(path, length: int | None = None, temperature: float | None = None,
                           seed: int | None = None, prime: str | None = None,
                           device: str = "auto") -> tuple[str, TrainConfig]:
    """Draw text from the model of a ``train text`` run folder (its checkpoint).

    Options left None take the run's values. Returns the text and the
    configuration it was drawn with.
    """
    from ..training.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(path, device=device)
    saved, text = checkpoint.extra.get("config"), checkpoint.extra.get("text")
    if not isinstance(saved, dict) or not isinstance(text, dict):
        raise DataFileError(f"{path} holds no text model (no vocabulary): only runs of "
                            f"'gpubackprop train text' can be sampled")
    try:
        config = TrainConfig(**saved)
    except (TypeError, InputError) as exc:
        raise DataFileError(f"the checkpoint's training configuration is not one this "
                            f"gpubackprop reads: {exc}") from None
    model = checkpoint.model
    vocabulary = Vocabulary.from_saved(text.get("vocabulary"), model.n_inputs, str(path))
    for name, value in (("sample_length", length), ("temperature", temperature),
                        ("seed", seed), ("prime", prime)):
        if value is not None:
            setattr(config, name, check_option(name, value, f"--{name.replace('_', '-')}"))
    start = text.get("start")
    prime_text = config.prime or (start if isinstance(start, str) and len(start) == 1
                                  else vocabulary.characters[0])
    ids = sample_sequence(model, vocabulary.encode(prime_text, "--prime"), config.sample_length,
                          config.temperature, config.seed, config.seq_length)
    return vocabulary.decode(ids), config


__all__ = ["BitsPerCharacterLog", "SAMPLE_NAME", "TextData", "TextResult", "build_text_model",
           "load_text", "run_text", "sample_from_checkpoint", "write_text_report"]
