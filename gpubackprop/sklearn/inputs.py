"""Input checks for the estimators: scikit-learn's for host data, ours for device arrays.

NumPy arrays, lists, pandas frames and SciPy sparse matrices go through
scikit-learn's ``validate_data`` exactly as its MLP does. An array that
already lives on the estimator's GPU backend (a CuPy array) is checked there
(shape, dtype, finiteness: one read of a single flag) and never copied to the
host.
"""

from __future__ import annotations

import numpy as np
from sklearn.utils.validation import check_X_y, validate_data


def on_device(X, backend) -> bool:
    """Whether ``X`` is an array of ``backend``'s GPU (then it is used where it is)."""
    return backend.device == "gpu" and isinstance(X, backend.xp.ndarray)


def check_device_features(estimator, X, backend, reset: bool):
    """Check a device array of features as ``validate_data`` checks a host one.

    Sets ``n_features_in_`` when ``reset``, else compares with it; refuses
    anything but a finite 2-D float array. Returns ``X`` itself.
    """
    xp = backend.xp
    if X.ndim != 2:
        raise ValueError(f"Expected a 2D array, got a {X.ndim}D device array instead.")
    if X.shape[0] < 1 or X.shape[1] < 1:
        raise ValueError(f"Found array with shape {X.shape}; a minimum of 1 sample and "
                         "1 feature is required.")
    if X.dtype.kind != "f":
        X = X.astype(np.float64)
    if not bool(xp.isfinite(X).all()):
        raise ValueError("Input X contains NaN or infinity.")
    if reset:
        estimator.n_features_in_ = X.shape[1]
        if hasattr(estimator, "feature_names_in_"):
            del estimator.feature_names_in_
    elif X.shape[1] != estimator.n_features_in_:
        raise ValueError(f"X has {X.shape[1]} features, but {type(estimator).__name__} "
                         f"is expecting {estimator.n_features_in_} features as input.")
    return X


def check_features(estimator, X, reset: bool = False):
    """Features for prediction (reset False) or fitting: a device array stays where it is."""
    backend = estimator._backend()
    if on_device(X, backend):
        return check_device_features(estimator, X, backend, reset)
    return validate_data(estimator, X, accept_sparse=["csr", "csc"],
                         dtype=(np.float64, np.float32), reset=reset)


def host_targets(y, backend):
    """``y`` on the host: labels and targets are small, and scikit-learn reads them there."""
    return backend.to_numpy(y) if on_device(y, backend) else y


def check_training_data(estimator, X, y, reset: bool, y_numeric: bool):
    """(X, y) checked as scikit-learn's MLP checks them; X on the device stays there."""
    backend = estimator._backend()
    if on_device(X, backend):
        X = check_device_features(estimator, X, backend, reset)
        # y alone, as check_X_y checks it against as many rows.
        _, y = check_X_y(np.zeros((X.shape[0], 1)), host_targets(y, backend),
                         multi_output=True, y_numeric=y_numeric)
        return X, y
    return validate_data(estimator, X, host_targets(y, backend), accept_sparse=["csr", "csc"],
                         multi_output=True, y_numeric=y_numeric,
                         dtype=(np.float64, np.float32), reset=reset)
