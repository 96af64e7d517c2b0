"""Fused CPU loops compiled by Numba: one pass over memory where NumPy makes several.

Each function here is the CPU counterpart of a kernel in ``kernels/*.cu``:
the same arithmetic, one element (or one row) per loop iteration, compiled
once per dtype by Numba and cached on disk. Scalars arrive already cast to
the arrays' dtype, so float32 arrays are computed in float32 throughout.

Compiler flags: only ``contract``, which lets LLVM fuse multiply-adds. NaN and
infinity semantics are kept (no ``nnan``/``ninf``), so a diverging model
still shows a NaN loss exactly as on the reference backend.
Importing this module imports Numba; :mod:`gpubackprop.backends` does so only
when the fused CPU backend is first asked for.

Numba's disk cache is keyed on each file's own source: the activation codes
read from :mod:`gpubackprop.nn.activations` and the functions here that
:mod:`.parallel` inlines are frozen into the cached binaries. After editing the
registry or this file in a source checkout, delete ``__pycache__/*.nb[ci]``
in this folder (an installed release changes every file together).
"""

from __future__ import annotations

import numba
import numpy as np

from ...nn.activations import ACTIVATIONS, CODES
from ...nn.optim import LR, STEP, UPDATE_RULES, WEIGHT_DECAY

FASTMATH = {"contract"}
#: Numba options of every compiled loop here and in :mod:`.parallel`.
JIT_OPTIONS = dict(fastmath=FASTMATH, cache=True, nogil=True, error_model="numpy",
                   boundscheck=False)
jit = numba.njit(**JIT_OPTIONS)


#: Activation codes of :func:`activate` and :func:`derivative`: the registry's numbering.
ACTIVATION_CODES = CODES
IDENTITY, RELU, SIGMOID, TANH, SILU = (CODES[name] for name in
                                       ("identity", "relu", "sigmoid", "tanh", "silu"))
#: By code: whether :func:`derivative` takes the input ``z`` rather than the output.
NEEDS_INPUT = np.array([ACTIVATIONS[name].needs_input for name in
                        sorted(CODES, key=CODES.get)], dtype=np.bool_)
#: Codes whose :func:`activate` (forward) or :func:`derivative` calls ``exp`` or ``tanh``:
#: one libm call per element here, where NumPy runs SIMD loops (2-4x faster), so the
#: layer-by-layer backend leaves these to NumPy; the whole-step path of :mod:`.parallel`,
#: which saves whole passes over memory, fuses every code.
LIBM_FORWARD = frozenset({SIGMOID, TANH, SILU})
LIBM_DERIVATIVE = frozenset({SILU})


@jit
def sigmoid(z, one):
    """``1 / (1 + e^-z)`` for z >= 0, ``e^z / (1 + e^z)`` below: exact in both tails.

    Neither branch's ``exp`` can overflow. NaN takes the second branch and stays NaN.
    """
    if z >= 0:
        return one / (one + np.exp(-z))
    e = np.exp(z)
    return e / (one + e)


@jit
def activate(z, code, zero, one):
    """``f(z)`` for an activation code, in the dtype of ``zero`` and ``one``."""
    if code == RELU:
        # NaN passes through (it is not below zero).
        return zero if z < zero else z
    if code == SIGMOID:
        return sigmoid(z, one)
    if code == TANH:
        return np.tanh(z)
    if code == SILU:
        return z * sigmoid(z, one)
    return z


@jit
def derivative(s, code, zero, one):
    """``f'(z)`` from the saved value ``s``: the output ``y = f(z)``, or for
    activations whose registry entry ``needs_input``, the input ``z`` itself."""
    if code == RELU:
        return one if s > zero else zero
    if code == SIGMOID:
        return s * (one - s)
    if code == TANH:
        return one - s * s
    if code == SILU:
        g = sigmoid(s, one)
        return g * (one + s * (one - g))
    return one


# ------------------------------------------------------------------ forward
@jit
def bias_activation(Z, b, Y, code):
    """``Z += b``; ``Y = f(Z)`` in one pass; Z, Y (N, D), b (D,); ``Y`` may be ``Z``."""
    n, d = Z.shape
    zero, one = Z.dtype.type(0), Z.dtype.type(1)
    for i in range(n):
        for j in range(d):
            z = Z[i, j] + b[j]
            Z[i, j] = z
            Y[i, j] = activate(z, code, zero, one)


