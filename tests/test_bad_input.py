"""Bad input gets a clear InputError before any arithmetic."""

import re

import numpy as np
import pytest

from gpubackprop.errors import InputError
from gpubackprop.nn.activations import NAMES as ACTIVATION_NAMES
from gpubackprop.nn.layers import Linear
from gpubackprop.nn.model import Sequential, mlp
from gpubackprop.training.trainer import Trainer


@pytest.fixture
def trainer():
    return Trainer(mlp(4, [5], 3, device="cpu"), verbose=0)


@pytest.fixture
def data(rng):
    return rng.standard_normal((10, 4)).astype(np.float32), rng.integers(0, 3, 10)


def test_length_mismatch(trainer, data):
    X, y = data
    with pytest.raises(InputError, match="X has 10 samples but y has 9 labels"):
        trainer.fit(X, y[:9])


def test_wrong_feature_count(trainer, data):
    X, y = data
    with pytest.raises(InputError, match="X has 3 features per sample, the model expects 4"):
        trainer.fit(X[:, :3], y)


def test_wrong_ndim(trainer, data):
    X, y = data
    with pytest.raises(InputError, match=r"X must have shape \(N, features\), got shape \(40,\)"):
        trainer.fit(X.ravel(), y)


def test_nan_and_inf_are_counted_with_first_index(trainer, data):
    X, y = data
    X[3, 1] = np.nan
    X[7, 2] = np.inf
    with pytest.raises(InputError, match=r"X contains 2 NaN or infinite values; "
                                         r"the first is nan at row 3, column 1"):
        trainer.fit(X, y)


def test_validation_data_is_checked_too(trainer, data):
    X, y = data
    X_val = X.copy()
    X_val[0, 0] = np.nan
    with pytest.raises(InputError, match="X_val contains 1 NaN"):
        trainer.fit(X, y, validation_data=(X_val, y))


def test_non_integer_labels(trainer, data):
    X, y = data
    with pytest.raises(InputError, match="y must hold integer class labels, got non-integer"):
        trainer.fit(X, y + 0.5)


def test_labels_out_of_range(trainer, data):
    X, y = data
    y[2] = 3
    with pytest.raises(InputError, match=r"labels in \[0, 3\], outside \[0, 3\)"):
        trainer.fit(X, y)
    y[2] = -1
    with pytest.raises(InputError, match=r"outside \[0, 3\)"):
        trainer.fit(X, y)


def test_empty_data(trainer):
    with pytest.raises(InputError, match=r"X is empty \(0 samples\)"):
        trainer.fit(np.zeros((0, 4), np.float32), np.zeros(0, int))


def test_non_numeric_data(trainer):
    with pytest.raises(InputError, match="X must be numeric, got dtype <U1"):
        trainer.fit(np.array([["a"] * 4]), np.array([0]))


@pytest.mark.parametrize("option, value, message", [
    ("lr", 0.0, "learning rate must be a positive number, got 0.0"),
    ("lr", -1.0, "learning rate must be a positive number"),
    ("batch_size", 0, "batch size must be a positive integer, got 0"),
    ("batch_size", -5, "batch size must be a positive integer"),
    ("optimizer", "adagrad", "unknown optimizer 'adagrad'; valid names: sgd, momentum, adam, "
                              "adamw, rmsprop"),
    ("loss", "hinge", "unknown loss 'hinge'; valid names: mse, cross_entropy"),
])
def test_bad_training_options(option, value, message):
    with pytest.raises(InputError, match=message):
        Trainer(mlp(4, [5], 3, device="cpu"), **{option: value})


def test_unknown_activation_lists_valid_names():
    with pytest.raises(InputError, match="unknown activation 'swish'; valid names: "
                                         + ", ".join(ACTIVATION_NAMES)):
        Linear(4, "swish")


def test_bad_epochs(trainer, data):
    with pytest.raises(InputError, match="epochs must be a positive integer"):
        trainer.fit(*data, epochs=0)


