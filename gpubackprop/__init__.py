"""gpubackprop: neural networks trained by backpropagation on CUDA GPUs, checkable on NumPy."""

from .backends import get_backend, gpu_status
from .errors import (DataFileError, GPUUnavailableError, GpubackpropError, InputError,
                     TrainingDivergedError)
from .layers import Linear, ReLU, Sigmoid, Tanh
from .losses import MeanSquaredError, SoftmaxCrossEntropy
from .model import Sequential, mlp
from .optim import SGD, Adam, Momentum
from .recurrent import RNN, TimeDistributed

__version__ = "0.1.0"

__all__ = ["Adam", "DataFileError", "GPUUnavailableError", "GpubackpropError", "InputError",
           "Linear", "MeanSquaredError", "Momentum", "RNN", "ReLU", "SGD", "Sequential", "Sigmoid",
           "SoftmaxCrossEntropy", "Tanh", "TimeDistributed", "TrainingDivergedError",
           "get_backend", "gpu_status", "mlp", "__version__"]
