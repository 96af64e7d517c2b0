"""The NumPy backend: the CPU reference implementation."""

import numpy as np

from ..base import Backend


class NumpyBackend(Backend):
    """Runs every operation with NumPy on the host; the generic methods as they are."""

    name = "numpy"
    host_reads_are_free = True

    def __init__(self):
        super().__init__(np)