def test_bad_dtype_and_device():
    with pytest.raises(InputError, match="unknown dtype 'float16'; valid names: float32, float64"):
        Sequential([Linear(2)], n_inputs=2, dtype="float16")
    with pytest.raises(InputError, match="unknown device 'tpu'; valid names: auto, cpu, gpu, "
                                         "numpy, numba, cupy"):
        Sequential([Linear(2)], n_inputs=2, device="tpu")


# ------------------------------------------------------- causes named correctly
@pytest.mark.parametrize("dtype, value", [("float32", 1e39), ("float32", -3.5e38)])
def test_values_overflowing_the_training_dtype_are_named_not_blamed_on_lr(
        backend_name, dtype, value):
    """1e39 is finite in float64 and infinite in float32: an input problem, not divergence."""
    X = np.random.default_rng(0).standard_normal((10, 4))
    X[6, 3] = value
    trainer = Trainer(mlp(4, [5], 3, device=backend_name, dtype=dtype), verbose=0)
    with pytest.raises(InputError, match=re.escape(
            f"X has 1 values beyond the range of float32 (+-3.403e+38); the first is "
            f"{value:g} at row 6, column 3: rescale the data")):
        trainer.fit(X, np.arange(10) % 3)


def test_the_same_values_train_in_float64(backend_name):
    X = np.random.default_rng(0).standard_normal((10, 4))
    X[6, 3] = 1e39
    trainer = Trainer(mlp(4, [5], 3, device=backend_name, dtype="float64"), verbose=0,
                      clip_norm=1.0)
    trainer.fit(X, np.arange(10) % 3)  # no input error: 1e39 is a float64


def test_overflow_in_regression_targets_and_validation_data_is_named():
    X = np.random.default_rng(0).standard_normal((10, 4))
    targets = np.zeros((10, 3))
    targets[2, 1] = 1e40
    trainer = Trainer(mlp(4, [5], 3, device="numpy"), loss="mse", verbose=0)
    with pytest.raises(InputError, match="y has 1 values beyond the range of float32.*"
                                         "row 2, column 1"):
        trainer.fit(X, targets)
    X_val = X.copy()
    X_val[4, 0] = -1e300
    with pytest.raises(InputError, match="X_val has 1 values beyond .* -1e\\+300 at row 4, "
                                         "column 0"):
        trainer.fit(X, np.zeros((10, 3)), validation_data=(X_val, np.zeros((10, 3))))


def test_nan_in_sequences_names_row_step_and_feature():
    from gpubackprop.nn.recurrent import RNN

    X = np.zeros((3, 5, 2))
    X[1, 4, 0] = -np.inf
    trainer = Trainer(Sequential([RNN(4), Linear(2)], n_inputs=2, device="numpy"), verbose=0)
    with pytest.raises(InputError, match="the first is -inf at row 1, step 4, feature 0"):
        trainer.fit(X, np.array([0, 1, 0]))


def test_masked_arrays_are_refused_when_something_is_masked(trainer, data):
    X, y = data
    masked = np.ma.masked_array(X, mask=np.zeros_like(X, dtype=bool))
    masked[2, 1] = np.ma.masked
    with pytest.raises(InputError, match="X is a masked array with 1 masked values"):
        trainer.fit(masked, y)
    labels = np.ma.masked_array(y, mask=y == 2)
    with pytest.raises(InputError, match=f"y is a masked array with {int((y == 2).sum())} "
                                         f"masked values"):
        trainer.fit(X, labels)
    with pytest.raises(InputError, match="X_val is a masked array"):
        trainer.fit(X, y, validation_data=(masked, y))


def test_masked_arrays_without_masked_entries_are_honoured(data):
    X, y = data
    plain = Trainer(mlp(4, [5], 3, device="numpy", seed=1), verbose=0, seed=2).fit(X, y)
    masked = Trainer(mlp(4, [5], 3, device="numpy", seed=1), verbose=0, seed=2).fit(
        np.ma.masked_array(X), np.ma.masked_array(y, mask=np.zeros(10, bool)))
    assert masked.loss == plain.loss


