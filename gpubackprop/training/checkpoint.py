"""Checkpoints: a model, its optimizer state and its history, saved and restored.

**A checkpoint path names a folder.** :func:`save_checkpoint` creates it if
needed and writes two files into it:

``checkpoint.json``
    Metadata: the architecture (``model.config()``), dtype, the backend it was
    trained on, versions of gpubackprop and NumPy, the optimizer's
    configuration, the training history, caller extras, the name, shapes and
    dtypes of every array, and the sha256 of the array file.
``checkpoint-<sha256 prefix>.npz``
    Every numeric array as host NumPy data (model parameters under
    ``model/``, optimizer state under ``optimizer/``).

:func:`load_checkpoint` takes the folder, or the ``checkpoint.json`` inside it
(the path :func:`save_checkpoint` returns). A path that is an existing file,
or a new path named like a file (``model.npz``, ``run.json``: see
:data:`FILE_SUFFIXES`), is refused with a message, rather than written into;
any other name is a folder, dots included (``runs/lr0.01``).

The JSON file is written last and is the commit point: the array file is
named by its content hash, so saving never overwrites the arrays that the
current JSON refers to. A save that fails at any moment leaves the previous
checkpoint whole; array files that the folder's current JSON does not refer
to are removed after the new JSON is in place.

Loading treats both files as untrusted (see :mod:`.checkpoint_schema`): the
metadata is checked field by field and the array index against the
architecture, the memory it asks for against what is available, and every
array's header (shape, dtype, no pickles) before its data is read.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import DataFileError, InputError, OutputError
from ..fileio import atomic_path, write_json
from ..memory import available_host_memory, check_fits
from ..nn.model import Sequential
from ..nn.optim import Optimizer
from . import checkpoint_schema as schema
from .checkpoint_schema import MODEL_PREFIX, OPTIMIZER_PREFIX
from .trainer import History

DEFAULT_NAME = f"{schema.STEM}.json"
#: Suffixes of files, not folders: a new checkpoint path ending in one is refused.
FILE_SUFFIXES = (".json", ".npz", ".npy", ".pkl", ".pickle", ".pt", ".pth", ".ckpt", ".h5",
                 ".hdf5", ".safetensors", ".onnx", ".zip", ".tar", ".gz", ".txt", ".csv")


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


def checkpoint_folder(path) -> Path:
    """The folder a checkpoint is saved into (see the module docstring for the rule).

    Raises
    ------
    OutputError
        ``path`` is an existing file, or lies under one.
    InputError
        ``path`` does not exist and is named like a file (:data:`FILE_SUFFIXES`).
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"cannot save a checkpoint to {folder}: it is a file; a checkpoint "
                          f"path names a folder, which will hold {DEFAULT_NAME} and its arrays")
    if not folder.exists() and folder.suffix.lower() in FILE_SUFFIXES:
        raise InputError(f"a checkpoint path names a folder (it will hold {DEFAULT_NAME} and "
                         f"its arrays); {folder} is named like a {folder.suffix} file: pass a "
                         f"folder such as {folder.with_suffix('')}")
    return folder


def metadata_path(path) -> Path:
    """The ``checkpoint.json`` of the checkpoint at ``path`` (its folder, or that file)."""
    path = Path(path)
    if path.is_dir():
        return path / DEFAULT_NAME
    if path.name == DEFAULT_NAME or not path.exists():
        return path if path.name == DEFAULT_NAME else path / DEFAULT_NAME
    raise DataFileError(f"{path} is a file, not a checkpoint: a checkpoint path names the "
                        f"folder holding {DEFAULT_NAME} (or that {DEFAULT_NAME} itself)")


