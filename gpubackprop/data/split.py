"""A seeded, stratified train/test split, without importing scikit-learn.

It draws exactly what scikit-learn's
``train_test_split(..., test_size=t, random_state=seed, stratify=y)`` draws
(``StratifiedShuffleSplit``'s algorithm, the same calls on a
``np.random.RandomState(seed)``), so runs keep their split while ``train iris``
no longer imports scikit-learn and SciPy (the slowest part of its start).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import InputError


def stratified_split(y: np.ndarray, test_size: float, seed: int):
    """Indices of a stratified split of the labels ``y``.

    Parameters
    ----------
    y : ndarray, shape (N,)
        Class labels.
    test_size : float
        Fraction of the samples in the test part, in (0, 1); rounded up.
    seed : int
        Seed of the ``RandomState`` that draws the split.

    Returns
    -------
    train, test : ndarray of int, shapes (N - n_test,) and (n_test,)
        Row indices, each part in shuffled order.
    """
    if not 0 < test_size < 1:
        raise InputError(f"test_size must be in (0, 1), got {test_size!r}")
    n = len(y)
    n_test = math.ceil(test_size * n)
    n_train = n - n_test
    classes, y_indices, counts = np.unique(y, return_inverse=True, return_counts=True)
    if counts.min() < 2 or min(n_train, n_test) < len(classes):
        raise InputError(f"cannot split {n} samples of {len(classes)} classes (smallest class "
                         f"{counts.min()}) into {n_train} train and {n_test} test samples "
                         "holding every class")
    # Rows of each class, in their original order.
    class_rows = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(seed)
    n_train_per_class = _approximate_mode(counts, n_train, rng)
    n_test_per_class = _approximate_mode(counts - n_train_per_class, n_test, rng)
    train, test = [], []
    for rows, n_tr, n_te in zip(class_rows, n_train_per_class, n_test_per_class):
        shuffled = rows.take(rng.permutation(len(rows)), mode="clip")
        train.extend(shuffled[:n_tr])
        test.extend(shuffled[n_tr:n_tr + n_te])
    return rng.permutation(train), rng.permutation(test)


def _approximate_mode(counts: np.ndarray, n_draws: int, rng: np.random.RandomState):
    """Samples per class (C,) summing to ``n_draws``, proportional to ``counts`` (C,).

    Floors of the proportional shares, then one more for the largest
    remainders; ties among equal remainders broken by ``rng``.
    """
    continuous = counts / counts.sum() * n_draws
    floored = np.floor(continuous)
    need = int(n_draws - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            add_now = min(len(tied), need)
            floored[rng.choice(tied, size=add_now, replace=False)] += 1
            need -= add_now
            if need == 0:
                break
    return floored.astype(int)
