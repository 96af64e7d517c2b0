"""MPI through mpi4py: the communicator of the NumPy and Numba backends.

Importing this module does not initialise MPI; making an :class:`MPICommunicator` does.
"""

from __future__ import annotations

import os
import sys
import time

from ..errors import DistributedError
from .base import INSTALL_HINT, Communicator

#: Seconds a failing rank waits, its output flushed, before it aborts every rank.
ABORT_GRACE_S = 0.2


def import_mpi():
    """mpi4py's ``MPI`` module (initialises MPI), or a DistributedError saying what to install."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise DistributedError(f"distributed training needs mpi4py and an MPI library "
                               f"({exc}); {INSTALL_HINT}") from None
    return MPI


class MPICommunicator(Communicator):
    """MPI through mpi4py: sums NumPy buffers (``Allreduce`` in place, one call per buffer).

    Parameters
    ----------
    comm : mpi4py.MPI.Comm, optional
        ``MPI.COMM_WORLD`` by default.
    """

    name = "mpi"

    def __init__(self, comm=None):
        self.MPI = MPI = import_mpi()
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        host = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank = host.Get_rank()
        host.Free()

    def allreduce_sum(self, buffer) -> None:
        self.comm.Allreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM)

    def allgather(self, value) -> list:
        return self.comm.allgather(value)

    def broadcast(self, value, root: int = 0):
        return self.comm.bcast(value, root=root)

    def abort(self, code: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        # The launcher forwards a rank's output asynchronously and drops what it has not yet
        # read when an abort ends it (once in about 50 runs the test saw no output at all).
        time.sleep(ABORT_GRACE_S)
        self.comm.Abort(code)
        # MPICH's MPI_Abort can return before the launcher ends this process; without an
        # exit here, Python would go on to print the error's traceback (and the command
        # line its error again) after the one-line report.
        os._exit(code)

    def describe(self) -> str:
        library = " ".join(self.MPI.Get_library_version().splitlines()[0].split())
        return f"MPI ({library}, mpi4py), rank {self.rank} of {self.size}"


__all__ = ["MPICommunicator", "import_mpi"]