def save_checkpoint(path, model: Sequential, optimizer: Optimizer | None = None,
                    history: History | None = None, extra: dict | None = None) -> Path:
    """Save ``model`` (and optionally optimizer state, history, extras) atomically.

    Parameters
    ----------
    path : str or Path
        The checkpoint's folder (created if missing); see the module docstring.
    model : Sequential
    optimizer : Optimizer, optional
    history : History, optional
    extra : dict, optional
        Anything JSON-serialisable to keep beside the model (e.g. the run's
        configuration or the shuffling generator's state).

    Returns
    -------
    Path
        The metadata file written, ``path/checkpoint.json``.

    Raises
    ------
    OutputError
        The folder cannot be written (a file in the way, no permission, a full
        or read-only filesystem); the folder's previous checkpoint is intact.
    """
    folder = checkpoint_folder(path)
    meta_path = folder / DEFAULT_NAME
    arrays = {MODEL_PREFIX + name: W for name, W in model.state_arrays().items()}
    if optimizer is not None:
        arrays.update({OPTIMIZER_PREFIX + name: value
                       for name, value in optimizer.state_arrays(model.backend).items()})
    # The arrays go to memory first: their hash names the file they are written to.
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    digest = hashlib.sha256(buffer.getbuffer()).hexdigest()
    array_path = folder / f"{schema.STEM}-{digest[:16]}.npz"
    metadata = {
        "format": schema.FORMAT, "format_version": schema.FORMAT_VERSION,
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
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as exc:
        raise InputError(f"the checkpoint's extra data must be JSON-serialisable: {exc}") \
            from None
    try:
        with atomic_path(array_path) as tmp:
            tmp.write_bytes(buffer.getbuffer())
        write_json(meta_path, metadata)
    except OSError as exc:
        raise OutputError(f"could not save the checkpoint in {folder}: "
                          f"{exc.strerror or exc}; {_what_is_left(meta_path)}") from None
    finally:
        # Whatever happened, no array file outlives the JSON that would refer to it.
        remove_unreferenced_arrays(folder)
    return meta_path


def _what_is_left(meta_path: Path) -> str:
    if meta_path.is_file():
        return f"the checkpoint saved before is intact in {meta_path}"
    return "no checkpoint was saved there"


def referenced_arrays_file(folder) -> str | None:
    """The arrays file name that ``folder/checkpoint.json`` refers to, if it is readable."""
    try:
        with open(Path(folder) / DEFAULT_NAME, "rb") as handle:
            metadata = json.loads(handle.read(schema.MAX_METADATA_BYTES))
    except (OSError, ValueError, RecursionError):
        return None
    name = metadata.get("arrays_file") if isinstance(metadata, dict) else None
    return name if isinstance(name, str) else None


def remove_unreferenced_arrays(folder) -> list:
    """Delete the folder's checkpoint array files that its checkpoint.json does not name.

    Only files named like arrays files (``checkpoint-<16 hex>.npz``) are
    touched. Returns the paths removed.
    """
    folder = Path(folder)
    keep = referenced_arrays_file(folder)
    removed = []
    for path in folder.glob(f"{schema.STEM}-*.npz"):
        if schema.ARRAYS_FILE.fullmatch(path.name) and path.name != keep:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def load_checkpoint(path, device="auto") -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Parameters
    ----------
    path : str or Path
        The checkpoint's folder, or the ``checkpoint.json`` in it.
    device : {"auto", "cpu", "gpu"} or Backend
        Where to put the model; arrays are restored bit for bit on any backend.

    Raises
    ------
    DataFileError
        A file is missing, unreadable, truncated or fails its sha256 check,
        or a field or array is not what the checkpoint's own architecture
        implies (names, shapes, dtypes, ranges).
    OutOfMemoryError
        The model it describes would not fit in the memory available.
    """
    meta_path = metadata_path(path)
    where = str(meta_path)
    metadata = _read_metadata(meta_path)
    plan = schema.plan(metadata, where)
    # What the checkpoint asks for, against the memory there is, before anything is built.
    check_fits(schema.estimate(plan), available_host_memory(), "host memory")
    model = Sequential(plan.layers, n_inputs=plan.n_inputs, device=device,
                       dtype=plan.dtype.name, seed=plan.seed)
    array_path = meta_path.with_name(metadata["arrays_file"])
    arrays = _read_arrays(array_path, metadata["arrays_sha256"], plan, where)
    model.load_state_arrays({name[len(MODEL_PREFIX):]: value for name, value in arrays.items()
                             if name.startswith(MODEL_PREFIX)})
    optimizer = plan.optimizer
    if optimizer is not None:
        optimizer.load_state_arrays(model.backend, {
            name[len(OPTIMIZER_PREFIX):]: value for name, value in arrays.items()
            if name.startswith(OPTIMIZER_PREFIX)})
    return Checkpoint(model, optimizer, plan.history, metadata.get("extra") or {}, metadata)


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
        with open(meta_path, "rb") as handle:
            text = handle.read(schema.MAX_METADATA_BYTES + 1)
        if len(text) > schema.MAX_METADATA_BYTES:
            raise DataFileError(f"checkpoint {meta_path} is larger than "
                                f"{schema.MAX_METADATA_BYTES >> 20} MiB; it is not one "
                                f"gpubackprop wrote")
        metadata = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        if isinstance(exc, DataFileError):
            raise
        raise DataFileError(f"checkpoint {meta_path} is not readable JSON "
                            f"(truncated or corrupted?): {type(exc).__name__}: {exc}") from None
    schema.check_top_level(metadata, str(meta_path))
    return metadata


def _read_arrays(array_path: Path, expected_sha256: str, plan: schema.Plan, where: str) -> dict:
    """The arrays of the file, each header checked against ``plan`` before its data is read."""
    if not array_path.is_file():
        raise DataFileError(f"checkpoint arrays {array_path} are missing")
    limit = sum(spec.nbytes + schema.ARCHIVE_OVERHEAD_PER_ARRAY
                for spec in plan.arrays.values()) + schema.ARCHIVE_OVERHEAD
    size = array_path.stat().st_size
    if size > limit:
        raise DataFileError(f"checkpoint arrays {array_path} are {size} bytes, more than the "
                            f"{limit} its architecture can fill")
    actual = _sha256(array_path)
    if actual != expected_sha256:
        raise DataFileError(f"checkpoint arrays {array_path} are corrupted: sha256 {actual} "
                            f"does not match the recorded {expected_sha256}")
    try:
        with zipfile.ZipFile(array_path) as archive:
            members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
            missing = sorted(plan.required - set(members))
            unexpected = sorted(set(members) - set(plan.arrays))
            if missing or unexpected or len(members) != len(archive.infolist()):
                raise DataFileError(f"checkpoint arrays {array_path} do not match their "
                                    f"metadata: missing arrays {missing}, unexpected arrays "
                                    f"{unexpected}")
            return {name: _read_member(archive, info, name, plan.arrays[name], where)
                    for name, info in members.items()}
    except (OSError, ValueError, EOFError, RuntimeError, NotImplementedError, struct.error,
            zipfile.BadZipFile, zlib.error) as exc:
        if isinstance(exc, DataFileError):
            raise
        raise DataFileError(f"checkpoint arrays {array_path} cannot be read: "
                            f"{type(exc).__name__}: {exc}") from None


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str,
                 spec: schema.ArraySpec, where: str) -> np.ndarray:
    """One ``.npy`` member: header first (shape, dtype, no pickle), then exactly its data."""
    from numpy.lib import format as npy

    with archive.open(info) as handle:
        version = npy.read_magic(handle)
        read_header = {(1, 0): npy.read_array_header_1_0,
                       (2, 0): npy.read_array_header_2_0}.get(version)
        if read_header is None:
            raise DataFileError(f"checkpoint {where}: array {name} has .npy format version "
                                f"{version}, not one NumPy's savez writes")
        shape, fortran_order, dtype = read_header(handle)
        # Byte order is the only difference allowed: swapping it loses nothing.
        if tuple(shape) != spec.shape or dtype.hasobject or \
                dtype.newbyteorder("=") != spec.dtype.newbyteorder("="):
            raise DataFileError(f"checkpoint {where}: array {name} is {dtype} {tuple(shape)} "
                                f"in the file; the architecture needs {spec.dtype.name} "
                                f"{spec.shape}")
        data = handle.read(spec.nbytes)
        if len(data) != spec.nbytes or handle.read(1):
            raise DataFileError(f"checkpoint {where}: array {name} holds "
                                f"{'fewer' if len(data) != spec.nbytes else 'more'} bytes "
                                f"than its shape {spec.shape} needs")
    order = "F" if fortran_order else "C"
    value = np.frombuffer(data, dtype=dtype).reshape(spec.shape, order=order)
    value = value.astype(spec.dtype, order="C")
    schema.check_array(name, value, spec, where)
    return value
