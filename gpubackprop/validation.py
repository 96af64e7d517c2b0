"""Checks on user input, run before any arithmetic.

Each function raises :class:`~gpubackprop.errors.InputError` with a message
that names the argument and what was wrong with it.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from .errors import InputError


#: Seeds are integers in [0, MAX_SEED]: what every generator used here accepts
#: (scikit-learn's ``random_state`` stops at 2**32 - 1).
MAX_SEED = 2**32 - 1
#: The largest integer option (epochs, widths, batch size, ...): 2**31 - 1, so a
#: count fits every index type a kernel or a library takes.
MAX_INT = 2**31 - 1
#: Training dtypes, canonical names.
DTYPES = ("float32", "float64")
#: Other names accepted for them. "float" is not one: NumPy reads it as float64,
#: PyTorch as float32.
DTYPE_ALIASES = {"single": "float32", "f4": "float32", "fp32": "float32",
                 "double": "float64", "f8": "float64", "fp64": "float64"}


def check_choice(value: str, valid: Iterable[str], what: str) -> str:
    """Return ``value`` lower-cased if it is one of ``valid``, else raise."""
    valid = list(valid)
    key = str(value).lower()
    if key not in valid:
        raise InputError(f"unknown {what} {value!r}; valid names: {', '.join(valid)}")
    return key


def check_positive(value, what: str, integer: bool = False):
    """``value`` if it is a finite number > 0 (an int up to :data:`MAX_INT` if
    ``integer``), else raise; strings and booleans are refused, not converted."""
    if integer:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise InputError(f"{what} must be a positive integer, got {value!r}")
        if value > MAX_INT:
            raise InputError(f"{what} must be at most {MAX_INT}, got {value!r}")
        return int(value)
    if isinstance(value, (bool, str, bytes)) or not isinstance(value, (int, float, np.number)):
        raise InputError(f"{what} must be a positive number, got {value!r}")
    number = float(value)
    if not np.isfinite(number) or number <= 0:
        raise InputError(f"{what} must be a positive number, got {value!r}")
    return number


def check_number(value, what: str) -> float:
    """``value`` as a float if it is a finite number, else raise; strings and booleans
    are refused, not converted."""
    if isinstance(value, (bool, str, bytes)) or not isinstance(value, (int, float, np.number)):
        raise InputError(f"{what} must be a number, got {value!r}")
    number = float(value)
    if not np.isfinite(number):
        raise InputError(f"{what} must be a finite number, got {value!r}")
    return number


def check_non_negative(value, what: str) -> float:
    """``value`` as a float if it is a finite number >= 0, else raise."""
    number = check_number(value, what)
    if number < 0:
        raise InputError(f"{what} must be a non-negative number, got {value!r}")
    return number


def check_int(value, what: str, minimum: int = 1, maximum: int = MAX_INT) -> int:
    """Return ``value`` as an int if it is an integer in [minimum, maximum], else raise.

    Booleans, floats (even 3.0), strings and None are refused: a count is an int.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{what} must be an integer from {minimum} to {maximum}, "
                         f"got {value!r} ({type(value).__name__})")
    if not minimum <= value <= maximum:
        raise InputError(f"{what} must be an integer from {minimum} to {maximum}, "
                         f"got {value!r}")
    return int(value)


def check_seed(seed, what: str = "seed") -> int:
    """Return ``seed`` as an int in [0, :data:`MAX_SEED`], else raise."""
    return check_int(seed, what, minimum=0, maximum=MAX_SEED)


def check_dtype(dtype, what: str = "dtype") -> str:
    """The canonical name ("float32" or "float64") of a training dtype, else raise.

    Takes those names (any case), the aliases in :data:`DTYPE_ALIASES`, and
    NumPy dtypes or scalar types of those two.
    """
    if isinstance(dtype, str):
        key = dtype.strip().lower()
        key = DTYPE_ALIASES.get(key, key)
        if key in DTYPES:
            return key
        hint = " ('float' is ambiguous: NumPy reads it as float64, PyTorch as float32)" \
            if key == "float" else ""
        raise InputError(f"unknown {what} {dtype!r}; valid names: {', '.join(DTYPES)}{hint}")
    try:
        name = np.dtype(dtype).name
    except (TypeError, ValueError):
        name = None
    if dtype is None or name not in DTYPES:
        raise InputError(f"unknown {what} {dtype!r}; valid names: {', '.join(DTYPES)}")
    return name


