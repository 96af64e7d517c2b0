"""The estimators as a scikit-learn user meets them: targets, inputs, devices, pickles.

Agreement with scikit-learn's numbers is tests/test_sklearn_agreement.py;
scikit-learn's own API checks are tests/test_sklearn_checks.py.
"""

import pickle
import warnings

import numpy as np
import pytest
import scipy.sparse
from sklearn.base import clone
from sklearn.datasets import load_iris, make_multilabel_classification
from sklearn.utils.class_weight import compute_sample_weight

from gpubackprop.backends import get_backend
from gpubackprop.errors import GPUUnavailableError
from gpubackprop.sklearn import MLPClassifier, MLPRegressor

FAST = dict(hidden_layer_sizes=(16,), max_iter=30, random_state=0, learning_rate_init=0.05)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Stochastic Optimizer")
        yield


@pytest.fixture(scope="module")
def iris():
    X, y = load_iris(return_X_y=True)
    return (X - X.mean(0)) / X.std(0), y


def test_lbfgs_is_refused_with_the_reason(iris):
    with pytest.raises(ValueError, match="solver='lbfgs' is not supported.*'sgd' or 'adam'"):
        MLPClassifier(solver="lbfgs").fit(*iris)
    assert not hasattr(MLPRegressor(solver="lbfgs"), "partial_fit")


def test_defaults_and_parameters_are_scikit_learns():
    from sklearn import neural_network as sk
    for ours, theirs in ((MLPClassifier, sk.MLPClassifier), (MLPRegressor, sk.MLPRegressor)):
        mine, reference = ours().get_params(), theirs().get_params()
        extra = {"device": "auto", "dtype": None}
        if ours is MLPClassifier:
            extra["class_weight"] = None
        assert mine == {**reference, **extra}


def test_string_labels_probabilities_and_log_probabilities(iris):
    X, y = iris
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    model = MLPClassifier(device="numpy", **FAST).fit(X, names)
    assert list(model.classes_) == list(names[np.sort(np.unique(y, return_index=True)[1])])
    assert set(model.predict(X)) <= set(names) and model.score(X, names) > 0.8
    P = model.predict_proba(X)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(model.predict_log_proba(X), np.log(P), rtol=1e-12)
    assert model.out_activation_ == "softmax" and model.n_outputs_ == 3


def test_binary_and_multilabel_targets(iris):
    X, y = iris
    binary = MLPClassifier(device="numpy", **FAST).fit(X, y == 2)
    assert binary.out_activation_ == "logistic" and binary.predict_proba(X).shape == (150, 2)
    assert binary.predict(X).dtype == bool
    Xm, Ym = make_multilabel_classification(120, 6, n_classes=3, random_state=0)
    multilabel = MLPClassifier(device="numpy", **FAST).fit(Xm, Ym)
    assert multilabel.predict(Xm).shape == (120, 3)
    assert set(np.unique(multilabel.predict(Xm))) <= {0, 1}


def test_class_weight_is_sample_weight_per_class(iris):
    X, y = iris
    weights = {0: 1.0, 1: 5.0, 2: 0.5}
    by_class = MLPClassifier(device="numpy", class_weight=weights, **FAST).fit(X, y)
    by_sample = MLPClassifier(device="numpy", **FAST).fit(
        X, y, sample_weight=compute_sample_weight(weights, y))
    unweighted = MLPClassifier(device="numpy", **FAST).fit(X, y)
    np.testing.assert_array_equal(by_class.coefs_[0], by_sample.coefs_[0])
    assert not np.allclose(by_class.coefs_[0], unweighted.coefs_[0])
    # Weighting class 1 five times over pulls predictions towards it.
    assert (by_class.predict(X) == 1).sum() > (unweighted.predict(X) == 1).sum()


def test_sample_weight_zero_drops_a_sample(iris):
    X, y = iris
    keep = np.arange(150) % 3 != 0
    zeroed = MLPRegressor(device="numpy", shuffle=False, **FAST).fit(
        X, y.astype(float), sample_weight=keep.astype(float))
    dropped = MLPRegressor(device="numpy", shuffle=False, **FAST).fit(
        X[keep], y[keep].astype(float))
    for a, b in zip(zeroed.coefs_, dropped.coefs_):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_backends_train_the_same_model(backend_name, iris):
    X, y = iris
    reference = MLPClassifier(device="numpy", dtype="float64", **FAST).fit(X, y)
    model = MLPClassifier(device=backend_name, dtype="float64", **FAST).fit(X, y)
    for a, b in zip(reference.coefs_ + reference.intercepts_, model.coefs_ + model.intercepts_):
        np.testing.assert_allclose(b, a, rtol=1e-8, atol=1e-10)
    assert isinstance(model.coefs_[0], np.ndarray)


def test_dtype_follows_the_input_or_the_setting(iris):
    X, y = iris
    assert MLPClassifier(device="numpy", **FAST).fit(X.astype(np.float32),
                                                     y).coefs_[0].dtype == np.float32
    assert MLPClassifier(device="numpy", **FAST).fit(X, y).coefs_[0].dtype == np.float64
    model = MLPClassifier(device="numpy", dtype="float32", **FAST).fit(X, y)
    assert model.coefs_[0].dtype == np.float32 and model.score(X, y) > 0.8


