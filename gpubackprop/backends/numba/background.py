"""Compile a Numba function's signature in another process, and ask the disk cache first.

The whole training step of :mod:`.parallel` takes Numba several seconds to
compile per signature (dtype and depth) on a fresh install; afterwards
Numba's disk cache loads it in a fraction of a second. So that a first run
does not sit silent through that compile, :class:`.parallel.ParallelMLPStep`
asks :func:`load_compiled` whether the signature is ready; when it is not,
:func:`compile_in_background` starts ``python -m`` this module, which compiles
the signature into the same disk cache, and the step runs its batches on the
eager path (the layers' own passes) until that process has finished. The
parameters and optimizer state are the same arrays on both paths, so
training simply continues; the results agree to rounding with a run that
waited for the compile, not bit for bit. The process holds a per-user lock
file for its signature, so a second run started meanwhile waits for that
compile and then loads it rather than compiling it twice; a process that
ends first leaves the compile running, and the next run finds it cached.

Set :data:`BACKGROUND_ENV` to ``0`` to wait for the compile instead (runs that
must reproduce bit for bit; benchmarks and parity checks do so through
:func:`compiles_in_foreground`).

Importing this module does not import Numba.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import importlib
import os
import pickle
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from ...errors import InputError

#: ``1`` (default): compile a step's missing signature in a background process while the
#: first batches run eagerly; ``0``: compile it in the training process, before its first batch.
BACKGROUND_ENV = "GPUBACKPROP_BACKGROUND_COMPILE"
_CHOICES = {"": True, "1": True, "0": False}

#: Background compiles started by this process, by (function, signature): one per signature.
_STARTED: dict = {}
_STARTED_LOCK = threading.Lock()


#: True inside :func:`compiles_in_foreground` (in this thread or task).
_FOREGROUND = contextvars.ContextVar("gpubackprop_compiles_in_foreground", default=False)


def background_allowed(environ=os.environ) -> bool:
    """Whether a background compile is allowed: :data:`BACKGROUND_ENV` allows it and no
    :func:`compiles_in_foreground` context is active."""
    value = environ.get(BACKGROUND_ENV, "").strip()
    if value not in _CHOICES:
        raise InputError(f"{BACKGROUND_ENV}={value!r}: use 1 (compile in the background, "
                         f"the default) or 0 (compile before the first batch)")
    return _CHOICES[value] and not _FOREGROUND.get() and bool(sys.executable)


@contextlib.contextmanager
def compiles_in_foreground():
    """Within this context (this thread), steps compile before their first batch: what a
    benchmark measures or a parity check compares is the compiled step from its start."""
    token = _FOREGROUND.set(True)
    try:
        yield
    finally:
        _FOREGROUND.reset(token)


def signature_of(dispatcher, args) -> tuple:
    """The Numba types ``dispatcher`` would be compiled for when called with ``args``."""
    return tuple(dispatcher.typeof_pyval(arg) for arg in args)


class _NotCompiled(Exception):
    """Raised by the :func:`_compile_refuser` listener to stop a compile before it starts."""


def load_compiled(dispatcher, signature) -> bool:
    """Whether ``dispatcher`` can run ``signature`` now without compiling it.

    True when this process has it already or Numba's disk cache has it (it is
    then loaded, as a call would). A compile Numba would start instead is
    stopped at its start (Numba's ``numba:compile`` event, which comes after
    the cache lookup) and nothing is compiled.
    """
    from numba.core import event

    if signature in dispatcher.overloads:
        return True
    try:
        with event.install_listener("numba:compile", _compile_refuser()(dispatcher)):
            dispatcher.compile(signature)
    except _NotCompiled:
        return False
    return True


@functools.cache
def _compile_refuser():
    """The class of a ``numba:compile`` listener that stops one dispatcher's compile
    in the thread that made it (defined on first use: it needs Numba)."""
    from numba.core import event

    class RefuseCompile(event.Listener):
        def __init__(self, dispatcher):
            self.dispatcher, self.thread = dispatcher, threading.get_ident()

        def on_start(self, event):
            if event.data["dispatcher"] is self.dispatcher \
                    and threading.get_ident() == self.thread:
                raise _NotCompiled

        def on_end(self, event):
            pass

    return RefuseCompile


class BackgroundCompile:
    """A process compiling one signature of a cached Numba function into the disk cache.

    A process that cannot be started (no memory or processes left to fork,
    say) counts as finished at once: the caller then compiles in its own
    process, as it would without a background compile.

    Parameters
    ----------
    dispatcher
        A ``numba.njit(cache=True)`` function defined at the top of a module.
    signature : tuple
        Numba types, as from :func:`signature_of`.
    """

    def __init__(self, dispatcher, signature):
        function = dispatcher.py_func
        module, name = function.__module__, function.__qualname__
        # The lock's path on a line of its own: the child holds it before importing anything.
        payload = (str(_lock_path(module, name, signature)).encode() + b"\n"
                   + pickle.dumps((module, name, signature)))
        # The child imports this very package (and a caller's module next to it), wherever
        # this process found them: its sys.path first.
        path = os.pathsep.join(entry or os.getcwd() for entry in sys.path)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env=dict(os.environ, PYTHONPATH=path))
        except OSError:
            self.process = None
            return
        try:
            with self.process.stdin:
                self.process.stdin.write(payload)
        except OSError:  # the child is gone already: it ends with an error code
            pass

    def finished(self) -> bool:
        """Whether the process has ended (successfully or not), or never started."""
        return self.process is None or self.process.poll() is not None

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the process; its exit code (None when it never started)."""
        return None if self.process is None else self.process.wait(timeout)


