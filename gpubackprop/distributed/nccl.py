"""NCCL through CuPy: sums device buffers across ranks, one GPU per rank.

Rank 0 draws NCCL's unique id and MPI broadcasts it; then every rank joins
``cupy.cuda.nccl.NcclCommunicator(size, id, rank)`` on the GPU picked from its
local rank (:func:`use_local_gpu`, called before the model is built so that
its arrays live there). :meth:`NcclCommunicator.allreduce_sum` is one
``ncclAllReduce`` in place on the buffer, on CuPy's current stream, so it is
ordered after the kernels that wrote the gradients and before the update's.

What awaits real GPUs (the emulated backend's fake ``nccl`` checks the
pointers, counts, dtypes and stream passed, not NCCL itself): NCCL's
transport between GPUs and hosts, and its speed.
"""

from __future__ import annotations

from ..errors import DistributedError
from .base import INSTALL_HINT, Communicator

#: NCCL's data type constant (an attribute of ``cupy.cuda.nccl``) for each dtype name.
NCCL_DTYPES = {"float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64"}


def nccl_module(cupy):
    """``cupy.cuda.nccl``, or a DistributedError when this CuPy has no NCCL."""
    try:
        nccl = getattr(cupy.cuda, "nccl", None)
        if nccl is None:
            from cupy.cuda import nccl
    except ImportError as exc:
        raise DistributedError(f"CuPy has no NCCL here ({exc}); install NCCL for CuPy "
                               f"(pip install nvidia-nccl-cu12 or -cu13) and {INSTALL_HINT}") \
            from None
    if not getattr(nccl, "available", True):
        raise DistributedError("CuPy was built without NCCL (cupy.cuda.nccl.available is "
                               "False); install NCCL for CuPy")
    return nccl


def use_local_gpu(cupy, local_rank: int) -> int:
    """Make GPU ``local_rank % count`` this process's current device; returns its id."""
    count = cupy.cuda.runtime.getDeviceCount()
    if count < 1:
        raise DistributedError("no GPU is visible to this rank")
    device = local_rank % count
    cupy.cuda.Device(device).use()
    return device


class NcclCommunicator(Communicator):
    """NCCL for CuPy arrays, started over MPI.

    Parameters
    ----------
    host : MPICommunicator
        The ranks, for the unique id and the start-up check.
    cupy : module
        CuPy (or the emulation's stand-in), as the backend's ``xp``.
    """

    name = "nccl"

    def __init__(self, host, cupy):
        self.host, self.cupy = host, cupy
        self.nccl = nccl_module(cupy)
        self.rank, self.size, self.local_rank = host.rank, host.size, host.local_rank
        self.device = use_local_gpu(cupy, self.local_rank)
        unique_id = self.nccl.get_unique_id() if self.rank == 0 else None
        unique_id = host.broadcast(unique_id)
        self.comm = self.nccl.NcclCommunicator(self.size, unique_id, self.rank)

    def data_type(self, dtype) -> int:
        """NCCL's constant for ``dtype``; a DistributedError for one NCCL cannot sum here."""
        name = NCCL_DTYPES.get(getattr(dtype, "name", str(dtype)))
        if name is None:
            raise DistributedError(f"no NCCL data type for {dtype}; gradients must be "
                                   f"{', '.join(NCCL_DTYPES)}")
        return getattr(self.nccl, name)

    def allreduce_sum(self, buffer) -> None:
        if not isinstance(buffer, self.cupy.ndarray) or buffer.ndim != 1 or \
                not buffer.flags.c_contiguous:
            raise DistributedError(f"NCCL sums a contiguous 1-D CuPy array, got "
                                   f"{type(buffer).__name__} {getattr(buffer, 'shape', '')}")
        stream = self.cupy.cuda.get_current_stream()
        pointer = buffer.data.ptr
        self.comm.allReduce(pointer, pointer, buffer.size, self.data_type(buffer.dtype),
                            self.nccl.NCCL_SUM, stream.ptr)

    def check_placement(self, array) -> None:
        device = getattr(getattr(array, "device", None), "id", self.device)
        if device != self.device:
            raise DistributedError(
                f"rank {self.rank}'s model is on GPU {device}, its NCCL communicator on GPU "
                f"{self.device} (local rank {self.local_rank}'s): call communicator_for(backend) "
                f"before building the model, so that its arrays are made on the rank's GPU")

    def allgather(self, value) -> list:
        return self.host.allgather(value)

    def broadcast(self, value, root: int = 0):
        return self.host.broadcast(value, root)

    def abort(self, code: int) -> None:
        self.host.abort(code)

    def describe(self) -> str:
        return (f"NCCL (started over {self.host.describe().split(', rank')[0]}), GPU "
                f"{self.device}, rank {self.rank} of {self.size}")


__all__ = ["NCCL_DTYPES", "NcclCommunicator", "nccl_module", "use_local_gpu"]