def check_scalar_fits(value: float, dtype, what: str) -> float:
    """Raise unless ``value`` stays finite and non-zero once cast to ``dtype``.

    A learning rate of 1e-50 is 0 in float32, and 1e39 is infinite.
    """
    with np.errstate(over="ignore", under="ignore"):
        cast = np.asarray(value, dtype=np.float64).astype(dtype)
    if not np.isfinite(cast) or (value != 0 and cast == 0):
        limits = np.finfo(dtype)
        raise InputError(f"{what} {value!r} is {float(cast)} in {np.dtype(dtype).name}; "
                         f"use a value between {limits.tiny:.3g} and {limits.max:.3g}")
    return value


def check_features(X, name: str = "X", n_features: int | None = None,
                   ndim: int = 2, dtype=None) -> np.ndarray:
    """Validate a feature array without copying it more than necessary.

    Booleans are read as 0 and 1. Refused, each with one line that says why:
    masked arrays with masked entries (a mask without any is dropped), object
    arrays (naming the first element that is not a number), strings, complex
    numbers, ragged nested lists, DataFrames with non-numeric columns (named),
    NaN and infinities (the first one's row and column), and finite values
    beyond the range of the training ``dtype`` (the first one, with its row,
    column and value).

    Parameters
    ----------
    X : array_like, shape (N, D) (or (N, T, D) when ``ndim == 3``)
        Samples in rows.
    n_features : int, optional
        The required size of the last axis.
    ndim : int
        Required number of dimensions.
    dtype : dtype, optional
        The dtype training will cast ``X`` to.

    Returns
    -------
    ndarray
        ``X`` as a host or device array, numeric.
    """
    array = as_array(X, name)
    if array.dtype.kind not in "fiub":
        raise InputError(f"{name} must be numeric, got dtype {array.dtype}"
                         f"{_first_non_number(array)}")
    if array.ndim != ndim:
        shape = "(N, features)" if ndim == 2 else "(N, time steps, features)"
        raise InputError(f"{name} must have shape {shape}, got shape {tuple(array.shape)}")
    if array.shape[0] == 0:
        raise InputError(f"{name} is empty (0 samples)")
    if n_features is not None and array.shape[-1] != n_features:
        raise InputError(f"{name} has {array.shape[-1]} features per sample, "
                         f"the model expects {n_features}")
    if array.dtype.kind == "f":
        finite = _isfinite(array)
        if not bool(finite.all()):
            bad = np.argwhere(_to_host(~finite))
            value = _to_host(array[tuple(bad[0])])
            raise InputError(f"{name} contains {len(bad)} NaN or infinite values; the first "
                             f"is {value} at {_position(bad[0])}")
        if dtype is not None and array.dtype.itemsize > np.dtype(dtype).itemsize:
            _check_range(array, name, np.dtype(dtype))
    return array


def as_array(X, name: str):
    """``X`` as a host or device array, refusing what NumPy would convert wrongly.

    Masked entries, non-numeric DataFrame columns and ragged lists are
    InputErrors naming ``name``; a mask with nothing masked is dropped.
    """
    if hasattr(X, "__cuda_array_interface__"):
        return X
    columns = getattr(X, "columns", None)
    dtypes = getattr(X, "dtypes", None)
    if columns is not None and dtypes is not None and hasattr(dtypes, "items"):
        # A DataFrame: name the first column that is not numbers.
        for column, kind in dtypes.items():
            if getattr(kind, "kind", "O") not in "fiub":
                raise InputError(f"{name} column {column!r} has dtype {kind}; every column "
                                 f"must be numeric (encode categories and text as numbers "
                                 f"first)")
    if isinstance(X, np.ma.MaskedArray):
        masked = int(np.ma.count_masked(X))
        if masked:
            raise InputError(f"{name} is a masked array with {masked} masked values; "
                             f"gpubackprop does not skip masked entries: fill them "
                             f"(.filled(value)) or drop those rows first")
        X = X.data
    try:
        return np.asarray(X)
    except (TypeError, ValueError) as exc:
        ragged = "inhomogeneous" in str(exc) or "sequence" in str(exc)
        problem = "rows of different lengths (a ragged list)" if ragged else str(exc)
        raise InputError(f"{name} is not a rectangular numeric array: {problem}") from None


def _first_non_number(array) -> str:
    """", the first non-number is 'a' at row 0, column 2" for object arrays, else ""."""
    if array.dtype.kind != "O":
        return ""
    for index, value in np.ndenumerate(array):
        if isinstance(value, (bool, np.bool_)) or not isinstance(
                value, (int, float, np.integer, np.floating)):
            where = f" at {_position(index)}" if index else ""
            return f"; the first non-number is {value!r}{where}"
    return "; convert it to an array of numbers first"


