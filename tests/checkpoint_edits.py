"""Editing a saved checkpoint the way an attacker would: consistently, hash included.

Shared by the checkpoint schema tests and the fuzz tests. Every edit keeps the
files self-consistent where asked (the array index in checkpoint.json, the
sha256), so the loader's deeper checks are reached, not only the checksum.
"""

import hashlib
import io
import json
from pathlib import Path

import numpy as np


def read(folder) -> tuple[dict, dict]:
    """(metadata, arrays) of the checkpoint in ``folder``."""
    folder = Path(folder)
    metadata = json.loads((folder / "checkpoint.json").read_text())
    with np.load(folder / metadata["arrays_file"], allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    return metadata, arrays


def write(folder, metadata: dict, arrays: dict | None = None, raw: bytes | None = None,
          update_index: bool = True, rehash: bool = True) -> None:
    """Write ``arrays`` (or the bytes ``raw``) as the arrays file and ``metadata``.

    ``update_index`` rewrites the JSON's array index to match the arrays;
    ``rehash`` records the new file's sha256 (the file keeps its old name).
    """
    folder = Path(folder)
    if raw is None:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        raw = buffer.getvalue()
        if update_index:
            metadata["arrays"] = {name: {"shape": list(np.shape(value)),
                                         "dtype": np.asarray(value).dtype.name}
                                  for name, value in arrays.items()}
    name = metadata.get("arrays_file")
    if isinstance(name, str) and "/" not in name and name not in ("", ".", ".."):
        (folder / name).write_bytes(raw)
    if rehash:
        metadata["arrays_sha256"] = hashlib.sha256(raw).hexdigest()
    (folder / "checkpoint.json").write_text(json.dumps(metadata))


def edit_arrays(folder, change) -> None:
    """Apply ``change(arrays)`` in place, then write consistently."""
    metadata, arrays = read(folder)
    change(arrays)
    write(folder, metadata, arrays)


def edit_metadata(folder, change) -> None:
    """Apply ``change(metadata)`` in place (the arrays stay as they are)."""
    metadata, arrays = read(folder)
    change(metadata)
    (Path(folder) / "checkpoint.json").write_text(json.dumps(metadata))
