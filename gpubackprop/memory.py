"""Memory before allocating: what training needs, what the machine has.

Every size a user (or a checkpoint) can declare is checked here against the
memory available *before* the arrays are allocated, so a few edited bytes or
an extra zero on ``--hidden`` give a one-line error naming the estimate and
what to reduce, instead of a ``MemoryError``, a frozen machine or a process
killed by the kernel.

The estimate is deliberately simple and on the generous side: parameters,
their gradients and the optimizer's state slots; the activations of one batch
(kept for the backward pass, their gradients, and per-thread copies in the
parallel CPU step); the training, validation and test data on the device.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import OutOfMemoryError

try:
    import resource
except ImportError:  # not on Windows
    resource = None

GIB = 1 << 30
#: Copies of a batch's activations training holds per layer: the layer's input and
#: output kept for backward, the gradient of the pre-activation and of the input.
ACTIVATION_COPIES = 4
#: Bytes per element of the int64 labels kept beside the one-hot targets.
LABEL_BYTES = 8
#: The widest dimension the BLAS libraries take (their integers are 32-bit).
MAX_DIMENSION = 2**31 - 1


def _meminfo_available() -> int | None:
    """MemAvailable from /proc/meminfo, in bytes (None where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _sysconf_available() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_available() -> int | None:
    """Limit minus usage of this process's memory cgroup (v2, else v1), if limited."""
    v2, v1 = Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/memory")
    for limit_file, usage_file in ((v2 / "memory.max", v2 / "memory.current"),
                                   (v1 / "memory.limit_in_bytes", v1 / "memory.usage_in_bytes")):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        # v1 reports "no limit" as a number near 2**63.
        if limit is not None and usage is not None and limit < 1 << 60:
            return max(limit - usage, 0)
    return None


def _address_space_available() -> int | None:
    """What ``ulimit -v`` (RLIMIT_AS) leaves to this process, if it is set."""
    if resource is None:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(soft - pages * os.sysconf("SC_PAGE_SIZE"), 0)


def available_host_memory() -> int | None:
    """Bytes this process can still allocate on the host, or None when unknown.

    The smallest of: MemAvailable (/proc/meminfo, else ``os.sysconf``), the
    memory cgroup's limit minus its usage, and the address-space limit.
    """
    machine = _meminfo_available()
    if machine is None:
        machine = _sysconf_available()
    limits = [value for value in (machine, _cgroup_available(), _address_space_available())
              if value is not None]
    return min(limits) if limits else None


@dataclass(frozen=True)
class ArraySpec:
    """The shape and dtype of an array that does not exist (yet)."""

    shape: tuple
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return parameter_bytes([self.shape], self.dtype.itemsize)


class ShapeBackend:
    """Stands in for a backend: ``zeros`` gives an :class:`ArraySpec`, allocating nothing."""

    def zeros(self, shape, dtype) -> ArraySpec:
        return ArraySpec(tuple(int(d) for d in shape), np.dtype(dtype))


def optimizer_state_specs(optimizer, shapes: dict, dtype) -> dict:
    """The state arrays ``optimizer`` keeps for parameters of these shapes, unallocated.

    Asks a copy of the optimizer (its own ``state_slots``), so the names and
    shapes are the ones it will create.

    Returns
    -------
    dict of str to ArraySpec
        By state key (``"0.W.m"``, ...).
    """
    probe = copy.copy(optimizer)
    probe.state = {}
    for name, shape in shapes.items():
        probe.state_slots(ShapeBackend(), name, ArraySpec(tuple(shape), np.dtype(dtype)))
    return probe.state


@dataclass
class Estimate:
    """Bytes a piece of work needs, by part, and what to reduce when it does not fit.

    Attributes
    ----------
    parts : dict of str to int
        Bytes per named part ("parameters", "optimizer state", ...).
    advice : str
        What to make smaller, in the caller's terms (options or arguments).
    """

    parts: dict = field(default_factory=dict)
    advice: str = ""

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        shown = ", ".join(f"{name} {format_bytes(size)}" for name, size in self.parts.items()
                          if size)
        return f"{format_bytes(self.total)} ({shown})"


def format_bytes(size: int) -> str:
    if size >= GIB:
        return f"{size / GIB:.1f} GiB"
    return f"{size / (1 << 20):.1f} MiB"


def parameter_bytes(shapes, itemsize: int) -> int:
    """Bytes of arrays with the given shapes (Python integers: no overflow)."""
    total = 0
    for shape in shapes:
        count = 1
        for dim in shape:
            count *= int(dim)
        total += count * itemsize
    return total


def training_estimate(itemsize: int, widths, batch_size: int, steps: int = 1,
                      parameters: int = 0, state: int = 0, data: int = 0, threads: int = 0,
                      advice: str = "", kept_per_step: int = 0) -> Estimate:
    """What training a model needs, before anything is allocated.

    Parameters
    ----------
    itemsize : int
        Bytes per element of the model's dtype.
    widths : iterable of int
        Input width and the output width of every layer counted generically: each kept
        :data:`ACTIVATION_COPIES` times per time step.
    batch_size : int
        Rows of the largest batch.
    steps : int
        Time steps of a sequence (1 for feed-forward input).
    parameters, state, data : int
        Bytes of the parameters (counted twice: their gradients), of the
        optimizer's state and of the data kept on the device.
    threads : int
        Extra per-thread copies of the activations (the parallel CPU step's).
    advice : str
        What to reduce, in the caller's terms.
    kept_per_step : int
        Elements per sample and time step kept by the layers that count their own
        buffers (LSTM and GRU: see ``Layer.kept_per_step``).
    """
    activations = batch_size * steps * itemsize * (
        sum(int(w) for w in widths) * (ACTIVATION_COPIES + threads) + int(kept_per_step))
    return Estimate({"parameters and gradients": 2 * parameters, "optimizer state": state,
                     f"activations of a batch of {batch_size}": activations, "data": data},
                    advice)


def data_bytes(shapes, n_outputs: int, itemsize: int, sequences: bool = False) -> int:
    """Bytes of data sets on the device: features and one-hot targets in the model's
    dtype, and int64 labels, for arrays of features of the given shapes.

    With ``sequences`` (a model predicting at every time step of features
    (N, T, D)) each of the T steps has its targets, its label and a mask entry.
    """
    total = 0
    for shape in shapes:
        features = parameter_bytes([shape[1:]], 1)
        steps = shape[1] if sequences and len(shape) == 3 else 1
        mask = itemsize if sequences else 0
        total += shape[0] * (features * itemsize
                             + steps * (n_outputs * itemsize + LABEL_BYTES + mask))
    return total


def check_fits(estimate: Estimate, available: int | None, where: str = "memory") -> None:
    """Raise :class:`OutOfMemoryError` when ``estimate`` exceeds ``available`` bytes.

    ``available`` None (unknown) passes; the message names the estimate, its
    parts, what is available and what to reduce.
    """
    if available is None or estimate.total <= available:
        return
    advice = f"; reduce {estimate.advice}" if estimate.advice else ""
    raise OutOfMemoryError(f"this needs about {estimate.describe()}, but only "
                           f"{format_bytes(available)} of {where} is available{advice}")


def check_dimensions(shapes, what: str) -> None:
    """Refuse a dimension no BLAS can index (over 2**31 - 1), before any estimate."""
    from .errors import InputError

    for shape in shapes:
        if any(int(dim) > MAX_DIMENSION for dim in shape):
            raise InputError(f"{what} has an array of shape {tuple(shape)}; dimensions "
                             f"above {MAX_DIMENSION} are not supported")
