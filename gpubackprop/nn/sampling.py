"""Drawing a continuation from a model that predicts the next symbol at every step.

Each new symbol is drawn from ``softmax(logits / temperature)`` of the model's
last step, the model reading the last ``context`` symbols as a fresh window
(from its initial state, as in training on windows of that length). A
temperature below 1 sharpens the distribution; as it goes to 0 the draw
becomes the most likely symbol (greedy decoding); above 1 it flattens.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..validation import check_positive, check_seed


def temperature_probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(logits / temperature)`` in float64, stable for any positive temperature.

    Parameters
    ----------
    logits : ndarray, shape (K,)
    temperature : float > 0

    Returns
    -------
    ndarray, shape (K,), sums to 1
    """
    logits = np.asarray(logits, dtype=np.float64)
    # Shift first: the largest entry is exactly 0 however small the temperature.
    weights = np.exp((logits - logits.max()) / check_positive(temperature, "temperature"))
    return weights / weights.sum()


def sample_sequence(model, prime: np.ndarray, length: int, temperature: float, seed: int,
                    context: int) -> np.ndarray:
    """Continue ``prime`` by ``length`` symbols drawn from ``model``.

    Parameters
    ----------
    model : Sequential
        One-hot inputs of width K, sequence outputs (N, T, K) of logits.
    prime : ndarray, shape (P,), int
        Symbol ids to start from (P >= 1).
    length : int
        Symbols to draw.
    temperature : float > 0
    seed : int
        Seeds the draws: one seed, one continuation.
    context : int
        The most symbols the model reads to predict the next one.

    Returns
    -------
    ndarray, shape (length,), int64
    """
    length = check_positive(length, "sample length", integer=True)
    context = check_positive(context, "context", integer=True)
    temperature = check_positive(temperature, "temperature")
    if len(model.output_shape) != 2 or model.output_shape[-1] != model.n_inputs:
        raise InputError("sampling needs a model that reads one-hot symbols and predicts the "
                         "next one at every step (outputs (N, T, K), K its input width)")
    if len(prime) == 0:
        raise InputError("the prime text is empty; give at least one character")
    rng = np.random.default_rng(check_seed(seed))
    backend, eye = model.backend, np.eye(model.n_inputs, dtype=model.dtype)
    ids = [int(i) for i in prime]
    for _ in range(length):
        window = eye[ids[-context:]][None]
        # Logits of the window's last step: the next symbol's scores.
        logits = backend.to_numpy(model.forward(backend.asarray(window), train=False)[0, -1])
        probabilities = temperature_probabilities(logits, temperature)
        ids.append(int(rng.choice(len(probabilities), p=probabilities)))
    return np.asarray(ids[len(prime):], dtype=np.int64)


__all__ = ["sample_sequence", "temperature_probabilities"]
