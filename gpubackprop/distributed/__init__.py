"""Data-parallel training across processes (MPI) and GPUs (NCCL).

Launched with ``mpiexec -n K``, every rank holds the whole model, trains on
its block of each global batch and sums the gradients with the other ranks
between the backward pass and the update (:class:`gpubackprop.nn.plan.ReduceOp`),
so all ranks take the same step. The modules:

- :mod:`.base`: the interface; :mod:`.communicator`: the choice per backend, what is installed;
- :mod:`.mpi`: MPI through mpi4py (NumPy buffers);
- :mod:`.nccl`: NCCL through CuPy, one GPU per rank;
- :mod:`.startup`: what every rank must agree on before the first step;
- :mod:`.faults`: a rank that raises stops every rank, naming itself;
- :mod:`.rank_zero`: work rank 0 does before the others (fetching a dataset).
"""

from .base import Communicator
from .communicator import (COMMUNICATORS, communicator_for, launched_rank, launched_size,
                           mpi_status)
from .mpi import MPICommunicator
from .faults import stop_all_on_error
from .rank_zero import rank_0_first
from .startup import check_same_everywhere

__all__ = ["COMMUNICATORS", "Communicator", "MPICommunicator", "check_same_everywhere",
           "communicator_for", "launched_rank", "launched_size", "mpi_status",
           "rank_0_first", "stop_all_on_error"]
