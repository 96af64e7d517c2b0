"""Which communicator a backend gets, and what is installed for distributed runs.

A :class:`~.base.Communicator` knows its ``rank`` among ``size`` ranks (and its
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
from .base import INSTALL_HINT, Communicator
from .mpi import MPICommunicator

#: Names ``communicator_for`` takes: "auto" picks NCCL on a GPU backend, MPI on the CPU.
COMMUNICATORS = ("auto", "mpi", "nccl")
#: Environment variables an MPI launcher sets for each rank (MPICH / Intel MPI, Open MPI).
RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK")
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")


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


__all__ = ["COMMUNICATORS", "MPIStatus", "communicator_for", "find_mpiexec", "launched_rank",
           "launched_size", "mpi_status"]