# ----------------------------------------------------------------- backward
@jit
def activation_backward(dY, S, dZ, code):
    """``dZ = dY * f'`` from the saved ``S`` (:func:`derivative`); all (N, D).

    ``dZ`` may be ``dY``.
    """
    n, d = dY.shape
    zero, one = S.dtype.type(0), S.dtype.type(1)
    for i in range(n):
        for j in range(d):
            dZ[i, j] = dY[i, j] * derivative(S[i, j], code, zero, one)


# -------------------------------------------------------------------- losses
@jit
def softmax_cross_entropy(Z, T, dZ):
    """Mean cross-entropy of ``softmax(Z)`` against ``T`` and its gradient, per row.

    Parameters
    ----------
    Z, T, dZ : arrays, shape (N, C)
        Logits, target distributions, and where ``(softmax(Z) - T) / N`` goes.

    Returns
    -------
    float
        ``-sum(T * log_softmax(Z)) / N``, accumulated in float64.
    """
    n = Z.shape[0]
    return softmax_cross_entropy_rows(Z, T, dZ, 0, n, Z.dtype.type(1.0 / n)) / n


@jit
def softmax_cross_entropy_rows(Z, T, dZ, lo, hi, inv_n):
    """Rows ``lo:hi`` of :func:`softmax_cross_entropy` for a batch of ``1 / inv_n`` rows.

    Parameters
    ----------
    Z, T, dZ : arrays, shape (N, C)
    lo, hi : int
        The rows to compute.
    inv_n : scalar of Z's dtype
        One over the whole batch's row count, the gradient's scale.

    Returns
    -------
    float
        ``-sum(T * log_softmax(Z))`` over those rows, unscaled, in float64.
    """
    c = Z.shape[1]
    total = 0.0
    for i in range(lo, hi):
        # Row maximum, so exp never sees a large argument.
        top = Z[i, 0]
        for k in range(1, c):
            top = max(top, Z[i, k])
        row_sum = Z.dtype.type(0)
        for k in range(c):
            e = np.exp(Z[i, k] - top)
            dZ[i, k] = e
            row_sum += e
        log_sum = np.log(row_sum)
        scale = inv_n / row_sum
        for k in range(c):
            # log_softmax = Z - max - log(sum exp); dZ = (p - t) / N.
            total -= T[i, k] * ((Z[i, k] - top) - log_sum)
            dZ[i, k] = dZ[i, k] * scale - T[i, k] * inv_n
    return total


# ---------------------------------------------------------------- optimizers
# Each step kernel reads the optimizer's step state (float64; layout and
# indices from gpubackprop.nn.optim, constants when Numba compiles) and casts
# what it needs to the weights' dtype. W, dW and the slots are flat (P,) views.
#: The update rules with a loop here (``<name>_step``, dispatched by :func:`optimizer_step`).
FUSED_RULES = ("sgd", "momentum", "adam", "rmsprop")
SGD, MOMENTUM, ADAM, RMSPROP = (UPDATE_RULES[name].code for name in FUSED_RULES)
_MOMENTUM, _ADAM, _RMSPROP = (UPDATE_RULES[name].index for name in ("momentum", "adam",
                                                                     "rmsprop"))
MU, NESTEROV, HEAVY_BALL = _MOMENTUM("momentum"), _MOMENTUM("nesterov"), _MOMENTUM("convention")
(BETA1, BETA2, ADAM_EPS, UNSCALED_EPS, DECOUPLED, ONE_MINUS_BETA1, ONE_MINUS_BETA2, SHRINK,
 STEP_SIZE, EPS_HAT) = (_ADAM(name) for name in (
    "beta1", "beta2", "eps", "convention", "decoupled", "one_minus_beta1", "one_minus_beta2",
    "shrink", "step_size", "eps_hat"))
ALPHA, RMS_EPS, RMS_MU, CENTERED, ONE_MINUS_ALPHA = (_RMSPROP(name) for name in (
    "alpha", "eps", "momentum", "centered", "one_minus_alpha"))


