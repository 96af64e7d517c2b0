"""Atomic file writes: nothing a user saved is ever half-written.

A write goes to a temporary file beside its destination, named
``.<name>.<random>`` + :data:`TEMP_SUFFIX`, and is renamed into place only when
complete. A process killed mid-write (``kill -9``, power loss) can leave such a
file behind; :func:`remove_stale_temporaries` deletes them, and the command
line calls it when it takes a folder over (see :mod:`gpubackprop.outputs`).
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

#: Ends the name of every temporary file gpubackprop writes, so leftovers are recognisable.
TEMP_SUFFIX = ".gpubackprop-tmp"


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; move it into place only on success.

    The temporary file lives in the same folder (so ``os.replace`` is atomic),
    is flushed to disk before the rename, and is removed if the body raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    # mkstemp makes the file private (0600); give it the mode a plain open() would.
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path, data) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def remove_stale_temporaries(folder) -> list:
    """Delete the temporary files an interrupted write left in ``folder``; return them.

    Only names ending in :data:`TEMP_SUFFIX` are touched. Call it only while no
    other process writes into ``folder`` (hold its :class:`~gpubackprop.outputs.OutputLock`).
    """
    removed = []
    for path in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        if path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def remove_if_empty(folders) -> None:
    """Remove ``folders`` (given outermost first, as created) while they are empty,
    deepest first; stop at the first that is not."""
    for folder in reversed(list(folders)):
        try:
            Path(folder).rmdir()
        except OSError:
            return
