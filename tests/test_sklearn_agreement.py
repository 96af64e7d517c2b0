"""Our estimators follow scikit-learn's trajectory: same random_state, same weights.

With one ``random_state`` both draw the same initial weights, shuffle in the
same order and split the same validation set; on the NumPy backend in float64
the weights after a few epochs must equal scikit-learn's to rounding, for
SGD (heavy-ball momentum, Nesterov, schedules) and Adam, with ``alpha``, for
multiclass, binary, multilabel and regression targets, with sample weights.
"""

import warnings

import numpy as np
import pytest
from sklearn import neural_network as sk
from sklearn.datasets import make_classification, make_multilabel_classification, \
    make_regression

from gpubackprop import sklearn as ours

SOLVERS = {
    "adam": dict(solver="adam", learning_rate_init=0.01),
    "sgd-nesterov": dict(solver="sgd", learning_rate_init=0.05, momentum=0.9),
    "sgd-heavy-ball": dict(solver="sgd", learning_rate_init=0.05, momentum=0.8,
                           nesterovs_momentum=False),
    "sgd-plain-invscaling": dict(solver="sgd", learning_rate_init=0.2, momentum=0.0,
                                 learning_rate="invscaling", power_t=0.25),
    "sgd-adaptive": dict(solver="sgd", learning_rate_init=0.05, learning_rate="adaptive",
                         n_iter_no_change=1, tol=0.5),
}


def _data(task):
    if task == "multiclass":
        X, y = make_classification(230, 12, n_informative=6, n_classes=4, random_state=0)
        return X, np.array(["cat", "dog", "eel", "fox"])[y]
    if task == "binary":
        X, y = make_classification(230, 12, random_state=1)
        return X, y + 3
    if task == "multilabel":
        return make_multilabel_classification(230, 12, n_classes=3, random_state=2)
    X, y = make_regression(230, 12, n_targets=2, noise=0.5, random_state=3)
    return X, y / y.std()


#: Each task with another hidden activation, so every one is covered.
ACTIVATIONS = {"multiclass": "relu", "binary": "logistic", "multilabel": "tanh",
               "regression": "identity"}


def _fit_both(task, settings, **fit_params):
    X, y = _data(task)
    kind = "MLPRegressor" if task == "regression" else "MLPClassifier"
    common = dict(hidden_layer_sizes=(9, 7), alpha=0.01, batch_size=64, max_iter=4,
                  random_state=7, activation=ACTIVATIONS[task], **settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = getattr(sk, kind)(**common).fit(X, y, **fit_params)
        mine = getattr(ours, kind)(device="numpy", **common).fit(X, y, **fit_params)
    return theirs, mine, X


def _assert_same(theirs, mine, X):
    assert mine.n_iter_ == theirs.n_iter_ and mine.t_ == theirs.t_
    assert mine.out_activation_ == theirs.out_activation_
    for name in ("coefs_", "intercepts_"):
        for a, b in zip(getattr(theirs, name), getattr(mine, name)):
            assert b.dtype == a.dtype == np.float64
            np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(mine.loss_curve_, theirs.loss_curve_, rtol=1e-10)
    if theirs.out_activation_ == "identity":
        np.testing.assert_allclose(mine.predict(X), theirs.predict(X), rtol=1e-10, atol=1e-12)
    else:
        np.testing.assert_array_equal(mine.predict(X), theirs.predict(X))


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("task", ["multiclass", "binary", "multilabel", "regression"])
def test_weights_equal_scikit_learns(task, solver):
    theirs, mine, X = _fit_both(task, SOLVERS[solver])
    _assert_same(theirs, mine, X)
    if task != "regression":
        np.testing.assert_allclose(mine.predict_proba(X), theirs.predict_proba(X), rtol=1e-9)


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_sample_weights_and_early_stopping_follow_scikit_learn(task):
    X, _ = _data(task)
    weights = np.random.default_rng(0).uniform(0.2, 3.0, X.shape[0])
    theirs, mine, X = _fit_both(task, dict(SOLVERS["adam"], early_stopping=True,
                                           validation_fraction=0.2),
                                sample_weight=weights)
    _assert_same(theirs, mine, X)
    np.testing.assert_allclose(mine.validation_scores_, theirs.validation_scores_, rtol=1e-10)
    assert mine.best_validation_score_ == pytest.approx(theirs.best_validation_score_, rel=1e-10)


def test_partial_fit_follows_scikit_learn():
    X, y = _data("multiclass")
    theirs = sk.MLPClassifier(hidden_layer_sizes=(10,), random_state=3, solver="sgd")
    mine = ours.MLPClassifier(hidden_layer_sizes=(10,), random_state=3, solver="sgd",
                              device="numpy")
    for start in (0, 100, 200):
        for model in (theirs, mine):
            model.partial_fit(X[start:start + 100], y[start:start + 100], classes=np.unique(y))
    for a, b in zip(theirs.coefs_, mine.coefs_):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)
    assert mine.n_iter_ == theirs.n_iter_ == 1 and mine.t_ == theirs.t_ == 230
