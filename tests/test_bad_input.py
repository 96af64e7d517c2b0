"""Bad input gets a clear InputError before any arithmetic."""

import numpy as np
import pytest

from gpubackprop.errors import InputError
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
                                         r"the first is at index \(3, 1\)"):
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
    ("optimizer", "lbfgs", "unknown optimizer 'lbfgs'; valid names: sgd, momentum, adam, adamw, rmsprop"),
    ("loss", "hinge", "unknown loss 'hinge'; valid names: mse, cross_entropy"),
])
def test_bad_training_options(option, value, message):
    with pytest.raises(InputError, match=message):
        Trainer(mlp(4, [5], 3, device="cpu"), **{option: value})


def test_unknown_activation_lists_valid_names():
    with pytest.raises(InputError, match="unknown activation 'swish'; valid names: "
                                         "sigmoid, tanh, relu, identity"):
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
