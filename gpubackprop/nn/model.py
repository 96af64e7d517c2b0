"""Sequential: a short list of layers trained end to end."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..backends import Backend, get_backend
from ..errors import InputError
from ..memory import Estimate, check_dimensions, check_fits, parameter_bytes
from .layers import Layer, Linear
from ..validation import check_dtype, check_positive, check_seed


class Sequential:
    """Layers applied in order.

    Parameters
    ----------
    layers : sequence of Layer
    n_inputs : int
        Width of each input row.
    device : {"auto", "cpu", "gpu"} or Backend
    dtype : {"float32", "float64"}
    seed : int
        Seeds the host generator that draws the initial weights, so one seed
        gives the same initial weights on every backend.
    input_grad : bool
        Whether ``backward`` returns ``dX`` for the input batch; off by
        default, since training never needs it.
    """

    def __init__(self, layers: Sequence[Layer], n_inputs: int, device="auto",
                 dtype: str = "float32", seed: int = 0, input_grad: bool = False):
        if isinstance(layers, Layer) or not isinstance(layers, Sequence) or not all(
                isinstance(layer, Layer) for layer in layers):
            raise InputError(f"layers must be a list of Layer objects (Linear(...), ...), "
                             f"got {layers!r}")
        if not layers:
            raise InputError("a model needs at least one layer")
        self.layers = list(layers)
        self.n_inputs = check_positive(n_inputs, "n_inputs", integer=True)
        self.dtype = np.dtype(check_dtype(dtype))
        self.seed = check_seed(seed)
        self.backend: Backend = get_backend(device)
        shapes, _ = planned_shapes(self.layers, self.n_inputs)
        check_dimensions(shapes.values(), "the model")
        # Parameters and their gradients, checked before either is allocated.
        check_fits(Estimate({"parameters and gradients":
                             2 * parameter_bytes(shapes.values(), self.dtype.itemsize)},
                            "the layer widths"),
                   self.backend.free_memory(), f"{self.backend.device} memory")
        rng = np.random.default_rng(self.seed)
        width = self.n_inputs
        for layer in self.layers:
            width = layer.build(self.backend, width, rng, self.dtype)
        self.n_outputs = width
        self.input_grad = input_grad
        self._set_input_grads()

    def _set_input_grads(self) -> None:
        """No dX for the layers in front of (and including) the first parametrised one."""
        first = next((i for i, layer in enumerate(self.layers) if layer.params), len(self.layers))
        for i, layer in enumerate(self.layers):
            layer.needs_input_grad = self.input_grad or i > first

    @property
    def input_ndim(self) -> int:
        """Dimensions of an input batch: 2 for (N, n_inputs), 3 for (N, T, n_inputs)."""
        return self.layers[0].input_ndim

    @property
    def input_grad(self) -> bool:
        return self._input_grad

    @input_grad.setter
    def input_grad(self, value: bool) -> None:
        self._input_grad = bool(value)
        self._set_input_grads()

    def forward(self, X, train: bool = True):
        """Outputs (N, n_outputs) for a batch ``X`` already on the backend.

        ``X`` is (N, n_inputs), or (N, T, n_inputs) when ``input_ndim`` is 3.
        """
        for layer in self.layers:
            X = layer.forward(X, train=train)
        return X

    def backward(self, dY):
        """Backpropagate ``dY`` (N, n_outputs); fills every layer's ``grads``.

        Returns ``dX`` (N, n_inputs) when ``input_grad`` is set, else None.
        """
        for layer in reversed(self.layers):
            dY = layer.backward(dY)
            if dY is None:
                break
        return dY

    def layer_outputs(self, X) -> list:
        """Every layer's output for a batch, as host arrays (for pictures).

        Parameters
        ----------
        X : array_like, shape (N, n_inputs)

        Returns
        -------
        list of ndarray
            One ``(N, width)`` array per layer, in order; the last are the outputs.
        """
        X = self.backend.asarray(X, dtype=self.dtype)
        outputs = []
        for layer in self.layers:
            X = layer.forward(X, train=False)
            outputs.append(self.backend.to_numpy(X).copy())
        return outputs

    def parameters_and_gradients(self) -> list:
        """``[(name, W, dW), ...]`` for every parameter, names like ``"0.W"``."""
        return [(f"{i}.{key}", value, layer.grads[key])
                for i, layer in enumerate(self.layers) for key, value in layer.params.items()]

    def parameters(self) -> dict:
        """Parameter arrays on the backend, by name."""
        return {name: W for name, W, _ in self.parameters_and_gradients()}

    def gradients(self) -> dict:
        """Gradient arrays on the backend, by parameter name."""
        return {name: dW for name, _, dW in self.parameters_and_gradients()}

    def state_arrays(self) -> dict:
        """Parameters as host NumPy arrays, by name."""
        return {name: self.backend.to_numpy(W) for name, W in self.parameters().items()}

    def load_state_arrays(self, arrays: dict) -> None:
        """Copy host arrays into the parameters, checking names, shapes and dtypes."""
        params = self.parameters()
        missing = sorted(set(params) - set(arrays))
        extra = sorted(set(arrays) - set(params))
        if missing or extra:
            raise InputError(f"parameter names do not match the model: missing {missing}, "
                             f"unexpected {extra}")
        for name, W in params.items():
            value = np.asarray(arrays[name])
            if value.shape != W.shape:
                raise InputError(f"parameter {name} has shape {value.shape}, "
                                 f"the model needs {W.shape}")
            W[...] = self.backend.asarray(value.astype(W.dtype, copy=False))

    def config(self) -> dict:
        """JSON-serialisable architecture description."""
        return {"n_inputs": self.n_inputs, "dtype": self.dtype.name, "seed": self.seed,
                "layers": [layer.config() for layer in self.layers]}

    def n_parameters(self) -> int:
        return int(sum(W.size for W in self.parameters().values()))

    def __repr__(self) -> str:
        widths = [self.n_inputs] + [layer.units for layer in self.layers if hasattr(layer, "units")]
        return (f"Sequential({'-'.join(map(str, widths))}, backend={self.backend.name}, "
                f"dtype={self.dtype.name})")


def planned_shapes(layers: Sequence[Layer], n_inputs: int) -> tuple[dict, list]:
    """Parameter shapes of ``layers`` built on inputs of width ``n_inputs``, unbuilt.

    Returns
    -------
    shapes : dict of str to tuple
        By parameter name, as :meth:`Sequential.parameters` names them (``"0.W"``).
    widths : list of int
        ``n_inputs`` and the output width of every layer.
    """
    shapes, widths = {}, [n_inputs]
    for i, layer in enumerate(layers):
        layer_shapes, width = layer.parameter_shapes(widths[-1])
        shapes.update({f"{i}.{key}": tuple(shape) for key, shape in layer_shapes.items()})
        widths.append(width)
    return shapes, widths


def mlp(n_inputs: int, hidden: Sequence[int], n_outputs: int, activation: str = "relu",
        output_activation: str = "identity", **options) -> Sequential:
    """A multi-layer perceptron of fused Linear layers.

    Parameters
    ----------
    n_inputs : int
    hidden : sequence of int
        Widths of the hidden layers.
    n_outputs : int
    activation : str
        Activation of every hidden layer.
    output_activation : str
        "identity" for logits (cross-entropy), "sigmoid" for the tutorial's MSE network.
    **options
        ``device``, ``dtype``, ``seed`` for :class:`Sequential`.
    """
    if isinstance(hidden, (str, bytes)) or not hasattr(hidden, "__iter__"):
        raise InputError(f"hidden must be a sequence of layer widths, e.g. [128, 64], "
                         f"got {hidden!r}")
    layers = [Linear(check_positive(width, f"hidden[{i}]", integer=True), activation)
              for i, width in enumerate(hidden)]
    layers.append(Linear(n_outputs, output_activation))
    return Sequential(layers, n_inputs=n_inputs, **options)
