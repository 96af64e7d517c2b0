"""Checkpoints: a model, its optimizer state and its history, saved and restored.

A checkpoint is two files side by side:

``checkpoint.json``
    Metadata: the architecture (``model.config()``), dtype, the backend it was
    trained on, versions of gpubackprop and NumPy, the optimizer's
    configuration, the training history, caller extras, the name, shapes and
    dtypes of every array, and the sha256 of the array file.
``checkpoint-<sha256 prefix>.npz``
    Every numeric array as host NumPy data (model parameters under
    ``model/``, optimizer state under ``optimizer/``), read back with
    ``allow_pickle=False``.

The JSON file is written last and is the commit point: the array file is
named by its content hash, so saving never overwrites the arrays that the
current JSON refers to. A save that fails at any moment leaves the previous
checkpoint whole; array files that no JSON refers to any more are removed
after the new JSON is in place.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import DataFileError, InputError
from ..fileio import atomic_path, write_json
from ..nn.layers import layer_from_config
from ..nn.model import Sequential
from ..nn.optim import Optimizer, optimizer_from_config
from .trainer import History

FORMAT = "gpubackprop-checkpoint"
FORMAT_VERSION = 1
DEFAULT_NAME = "checkpoint.json"
MODEL_PREFIX = "model/"
OPTIMIZER_PREFIX = "optimizer/"


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns.

    Attributes
    ----------
    model : Sequential
        Rebuilt from its configuration, with the saved parameters.
    optimizer : Optimizer or None
        Rebuilt from its configuration with its state (moments, step count).
    history : History or None
    extra : dict
        The JSON-serialisable ``extra`` given to :func:`save_checkpoint`.
    metadata : dict
        The whole JSON metadata (versions, backend, array index, ...).
    """

    model: Sequential
    optimizer: Optimizer | None
    history: History | None
    extra: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)


def checkpoint_path(path) -> Path:
    """The metadata file of a checkpoint given as that file or as its folder."""
    path = Path(path)
    return path / DEFAULT_NAME if path.is_dir() or not path.suffix else path


def save_checkpoint(path, model: Sequential, optimizer: Optimizer | None = None,
                    history: History | None = None, extra: dict | None = None) -> Path:
    """Save ``model`` (and optionally optimizer state, history, extras) atomically.

    Parameters
    ----------
    path : str or Path
        The metadata file (``.json``), or a folder to hold ``checkpoint.json``.
    model : Sequential
    optimizer : Optimizer, optional
    history : History, optional
    extra : dict, optional
        Anything JSON-serialisable to keep beside the model (e.g. the run's
        configuration or the shuffling generator's state).

    Returns
    -------
    Path
        The metadata file written.
    """
    meta_path = checkpoint_path(path)
    arrays = {MODEL_PREFIX + name: W for name, W in model.state_arrays().items()}
    if optimizer is not None:
        arrays.update({OPTIMIZER_PREFIX + name: value
                       for name, value in optimizer.state_arrays(model.backend).items()})
    # The arrays go to memory first: their hash names the file they are written to.
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    digest = hashlib.sha256(buffer.getbuffer()).hexdigest()
    array_path = meta_path.with_name(f"{meta_path.stem}-{digest[:16]}.npz")
    with atomic_path(array_path) as tmp:
        tmp.write_bytes(buffer.getbuffer())
    metadata = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "gpubackprop_version": __version__, "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "backend": model.backend.name, "dtype": model.dtype.name,
        "model": model.config(),
        "optimizer": None if optimizer is None else optimizer.config(),
        "history": None if history is None else history.to_dict(),
        "extra": extra or {},
        "arrays_file": array_path.name, "arrays_sha256": digest,
        "arrays": {name: {"shape": list(value.shape), "dtype": np.asarray(value).dtype.name}
                   for name, value in arrays.items()},
    }
    write_json(meta_path, metadata)
    for stale in meta_path.parent.glob(f"{meta_path.stem}-*.npz"):
        if stale.name != array_path.name:
            stale.unlink(missing_ok=True)
    return meta_path


