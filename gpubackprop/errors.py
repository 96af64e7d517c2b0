"""Exceptions raised by gpubackprop.

Every error a user can cause derives from :class:`GpubackpropError`, so the
command line can print it as one line and exit 2 instead of a traceback.
"""

#: Exit status of a command that was interrupted (Ctrl-C, SIGINT): 128 + SIGINT.
INTERRUPT_STATUS = 130


class GpubackpropError(Exception):
    """Base class of every error gpubackprop raises on purpose."""


class InputError(GpubackpropError, ValueError):
    """Data or an argument is malformed (shape, dtype, NaN, label range, name)."""


class GPUUnavailableError(GpubackpropError, RuntimeError):
    """A GPU backend was requested but no usable CUDA GPU with CuPy was found."""


class TrainingDivergedError(GpubackpropError, FloatingPointError):
    """The training loss became NaN or infinite."""


class DataFileError(GpubackpropError, OSError):
    """A dataset or checkpoint file is missing, truncated or corrupted."""


class OutputError(GpubackpropError, OSError):
    """An output file or folder cannot be written (a file in the way, no permission,
    a read-only or full filesystem), or another run is writing the same folder."""


class OutOfMemoryError(GpubackpropError, MemoryError):
    """Training or loading would need more memory than the machine (or device) has."""


class StateError(GpubackpropError, RuntimeError):
    """A method was called out of order, e.g. ``backward`` without a training-mode ``forward``."""


class DistributedError(GpubackpropError, RuntimeError):
    """Ranks of a distributed run disagree (model, data, seed), or MPI / NCCL is missing."""
