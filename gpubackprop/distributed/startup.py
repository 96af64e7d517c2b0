"""What every rank of a run must agree on before its first step.

Each rank states its facts (model configuration, parameter count and digest,
data shape and fingerprint, seed, ...) as a small dict; :func:`check_same_everywhere`
gathers them and, where a rank's fact differs from rank 0's, raises the same
DistributedError on every rank, naming the fact and the ranks. All ranks stop
together, so no rank waits for a collective the others never reach.
"""

from __future__ import annotations

import hashlib

import numpy as np

from ..errors import DistributedError


class StartupMismatch(DistributedError):
    """Raised on every rank alike (``collective``): no rank needs to abort the others."""

    collective = True


def digest(*arrays) -> str:
    """A short fingerprint of host arrays' dtypes, shapes and bytes (BLAKE2b, 16 bytes)."""
    hasher = hashlib.blake2b(digest_size=16)
    for array in arrays:
        array = np.ascontiguousarray(array)
        hasher.update(f"{array.dtype.str}{array.shape}".encode())
        hasher.update(array.data)
    return hasher.hexdigest()


def check_same_everywhere(communicator, facts: dict) -> None:
    """Raise :class:`StartupMismatch` on every rank unless all ranks have rank 0's ``facts``.

    Parameters
    ----------
    communicator : Communicator
    facts : dict of str to a comparable, picklable value
        Keyed by what the value is ("model configuration", "data fingerprint", ...).
    """
    everyone = communicator.allgather(facts)
    reference = everyone[0]
    problems = []
    for what in reference:
        ranks = [rank for rank, theirs in enumerate(everyone) if theirs.get(what) != reference[what]]
        if ranks:
            first = everyone[ranks[0]].get(what)
            problems.append(f"{what} differs on rank{'s' if len(ranks) > 1 else ''} "
                            f"{', '.join(map(str, ranks))} ({_short(first)}; rank 0 has "
                            f"{_short(reference[what])})")
    if problems:
        raise StartupMismatch(f"the {len(everyone)} ranks do not start alike: "
                              f"{'; '.join(problems)}; every rank stopped")


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


__all__ = ["StartupMismatch", "check_same_everywhere", "digest"]
