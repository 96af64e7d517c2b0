"""gpubackprop: neural networks trained by backpropagation on CUDA GPUs, checkable on NumPy.

The names below are imported on first use (PEP 562), so that ``import
gpubackprop`` (and the command line's start-up, where an interrupt must exit
130 without a traceback) does not wait for NumPy and the backends.
"""

from importlib import import_module

# Before NumPy's BLAS and Numba's threading layer start their threads (standard library only).
from .cpu_threads import apply_wait_policy

apply_wait_policy()

from .errors import (DataFileError, GPUUnavailableError, GpubackpropError, InputError,
                     OutOfMemoryError, OutputError, TrainingDivergedError)

from ._version import __version__

#: Public name -> the module that defines it.
_LAZY = {
    "get_backend": ".backends", "gpu_status": ".backends",
    "Linear": ".nn.layers", "ReLU": ".nn.layers", "Sigmoid": ".nn.layers", "Tanh": ".nn.layers",
    "MeanSquaredError": ".nn.losses", "SoftmaxCrossEntropy": ".nn.losses",
    "Sequential": ".nn.model", "mlp": ".nn.model",
    "SGD": ".nn.optim", "Adam": ".nn.optim", "Momentum": ".nn.optim",
    "RNN": ".nn.recurrent", "TimeDistributed": ".nn.recurrent",
    "LSTM": ".nn.gated_recurrent", "GRU": ".nn.gated_recurrent",
    "Precision": ".nn.precision",
    "Callback": ".training.trainer", "History": ".training.trainer",
    "Trainer": ".training.trainer", "save": ".training.checkpoint", "load": ".training.checkpoint",
}


def __getattr__(name):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["Adam", "Callback", "DataFileError", "GPUUnavailableError", "GpubackpropError", "GRU",
           "History", "InputError", "LSTM", "Linear", "MeanSquaredError", "Momentum", "OutOfMemoryError",
           "OutputError", "Precision", "RNN", "ReLU", "SGD", "Sequential", "Sigmoid",
           "SoftmaxCrossEntropy", "Tanh", "TimeDistributed", "Trainer", "TrainingDivergedError",
           "get_backend", "gpu_status", "load", "mlp", "save", "__version__"]