def compile_in_background(dispatcher, signature) -> BackgroundCompile:
    """The running or finished :class:`BackgroundCompile` of ``signature``; one per process."""
    key = (dispatcher.py_func.__module__, dispatcher.py_func.__qualname__, signature)
    with _STARTED_LOCK:
        if key not in _STARTED:
            _STARTED[key] = BackgroundCompile(dispatcher, signature)
        return _STARTED[key]


def _lock_folder() -> Path:
    """This user's folder of background-compile lock files."""
    user = os.getuid() if hasattr(os, "getuid") else os.getlogin()
    return Path(tempfile.gettempdir()) / f"gpubackprop-compiles-{user}"


def _lock_path(module: str, name: str, signature) -> Path:
    """The lock file of one signature's background compile into this Numba cache."""
    key = repr((module, name, signature, os.environ.get("NUMBA_CACHE_DIR", ""),
                sys.executable))
    return _lock_folder() / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.lock"


@contextlib.contextmanager
def _held(path: Path):
    """An exclusive lock on ``path`` while the context lasts (none where it cannot be had):
    a second process compiling the same signature waits for the first, then loads."""
    try:
        import fcntl

        path.parent.mkdir(mode=0o700, exist_ok=True)
        handle = open(path, "a")
    except (ImportError, OSError):
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


class CompileGate:
    """Whether ``dispatcher`` runs a signature now without compiling it in this process.

    Asked the first time, it answers True where background compiles are not allowed
    (:func:`background_allowed`) or the signature is compiled or cached; else it starts
    its compile in a background process and answers False until that process has ended.
    Once True it stays True: a compile that failed in the background is then redone
    (and its error raised) by the call itself.

    Attributes
    ----------
    ready : bool
    compiling : BackgroundCompile or None
        The background compile, once started.
    """

    def __init__(self, dispatcher):
        self.dispatcher = dispatcher
        self.ready = False
        self.compiling = None

    def __call__(self, arguments) -> bool:
        """Whether the call is ready; ``arguments()`` gives the call's arguments (built
        only when the signature is needed)."""
        if self.ready:
            return True
        if self.compiling is None:
            if background_allowed():
                signature = signature_of(self.dispatcher, arguments())
                if not load_compiled(self.dispatcher, signature):
                    self.compiling = compile_in_background(self.dispatcher, signature)
                    return False
            self.ready = True
            return True
        # The call loads what the background process put in the disk cache.
        self.ready = self.compiling.finished()
        return self.ready


def wait_for_background_compiles() -> None:
    """Return once no background compile of this user is running (any process's)."""
    folder = _lock_folder()
    for path in sorted(folder.glob("*.lock")) if folder.is_dir() else ():
        with _held(path):
            pass


def main() -> int:
    """Compile the (module, function name, signature) pickled on standard input, after the
    line with the path of the lock to hold meanwhile."""
    lock = Path(sys.stdin.buffer.readline().decode().rstrip("\n"))
    with _held(lock):
        module, name, signature = pickle.load(sys.stdin.buffer)
        dispatcher = getattr(importlib.import_module(module), name)
        dispatcher.compile(signature)
    return 0


if __name__ == "__main__":
    sys.exit(main())