def test_pandas_and_sparse_inputs(iris):
    pd = pytest.importorskip("pandas")
    X, y = iris
    frame = pd.DataFrame(X, columns=["sl", "sw", "pl", "pw"])
    model = MLPClassifier(device="numpy", **FAST).fit(frame, pd.Series(y))
    assert list(model.feature_names_in_) == ["sl", "sw", "pl", "pw"]
    dense = MLPRegressor(device="numpy", **FAST).fit(X, y.astype(float))
    for sparse in (scipy.sparse.csr_matrix(X), scipy.sparse.csc_array(X)):
        model = MLPRegressor(device="numpy", **FAST).fit(sparse, y.astype(float))
        for a, b in zip(dense.coefs_, model.coefs_):
            np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(model.predict(sparse), dense.predict(X), rtol=1e-10,
                                   atol=1e-12)


def test_device_arrays_stay_on_the_device(emulated_gpu, iris, monkeypatch):
    X, y = iris
    X_dev = emulated_gpu.asarray(np.ascontiguousarray(X))
    to_host = []
    original = emulated_gpu.to_numpy
    monkeypatch.setattr(emulated_gpu, "to_numpy",
                        lambda A: to_host.append(tuple(A.shape)) or original(A))
    model = MLPClassifier(device=emulated_gpu, dtype="float64", **FAST).fit(X_dev, y)
    P = model.predict_proba(X_dev)
    assert isinstance(P, emulated_gpu.xp.ndarray) and P.shape == (150, 3)
    assert X.shape not in to_host, "the training features were read back to the host"
    host = MLPClassifier(device="numpy", dtype="float64", **FAST).fit(X, y)
    np.testing.assert_allclose(emulated_gpu.to_numpy(P), host.predict_proba(X), rtol=1e-8)


def test_gpu_model_pickles_to_host_arrays_and_predicts_without_a_gpu(emulated_gpu, iris,
                                                                     monkeypatch):
    X, y = iris
    model = MLPClassifier(device=emulated_gpu, solver="sgd", **FAST).fit(X, y)
    expected = model.predict_proba(X)
    loaded = pickle.loads(pickle.dumps(model))
    assert loaded.device == "gpu"
    assert all(type(W) is np.ndarray for W in loaded.coefs_ + loaded.intercepts_)
    # This machine has no GPU: prediction falls back to the CPU and says so.
    import gpubackprop.sklearn.estimators as estimators

    def no_gpu(device):
        if device == "gpu":
            raise GPUUnavailableError("no usable GPU: test")
        return get_backend(device)
    monkeypatch.setattr(estimators, "get_backend", no_gpu)
    with pytest.warns(RuntimeWarning, match="predicting on the CPU"):
        np.testing.assert_allclose(loaded.predict_proba(X), expected, rtol=1e-6)
    with pytest.raises(GPUUnavailableError):
        clone(loaded).fit(X, y)


def test_pickled_model_continues_partial_fit_as_the_original(iris):
    X, y = iris
    model = MLPClassifier(device="numpy", solver="adam", **FAST)
    model.partial_fit(X, y, classes=[0, 1, 2])
    copy = pickle.loads(pickle.dumps(model))
    model.partial_fit(X, y)
    copy.partial_fit(X, y)
    np.testing.assert_array_equal(copy.coefs_[0], model.coefs_[0])
    fresh = clone(model)
    assert fresh.get_params() == model.get_params() and not hasattr(fresh, "coefs_")


def test_warm_start_and_unseen_classes(iris):
    X, y = iris
    model = MLPClassifier(device="numpy", warm_start=True, **FAST).fit(X, y)
    first = model.coefs_[0].copy()
    model.fit(X, y)
    assert not np.allclose(model.coefs_[0], first)
    with pytest.raises(ValueError, match="same classes"):
        model.fit(X[y < 2], y[y < 2])
    streaming = MLPClassifier(device="numpy", **FAST).partial_fit(X[:10], y[:10], classes=[0, 1])
    with pytest.raises(ValueError, match="not in `self.classes_`"):
        streaming.partial_fit(X, y)


def test_verbose_prints_scikit_learns_lines(iris, capsys):
    MLPClassifier(device="numpy", verbose=True, **dict(FAST, max_iter=2)).fit(*iris)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Iteration 1, loss = ") and lines[1].startswith("Iteration 2")


def test_gpu_device_without_a_gpu_is_a_clear_error(iris, monkeypatch):
    import gpubackprop.sklearn.estimators as estimators
    monkeypatch.setattr(estimators, "get_backend", lambda device: (_ for _ in ()).throw(
        GPUUnavailableError("no usable GPU: CuPy is not installed")))
    with pytest.raises(GPUUnavailableError, match="no usable GPU"):
        MLPClassifier(device="gpu", **FAST).fit(*iris)
