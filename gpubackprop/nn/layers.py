"""Feed-forward layers: forward / backward pairs.

Each layer keeps only what its backward pass needs: a Linear layer keeps its
input ``X``; an activation keeps its output ``Y``, or its input where the
registry (:mod:`.activations`) says the derivative needs it (SiLU).
``backward(dY)`` fills ``grads`` and returns ``dX``.
"""

from __future__ import annotations

import numpy as np

from ..backends import Backend
from ..errors import InputError, StateError
from .activations import ACTIVATIONS, NAMES as ACTIVATION_NAMES
from ..validation import check_choice, check_positive
from .plan import LayerOp, LinearOp
from .precision import Precision

INITIALIZERS = ("auto", "xavier", "he")


class Layer:
    """Base class: a layer with optional parameters.

    Attributes
    ----------
    params : dict of str to array
        Learnable arrays, on the layer's backend.
    grads : dict of str to array
        Gradients of the loss, same keys and shapes as ``params``.
    needs_input_grad : bool
        False for the first layer, whose ``dX`` no one uses.
    input_ndim : int
        Dimensions of an input batch: 2 for (N, features), 3 for
        sequences (N, time steps, features).
    """

    input_ndim = 2

    def __init__(self):
        self.params: dict = {}
        self.grads: dict = {}
        self.backend: Backend | None = None
        self.needs_input_grad = True

    def build(self, backend: Backend, in_shape: tuple, rng: np.random.Generator,
              precision: Precision) -> tuple:
        """Allocate parameters for inputs of one sample's shape; return the output's.

        Parameters
        ----------
        backend : Backend
        in_shape : tuple of int or None
            One sample's shape, without the batch axis: ``(features,)`` for
            rows, ``(None, features)`` for sequences of any length.
        rng : numpy.random.Generator
            Draws the initial weights (on the host, so every backend gets the same).
        precision : Precision
            Parameters and their gradients are allocated in ``precision.param``.

        Returns
        -------
        tuple
            One output sample's shape; an activation keeps ``in_shape``.
        """
        self.backend = backend
        return in_shape

    def plan_ops(self, name: str) -> tuple:
        """This layer's part of a step plan (:mod:`.plan`), ``name`` its place in the model.

        An opaque :class:`~.plan.LayerOp` unless a subclass describes itself
        in ops a compiler may know: only the eager interpreter runs it.
        """
        return (LayerOp(name, type(self).__name__, self),)

    def kept_per_step(self, in_shape: tuple) -> int | None:
        """Elements per sample and time step that a training pass keeps in this layer's own
        buffers, for memory estimates (``in_shape`` one sample's, as in :meth:`build`);
        None: the generic count (its output width, ``memory.ACTIVATION_COPIES`` times)."""
        return None

    def training_buffers(self) -> list:
        """The arrays this layer reuses from one training pass to the next (its workspace's,
        :mod:`.workspace`); a recorded step that writes them keeps them alive."""
        workspace = getattr(self, "_workspace", None)
        return [] if workspace is None else workspace.arrays()

    def parameter_shapes(self, in_shape: tuple) -> tuple[dict, tuple]:
        """The shapes ``build(in_shape)`` would give ``params``, and the output's shape.

        Allocates nothing: checkpoints and memory estimates use it before building.
        """
        return {}, in_shape

    def forward(self, X, train: bool = True):
        raise NotImplementedError

    def backward(self, dY):
        raise NotImplementedError

    def config(self) -> dict:
        """JSON-serialisable description used by checkpoints."""
        return {"type": type(self).__name__}


