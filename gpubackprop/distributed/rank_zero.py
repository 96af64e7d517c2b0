"""Work one rank must do before the others start it: rank 0 first, the rest after a barrier.

A dataset not yet on disk would otherwise be downloaded by every rank at once
into the same cache folder. :func:`rank_0_first` runs the work on rank 0 while
the other ranks wait in a broadcast, then on the others (which find what rank 0
fetched). A library error on rank 0 is sent to every rank and raised there alike
(``collective``), so each rank stops and the command line reports it once; any
other failure stops every rank through :func:`~.faults.stop_all_on_error`.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from ..errors import GpubackpropError
from .faults import stop_all_on_error

T = TypeVar("T")


def rank_0_first(communicator, work: Callable[[], T]) -> T:
    """``work()`` on rank 0, then on every other rank; without ranks, just ``work()``.

    Parameters
    ----------
    communicator : Communicator or None
    work : callable
        Called once per rank with no arguments (loading a dataset, say).

    Raises
    ------
    GpubackpropError
        Rank 0's, on every rank (marked ``collective``), when rank 0's ``work`` raised it.
    """
    if communicator is None or communicator.size == 1:
        return work()
    with stop_all_on_error(communicator):
        if communicator.rank == 0:
            try:
                result = work()
            except GpubackpropError as exc:
                exc.collective = True
                communicator.broadcast(exc)
                raise
            communicator.broadcast(None)
            return result
        failure = communicator.broadcast(None)
        if failure is not None:
            raise failure
        return work()


__all__ = ["rank_0_first"]