def load_checkpoint(path, device="auto") -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Parameters
    ----------
    path : str or Path
        The metadata file, or the folder holding ``checkpoint.json``.
    device : {"auto", "cpu", "gpu"} or Backend
        Where to put the model; arrays are restored bit for bit on any backend.

    Raises
    ------
    DataFileError
        A file is missing, unreadable, truncated, or fails its sha256 check.
    InputError
        The arrays do not match the saved architecture (missing or extra
        names, shapes, dtypes).
    """
    meta_path = checkpoint_path(path)
    metadata = _read_metadata(meta_path)
    array_path = meta_path.with_name(metadata["arrays_file"])
    arrays = _read_arrays(array_path, metadata["arrays_sha256"])
    _check_index(array_path, arrays, metadata["arrays"])
    model_arrays = {name[len(MODEL_PREFIX):]: value for name, value in arrays.items()
                    if name.startswith(MODEL_PREFIX)}
    model_config = metadata["model"]
    try:
        layers = [layer_from_config(layer) for layer in model_config["layers"]]
        model = Sequential(layers, n_inputs=model_config["n_inputs"], device=device,
                           dtype=model_config["dtype"], seed=model_config["seed"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DataFileError(f"checkpoint {meta_path}: invalid model configuration: "
                            f"{type(exc).__name__}: {exc}") from None
    try:
        model.load_state_arrays(model_arrays)
    except InputError as exc:
        raise InputError(f"checkpoint {array_path} does not match its architecture: {exc}") \
            from None
    optimizer = None
    if metadata.get("optimizer") is not None:
        # Settings missing from an older checkpoint take the values it was trained with.
        optimizer = optimizer_from_config(metadata["optimizer"])
        optimizer.load_state_arrays(model.backend, {
            name[len(OPTIMIZER_PREFIX):]: value for name, value in arrays.items()
            if name.startswith(OPTIMIZER_PREFIX)})
    history = None if metadata.get("history") is None else History.from_dict(metadata["history"])
    return Checkpoint(model, optimizer, history, metadata.get("extra") or {}, metadata)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_metadata(meta_path: Path) -> dict:
    if not meta_path.is_file():
        raise DataFileError(f"no checkpoint at {meta_path}: the file does not exist")
    try:
        metadata = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataFileError(f"checkpoint {meta_path} is not readable JSON "
                            f"(truncated or corrupted?): {exc}") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise DataFileError(f"{meta_path} is not a gpubackprop checkpoint")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise DataFileError(f"checkpoint {meta_path} has format version "
                            f"{metadata.get('format_version')!r}; this gpubackprop reads "
                            f"version {FORMAT_VERSION}")
    missing = [key for key in ("model", "arrays_file", "arrays_sha256", "arrays")
               if key not in metadata]
    if missing:
        raise DataFileError(f"checkpoint {meta_path} lacks the entries {missing}")
    return metadata


def _read_arrays(array_path: Path, expected_sha256: str) -> dict:
    if not array_path.is_file():
        raise DataFileError(f"checkpoint arrays {array_path} are missing")
    actual = _sha256(array_path)
    if actual != expected_sha256:
        raise DataFileError(f"checkpoint arrays {array_path} are corrupted: sha256 {actual} "
                            f"does not match the recorded {expected_sha256}")
    try:
        with np.load(array_path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataFileError(f"checkpoint arrays {array_path} cannot be read: {exc}") from None


def _check_index(array_path: Path, arrays: dict, index: dict) -> None:
    """The arrays must be exactly those the metadata lists, with their shapes and dtypes."""
    missing, unexpected = sorted(set(index) - set(arrays)), sorted(set(arrays) - set(index))
    if missing or unexpected:
        raise InputError(f"checkpoint {array_path} does not match its metadata: "
                         f"missing arrays {missing}, unexpected arrays {unexpected}")
    for name, entry in index.items():
        value = arrays[name]
        if list(value.shape) != list(entry["shape"]) or value.dtype.name != entry["dtype"]:
            raise InputError(f"checkpoint {array_path}: array {name} is {value.dtype.name} "
                             f"{tuple(value.shape)}, the metadata says {entry['dtype']} "
                             f"{tuple(entry['shape'])}")