class Linear(Layer):
    """Affine layer ``Y = f(X W + b)`` with an optional fused activation.

    Parameters
    ----------
    units : int
        Output width.
    activation : str
        A name of :data:`~.activations.ACTIVATIONS` ("identity", "relu",
        "sigmoid", "tanh", "silu"), applied to ``X W + b`` in the same pass
        (bias + activation fused).
    init : {"auto", "xavier", "he"}
        Weight initialisation; "auto" takes the activation's registry entry
        (He for ReLU and SiLU, Xavier otherwise).

    Shapes: ``X`` (N, n_in), ``W`` (n_in, units), ``b`` (units,), ``Y`` (N, units).
    """

    def __init__(self, units: int, activation: str = "identity", init: str = "auto"):
        super().__init__()
        self.units = check_positive(units, "units", integer=True)
        self.activation = check_choice(activation, ACTIVATION_NAMES, "activation")
        self.init = check_choice(init, INITIALIZERS, "initialiser")
        self._X = None
        self._S = None

    def build(self, backend, in_shape, rng, precision) -> tuple:
        super().build(backend, in_shape, rng, precision)
        n_in = features(in_shape, "Linear")
        dtype = precision.param
        W = init_weights(rng, n_in, self.units, self.activation, self.init)
        self.params = {"W": backend.asarray(W.astype(dtype)),
                       "b": backend.zeros((self.units,), dtype)}
        self.grads = {"W": backend.zeros((n_in, self.units), dtype),
                      "b": backend.zeros((self.units,), dtype)}
        return (self.units,)

    def plan_ops(self, name: str) -> tuple:
        P, G = self.params, self.grads
        return (LinearOp(name, P["W"], P["b"], G["W"], G["b"], self.activation, self),)

    def parameter_shapes(self, in_shape: tuple) -> tuple[dict, tuple]:
        n_in = features(in_shape, "Linear")
        return {"W": (n_in, self.units), "b": (self.units,)}, (self.units,)

    def forward(self, X, train: bool = True):
        backend = self.backend
        Z = backend.gemm(X, self.params["W"])
        # Bias and activation in one fused pass: in place on Z, or, when the backward
        # pass needs the pre-activation, into a new Y beside Z = X W + b.
        keep_input = train and ACTIVATIONS[self.activation].needs_input
        Y = backend.bias_activation(Z, self.params["b"], self.activation,
                                    out=backend.empty(Z.shape, Z.dtype) if keep_input else None)
        if train:
            self._X, self._S = X, Z if keep_input else Y
        return Y

    def backward(self, dY):
        backend = self.backend
        require_forward(self, self._X)
        # Through the activation, from the saved output (or input): dZ = dY * f'(Z).
        dZ = backend.backprop_activation(dY, self._S, self.activation)
        # Weight gradient dW = X^T dZ and bias gradient db = sum over the batch of dZ.
        backend.gemm(self._X, dZ, trans_a=True, out=self.grads["W"])
        backend.sum_rows(dZ, out=self.grads["b"])
        # Input gradient dX = dZ W^T, skipped where nothing upstream needs it.
        dX = backend.gemm(dZ, self.params["W"], trans_b=True) if self.needs_input_grad else None
        self._X = self._S = None
        return dX

    def config(self) -> dict:
        return {"type": "Linear", "units": self.units, "activation": self.activation,
                "init": self.init}


class Activation(Layer):
    """An activation on its own: ``Y = f(X)``.

    Backward from the saved ``Y``, or from the saved ``X`` where the
    registry says the derivative needs the input.

    Parameters
    ----------
    name : str, optional
        A name of :data:`~.activations.ACTIVATIONS`; the subclasses below fix it.
    """

    name = "identity"

    def __init__(self, name: str | None = None):
        super().__init__()
        self.name = check_choice(type(self).name if name is None else name, ACTIVATION_NAMES,
                                 "activation")
        self._S = None

    def forward(self, X, train: bool = True):
        Y = self.backend.activation(X, self.name)
        if train:
            self._S = X if ACTIVATIONS[self.name].needs_input else Y
        return Y

    def backward(self, dY):
        require_forward(self, self._S)
        dX = self.backend.backprop_activation(dY, self._S, self.name)
        self._S = None
        return dX

    def config(self) -> dict:
        if type(self) is Activation:
            return {"type": "Activation", "name": self.name}
        return super().config()


class Sigmoid(Activation):
    """Logistic sigmoid; ``dX = dY * Y * (1 - Y)``."""

    name = "sigmoid"


class Tanh(Activation):
    """Hyperbolic tangent; ``dX = dY * (1 - Y**2)``."""

    name = "tanh"


class ReLU(Activation):
    """Rectified linear unit; ``dX = dY * (Y > 0)``."""

    name = "relu"


def features(in_shape: tuple, layer: str) -> int:
    """The width of rows of shape ``in_shape == (features,)``, else an InputError."""
    if len(in_shape) != 1 or in_shape[0] is None:
        raise InputError(f"{layer} takes rows of shape (features,), got samples of shape "
                         f"{tuple(in_shape)}; wrap it in TimeDistributed for sequences")
    return in_shape[0]


def require_forward(layer: Layer, saved) -> None:
    """Raise StateError when ``layer`` has nothing saved for its backward pass.

    A layer keeps its forward pass's arrays only until its ``backward``
    uses them, so a second ``backward`` (or one after ``forward(train=False)``)
    has none.
    """
    if saved is None:
        raise StateError(f"{type(layer).__name__}.backward called without a training-mode "
                         f"forward pass before it (each forward(X, train=True) allows one "
                         f"backward)")


def init_weights(rng: np.random.Generator, n_in: int, n_out: int, activation: str,
                 init: str = "auto") -> np.ndarray:
    """Initial weights (n_in, n_out) in float64 from a seeded host generator.

    Xavier/Glorot uniform keeps the variance of sigmoid and tanh layers;
    He normal suits ReLU and SiLU. Drawing on the host makes one seed give the same
    weights on every backend.
    """
    if init == "auto":
        init = ACTIVATIONS[activation].init
    if init == "he":
        return rng.normal(0.0, np.sqrt(2.0 / n_in), size=(n_in, n_out))
    limit = np.sqrt(6.0 / (n_in + n_out))
    return rng.uniform(-limit, limit, size=(n_in, n_out))


LAYER_TYPES = {cls.__name__: cls for cls in (Linear, Activation, Sigmoid, Tanh, ReLU)}


def layer_from_config(config: dict) -> Layer:
    """Rebuild an unbuilt layer from :meth:`Layer.config` output."""
    options = dict(config)
    kind = options.pop("type")
    if kind not in LAYER_TYPES:
        raise ValueError(f"unknown layer type {kind!r}")
    return LAYER_TYPES[kind](**options)