@jit
def advance(code, state):
    """Start a step: ``step += 1`` and the rule's derived values.

    The formulas of :meth:`~..base.Backend._derive_adam` and ``_derive_rmsprop``.
    """
    state[STEP] += 1.0
    if code == RMSPROP:
        state[ONE_MINUS_ALPHA] = 1.0 - state[ALPHA]
    elif code == ADAM:
        t = state[STEP]
        state[ONE_MINUS_BETA1] = 1.0 - state[BETA1]
        state[ONE_MINUS_BETA2] = 1.0 - state[BETA2]
        if state[DECOUPLED] != 0:
            state[SHRINK] = 1.0 - state[LR] * state[WEIGHT_DECAY]
        else:
            state[SHRINK] = 1.0
        correction2 = np.sqrt(1.0 - state[BETA2] ** t)
        state[STEP_SIZE] = state[LR] * correction2 / (1.0 - state[BETA1] ** t)
        if state[UNSCALED_EPS] != 0:
            state[EPS_HAT] = state[ADAM_EPS]
        else:
            state[EPS_HAT] = state[ADAM_EPS] * correction2


@jit
def optimizer_step(code, W, dW, S1, S2, S3, state):
    """The update of rule ``code`` (one of :data:`FUSED_RULES`) with slots ``S1..S3``.

    Slots a rule does not use may be any array of the right dtype (placeholders).
    """
    if code == SGD:
        sgd_step(W, dW, state)
    elif code == MOMENTUM:
        momentum_step(W, dW, S1, state)
    elif code == ADAM:
        adam_step(W, dW, S1, S2, state)
    elif code == RMSPROP:
        rmsprop_step(W, dW, S1, S2, S3, state)


@jit
def sgd_step(W, dW, state):
    """``W -= lr (dW + weight_decay W)``."""
    t = W.dtype.type
    lr, wd = t(state[LR]), t(state[WEIGHT_DECAY])
    for i in range(W.size):
        W[i] -= lr * (dW[i] + wd * W[i])


@jit
def momentum_step(W, dW, V, state):
    """Momentum, PyTorch's or the heavy ball; see :meth:`~..base.Backend.momentum_update`."""
    t = W.dtype.type
    lr, wd, mu = t(state[LR]), t(state[WEIGHT_DECAY]), t(state[MU])
    nesterov, heavy_ball = state[NESTEROV] != 0, state[HEAVY_BALL] != 0
    for i in range(W.size):
        g = dW[i] + wd * W[i]
        if heavy_ball:
            v = mu * V[i] - lr * g
            V[i] = v
            W[i] += mu * v - lr * g if nesterov else v
        else:
            b = mu * V[i] + g
            V[i] = b
            W[i] -= lr * (g + mu * b) if nesterov else lr * b


@jit
def adam_step(W, dW, M, V, state):
    """One Adam or AdamW step; see :meth:`~..base.Backend.adam_update`."""
    t = W.dtype.type
    beta1, beta2 = t(state[BETA1]), t(state[BETA2])
    one_minus_beta1, one_minus_beta2 = t(state[ONE_MINUS_BETA1]), t(state[ONE_MINUS_BETA2])
    step_size, eps_hat = t(state[STEP_SIZE]), t(state[EPS_HAT])
    decoupled = state[DECOUPLED] != 0
    # Coupled L2 adds wd W to the gradient; decoupled shrinks W by (1 - lr wd) first.
    wd = t(0.0) if decoupled else t(state[WEIGHT_DECAY])
    shrink = t(state[SHRINK])
    for i in range(W.size):
        w = W[i] * shrink if decoupled else W[i]
        g = dW[i] + wd * w
        m = beta1 * M[i] + one_minus_beta1 * g
        v = beta2 * V[i] + one_minus_beta2 * (g * g)
        M[i] = m
        V[i] = v
        W[i] = w - step_size * m / (np.sqrt(v) + eps_hat)


@jit
def rmsprop_step(W, dW, V, B, G, state):
    """One RMSprop step; ``B`` (momentum) and ``G`` (centered) are read only when on."""
    t = W.dtype.type
    lr, wd, eps, mu = t(state[LR]), t(state[WEIGHT_DECAY]), t(state[RMS_EPS]), t(state[RMS_MU])
    alpha, one_minus_alpha = t(state[ALPHA]), t(state[ONE_MINUS_ALPHA])
    centered, momentum = state[CENTERED] != 0, state[RMS_MU] != 0
    for i in range(W.size):
        g = dW[i] + wd * W[i]
        v = alpha * V[i] + one_minus_alpha * (g * g)
        V[i] = v
        if centered:
            a = alpha * G[i] + one_minus_alpha * g
            G[i] = a
            denom = np.sqrt(v - a * a) + eps
        else:
            denom = np.sqrt(v) + eps
        if momentum:
            b = mu * B[i] + g / denom
            B[i] = b
            W[i] -= lr * b
        else:
            W[i] -= lr * g / denom
