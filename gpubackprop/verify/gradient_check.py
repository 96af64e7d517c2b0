"""Numerical gradients by central differences, and checks of backward passes.

The numerical gradient of a scalar function ``f`` with respect to one array
is taken element by element with the fourth-order central difference

    f'(x) ~ (f(x - 2h) - 8 f(x - h) + 8 f(x + h) - f(x + 2h)) / (12 h),

in float64, whose truncation error (order h**4) is far below the rounding
error at h = 1e-4, so analytic and numerical gradients agree to ~1e-10.
Relative errors are ``|a - n| / max(|a|, |n|, floor)``: gradients smaller
than ``floor`` are compared at that scale, where rounding dominates.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import InputError

DEFAULT_STEP = 1e-4
DEFAULT_FLOOR = 1e-5


def numerical_gradient(f: Callable[[], float], X, step: float = DEFAULT_STEP) -> np.ndarray:
    """Gradient of ``f()`` with respect to the array ``X``, perturbed in place.

    Parameters
    ----------
    f : callable
        Takes no arguments and returns the scalar loss computed from ``X``
        (and whatever else it closes over).
    X : array (NumPy or CuPy), float64, any shape
        Perturbed element by element and restored exactly afterwards.

    Returns
    -------
    ndarray, shape of ``X``, float64, on the host
    """
    if X.dtype != np.float64:
        raise InputError(f"numerical gradients need float64 arrays, got {X.dtype}")
    grad = np.zeros(X.shape, dtype=np.float64)
    for index in np.ndindex(*X.shape):
        original = float(X[index])
        values = []
        for offset in (-2, -1, 1, 2):
            X[index] = original + offset * step
            values.append(float(f()))
        X[index] = original
        f_m2, f_m1, f_p1, f_p2 = values
        grad[index] = (f_m2 - 8.0 * f_m1 + 8.0 * f_p1 - f_p2) / (12.0 * step)
    return grad


def relative_error(analytic: np.ndarray, numerical: np.ndarray,
                   floor: float = DEFAULT_FLOOR) -> np.ndarray:
    """Elementwise ``|a - n| / max(|a|, |n|, floor)``."""
    scale = np.maximum(np.maximum(np.abs(analytic), np.abs(numerical)), floor)
    return np.abs(analytic - numerical) / scale


def compare_gradients(analytic: dict, numerical: dict, rtol: float = 1e-6,
                      floor: float = DEFAULT_FLOOR) -> dict:
    """Compare gradients by name; raise AssertionError naming the worst element.

    Parameters
    ----------
    analytic, numerical : dict of str to ndarray
        Gradients of the same scalar with respect to the same named arrays.

    Returns
    -------
    dict of str to float
        The largest relative error of each named array.
    """
    errors = {}
    for name, a in analytic.items():
        a = np.asarray(a, dtype=np.float64)
        n = numerical[name]
        if a.shape != n.shape:
            raise AssertionError(f"gradient of {name!r} has shape {a.shape}, "
                                 f"expected {n.shape}")
        err = relative_error(a, n, floor)
        worst = np.unravel_index(int(np.argmax(err)), err.shape) if err.size else ()
        errors[name] = float(err[worst]) if err.size else 0.0
        if errors[name] > rtol:
            raise AssertionError(
                f"gradient check failed for {name!r}: max relative error {errors[name]:.3e} > "
                f"{rtol:g} at index {tuple(int(i) for i in worst)}: analytic {a[worst]:.10g}, "
                f"numerical {n[worst]:.10g}")
    return errors


def check_backward(forward: Callable[[], float], arrays: dict, analytic: dict,
                   rtol: float = 1e-6, step: float = DEFAULT_STEP,
                   floor: float = DEFAULT_FLOOR) -> dict:
    """Check analytic gradients of ``forward()`` against central differences.

    Parameters
    ----------
    forward : callable
        Returns the scalar loss from the current contents of ``arrays``.
    arrays : dict of str to array
        The float64 arrays (inputs, parameters) to differentiate with respect to.
    analytic : dict of str to array
        The backward pass's gradients, same names and shapes.

    Returns
    -------
    dict of str to float
        The largest relative error per name.

    Raises
    ------
    AssertionError
        Naming the parameter and its worst element when an error exceeds ``rtol``.
    """
    host = {name: np.array(_host(g), dtype=np.float64) for name, g in analytic.items()}
    numerical = {name: numerical_gradient(forward, arrays[name], step) for name in host}
    return compare_gradients(host, numerical, rtol, floor)


def check_layer(layer, X, rtol: float = 1e-6, seed: int = 0) -> dict:
    """Gradient check of one built layer on input ``X`` (N, D), float64.

    The scalar is ``sum(forward(X) * R)`` for a fixed random ``R``, so that
    every output element contributes with its own weight.
    """
    backend = layer.backend
    Y = layer.forward(X)
    R = backend.asarray(np.random.default_rng(seed).standard_normal(Y.shape))
    layer.needs_input_grad = True
    dX = layer.backward(R.copy())
    analytic = {"X": dX, **{name: g.copy() for name, g in layer.grads.items()}}
    arrays = {"X": X, **layer.params}

    def forward() -> float:
        return float((layer.forward(X, train=False) * R).sum())

    return check_backward(forward, arrays, analytic, rtol)


def check_loss(loss, backend, Y, T, rtol: float = 1e-6) -> dict:
    """Gradient check of a loss with respect to the model outputs ``Y`` (N, K)."""
    _, dY = loss(backend, Y.copy(), T)

    def forward() -> float:
        return float(loss(backend, Y.copy(), T)[0])

    return check_backward(forward, {"Y": Y}, {"Y": dY}, rtol)


def check_model(model, loss, X, T, rtol: float = 1e-6) -> dict:
    """Gradient check of a whole model: every parameter and the input ``X``.

    Parameters
    ----------
    model : Sequential, float64
    loss : Loss
    X : array, shape (N, n_inputs), float64, on the model's backend
    T : array, shape (N, n_outputs), targets on the model's backend
    """
    backend = model.backend
    model.input_grad = True
    try:
        Y = model.forward(X)
        _, dY = loss(backend, Y, T)
        dX = model.backward(dY)
    finally:
        model.input_grad = False
    analytic = {"X": dX, **{name: g.copy() for name, g in model.gradients().items()}}
    arrays = {"X": X, **model.parameters()}

    def forward() -> float:
        return float(loss(backend, model.forward(X, train=False), T)[0])

    return check_backward(forward, arrays, analytic, rtol)


def _host(array) -> np.ndarray:
    return array.get() if hasattr(array, "get") and not isinstance(array, np.ndarray) else array
