"""A rank that fails stops every rank, naming itself, instead of leaving them waiting.

A rank that raises while the others wait in an all-reduce would hang the run;
:func:`stop_all_on_error` prints one line naming the rank and the error, then
calls ``Abort`` on the communicator, which ends every rank (the launcher
reports the exit status). A rank killed outright (SIGKILL) is the launcher's
to notice: ``mpiexec`` ends the others when one process dies.
"""

from __future__ import annotations

import contextlib
import sys

from ..errors import INTERRUPT_STATUS

#: Exit status of an aborted run (the command line's for user errors; INTERRUPT_STATUS for
#: an interrupt).
ABORT_STATUS = 2


@contextlib.contextmanager
def stop_all_on_error(communicator, stream=None):
    """Around a rank's part of a distributed run: on an error, stop every rank.

    An error raised alike on every rank (its ``collective`` attribute is true,
    as for a start-up mismatch) is re-raised without aborting. A single rank
    (``size`` 1) re-raises as usual.
    """
    try:
        yield
    except BaseException as exc:
        if communicator.size > 1 and not getattr(exc, "collective", False):
            status = INTERRUPT_STATUS if isinstance(exc, KeyboardInterrupt) else ABORT_STATUS
            print(f"gpubackprop: error: rank {communicator.rank} of {communicator.size} failed: "
                  f"{type(exc).__name__}: {exc}; stopping every rank",
                  file=stream or sys.stderr, flush=True)
            communicator.abort(status)
        raise


__all__ = ["ABORT_STATUS", "stop_all_on_error"]
