"""Buffers a layer reuses from one training step to the next.

A recurrent layer's per-batch arrays (its states, their gradients, the
time-major copy of its input) are megabytes each. Allocated afresh every
step, memory of that size comes straight from the operating system and
every first touch of a page faults; kept, it is allocated once per batch
shape. Only training-mode passes use a workspace, so the arrays a caller
keeps from an inference pass are never overwritten.
"""

from __future__ import annotations


class Workspace:
    """Named arrays, allocated on first request and handed out again after.

    A name keeps the arrays of the last :data:`SHAPES_KEPT` shapes asked for
    (an epoch's full batches and its shorter last one).
    """

    SHAPES_KEPT = 2

    def __init__(self):
        self._arrays: dict = {}

    def get(self, backend, name: str, shape: tuple, dtype):
        """An array of ``shape`` and ``dtype`` on ``backend``, contents undefined."""
        kept = self._arrays.setdefault(name, {})
        key = (tuple(shape), str(dtype), id(backend))
        array = kept.pop(key, None)
        if array is None:
            array = backend.empty(shape, dtype)
            while len(kept) >= self.SHAPES_KEPT:
                kept.pop(next(iter(kept)))
        kept[key] = array  # most recently used last
        return array

    def arrays(self) -> list:
        """Every array kept now, of every name and shape."""
        return [array for kept in self._arrays.values() for array in kept.values()]

    def clear(self) -> None:
        self._arrays.clear()
