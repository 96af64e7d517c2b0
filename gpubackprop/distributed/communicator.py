"""One small interface over the libraries that sum arrays across ranks.

A :class:`Communicator` knows its ``rank`` among ``size`` ranks (and its
``local_rank`` on this host), sums a contiguous 1-D array of its backend in
place across all ranks (:meth:`Communicator.allreduce_sum`), and exchanges
small host objects (the start-up check). :class:`MPICommunicator` serves the
NumPy and Numba backends (mpi4py, NumPy buffers); the CuPy backend's
:class:`~.nccl.NcclCommunicator` sums device buffers with NCCL and uses MPI
only to start. :func:`communicator_for` picks one for a backend.

Importing this module imports neither mpi4py nor CuPy.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import DistributedError

#: Names ``communicator_for`` takes: "auto" picks NCCL on a GPU backend, MPI on the CPU.
COMMUNICATORS = ("auto", "mpi", "nccl")
#: Environment variables an MPI launcher sets for each rank (MPICH / Intel MPI, Open MPI).
RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK")
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
INSTALL_HINT = "pip install 'gpubackprop[mpi]' (mpi4py and the mpich wheel)"


class Communicator:
    """What a data-parallel step needs from its ranks.

    Attributes
    ----------
    name : str
        "mpi" or "nccl".
    rank, size : int
        This process's rank among ``size``.
    local_rank : int
        Its rank among the ranks on this host (picks the GPU).
    """

    name = "none"
    rank = 0
    size = 1
    local_rank = 0

    def allreduce_sum(self, buffer) -> None:
        """Replace ``buffer`` (a contiguous 1-D array) by its sum over all ranks."""
        raise NotImplementedError

    def allgather(self, value) -> list:
        """Every rank's ``value`` (a small picklable host object), in rank order."""
        raise NotImplementedError

    def broadcast(self, value, root: int = 0):
        """Rank ``root``'s ``value`` on every rank."""
        raise NotImplementedError

    def abort(self, code: int) -> None:
        """Stop every rank now with exit status ``code`` (does not return)."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line: the library and this rank, for ``gpubackprop info`` and start-up."""
        return f"{self.name}, rank {self.rank} of {self.size}"


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
        self.comm.Abort(code)

    def describe(self) -> str:
        library = " ".join(self.MPI.Get_library_version().splitlines()[0].split())
        return f"MPI ({library}, mpi4py), rank {self.rank} of {self.size}"


_SHARED: dict = {}


def communicator_for(backend, kind="auto") -> Communicator:
    """The communicator for ``backend``'s arrays: MPI on the CPU, NCCL on the GPU.

    Parameters
    ----------
    backend : Backend
    kind : {"auto", "mpi", "nccl"} or Communicator
        A Communicator is returned as it is. One of each kind is made per
        process (making one is a collective call: every rank must ask).
    """
    if isinstance(kind, Communicator):
        return kind
    if kind is True:
        kind = "auto"
    if kind not in COMMUNICATORS:
        raise DistributedError(f"distributed must be one of {', '.join(COMMUNICATORS)} or a "
                               f"Communicator, got {kind!r}")
    on_gpu = backend.device == "gpu"
    if kind == "auto":
        kind = "nccl" if on_gpu else "mpi"
    if kind == "nccl" and not on_gpu:
        raise DistributedError(f"NCCL sums GPU arrays; the {backend.name} backend's are host "
                               f"arrays: use distributed='mpi'")
    if kind == "mpi" and on_gpu:
        raise DistributedError(f"MPI here sums host (NumPy) buffers; the {backend.name} "
                               f"backend's gradients live on the GPU: use distributed='nccl'")
    if "mpi" not in _SHARED:
        _SHARED["mpi"] = MPICommunicator()
    if kind == "mpi":
        return _SHARED["mpi"]
    key = ("nccl", id(backend.xp))
    if key not in _SHARED:
        from .nccl import NcclCommunicator

        _SHARED[key] = NcclCommunicator(_SHARED["mpi"], backend.xp)
    return _SHARED[key]


def _environment_int(names) -> int | None:
    for name in names:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return None


def launched_rank() -> int | None:
    """This process's rank as the MPI launcher set it, or None outside ``mpiexec``."""
    return _environment_int(RANK_VARIABLES)


def launched_size() -> int | None:
    """The number of ranks the MPI launcher started, or None outside ``mpiexec``."""
    return _environment_int(SIZE_VARIABLES)


@dataclass(frozen=True)
class MPIStatus:
    """What is installed for distributed runs, found without initialising MPI."""

    mpi4py_version: str | None
    mpiexec: str | None
    rank: int | None
    size: int | None

    def describe(self) -> str:
        if self.mpi4py_version is None:
            return f"not available: mpi4py is not installed ({INSTALL_HINT})"
        launcher = self.mpiexec or "no mpiexec on PATH or beside this Python"
        where = ("this process is not an MPI rank" if self.size is None
                 else f"this process is rank {self.rank} of {self.size}")
        return (f"mpi4py {self.mpi4py_version}, {launcher}; communicator: MPI for numpy/numba, "
                f"NCCL for cupy; {where}")


def find_mpiexec() -> str | None:
    """``mpiexec`` on PATH, else beside this Python (the mpich wheel puts it in the venv)."""
    found = shutil.which("mpiexec")
    if found:
        return found
    beside = Path(sys.executable).with_name("mpiexec")
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


def mpi_status() -> MPIStatus:
    """mpi4py's version, where ``mpiexec`` is, and this process's rank (no MPI started)."""
    version = None
    if importlib.util.find_spec("mpi4py") is not None:
        try:
            version = importlib.metadata.version("mpi4py")
        except importlib.metadata.PackageNotFoundError:
            version = "unknown version"
    return MPIStatus(version, find_mpiexec(), launched_rank(), launched_size())


__all__ = ["COMMUNICATORS", "Communicator", "MPICommunicator", "MPIStatus", "communicator_for",
           "find_mpiexec", "import_mpi", "launched_rank", "launched_size", "mpi_status"]
