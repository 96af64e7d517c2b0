"""gpubackprop: neural networks trained by backpropagation on CUDA GPUs, checkable on NumPy."""

from .backends import get_backend, gpu_status
from .errors import (DataFileError, GPUUnavailableError, GpubackpropError, InputError,
                     TrainingDivergedError)
from .nn.layers import Linear, ReLU, Sigmoid, Tanh
from .nn.losses import MeanSquaredError, SoftmaxCrossEntropy
from .nn.model import Sequential, mlp
from .nn.optim import SGD, Adam, Momentum
from .nn.recurrent import RNN, TimeDistributed
from .training.trainer import Callback, History, Trainer

__version__ = "0.1.0"

__all__ = ["Adam", "Callback", "DataFileError", "GPUUnavailableError", "GpubackpropError", "History", "InputError",
           "Linear", "MeanSquaredError", "Momentum", "RNN", "ReLU", "SGD", "Sequential", "Sigmoid",
           "SoftmaxCrossEntropy", "Tanh", "TimeDistributed", "Trainer", "TrainingDivergedError",
           "get_backend", "gpu_status", "mlp", "__version__"]
