"""Plain text for a character-level language model: reading, vocabulary, windows, a tail.

A text file is untrusted input. :func:`read_text` reads at most
:data:`MAX_TEXT_BYTES` (a larger file is refused before it is read), decodes
the bytes as strict UTF-8 (an invalid byte is an error naming its offset; no
replacement), refuses NUL characters (a binary file), drops a leading byte-order
mark, turns ``\\r\\n`` and ``\\r`` into ``\\n``, and refuses a text shorter than :data:`MIN_CHARACTERS`
or with more than :data:`MAX_VOCABULARY` distinct characters (each is one
input and one output of the model, one-hot encoded).

The model predicts every next character of a window of characters
(many-to-many). :func:`windows` cuts a run of character ids into windows of
``length`` steps, each starting from a fresh (zero) state; the last window
is padded and its padded steps are masked, so every character after the
first is predicted exactly once.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataFileError, InputError
from ..validation import check_positive

#: The largest text file read (bytes): its one-hot windows take about
#: 2 * characters * vocabulary * 4 bytes in float32.
MAX_TEXT_BYTES = 1 << 20
#: Distinct characters a text may have (the one-hot width of inputs and outputs).
MAX_VOCABULARY = 256
#: The share of the text at its end held out to measure bits per character.
TAIL_FRACTION = 0.1
#: The shortest text: a training part and a held-out tail of 2 characters or more each.
MIN_CHARACTERS = math.ceil(2 / TAIL_FRACTION)


def read_text(path, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The text of a UTF-8 file, line ends as ``\\n``, checked as the module docstring says.

    Raises
    ------
    DataFileError
        Missing, not a regular file, unreadable, over ``max_bytes``, not UTF-8,
        binary, too short or too many distinct characters.
    """
    path = Path(path)
    if not os.path.exists(path):
        raise DataFileError(f"{path} does not exist")
    if not os.path.isfile(path):  # a folder, a FIFO or a device: never opened
        raise DataFileError(f"{path} is not a regular file")
    try:
        with open(path, "rb") as file:
            data = file.read(max_bytes + 1)
    except OSError as exc:
        raise DataFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise DataFileError(f"{path} is larger than {max_bytes} bytes, the most the text model "
                            f"reads; train on a part of it (e.g. head -c {max_bytes})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataFileError(f"{path} is not UTF-8 text: byte 0x{data[exc.start]:02x} at "
                            f"offset {exc.start} ({exc.reason})") from None
    if "\x00" in text:
        raise DataFileError(f"{path} holds a NUL character at offset "
                            f"{len(text[:text.index(chr(0))].encode())}: a binary file, not text")
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    if len(text) < MIN_CHARACTERS:
        raise DataFileError(f"{path} has {len(text)} characters; the text model needs at least "
                            f"{MIN_CHARACTERS} (a training part and a held-out tail of "
                            f"{TAIL_FRACTION:.0%})")
    distinct = len(set(text))
    if distinct > MAX_VOCABULARY:
        raise DataFileError(f"{path} has {distinct} distinct characters; the text model "
                            f"one-hot encodes at most {MAX_VOCABULARY}")
    return text


@dataclass(frozen=True)
class Vocabulary:
    """The characters a model reads and predicts, in sorted order; ids index them.

    Attributes
    ----------
    characters : str
        Distinct characters, sorted by code point.
    """

    characters: str

    @classmethod
    def of(cls, text: str) -> "Vocabulary":
        return cls("".join(sorted(set(text))))

    @classmethod
    def from_saved(cls, value, size: int, where: str) -> "Vocabulary":
        """A vocabulary read back from a checkpoint: a string of ``size`` distinct characters."""
        if not isinstance(value, str) or len(value) != size or len(set(value)) != size:
            raise DataFileError(f"{where} holds no valid vocabulary: it needs a string of "
                                f"{size} distinct characters (the model's width)")
        return cls(value)

    def __len__(self) -> int:
        return len(self.characters)

    def encode(self, text: str, what: str = "text") -> np.ndarray:
        """Character ids (len(text),) int64; a character outside the vocabulary is an error."""
        lookup = {char: i for i, char in enumerate(self.characters)}
        try:
            return np.fromiter((lookup[char] for char in text), dtype=np.int64, count=len(text))
        except KeyError as exc:
            position = next(i for i, char in enumerate(text) if char not in lookup)
            raise InputError(f"{what} has the character {exc.args[0]!r} at position {position}, "
                             f"which is not among the model's {len(self)} characters") from None

    def decode(self, ids) -> str:
        return "".join(self.characters[int(i)] for i in ids)

    def one_hot(self, ids, dtype=np.float32) -> np.ndarray:
        """Ids of any shape S -> one-hot vectors, shape S + (len(self),)."""
        return np.eye(len(self), dtype=dtype)[ids]


def split_tail(ids: np.ndarray, fraction: float = TAIL_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """(training part, held-out tail): the tail is the last ``ceil(fraction * n)`` ids."""
    n_tail = math.ceil(fraction * len(ids))
    if n_tail < 2 or len(ids) - n_tail < 2:
        raise InputError(f"{len(ids)} characters are too few to hold out a tail of "
                         f"{fraction:.0%} (both parts need 2 characters or more)")
    return ids[:-n_tail], ids[-n_tail:]


def windows(ids: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Next-character windows over ``ids``: inputs, targets and the mask of real steps.

    Window ``i`` reads ``ids[i*L : i*L + L]`` and predicts ``ids[i*L + 1 : i*L + L + 1]``;
    the last one is padded (id 0) and its padded steps masked, so the mask
    selects ``len(ids) - 1`` steps: every character but the first is a target once.

    Returns
    -------
    inputs, targets : ndarray, shape (W, L), int64
    mask : ndarray, shape (W, L), bool
    """
    length = check_positive(length, "sequence length", integer=True)
    n_targets = len(ids) - 1
    if n_targets < 1:
        raise InputError("a window needs at least 2 characters")
    n_windows = math.ceil(n_targets / length)
    inputs = np.zeros(n_windows * length, dtype=np.int64)
    targets = np.zeros(n_windows * length, dtype=np.int64)
    inputs[:n_targets] = ids[:-1]
    targets[:n_targets] = ids[1:]
    mask = np.arange(n_windows * length) < n_targets
    shape = (n_windows, length)
    return inputs.reshape(shape), targets.reshape(shape), mask.reshape(shape)


def bits_per_character(mean_nats: float) -> float:
    """A mean cross-entropy in nats per character, in bits per character."""
    return mean_nats / math.log(2)


__all__ = ["MAX_TEXT_BYTES", "MAX_VOCABULARY", "MIN_CHARACTERS", "TAIL_FRACTION", "Vocabulary",
           "bits_per_character", "read_text", "split_tail", "windows"]
