"""Sequential: a short list of layers trained end to end."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..backends import Backend, get_backend
from ..errors import InputError
from ..memory import Estimate, check_dimensions, check_fits, parameter_bytes
from ..validation import check_positive, check_seed
from .layers import Layer, Linear
from .losses import get_loss
from .optim import get_optimizer
from .plan import ReduceOp, Step, StepPlan, block, compile_plan
from .precision import DEFAULT_DTYPE, Precision, get_precision


class Sequential:
    """Layers applied in order.

    Parameters
    ----------
    layers : sequence of Layer
    n_inputs : int
        Width of each input row (of each time step, for sequences).
    device : {"auto", "cpu", "gpu"} or Backend
    dtype : {"float32", "float64"}, optional
        Every array in this dtype (``Precision.uniform(dtype)``); float32 by default.
    seed : int
        Seeds the host generator that draws the initial weights, so one seed
        gives the same initial weights on every backend.
    input_grad : bool
        Whether ``backward`` returns ``dX`` for the input batch; off by
        default, since training never needs it.
    precision : Precision, optional
        The dtype of each kind of array (:mod:`.precision`); give this or ``dtype``.

    Attributes
    ----------
    input_shape, output_shape : tuple
        One sample's shape in and out, without the batch axis: ``(n_inputs,)``,
        or ``(None, n_inputs)`` for sequences of any length. Each layer's
        ``build`` maps its input shape to its output shape.
    """

    def __init__(self, layers: Sequence[Layer], n_inputs: int, device="auto",
                 dtype: str = DEFAULT_DTYPE, seed: int = 0, input_grad: bool = False,
                 precision: Precision | None = None):
        if isinstance(layers, Layer) or not isinstance(layers, Sequence) or not all(
                isinstance(layer, Layer) for layer in layers):
            raise InputError(f"layers must be a list of Layer objects (Linear(...), ...), "
                             f"got {layers!r}")
        if not layers:
            raise InputError("a model needs at least one layer")
        self.layers = list(layers)
        self.n_inputs = check_positive(n_inputs, "n_inputs", integer=True)
        self.precision = get_precision(precision, dtype)
        self.dtype = self.precision.param
        self.seed = check_seed(seed)
        self.backend: Backend = get_backend(device)
        shapes = planned_shapes(self.layers, self.n_inputs)
        check_dimensions(shapes.values(), "the model")
        # Parameters and their gradients, checked before either is allocated.
        check_fits(Estimate({"parameters and gradients":
                             2 * parameter_bytes(shapes.values(), self.dtype.itemsize)},
                            "the layer widths"),
                   self.backend.free_memory(), f"{self.backend.device} memory")
        rng = np.random.default_rng(self.seed)
        self.input_shape = input_shape(self.layers, self.n_inputs)
        shape = self.input_shape
        for layer in self.layers:
            shape = layer.build(self.backend, shape, rng, self.precision)
        self.output_shape = shape
        self.n_outputs = shape[-1]
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

    def plan(self, loss, optimizer, batch_size: int, precision=None,
             distributed=None) -> StepPlan:
        """One training step as data (:mod:`.plan`): the layers' ops, the loss, the update.

        Creates the optimizer's state slots that are missing, so the plan holds
        every array a step touches. Arguments as for :meth:`compile_step`.
        """
        if precision is not None and get_precision(precision) != self.precision:
            raise InputError(f"a step in precision {get_precision(precision)} needs a model "
                             f"built with it; this one is {self.precision}")
        batch_size = check_positive(batch_size, "batch size", integer=True)
        reduce = None
        if distributed is not None:
            # Gradients first, as views of one buffer: the all-reduce is one call on it.
            buffer, size = self.fuse_gradients(extra=2)
            loss_op = get_loss(loss).plan_op()
            reduce = ReduceOp(distributed, buffer, size,
                              mean=loss_op.options.get("reduction", "mean") == "mean")
            # A rank's largest block of a global batch.
            start, stop = block(batch_size, distributed.size, distributed.size - 1)
            batch_size = stop - start
        ops = tuple(op for i, layer in enumerate(self.layers) for op in layer.plan_ops(str(i)))
        return StepPlan(ops, get_loss(loss).plan_op(), get_optimizer(optimizer).plan_update(self),
                        batch_size, self.precision, self.backend, self.input_shape,
                        self.output_shape, reduce)

    def fuse_gradients(self, extra: int = 0) -> tuple:
        """Make every gradient a view of one contiguous buffer; returns ``(buffer, size)``.

        ``buffer`` is (size + extra,): the gradients in :meth:`parameters_and_gradients`'
        order (their values kept), then ``extra`` free entries. Layers write
        their gradients in place, so the views stay theirs. Done once; a
        second call with the same ``extra`` returns the same buffer.
        """
        named = self.parameters_and_gradients()
        size = sum(int(dW.size) for _, _, dW in named)
        fused = getattr(self, "_fused_gradients", None)
        if fused is not None and fused.shape[0] == size + extra and all(
                self.backend.xp.may_share_memory(dW, fused) for _, _, dW in named):
            return fused, size
        dtypes = {dW.dtype for _, _, dW in named}
        if len(dtypes) != 1:
            raise InputError(f"the gradients must share one dtype to be summed in one buffer, "
                             f"got {sorted(map(str, dtypes))}")
        buffer = self.backend.zeros((size + extra,), dtypes.pop())
        start = 0
        for layer in self.layers:
            for key in layer.params:
                dW = layer.grads[key]
                view = buffer[start:start + dW.size].reshape(dW.shape)
                view[...] = dW
                layer.grads[key] = view
                start += dW.size
        self._fused_gradients = buffer
        return buffer, size

    def compile_step(self, loss, optimizer, batch_size: int, precision=None,
                     distributed=None) -> Step:
        """A training step for batches of up to ``batch_size`` samples, compiled by the backend.

        The backend's step compilers are asked in order (``backend.step_compilers``);
        the first to accept the plan builds the step, else the eager interpreter
        runs it (the layers' own passes: always possible). ``step.compiler``
        names who built it and ``step.declined`` says why the others did not.

        Parameters
        ----------
        loss : str or Loss
        optimizer : str or Optimizer
            An optimizer given by name starts with fresh state; pass the
            instance to train it on (the step updates its state and step count).
        batch_size : int
            The largest batch the step will be given.
        precision : Precision, optional
            Must be the model's (``self.precision``) today; the default.
        distributed : Communicator, optional
            Data-parallel training over its ranks (:mod:`gpubackprop.distributed`):
            the step takes a global batch of up to ``batch_size`` rows, trains on
            this rank's block and all-reduces the gradients before the update.

        Returns
        -------
        Step
            ``step(X, T, labels, index) -> (loss, hits)`` with ``X`` (N, ...)
            and ``T`` (N, n_outputs) the whole training set on the backend and
            ``index`` the batch's rows; use it as a context around the calls.
        """
        return compile_plan(self.plan(loss, optimizer, batch_size, precision, distributed))

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


def input_shape(layers: Sequence[Layer], n_inputs: int) -> tuple:
    """One input sample's shape: ``(n_inputs,)``, or ``(None, n_inputs)`` for sequences."""
    return (None,) * (layers[0].input_ndim - 2) + (n_inputs,)


def planned_shapes(layers: Sequence[Layer], n_inputs: int) -> dict:
    """Parameter shapes of ``layers`` built on inputs of width ``n_inputs``, unbuilt.

    Returns
    -------
    dict of str to tuple
        By parameter name, as :meth:`Sequential.parameters` names them (``"0.W"``);
        :func:`planned_activations` gives the widths a training pass keeps.
    """
    shapes, sample = {}, input_shape(layers, n_inputs)
    for i, layer in enumerate(layers):
        layer_shapes, sample = layer.parameter_shapes(sample)
        shapes.update({f"{i}.{key}": tuple(shape) for key, shape in layer_shapes.items()})
    return shapes


def planned_activations(layers: Sequence[Layer], n_inputs: int) -> tuple[list, int]:
    """What a training pass of ``layers`` keeps per sample and time step, unbuilt.

    Returns
    -------
    widths : list of int
        ``n_inputs`` and the output width of every layer counted generically (each kept
        ``memory.ACTIVATION_COPIES`` times).
    kept_per_step : int
        Elements the other layers (LSTM, GRU) keep in their own buffers
        (:meth:`Layer.kept_per_step`).
    """
    widths, kept, sample = [n_inputs], 0, input_shape(layers, n_inputs)
    for layer in layers:
        own = layer.kept_per_step(sample)
        _, sample = layer.parameter_shapes(sample)
        if own is None:
            widths.append(sample[-1])
        else:
            kept += own
    return widths, kept


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
