"""gpubackprop: neural networks trained by backpropagation on CUDA GPUs, checkable on NumPy."""

from ._version import __version__
from .backends import get_backend, gpu_status
from .errors import (DataFileError, GPUUnavailableError, GpubackpropError, InputError,
                     TrainingDivergedError)
from .nn.layers import Linear, ReLU, Sigmoid, Tanh
from .nn.losses import MeanSquaredError, SoftmaxCrossEntropy
from .nn.model import Sequential, mlp
from .nn.optim import SGD, Adam, Momentum
from .nn.recurrent import RNN, TimeDistributed
from .nn.precision import Precision
from .training.checkpoint import load, save
from .training.trainer import Callback, History, Trainer

__all__ = ["Adam", "Callback", "DataFileError", "GPUUnavailableError", "GpubackpropError", "History", "InputError",
           "Linear", "MeanSquaredError", "Momentum", "Precision", "RNN", "ReLU", "SGD", "Sequential",
           "Sigmoid", "SoftmaxCrossEntropy", "Tanh", "TimeDistributed", "Trainer",
           "TrainingDivergedError", "get_backend", "gpu_status", "load", "mlp", "save",
           "__version__"]
