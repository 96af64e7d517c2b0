"""Hyperparameter sweeps over the estimators: joblib's processes and a Dask LocalCluster.

Both must pick the same best parameters as the sequential search (the fits
are deterministic), and each Dask worker process must hold BLAS and Numba to
its share of the cores.
"""

import warnings

import numpy as np
import pytest
from joblib import parallel_config
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV

from gpubackprop.errors import InputError
from gpubackprop.sklearn import MLPClassifier
from gpubackprop.sklearn.parallel import thread_share, worker_environment, worker_threads
from extras import require

GRID = {"alpha": [1e-4, 1e-1], "hidden_layer_sizes": [(8,), (24,)]}


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:600] / 16, y[:600]


def _search(cls=GridSearchCV, **options):
    estimator = MLPClassifier(max_iter=15, random_state=0, device="numpy",
                              learning_rate_init=0.01)
    if cls is RandomizedSearchCV:
        return cls(estimator, GRID, n_iter=3, cv=3, random_state=0, **options)
    return cls(estimator, GRID, cv=3, **options)


@pytest.fixture(scope="module")
def sequential(digits):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _search().fit(*digits)


def test_thread_share_divides_the_cores():
    assert thread_share(2, 1, cores=16) == 8 and thread_share(4, 2, cores=16) == 2
    assert thread_share(8, 1, cores=2) == 1
    assert worker_environment(3)["NUMBA_NUM_THREADS"] == "3"
    with pytest.raises(InputError, match="n_workers must be a positive integer"):
        thread_share(0)


def test_loky_processes_find_the_sequential_best(digits, sequential):
    with parallel_config(backend="loky", inner_max_num_threads=1):
        search = _search(n_jobs=2).fit(*digits)
    assert search.best_params_ == sequential.best_params_
    np.testing.assert_allclose(search.cv_results_["mean_test_score"],
                               sequential.cv_results_["mean_test_score"])


def test_dask_local_cluster_finds_the_sequential_best(digits, sequential):
    distributed = require("distributed", "dask")
    from gpubackprop.sklearn.parallel import local_cluster
    with local_cluster(n_workers=2, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        budgets = client.run(worker_threads)
        with parallel_config(backend="dask"):
            search = _search().fit(*digits)
            randomized = _search(RandomizedSearchCV).fit(*digits)
    share = thread_share(2)
    assert len(budgets) == 2
    assert all(b["numba"] == share and b["blas"] in (None, share) for b in budgets.values())
    assert search.best_params_ == sequential.best_params_
    np.testing.assert_allclose(search.cv_results_["mean_test_score"],
                               sequential.cv_results_["mean_test_score"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alone = _search(RandomizedSearchCV).fit(*digits)
    assert randomized.best_params_ == alone.best_params_