@pytest.mark.parametrize("make, match", [
    (lambda X: np.array(X.tolist()[:9] + [[1, 2, "x", 4]], dtype=object),
     r"X must be numeric, got dtype object; the first non-number is 'x' at row 9, column 2"),
    (lambda X: np.array([[None] * 4] * 10), "the first non-number is None at row 0, column 0"),
    (lambda X: X.astype(object), "got dtype object; convert it to an array of numbers"),
    (lambda X: None, "X must be numeric, got dtype object; the first non-number is None$"),
    (lambda X: X.astype(str), "X must be numeric, got dtype <U"),
    (lambda X: X.astype(complex), "X must be numeric, got dtype complex128"),
    (lambda X: X.astype("datetime64[s]"), "X must be numeric, got dtype datetime64"),
    (lambda X: [[1.0, 2.0, 3.0, 4.0]] * 9 + [[1.0, 2.0]],
     r"X is not a rectangular numeric array: rows of different lengths \(a ragged list\)"),
    (lambda X: [[1.0, 2.0, 3.0, [4.0]]] * 10, "X is not a rectangular numeric array"),
])
def test_non_numeric_features_are_refused_with_the_reason(trainer, data, make, match):
    X, y = data
    with pytest.raises(InputError, match=match) as info:
        trainer.fit(make(X), y)
    assert "\n" not in str(info.value)


def test_boolean_features_are_read_as_zero_and_one(data):
    X, y = data
    flags = X > 0
    as_bool = Trainer(mlp(4, [5], 3, device="numpy", seed=1), verbose=0, seed=2).fit(flags, y)
    as_float = Trainer(mlp(4, [5], 3, device="numpy", seed=1), verbose=0, seed=2).fit(
        flags.astype(np.float32), y)
    assert as_bool.loss == as_float.loss


def test_ragged_labels_are_refused(trainer, data):
    X, _ = data
    with pytest.raises(InputError, match="y is not a rectangular numeric array"):
        trainer.fit(X, [[0, 1]] * 9 + [[0]])


def test_dataframes_name_their_non_numeric_column(data):
    pd = pytest.importorskip("pandas")
    X, y = data
    trainer = Trainer(mlp(4, [5], 3, device="numpy"), verbose=0)
    frame = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    trainer.fit(frame, pd.Series(y))  # all numeric: taken as the array it holds
    for column, values, kind in [("c", ["x"] * 10, ""), ("b", pd.Categorical(y), "category"),
                                 ("d", pd.to_datetime(np.arange(10), unit="D"), "datetime")]:
        bad = frame.copy()
        bad[column] = values
        with pytest.raises(InputError, match=f"X column '{column}' has dtype {kind}.*every "
                                             f"column must be numeric"):
            trainer.fit(bad, y)
    nullable = frame.copy()
    nullable["b"] = pd.array([1, None] * 5, dtype="Int64")
    with pytest.raises(InputError, match="the first non-number is <NA> at row 1, column 1"):
        trainer.fit(nullable, y)


# -------------------------------------------------- backward without forward
def test_second_backward_without_forward_is_a_clear_error(backend_name):
    from gpubackprop.errors import StateError
    from gpubackprop.nn.layers import ReLU
    from gpubackprop.nn.recurrent import RNN, TimeDistributed

    X = np.random.default_rng(0).standard_normal((4, 3, 2))
    models = [
        Sequential([Linear(5), ReLU(), Linear(2)], n_inputs=2, device=backend_name,
                   input_grad=True),
        Sequential([RNN(4, return_sequences=True), TimeDistributed(Linear(2))], n_inputs=2,
                   device=backend_name),
        Sequential([RNN(4), Linear(2)], n_inputs=2, device=backend_name),
    ]
    inputs = [X[:, 0], X, X]
    for model, batch in zip(models, inputs):
        batch = model.backend.asarray(batch, dtype=model.dtype)
        Y = model.forward(batch)
        model.backward(Y)
        with pytest.raises(StateError, match=r"\.backward called without a training-mode "
                                             r"forward pass"):
            model.backward(Y)
        model.forward(batch, train=False)
        with pytest.raises(StateError):
            model.backward(Y)
        model.forward(batch)
        model.backward(Y)  # a new forward allows one backward again
