"""ONNX export: the file runs in onnxruntime and gives our predictions within 1e-5 (float32)."""

import json
import warnings

import numpy as np
import pytest

from extras import require

onnx = require("onnx", "onnx")
ort = require("onnxruntime", "onnx")

from gpubackprop.cli.main import main  # noqa: E402
from gpubackprop.errors import InputError  # noqa: E402
from gpubackprop.nn.layers import Linear, ReLU, Tanh  # noqa: E402
from gpubackprop.nn.model import Sequential, mlp  # noqa: E402
from gpubackprop.nn.gated_recurrent import GRU, LSTM  # noqa: E402
from gpubackprop.nn.recurrent import RNN, TimeDistributed  # noqa: E402
from gpubackprop.onnx import model_to_onnx  # noqa: E402
from gpubackprop.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def run_onnx(proto, X):
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["Y"], {"X": X})[0]


def outputs(model, X):
    return model.backend.to_numpy(model.forward(model.backend.asarray(X), train=False))


def test_every_registry_activation_has_an_export():
    from gpubackprop.nn.activations import NAMES
    from gpubackprop.onnx import ONNX_ACTIVATIONS
    assert set(NAMES) == set(ONNX_ACTIVATIONS)


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh", "identity", "silu"])
def test_mlp_matches_onnxruntime(activation, rng):
    model = mlp(12, [20, 9], 5, activation=activation, device="numpy", seed=3)
    X = rng.normal(size=(33, 12)).astype(np.float32)
    logits = outputs(model, X)
    np.testing.assert_allclose(run_onnx(model_to_onnx(model), X), logits, **TOLERANCE)
    softmax = np.exp(logits - logits.max(1, keepdims=True))
    softmax /= softmax.sum(1, keepdims=True)
    np.testing.assert_allclose(run_onnx(model_to_onnx(model, output_activation="softmax"), X),
                               softmax, **TOLERANCE)


def test_separate_activation_layers_export(rng):
    model = Sequential([Linear(7), Tanh(), Linear(4), ReLU(), Linear(3)], n_inputs=5,
                       device="numpy")
    X = rng.normal(size=(10, 5)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(model_to_onnx(model), X), outputs(model, X),
                               **TOLERANCE)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
@pytest.mark.parametrize("h0", ["zeros", "learn"])
def test_elman_rnn_matches_onnxruntime(activation, h0, rng):
    model = Sequential([RNN(11, activation=activation, h0=h0), Linear(4)], n_inputs=6,
                       device="numpy", seed=1)
    if h0 == "learn":
        model.layers[0].params["h0"][...] = rng.normal(size=11)
    X = rng.normal(size=(8, 7, 6)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(model_to_onnx(model), X), outputs(model, X),
                               **TOLERANCE)


def test_sequence_to_sequence_rnn_matches_onnxruntime(rng):
    model = Sequential([RNN(10, return_sequences=True), TimeDistributed(Linear(3))],
                       n_inputs=4, device="numpy", seed=2)
    X = rng.normal(size=(5, 9, 4)).astype(np.float32)
    got = run_onnx(model_to_onnx(model), X)
    assert got.shape == (5, 9, 3)
    np.testing.assert_allclose(got, outputs(model, X), **TOLERANCE)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("h0", ["zeros", "learn"])
def test_gated_recurrent_models_match_onnxruntime(kind, h0, rng):
    """Stacked gated layers (every state of the first, the last of the second)."""
    layer = {"LSTM": LSTM, "GRU": GRU}[kind]
    model = Sequential([layer(9, return_sequences=True, h0=h0), layer(7), Linear(4)],
                       n_inputs=6, device="numpy", seed=1)
    for recurrent in model.layers[:2]:  # non-zero biases and states: each block must line up
        for name, P in recurrent.params.items():
            if not name.startswith("weight"):
                P[...] = rng.normal(size=P.shape)
    X = rng.normal(size=(8, 5, 6)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(model_to_onnx(model), X), outputs(model, X),
                               **TOLERANCE)


def test_sequence_to_sequence_lstm_matches_onnxruntime(rng):
    model = Sequential([LSTM(10, return_sequences=True), TimeDistributed(Linear(3))],
                       n_inputs=4, device="numpy", seed=2)
    X = rng.normal(size=(5, 9, 4)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(model_to_onnx(model), X), outputs(model, X),
                               **TOLERANCE)


def _fitted(kind, task):
    from sklearn.datasets import make_classification, make_multilabel_classification, \
        make_regression
    if task == "multilabel":
        X, y = make_multilabel_classification(120, 8, n_classes=3, random_state=0)
    elif task == "regression":
        X, y = make_regression(120, 8, n_targets=2, random_state=0)
        y = y / y.std()
    else:
        X, y = make_classification(120, 8, n_informative=5, random_state=0,
                                   n_classes=2 if task == "binary" else 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return kind(hidden_layer_sizes=(16, 8), max_iter=30, random_state=0, dtype="float32",
                    device="numpy").fit(X, y), X.astype(np.float32)


@pytest.mark.parametrize("task", ["multiclass", "binary", "multilabel"])
def test_classifier_probabilities_match_onnxruntime(task, tmp_path):
    model, X = _fitted(MLPClassifier, task)
    model_to_onnx(model, tmp_path / "clf.onnx")
    got = run_onnx(onnx.load(tmp_path / "clf.onnx"), X)
    np.testing.assert_allclose(got, model.predict_proba(X), **TOLERANCE)


def test_regressor_values_match_onnxruntime():
    model, X = _fitted(MLPRegressor, "regression")
    np.testing.assert_allclose(run_onnx(model_to_onnx(model), X), model.predict(X), **TOLERANCE)


def test_unfitted_estimators_and_unknown_outputs_are_refused():
    with pytest.raises(InputError, match="not fitted"):
        model_to_onnx(MLPClassifier())
    with pytest.raises(InputError, match="unknown output activation"):
        model_to_onnx(mlp(3, [4], 2, device="numpy"), output_activation="softmin")


def test_export_command_writes_what_the_checkpoint_predicts(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "iris", "--epochs", "20", "--quiet", "--out", str(run_dir),
                 "--device", "numpy"]) == 0
    assert main(["export", str(run_dir), str(tmp_path / "iris.onnx")]) == 0
    assert "wrote" in capsys.readouterr().out
    from gpubackprop.training.checkpoint import load_checkpoint
    checkpoint = load_checkpoint(run_dir, device="numpy")
    X = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    expected = outputs(checkpoint.model, X)
    loss = checkpoint.extra["config"]["loss"]
    if loss == "cross_entropy":
        expected = np.exp(expected) / np.exp(expected).sum(1, keepdims=True)
    np.testing.assert_allclose(run_onnx(onnx.load(tmp_path / "iris.onnx"), X), expected,
                               **TOLERANCE)
    assert main(["export", str(tmp_path / "missing"), str(tmp_path / "x.onnx")]) == 2
    assert json.loads((run_dir / "history.json").read_text())  # the run wrote its report
