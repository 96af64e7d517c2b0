"""First-run costs: what a command imports, the split that replaced scikit-learn's, the
startup timer of ``python -m gpubackprop.bench.startup``."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from gpubackprop.bench.startup import time_command
from gpubackprop.data.datasets import load_iris
from gpubackprop.data.split import stratified_split
from gpubackprop.errors import InputError

#: Imported by no ``train iris`` run: each costs from tenths of a second to seconds.
NOT_FOR_IRIS = ("sklearn", "matplotlib", "tqdm", "scipy.stats", "pandas", "torch")


def _labels(name):
    if name == "uneven":
        return np.repeat([3, 0, 7, 1], [5, 7, 3, 11])
    from sklearn import datasets

    return getattr(datasets, f"load_{name}")().target


@pytest.mark.parametrize("labels", ["iris", "digits", "uneven"])
@pytest.mark.parametrize("test_size", [0.2, 0.3, 0.37])
def test_stratified_split_draws_what_scikit_learn_draws(labels, test_size):
    from sklearn.model_selection import train_test_split

    y = _labels(labels)
    rows = np.arange(len(y))
    for seed in range(12):
        train, test = train_test_split(rows, test_size=test_size, random_state=seed, stratify=y)
        ours_train, ours_test = stratified_split(y, test_size, seed)
        np.testing.assert_array_equal(ours_train, train)
        np.testing.assert_array_equal(ours_test, test)


def test_stratified_split_refuses_a_split_that_cannot_hold_every_class():
    with pytest.raises(InputError, match="cannot split 4 samples"):
        stratified_split(np.array([0, 0, 1, 1]), 0.25, 0)
    with pytest.raises(InputError, match="test_size must be in"):
        stratified_split(np.array([0, 0, 1, 1]), 1.0, 0)


def test_bundled_iris_is_the_table_scikit_learn_ships():
    from sklearn.datasets import load_iris as sklearn_iris

    bunch = sklearn_iris()
    data = load_iris(test_size=0.3, seed=5)
    X = np.concatenate([data.X_train, data.X_test])
    y = np.concatenate([data.y_train, data.y_test])
    train, test = stratified_split(bunch.target, 0.3, 5)
    order = np.concatenate([train, test])
    np.testing.assert_array_equal(X, bunch.data[order].astype(np.float32))
    np.testing.assert_array_equal(y, bunch.target[order])
    assert data.class_names == tuple(bunch.target_names)


def test_train_iris_imports_none_of_what_it_does_not_use():
    code = ("import json, sys\n"
            "from gpubackprop.cli import main\n"
            "code = main(['train', 'iris', '--epochs', '3', '--quiet'])\n"
            f"print(json.dumps([code, [m for m in {NOT_FOR_IRIS!r} if m in sys.modules]]))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    exit_code, imported = json.loads(result.stdout.strip().splitlines()[-1])
    assert exit_code == 0
    assert imported == []


def test_time_command_times_the_first_line_before_the_exit():
    code = "import sys, time; print('first', flush=True); time.sleep(0.2); print('second')"
    row = time_command([sys.executable, "-c", code])
    assert row["first_line"] == "first" and row["returncode"] == 0
    assert 0 < row["first_line_s"] < row["total_s"]
    assert row["cpu_s"] >= 0


def test_time_command_of_a_silent_failing_command():
    row = time_command([sys.executable, "-c", "import sys; sys.exit(3)"])
    assert row["first_line_s"] is None and row["first_line"] == "" and row["returncode"] == 3
