"""The interface every communicator offers: a rank among ranks, and a sum over them."""

from __future__ import annotations

#: What to install for distributed runs.
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

    def check_placement(self, array) -> None:
        """Raise a DistributedError when ``array`` (a model's parameter) is not where this
        rank's sums happen; nothing to check by default."""

    def abort(self, code: int) -> None:
        """Stop every rank now with exit status ``code`` (does not return)."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line: the library and this rank, for ``gpubackprop info`` and start-up."""
        return f"{self.name}, rank {self.rank} of {self.size}"


__all__ = ["Communicator", "INSTALL_HINT"]
