"""ONNX export of trained models: MLPs, recurrent models and the scikit-learn estimators.

``model_to_onnx(model)`` writes a graph of standard ONNX operators (opset
:data:`OPSET`) that computes what the model predicts: ``MatMul`` + ``Add`` and
the activation for each Linear layer, ONNX's ``RNN``, ``LSTM`` or ``GRU``
operator for a recurrent layer (gate blocks reordered from PyTorch's layout),
and the output activation of the loss (``Softmax`` for
cross-entropy, ``Sigmoid`` for binary cross-entropy). Weights are stored in
the export dtype (float32 unless asked). Needs the ``onnx`` extra
(``pip install gpubackprop[onnx]``); onnxruntime runs the file.

Graph input ``X``: (N, D) for an MLP, (N, T, D) for a recurrent model, in the
model's own units (the preprocessing of the training run is not part of the
graph). Output ``Y``: class probabilities for classifiers (the columns of
``predict_proba``), predicted values for regressors, (N, K).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError
from .nn.layers import Activation, Linear
from .nn.model import Sequential
from .nn.gated_recurrent import GRU, LSTM
from .nn.recurrent import RNN, TimeDistributed

#: The ONNX operator set the graphs use (RNN, Softmax over the last axis, Squeeze with axes input).
OPSET = 17
#: The IR version written: the one of ONNX 1.13, read by every onnxruntime since 1.14.
IR_VERSION = 8
#: Our activation names and the ONNX operator of each; identity adds no node, and SiLU
#: (no operator of its own before opset 24's Swish) is ``z * Sigmoid(z)``.
ONNX_ACTIVATIONS = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu", "identity": None,
                    "silu": "Sigmoid"}
#: Output activations (as :attr:`gpubackprop.nn.losses.Loss.output_activation` names them).
OUTPUT_ACTIVATIONS = ("identity", "softmax", "sigmoid")


def _onnx():
    try:
        import onnx
    except ImportError as exc:
        raise InputError(f"ONNX export needs the onnx package ({exc}); install "
                         "gpubackprop[onnx]") from None
    return onnx


class _Graph:
    """Nodes and initialisers collected while walking the model."""

    def __init__(self, onnx, dtype):
        self.onnx, self.dtype = onnx, np.dtype(dtype)
        self.nodes, self.initializers = [], []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def constant(self, hint: str, value, dtype=None) -> str:
        name = self.name(hint)
        array = np.asarray(value, dtype=self.dtype if dtype is None else dtype)
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs, hint: str | None = None, n_outputs: int = 1, **attributes):
        outputs = [self.name(hint or op.lower()) for _ in range(n_outputs)]
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), outputs, **attributes))
        return outputs[0] if n_outputs == 1 else outputs

    def activation(self, X: str, name: str) -> str:
        if name not in ONNX_ACTIVATIONS:
            raise InputError(f"activation {name!r} has no ONNX export; exportable: "
                             f"{', '.join(ONNX_ACTIVATIONS)}")
        op = ONNX_ACTIVATIONS[name]
        if name == "silu":
            return self.node("Mul", [X, self.node(op, [X])])
        return X if op is None else self.node(op, [X])


def _linear(graph: _Graph, X: str, layer: Linear) -> str:
    W = graph.constant("W", layer.backend.to_numpy(layer.params["W"]))
    b = graph.constant("b", layer.backend.to_numpy(layer.params["b"]))
    return graph.activation(graph.node("Add", [graph.node("MatMul", [X, W]), b]),
                            layer.activation)


#: Where ONNX's gate blocks come from in PyTorch's (and our) order: LSTM iofc from ifgo,
#: GRU zrh from rzn.
ONNX_GATE_ORDER = {LSTM: (0, 3, 1, 2), GRU: (1, 0, 2)}


def _recurrent(graph: _Graph, X: str, layer) -> str:
    """ONNX's RNN, LSTM or GRU operator (time-major) on (N, T, D) input; (N, H) or
    (N, T, H) out. ONNX keeps both biases: ``B`` is (1, 2 * gates * H)."""
    P = {key: layer.backend.to_numpy(value) for key, value in layer.params.items()}
    H = layer.units
    if isinstance(layer, RNN):
        op, attributes = "RNN", dict(activations=[ONNX_ACTIVATIONS[layer.activation]])
        W, R, B = P["W"].T, P["U"].T, np.concatenate([P["b"], np.zeros(H)])
    else:
        op, order = type(layer).__name__, ONNX_GATE_ORDER[type(layer)]

        def reordered(A):
            return np.concatenate([A[k * H:(k + 1) * H] for k in order])

        W, R = reordered(P["weight_ih"]), reordered(P["weight_hh"])
        B = np.concatenate([reordered(P["bias_ih"]), reordered(P["bias_hh"])])
        # PyTorch's GRU applies the reset gate after the recurrent projection.
        attributes = dict(linear_before_reset=1) if op == "GRU" else {}
    inputs = [graph.node("Transpose", [X], perm=[1, 0, 2]), graph.constant(f"{op}_W", W[None]),
              graph.constant(f"{op}_R", R[None]), graph.constant(f"{op}_B", B[None]), ""]
    learnt = [name for name in ("h0", "c0") if name in P]
    if learnt:
        # The learnt initial states (H,), repeated for each of the N sequences: (1, N, H).
        n = graph.node("Gather", [graph.node("Shape", [X]),
                                  graph.constant("zero", 0, np.int64)], axis=0)
        shape = graph.node("Concat", [graph.constant("one", [1], np.int64),
                                      graph.node("Unsqueeze", [n, graph.constant(
                                          "axis0", [0], np.int64)]),
                                      graph.constant("H", [H], np.int64)], axis=0)
        for name in learnt:
            inputs.append(graph.node("Expand", [graph.constant(name, P[name][None, None]),
                                                shape]))
    outputs = graph.node(op, inputs, n_outputs=3 if op == "LSTM" else 2, hidden_size=H,
                         **attributes)
    Y, Y_h = outputs[0], outputs[1]
    if layer.return_sequences:
        # Y is (T, 1, N, H): drop the direction axis, back to batch-major.
        squeezed = graph.node("Squeeze", [Y, graph.constant("axis1", [1], np.int64)])
        return graph.node("Transpose", [squeezed], perm=[1, 0, 2])
    return graph.node("Squeeze", [Y_h, graph.constant("axis0", [0], np.int64)])


def _layer(graph: _Graph, X: str, layer) -> str:
    if isinstance(layer, TimeDistributed):
        return _layer(graph, X, layer.layer)
    if isinstance(layer, Linear):
        return _linear(graph, X, layer)
    if isinstance(layer, (RNN, LSTM, GRU)):
        return _recurrent(graph, X, layer)
    if isinstance(layer, Activation):
        return graph.activation(X, layer.name)
    raise InputError(f"layer {type(layer).__name__} has no ONNX export")


def _estimator_network(estimator):
    """(Sequential on NumPy, output activation, binary) for a fitted gpubackprop estimator."""
    from .sklearn import engine

    if not hasattr(estimator, "coefs_"):
        raise InputError(f"{type(estimator).__name__} is not fitted yet; call fit first")
    network = engine.build_network(estimator.coefs_, estimator.intercepts_,
                                   estimator.activation, "numpy", estimator.coefs_[0].dtype)
    output = engine.OUTPUT_LOSSES[estimator.out_activation_].output_activation
    binary = output == "sigmoid" and estimator.n_outputs_ == 1 and hasattr(estimator,
                                                                            "classes_")
    return network, output, binary


def model_to_onnx(model, path=None, output_activation: str | None = None,
                  dtype: str = "float32"):
    """Export a model as an ONNX graph.

    Parameters
    ----------
    model : Sequential, or a fitted gpubackprop.sklearn estimator
    path : str or Path, optional
        Where to write the ``.onnx`` file; the model proto is returned either way.
    output_activation : {"identity", "softmax", "sigmoid"}, optional
        Applied to the last layer's outputs. A Sequential's default is
        "identity" (the raw outputs); an estimator's follows its
        ``out_activation_``, and a binary classifier's output has the two
        columns of ``predict_proba``.
    dtype : {"float32", "float64"}
        The graph's float type.

    Returns
    -------
    onnx.ModelProto
    """
    onnx = _onnx()
    binary = False
    if not isinstance(model, Sequential):
        if not hasattr(model, "out_activation_") and not hasattr(model, "get_params"):
            raise InputError(f"cannot export {type(model).__name__}: expected a Sequential or "
                             "a gpubackprop.sklearn estimator")
        model, default, binary = _estimator_network(model)
        output_activation = output_activation or default
    output_activation = output_activation or "identity"
    if output_activation not in OUTPUT_ACTIVATIONS:
        raise InputError(f"unknown output activation {output_activation!r}; valid names: "
                         f"{', '.join(OUTPUT_ACTIVATIONS)}")
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise InputError(f"ONNX export dtype must be float32 or float64, got {dtype!r}")
    graph = _Graph(onnx, dtype)
    Y = "X"
    for layer in model.layers:
        Y = _layer(graph, Y, layer)
    if output_activation == "softmax":
        Y = graph.node("Softmax", [Y], axis=-1)
    elif output_activation == "sigmoid":
        Y = graph.node("Sigmoid", [Y])
        if binary:
            # predict_proba's two columns: 1 - p and p.
            Y = graph.node("Concat", [graph.node("Sub", [graph.constant("one", 1.0), Y]), Y],
                           axis=1)
    graph.nodes.append(onnx.helper.make_node("Identity", [Y], ["Y"]))
    element = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    input_shape = ["N", model.n_inputs] if model.input_ndim == 2 else ["N", "T", model.n_inputs]
    recurrent = [layer for layer in model.layers if isinstance(layer, (RNN, LSTM, GRU))]
    per_step = bool(recurrent) and recurrent[-1].return_sequences
    output_shape = ["N", "T", model.n_outputs] if per_step else [
        "N", 2 if binary else model.n_outputs]
    proto = onnx.helper.make_model(
        onnx.helper.make_graph(graph.nodes, "gpubackprop",
                               [onnx.helper.make_tensor_value_info("X", element, input_shape)],
                               [onnx.helper.make_tensor_value_info("Y", element, output_shape)],
                               graph.initializers),
        opset_imports=[onnx.helper.make_opsetid("", OPSET)], producer_name="gpubackprop")
    proto.ir_version = IR_VERSION
    onnx.checker.check_model(proto)
    if path is not None:
        Path(path).write_bytes(proto.SerializeToString())
    return proto
