"""Output paths checked before training, and one writer per output folder.

``gpubackprop train --out DIR --plot FILE`` calls :func:`prepare_folder` and
:func:`prepare_file` before it loads any data, so a file in the way, a path
under a file, a folder it may not write or a read-only or full filesystem is
a one-line error before the first epoch, not after the last. Any name is a
folder name, dots included (``runs/lr0.01``).

:class:`OutputLock` makes one process the writer of a folder: the lock file
``DIR/.gpubackprop.lock`` holds the owner's pid and host for the message a
second run gets, and the lock itself is an ``flock`` on it, which the kernel
drops when the owner dies however it dies. A lock file left by a dead owner
(``kill -9``) is therefore stale by construction: the next run takes it over
with a note. While holding the lock, a run removes the temporary files and
unreferenced checkpoint arrays an interrupted run left behind. The lock nests
within one thread (the command line holds it around ``run(out=...)``, which
takes it too); another thread of the same process is refused like another process.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

from .errors import OutputError
from .fileio import TEMP_SUFFIX, remove_if_empty
from .memory import format_bytes

LOCK_NAME = ".gpubackprop.lock"
#: Bytes of a lock file read for its owner's description.
LOCK_READ_LIMIT = 4096


def _first_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (as anything, even a file)."""
    path = Path(os.path.abspath(path))
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def prepare_folder(path, option: str = "--out") -> list:
    """Check that ``path`` is, or can become, a writable folder; create it.

    Parameters
    ----------
    path : str or Path
    option : str
        How the user named it, for the messages (``--out``).

    Returns
    -------
    list of Path
        The folders created (deepest last), for :func:`remove_if_empty`.

    Raises
    ------
    OutputError
        ``path`` is a file, lies under a file, or cannot be created or
        written (no permission, read-only or full filesystem).
    """
    path = Path(path)
    existing = _first_existing(path)
    if existing == Path(os.path.abspath(path)) and not path.is_dir():
        raise OutputError(f"{option} {path} is a file; it must name a folder")
    if not existing.is_dir():
        raise OutputError(f"{option} {path} lies under {existing}, which is a file, not a folder")
    created = []
    try:
        for folder in reversed([path, *path.parents]):
            if not folder.exists():
                folder.mkdir()
                created.append(folder)
        _probe(path)
    except OSError as exc:
        remove_if_empty(created)
        raise OutputError(f"{option} {path} cannot be written: {exc.strerror or exc}") from None
    return created


def prepare_file(path, option: str = "--plot") -> list:
    """Check that the file ``path`` can be written: not a folder, its folder writable.

    Returns the folders created for it, like :func:`prepare_folder`.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{option} {path} is a folder; it must name a file")
    return prepare_folder(path.parent, f"{option} {path}: its folder")


def _probe(folder: Path) -> None:
    """Write, sync and delete a small temporary file in ``folder`` (raises OSError)."""
    fd, name = tempfile.mkstemp(prefix=".probe.", suffix=TEMP_SUFFIX, dir=folder)
    try:
        os.write(fd, b"\0" * 4096)
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(name)


def check_free_space(folder, needed: int, option: str = "--out") -> None:
    """Refuse to start when ``folder``'s filesystem has less than ``needed`` bytes free.

    ``folder`` need not exist yet: its nearest existing ancestor is asked.
    """
    stats = os.statvfs(_first_existing(Path(folder)))
    free = stats.f_bavail * stats.f_frsize
    if free < needed:
        raise OutputError(f"{option} {folder}: its filesystem has {format_bytes(free)} free, "
                          f"the run writes about {format_bytes(needed)}; free some space or "
                          f"choose another {option}")


#: Folders this process holds the lock of: resolved path -> [owning thread id, depth,
#: the OutputLock that took the flock].
_HELD: dict = {}
_HELD_GUARD = threading.Lock()


class OutputLock:
    """Exclusive ownership of an output folder by this process's current thread.

    Use as a context manager; after entering, :attr:`outermost` tells whether
    this entry took the lock (False when nested) and :attr:`note` whether a
    stale lock was taken over. Raises :class:`OutputError` on entry when a
    live process, or another thread of this one, holds the folder. Entered
    again by the thread that holds it, it nests (the outermost exit releases).
    """

    def __init__(self, folder, option: str = "--out"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.option = option
        self.note = None
        self.outermost = False
        self._fd = None
        self._key = None

    def __enter__(self) -> "OutputLock":
        key = self.folder.resolve()
        with _HELD_GUARD:
            holder = _HELD.get(key)
            if holder is not None:
                if holder[0] != threading.get_ident():
                    raise OutputError(self._in_use(f"pid {os.getpid()}, another thread"))
                holder[1] += 1
                self._key = key
                return self
            self._lock()
            _HELD[key] = [threading.get_ident(), 1, self]
            self._key, self.outermost = key, True
        return self

    def __exit__(self, *exc) -> bool:
        if self._key is None:
            return False
        with _HELD_GUARD:
            holder = _HELD[self._key]
            holder[1] -= 1
            if holder[1] == 0:
                del _HELD[self._key]
                holder[2]._unlock()
            self._key = None
        return False

    def _in_use(self, owner: str) -> str:
        return (f"{self.option} {self.folder} is in use by another training ({owner}); wait "
                f"for it to finish or choose another {self.option}")

    def _lock(self) -> None:
        """Take the ``flock`` on the lock file and write this process into it."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                             0o644)
            except OSError as exc:
                raise OutputError(f"{self.option} {self.folder}: cannot create the lock file "
                                  f"{self.path.name}: {exc.strerror or exc}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _owner(fd)
                os.close(fd)
                raise OutputError(self._in_use(owner)) from None
            # The owner may have removed the file between our open and flock: retry.
            if _same_file(fd, self.path):
                break
            os.close(fd)
        previous = _owner(fd, default=None)
        if previous is not None:
            self.note = (f"{self.folder} was locked by {previous}, which is gone (killed?); "
                         f"taking it over")
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        self._fd = fd

    def _unlock(self) -> None:
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _owner(fd: int, default: str | None = "an unknown process") -> str | None:
    """'pid N on host H since T' from a lock file's content, else ``default``."""
    try:
        record = json.loads(os.pread(fd, LOCK_READ_LIMIT, 0))
        return f"pid {int(record['pid'])} on host {record['host']} since {record['started']}"
    except (OSError, ValueError, TypeError, KeyError):
        return default