def _check_range(array, name: str, dtype: np.dtype) -> None:
    """Raise if a finite value of ``array`` overflows ``dtype`` (e.g. 1e39 in float32)."""
    limit = np.finfo(dtype).max
    too_big = abs(array) > limit
    if bool(too_big.any()):
        bad = np.argwhere(_to_host(too_big))
        value = float(_to_host(array[tuple(bad[0])]))
        raise InputError(f"{name} has {len(bad)} values beyond the range of {dtype.name} "
                         f"(+-{limit:.4g}); the first is {value:g} at {_position(bad[0])}: "
                         f"rescale the data (it would become infinite in training)")


def _position(index) -> str:
    """"row 3, column 1" (or "row 3, step 2, feature 1" for sequences)."""
    index = [int(i) for i in index]
    names = {1: ["row"], 2: ["row", "column"], 3: ["row", "step", "feature"]}.get(
        len(index), [f"axis {axis}" for axis in range(len(index))])
    return ", ".join(f"{label} {i}" for label, i in zip(names, index))


def check_labels(y, n_samples: int, n_classes: int | None = None,
                 name: str = "y") -> np.ndarray:
    """Validate integer class labels of shape (N,) in [0, n_classes)."""
    labels = as_array(y, name)
    if labels.ndim != 1:
        raise InputError(f"{name} must be a 1-D array of class labels, "
                         f"got shape {tuple(labels.shape)}")
    if labels.shape[0] != n_samples:
        raise InputError(f"X has {n_samples} samples but {name} has {labels.shape[0]} labels")
    if labels.dtype.kind == "f":
        host = _to_host(labels)
        if not np.all(np.isfinite(host)) or not np.all(host == np.round(host)):
            raise InputError(f"{name} must hold integer class labels, got non-integer values "
                             f"(dtype {labels.dtype})")
    elif labels.dtype.kind not in "iu":
        raise InputError(f"{name} must hold integer class labels, got dtype {labels.dtype}")
    if n_classes is not None and n_samples:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= n_classes:
            raise InputError(f"{name} has labels in [{low}, {high}], outside [0, {n_classes}) "
                             f"for a model with {n_classes} outputs")
    return labels


def check_targets(T, n_samples: int, n_outputs: int, name: str = "y",
                  dtype=None) -> np.ndarray:
    """Validate real-valued regression targets of shape (N, n_outputs)."""
    targets = as_array(T, name)
    if targets.ndim != 2 or targets.shape[1] != n_outputs:
        raise InputError(f"{name} must have shape (N, {n_outputs}) to match the model's "
                         f"outputs, got shape {tuple(targets.shape)}")
    targets = check_features(targets, name=name, dtype=dtype)
    if targets.shape[0] != n_samples:
        raise InputError(f"X has {n_samples} samples but {name} has {targets.shape[0]} rows")
    return targets


def check_mask(mask, shape: tuple, name: str = "mask") -> tuple[np.ndarray, int]:
    """Validate a mask of time steps: bool or 0/1 numbers of exactly ``shape`` (N, T).

    Returns
    -------
    mask : ndarray or device array, bool, shape ``shape``
    count : int
        How many steps it selects (at least one).
    """
    array = as_array(mask, name)
    if tuple(array.shape) != tuple(shape):
        raise InputError(f"{name} must have shape {tuple(shape)} (samples, time steps), "
                         f"got shape {tuple(array.shape)}")
    if array.dtype.kind not in "biuf":
        raise InputError(f"{name} must be bool or 0/1 numbers, got dtype {array.dtype}")
    if array.dtype.kind != "b":
        host = _to_host(array)
        bad = np.argwhere((host != 0) & (host != 1))
        if bad.size:
            raise InputError(f"{name} must hold only 0 and 1 (or bool); found "
                             f"{host[tuple(bad[0])].item()!r} at {_position(bad[0])}")
        array = array != 0
    count = int(array.sum())
    if count == 0:
        raise InputError(f"{name} selects no time step (all zero)")
    return array, count


def _isfinite(array):
    xp = _array_module(array)
    return xp.isfinite(array)


def _array_module(array):
    if hasattr(array, "__cuda_array_interface__"):
        import cupy
        return cupy
    return np


def _to_host(array) -> np.ndarray:
    return array.get() if hasattr(array, "__cuda_array_interface__") else np.asarray(array)
