"""The ``gpubackprop`` console script: Ctrl-C while it starts ends with one line, exit 130.

The command line's own interrupt handling (:func:`gpubackprop.cli.main.main`)
starts only once its modules, NumPy among them, are imported. While they
import, a SIGINT is held here instead: a KeyboardInterrupt raised inside an
extension module's import (NumPy's, say) can surface as that module's
ImportError, with a traceback. A held interrupt ends the process once the
import is over. Importing this module imports only the standard library and
:mod:`gpubackprop.errors`. What remains uncovered is Python's own start-up and
``import gpubackprop`` (the error classes and the CPU thread settings), before
this module's code runs.
"""

from __future__ import annotations

import signal
import sys

from .errors import INTERRUPT_STATUS


def main() -> int:
    """Import the command line with SIGINT held, then run it on ``sys.argv``."""
    held = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        from .cli.main import main as run_command
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        print("gpubackprop: interrupted", file=sys.stderr)
        return INTERRUPT_STATUS
    return run_command()


__all__ = ["main"]
