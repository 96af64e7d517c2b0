"""A ``cupy.cuda.nccl`` for the emulated backend: the calls CuPy's NCCL takes, checked.

``NcclCommunicator(ndev, unique_id, rank).allReduce(sendbuf, recvbuf, count,
datatype, op, stream)`` takes raw device pointers, as CuPy's does. Here it
reads ``count`` elements of the data type's size at each pointer (device
arrays are host memory in the emulation), checks what real NCCL would
refuse or misread (an unknown data type or operation, an id of the wrong
form, a rank out of range, a stream other than CuPy's current one), sums
the buffer over the ranks through :data:`transport` (MPI between processes,
by default) and writes the result at ``recvbuf``. Every call is recorded in
:data:`CALLS` for tests to inspect.

What it cannot show: NCCL's own transports between GPUs and hosts, its
speed, and ordering against kernels on other streams (the emulation's work
is synchronous).
"""

from __future__ import annotations

import ctypes
import types

import numpy as np

#: ncclDataType_t and ncclRedOp_t values, as in nccl.h (CuPy exposes the same names).
NCCL_INT64, NCCL_FLOAT16, NCCL_FLOAT32, NCCL_FLOAT64 = 4, 6, 7, 8
NCCL_SUM, NCCL_PROD, NCCL_MAX, NCCL_MIN = 0, 1, 2, 3
DTYPES = {NCCL_INT64: np.int64, NCCL_FLOAT16: np.float16, NCCL_FLOAT32: np.float32,
          NCCL_FLOAT64: np.float64}
#: NCCL_UNIQUE_ID_BYTES: CuPy's ``get_unique_id()`` returns a tuple of this many ints.
UNIQUE_ID_BYTES = 128
#: Each allReduce: (rank, sendbuf, recvbuf, count, datatype, op, stream), in order.
CALLS: list = []


class NcclError(RuntimeError):
    """What CuPy raises for an NCCL failure (``cupy.cuda.nccl.NcclError``)."""


def mpi_transport(array: np.ndarray, ndev: int) -> None:
    """Sum ``array`` in place over MPI's world (the ranks ``mpiexec`` started)."""
    if ndev == 1:
        return
    from mpi4py import MPI

    if MPI.COMM_WORLD.Get_size() != ndev:
        raise NcclError(f"a communicator of {ndev} ranks in an MPI world of "
                        f"{MPI.COMM_WORLD.Get_size()}")
    MPI.COMM_WORLD.Allreduce(MPI.IN_PLACE, array, op=MPI.SUM)


#: How ranks' buffers meet: ``transport(array, ndev)`` sums in place; replaceable in tests.
transport = mpi_transport


def get_unique_id() -> tuple:
    return tuple(int(v) for v in np.random.default_rng().integers(-128, 128, UNIQUE_ID_BYTES))


def _device_array(pointer: int, count: int, dtype) -> np.ndarray:
    """``count`` elements of ``dtype`` at ``pointer``, as a writable view."""
    nbytes = count * np.dtype(dtype).itemsize
    return np.frombuffer((ctypes.c_char * nbytes).from_address(pointer), dtype=dtype)


class NcclCommunicator:
    """``cupy.cuda.nccl.NcclCommunicator``: ``allReduce`` over :data:`transport`.

    ``current_stream()`` gives the stream CuPy would launch on (set by :func:`make_module`).
    """

    current_stream = None

    def __init__(self, ndev: int, commId, rank: int):
        if not isinstance(commId, tuple) or len(commId) != UNIQUE_ID_BYTES:
            raise NcclError(f"commId must be the tuple get_unique_id() returns, got "
                            f"{type(commId).__name__}")
        if not 0 <= rank < ndev:
            raise NcclError(f"rank {rank} out of range for {ndev} devices")
        self.ndev, self.rank, self.commId = ndev, rank, commId

    def allReduce(self, sendbuf: int, recvbuf: int, count: int, datatype: int, op: int,
                  stream: int) -> None:
        if datatype not in DTYPES:
            raise NcclError(f"unsupported data type {datatype}")
        if op != NCCL_SUM:
            raise NcclError(f"this emulation sums only (op {op})")
        current = self.current_stream().ptr
        if stream != current:
            raise NcclError(f"allReduce on stream {stream:#x}, CuPy's current stream is "
                            f"{current:#x}: the sum would not be ordered after the gradients")
        CALLS.append((self.rank, sendbuf, recvbuf, count, datatype, op, stream))
        values = _device_array(sendbuf, count, DTYPES[datatype]).copy()
        transport(values, self.ndev)
        _device_array(recvbuf, count, DTYPES[datatype])[...] = values


def make_module(current_stream) -> types.ModuleType:
    """A fresh ``cupy.cuda.nccl`` stand-in; ``current_stream()`` is the fake CuPy's."""
    module = types.ModuleType("cupy.cuda.nccl", __doc__)
    module.available = True
    for name, value in globals().items():
        if name.startswith("NCCL_"):
            setattr(module, name, value)
    module.NcclError = NcclError
    module.NcclCommunicator = type("NcclCommunicator", (NcclCommunicator,),
                                   {"current_stream": staticmethod(current_stream)})
    module.get_unique_id = get_unique_id
    return module
