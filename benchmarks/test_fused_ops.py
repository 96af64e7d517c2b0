"""Each fused Backend operation against the unfused ``xp`` chain it replaces.

Pairs share a benchmark group, so pytest-benchmark's table shows them side by
side. Shapes are those of the 784-512-10 reference model at batch 128.
In-place operations get fresh copies of their inputs from ``setup`` (untimed).
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import timed

from gpubackprop.nn.optim import get_optimizer

N, D_IN, D = 128, 784, 512
ROUNDS = dict(rounds=30, warmup_rounds=3)


def arrays(backend, rng, *shapes, positive=False):
    out = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
    return [backend.asarray(np.abs(A) + np.float32(0.1) if positive else A) for A in out]


def unfused_bias_activation(xp, Z, b, name):
    if name == "relu":
        return xp.maximum(Z + b, 0)
    return 1 / (1 + xp.exp(-(Z + b)))


def unfused_backprop_activation(xp, dY, Y, name):
    if name == "relu":
        return dY * (Y > 0)
    return dY * Y * (1 - Y)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("name", ["relu", "sigmoid"])
def test_bias_activation(benchmark, backend, rng, name, fused):
    benchmark.group = f"bias+{name} [{backend.name}]"
    Z, b = arrays(backend, rng, (N, D), (D,))
    if fused:
        call = timed(backend, lambda Z: backend.bias_activation(Z, b, name))
        benchmark.pedantic(call, setup=lambda: ((Z.copy(),), {}), **ROUNDS)
    else:
        call = timed(backend, lambda: unfused_bias_activation(backend.xp, Z, b, name))
        benchmark.pedantic(call, **ROUNDS)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("name", ["relu", "sigmoid"])
def test_backprop_activation(benchmark, backend, rng, name, fused):
    benchmark.group = f"backprop {name} [{backend.name}]"
    dY, Z = arrays(backend, rng, (N, D), (N, D))
    Y = backend.activation(Z, name)
    if fused:
        call = timed(backend, lambda: backend.backprop_activation(dY, Y, name))
    else:
        call = timed(backend, lambda: unfused_backprop_activation(backend.xp, dY, Y, name))
    benchmark.pedantic(call, **ROUNDS)


def unfused_softmax_cross_entropy(xp, Z, T):
    P = xp.exp(Z - Z.max(axis=1, keepdims=True))
    P = P / P.sum(axis=1, keepdims=True)
    loss = -(T * xp.log(P)).sum(axis=1).mean()
    return loss, (P - T) / Z.shape[0]


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_softmax_cross_entropy(benchmark, backend, rng, fused):
    benchmark.group = f"softmax+cross-entropy gradient [{backend.name}]"
    (Z,) = arrays(backend, rng, (N, 10))
    labels = backend.asarray(rng.integers(0, 10, N))
    T = backend.one_hot(labels, 10, np.float32)
    if fused:
        call = timed(backend, lambda: backend.softmax_cross_entropy(Z, T))
    else:
        call = timed(backend, lambda: unfused_softmax_cross_entropy(backend.xp, Z, T))
    benchmark.pedantic(call, **ROUNDS)


def unfused_adam(xp, W, dW, M, V, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, step=10):
    M[...] = beta1 * M + (1 - beta1) * dW
    V[...] = beta2 * V + (1 - beta2) * dW ** 2
    m_hat = M / (1 - beta1 ** step)
    v_hat = V / (1 - beta2 ** step)
    W -= lr * m_hat / (xp.sqrt(v_hat) + eps)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_optimizer_update(benchmark, backend, rng, optimizer, fused):
    benchmark.group = f"{optimizer} update of W {D_IN}x{D} [{backend.name}]"
    W, dW = arrays(backend, rng, (D_IN, D), (D_IN, D))
    M, V = arrays(backend, rng, (D_IN, D), (D_IN, D), positive=True)
    xp = backend.xp
    # The step state of step 10, on the device, as the kernels read it.
    state = get_optimizer(optimizer, lr=1e-3).step_state(backend)
    for _ in range(10):
        backend.advance_optimizer(optimizer, state)
    if optimizer == "sgd":
        step = (lambda: backend.sgd_update(W, dW, state)) if fused else \
            (lambda: W.__isub__(1e-3 * dW))
    elif optimizer == "momentum":
        step = (lambda: backend.momentum_update(W, dW, state, M)) if fused else \
            (lambda: (M.__setitem__(Ellipsis, 0.9 * M + dW), W.__isub__(1e-3 * M)))
    else:
        step = (lambda: backend.adam_update(W, dW, state, M, V)) if fused \
            else (lambda: unfused_adam(xp, W, dW, M, V))
    benchmark.pedantic(timed(backend, step), **ROUNDS)
