"""The options of a training run: each read, checked and made canonical in one place.

:data:`OPTIONS` has one :class:`Option` per :class:`~gpubackprop.cli.pipeline.TrainConfig`
field. ``gpubackprop train``'s parser reads a flag's text with :func:`argument_type`
and :class:`TrainConfig` checks every field with :func:`check_option`, both through
the same entry, so a value means the same from the command line, the API and a saved
configuration, and is stored under its canonical name (``float32``, never ``float``;
``cross_entropy``, never ``ce``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable

from ..backends import ACTIVATIONS, BACKEND_NAMES, DEVICES
from ..distributed.communicator import COMMUNICATORS
from ..errors import InputError
from ..nn.losses import MeanSquaredError, get_loss
from ..nn.optim import OPTIMIZERS
from ..training.callbacks import SCHEDULES
from ..validation import (check_choice, check_dtype, check_int, check_non_negative,
                          check_positive, check_seed)

#: Words that ask for the whole training set as one batch (``--batch-size full``).
FULL_BATCH = ("full", "all")
#: ``--distributed`` values: a communicator's name, or "none" (this process alone).
DISTRIBUTED = ("none",) + COMMUNICATORS
#: The longest text an option takes (``--prime``).
MAX_TEXT_OPTION = 10_000
#: The most characters ``--sample-length`` draws.
MAX_SAMPLE_LENGTH = 100_000


@dataclass(frozen=True)
class Option:
    """How one option is read from text and checked.

    Attributes
    ----------
    check : callable(value, what) -> value
        Returns the canonical value or raises InputError naming ``what``.
    parse : callable(text, what) -> value
        Reads the command line's text (before ``check``).
    optional : bool
        None is a valid value (for example "no clipping").
    """

    check: Callable[[Any, str], Any]
    parse: Callable[[str, str], Any] = lambda text, what: text
    optional: bool = False


def parse_int(text: str, what: str) -> int:
    """An integer written in decimal (``1e3`` and ``2.0`` are refused)."""
    try:
        return int(text.strip())
    except ValueError:
        raise InputError(f"{what} must be an integer, got {text!r}") from None


def parse_float(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InputError(f"{what} must be a number, got {text!r}") from None


def parse_batch_size(text: str, what: str):
    """An integer, or one of :data:`FULL_BATCH` for the whole training set."""
    return "full" if text.strip().lower() in FULL_BATCH else parse_int(text, what)


def positive_int(value, what: str) -> int:
    return check_positive(value, what, integer=True)


def positive_float(value, what: str) -> float:
    return check_positive(value, what)


def non_negative_int(value, what: str) -> int:
    return check_int(value, what, minimum=0)


def choice(names) -> Callable[[Any, str], str]:
    """A check that a string is one of ``names`` (read when called: registries grow)."""
    def check(value, what: str) -> str:
        if not isinstance(value, str):
            raise InputError(f"{what} must be a name, got {value!r}")
        return check_choice(value, names() if callable(names) else names, what)
    return check


def loss_name(value, what: str) -> str:
    """The canonical loss name; aliases such as "ce" are accepted."""
    if not isinstance(value, str):
        raise InputError(f"{what} must be a name, got {value!r}")
    return get_loss(value).name


def batch_size(value, what: str):
    """A positive integer, or None (also written "full") for the whole training set."""
    return None if value == "full" else positive_int(value, what)


def widths(value, what: str) -> list:
    """A list of positive layer widths (empty for no hidden layer)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise InputError(f"{what} must be a list of layer widths, got {value!r}")
    return [positive_int(width, what) for width in value]


def sample_length(value, what: str) -> int:
    return check_int(value, what, 1, MAX_SAMPLE_LENGTH)


def text(value, what: str) -> str:
    """A non-empty string of at most :data:`MAX_TEXT_OPTION` characters."""
    if not isinstance(value, str) or not value:
        raise InputError(f"{what} must be a non-empty text, got {value!r}")
    if len(value) > MAX_TEXT_OPTION:
        raise InputError(f"{what} must be at most {MAX_TEXT_OPTION} characters, "
                         f"got {len(value)}")
    return value


def flag(value, what: str) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"{what} must be true or false, got {value!r}")
    return value


#: The models ``gpubackprop train --model`` builds: an MLP, or a recurrent layer reading
#: each image row by row (an Elman RNN, an LSTM or a GRU).
MODELS = ("mlp", "rnn", "lstm", "gru")
RECURRENT_MODELS = MODELS[1:]

OPTIONS: dict[str, Option] = {
    "model": Option(choice(MODELS)),
    "hidden": Option(widths, parse_int),
    "activation": Option(choice(ACTIVATIONS)),
    "output_activation": Option(choice(ACTIVATIONS)),
    "loss": Option(loss_name),
    "reduction": Option(choice(MeanSquaredError.REDUCTIONS)),
    "optimizer": Option(choice(lambda: tuple(OPTIMIZERS))),
    "lr": Option(positive_float, parse_float),
    "weight_decay": Option(check_non_negative, parse_float, optional=True),
    "epochs": Option(positive_int, parse_int),
    "batch_size": Option(batch_size, parse_batch_size, optional=True),
    "log_every": Option(positive_int, parse_int),
    "standardize": Option(flag),
    "seed": Option(check_seed, parse_int),
    "device": Option(choice(DEVICES + BACKEND_NAMES)),
    "dtype": Option(check_dtype),
    "clip_norm": Option(positive_float, parse_float, optional=True),
    "bptt_steps": Option(positive_int, parse_int, optional=True),
    "validation_size": Option(non_negative_int, parse_int),
    "schedule": Option(choice(SCHEDULES)),
    "patience": Option(positive_int, parse_int, optional=True),
    "distributed": Option(choice(DISTRIBUTED)),
    "seq_length": Option(positive_int, parse_int),
    "temperature": Option(positive_float, parse_float),
    "sample_length": Option(sample_length, parse_int),
    "prime": Option(text, optional=True),
}


def check_option(name: str, value, what: str | None = None):
    """The canonical value of option ``name``, or an InputError naming ``what``.

    ``what`` defaults to ``name``; the command line passes its flag.
    """
    option = OPTIONS[name]
    if value is None and option.optional:
        return None
    return option.check(value, what or name)


def argument_type(name: str, flag_name: str) -> Callable[[str], Any]:
    """An argparse ``type=`` that reads and checks option ``name`` given as ``flag_name``.

    A bad value raises ``argparse.ArgumentTypeError``, which argparse reports
    as "argument --flag: <problem>".
    """
    option = OPTIONS[name]

    def read(text: str):
        try:
            value = option.parse(text, flag_name)
            if name == "hidden":  # nargs="+": each word is one width
                return positive_int(value, flag_name)
            return check_option(name, value, flag_name)
        except InputError as exc:
            raise argparse.ArgumentTypeError(str(exc).replace(f"{flag_name} ", "", 1)) \
                from None

    read.__name__ = name
    return read


__all__ = ["DISTRIBUTED", "FULL_BATCH", "OPTIONS", "Option", "argument_type", "check_option"]
