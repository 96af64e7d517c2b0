"""Synthetic sequence tasks for recurrent models, generated from a seed.

Both return ``X`` (N, T, D) float32 sequences and regression targets
``y`` (N, 1) float32 for a many-to-one model (an RNN followed by Linear(1)).
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..validation import check_positive


def adding_problem(n: int, steps: int, seed: int = 0):
    """The adding problem (Hochreiter and Schmidhuber 1997).

    Each step carries a value drawn uniformly from [0, 1) and a marker; exactly
    two steps are marked, one in each half of the sequence. The target is the
    sum of the two marked values, so the model must remember a value over up
    to ``steps - 1`` steps. Predicting the mean (1.0) gives an MSE of 1/6.

    Parameters
    ----------
    n : int
        Number of sequences.
    steps : int
        Sequence length ``T`` (at least 2).
    seed : int

    Returns
    -------
    X : ndarray, shape (n, steps, 2), float32
        ``X[..., 0]`` the values, ``X[..., 1]`` the markers (0 or 1).
    y : ndarray, shape (n, 1), float32
    """
    n = check_positive(n, "n", integer=True)
    steps = check_positive(steps, "steps", integer=True)
    if steps < 2:
        raise InputError(f"the adding problem needs at least 2 steps, got {steps}")
    rng = np.random.default_rng(seed)
    X = np.zeros((n, steps, 2), dtype=np.float32)
    X[..., 0] = rng.random((n, steps))
    half = steps // 2
    rows = np.arange(n)
    first = rng.integers(0, half, size=n)
    second = rng.integers(half, steps, size=n)
    X[rows, first, 1] = 1
    X[rows, second, 1] = 1
    y = (X[rows, first, 0] + X[rows, second, 0])[:, None]
    return X, y.astype(np.float32)


def sine_next_step(n: int, steps: int, seed: int = 0):
    """Next-step prediction of sine waves with random frequency and phase.

    Sequence ``i`` samples ``sin(w_i s + p_i)`` at ``s = 0 .. steps``, with
    ``w_i`` uniform in [0.1, 0.5) radians per step and ``p_i`` in [0, 2 pi);
    the model sees the first ``steps`` values and predicts the last.

    Returns
    -------
    X : ndarray, shape (n, steps, 1), float32
    y : ndarray, shape (n, 1), float32
    """
    n = check_positive(n, "n", integer=True)
    steps = check_positive(steps, "steps", integer=True)
    rng = np.random.default_rng(seed)
    omega = rng.uniform(0.1, 0.5, size=(n, 1))
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1))
    wave = np.sin(omega * np.arange(steps + 1) + phase).astype(np.float32)
    return wave[:, :steps, None], wave[:, steps:]
