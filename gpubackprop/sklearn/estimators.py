"""``MLPClassifier`` and ``MLPRegressor``: scikit-learn's estimators, trained on a gpubackprop backend.

Same constructor parameters, defaults and meanings as
``sklearn.neural_network``'s (solvers "sgd" and "adam"; "lbfgs" is refused),
the same fitted attributes, and the same training trajectory: with one
``random_state`` the initial weights, batches, shuffle order, L2 term,
learning-rate schedules and stopping rules are scikit-learn's, so on the
NumPy backend the weights agree with scikit-learn's to float64 rounding.
Added: ``device`` (CPU or GPU backend), ``dtype``, ``class_weight`` and
``sample_weight``.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPRegressor as _SkMLPRegressor
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state, shuffle
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import _check_partial_fit_first_call, type_of_target, unique_labels
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, column_or_1d

from ..backends import Backend, get_backend
from ..errors import GPUUnavailableError
from ..nn.optim import optimizer_from_config
from ..nn.regularization import L2Penalty
from . import engine
from .inputs import check_features, check_training_data, on_device

SOLVERS = ("sgd", "adam")
DTYPES = ("float32", "float64")


def _check_solver(estimator) -> bool:
    if estimator.solver not in SOLVERS:
        raise AttributeError(f"partial_fit is only available for stochastic optimizers; "
                             f"{estimator.solver} is not one")
    return True


class _BaseMLP(BaseEstimator):
    """What the classifier and the regressor share: scikit-learn's stochastic solver."""

    _parameter_constraints: dict = {
        **_SkMLPRegressor._parameter_constraints,
        "device": [str, Backend],
        "dtype": [None, StrOptions(set(DTYPES)), type, np.dtype],
    }

    # ------------------------------------------------------------ backend
    def _backend(self) -> Backend:
        """The backend of ``device``; where a pickled GPU model meets no GPU, the CPU's."""
        try:
            return get_backend(self.device)
        except GPUUnavailableError as exc:
            if getattr(self, "coefs_", None) is None or getattr(self, "_fitting", False):
                raise
            warnings.warn(f"{exc}; predicting on the CPU", RuntimeWarning, stacklevel=3)
            return get_backend("cpu")

    def _dtype(self, X) -> np.dtype:
        """The training dtype: ``dtype`` when set, else the input's (float32 or float64)."""
        if self.dtype is not None:
            return np.dtype(self.dtype)
        return np.dtype(X.dtype) if X.dtype in (np.float32, np.float64) else np.dtype(np.float64)

    # ---------------------------------------------------------------- fit
    def _refuse_lbfgs(self):
        if self.solver not in SOLVERS:
            raise ValueError(f"solver={self.solver!r} is not supported by gpubackprop's "
                             f"{type(self).__name__}: it trains by mini-batch backpropagation "
                             "('sgd' or 'adam'); use sklearn.neural_network for 'lbfgs'")

    def _fit(self, X, y, sample_weight=None, incremental=False):
        self._refuse_lbfgs()
        hidden = self.hidden_layer_sizes
        hidden = list(hidden) if hasattr(hidden, "__iter__") else [hidden]
        if np.any(np.array(hidden) <= 0):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {hidden}.")
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        X, y = self._validate_input(X, y, incremental, reset=first_pass)
        sample_weight = self._sample_weight(X, y, sample_weight)
        if y.ndim == 1:
            y = y.reshape((-1, 1))
        self.n_outputs_ = y.shape[1]
        layer_units = [X.shape[1]] + hidden + [self.n_outputs_]
        self._random_state = check_random_state(self.random_state)
        dtype = self._dtype(X)
        if first_pass:
            self._initialize(y, layer_units, dtype)
        self._fitting = True
        try:
            self._fit_stochastic(X, y, sample_weight, dtype, incremental)
        finally:
            self._fitting = False
        if not all(np.isfinite(w).all() for w in self.coefs_ + self.intercepts_):
            raise ValueError("Solver produced non-finite parameter weights. The input data may "
                             "contain large values and need to be preprocessed.")
        return self

    def _sample_weight(self, X, y, sample_weight):
        if sample_weight is None:
            return None
        return _check_sample_weight(sample_weight, X if not on_device(X, self._backend())
                                    else np.empty((X.shape[0], 0)))

    def _initialize(self, y, layer_units, dtype):
        """scikit-learn's ``_initialize``: attributes, and Glorot-uniform weights from its RNG."""
        self.n_iter_ = 0
        self.t_ = 0
        self.n_layers_ = len(layer_units)
        self.out_activation_ = self._output_activation()
        factor = 2.0 if self.activation == "logistic" else 6.0
        self.coefs_, self.intercepts_ = [], []
        for fan_in, fan_out in zip(layer_units[:-1], layer_units[1:]):
            bound = np.sqrt(factor / (fan_in + fan_out))
            # Drawn in scikit-learn's order (weights, then biases, layer by layer).
            coef = self._random_state.uniform(-bound, bound, (fan_in, fan_out))
            intercept = self._random_state.uniform(-bound, bound, fan_out)
            self.coefs_.append(coef.astype(dtype, copy=False))
            self.intercepts_.append(intercept.astype(dtype, copy=False))
        self.loss_curve_ = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
        else:
            self.best_loss_ = np.inf
            self.validation_scores_ = None
            self.best_validation_score_ = None
        self.__dict__.pop("_optimizer_state", None)

    def _fit_stochastic(self, X, y, sample_weight, dtype, incremental):
        backend = self._backend()
        network = engine.build_network(self.coefs_, self.intercepts_, self.activation, backend,
                                       dtype)
        optimizer = self._optimizer_for(backend, incremental)
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        X_train, y_train, sw_train, validation = self._split(X, y, sample_weight, backend)
        n_samples = y_train.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n_samples)
        else:
            if self.batch_size > n_samples:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. "
                              "It is going to be clipped")
            batch_size = int(np.clip(self.batch_size, 1, n_samples))
        rows = engine.TrainingRows(backend, X_train, y_train, sw_train, dtype)
        loss = engine.OUTPUT_LOSSES[self.out_activation_]
        scale = 1.0 / self.n_outputs_ if self.out_activation_ == "identity" else 1.0
        penalty = L2Penalty(self.alpha)
        sample_idx = np.arange(n_samples, dtype=int)
        best = None
        self.n_iter_ = 0  # per call, as scikit-learn counts it (partial_fit: 1)
        for _ in range(self.max_iter):
            order = None
            if self.shuffle:
                # scikit-learn's shuffle of the previous order, from the same RandomState.
                sample_idx = shuffle(sample_idx, random_state=self._random_state)
                order = sample_idx
            self.loss_ = engine.run_epoch(network, loss, optimizer, penalty, rows, order,
                                          batch_size, scale)
            self.n_iter_ += 1
            self.t_ += n_samples
            self.loss_curve_.append(self.loss_)
            if self.verbose:
                print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))
            best = self._update_no_improvement_count(network, validation, dtype, best)
            self._iteration_ends(optimizer)
            if self._no_improvement_count > self.n_iter_no_change:
                if self._trigger_stopping(optimizer):
                    break
                self._no_improvement_count = 0
            if incremental:
                break
            if self.n_iter_ == self.max_iter:
                warnings.warn("Stochastic Optimizer: Maximum iterations (%d) reached and the "
                              "optimization hasn't converged yet." % self.max_iter,
                              ConvergenceWarning)
        if self.early_stopping and best is not None:
            self.coefs_, self.intercepts_ = best
        else:
            self.coefs_, self.intercepts_ = engine.network_weights(network)
        # The optimizer's state on the host between calls: partial_fit continues it, and
        # a pickle holds host arrays only.
        self._optimizer_state = (optimizer.config(), optimizer.state_arrays(backend))

    def _optimizer_for(self, backend, incremental: bool):
        """A fresh optimizer for fit, or partial_fit's, continued from the host copy of its state."""
        saved = getattr(self, "_optimizer_state", None)
        if not incremental or saved is None:
            return engine.make_optimizer(self)
        config, arrays = saved
        optimizer = optimizer_from_config(config)
        optimizer.load_state_arrays(backend, arrays)
        return optimizer

    def _split(self, X, y, sample_weight, backend):
        """scikit-learn's early-stopping split (same RNG draws), or everything for training."""
        if not self.early_stopping:
            return X, y, sample_weight, None
        stratify = y if (isinstance(self, ClassifierMixin) and self.n_outputs_ == 1) else None
        train, val = train_test_split(np.arange(y.shape[0]), random_state=self._random_state,
                                      test_size=self.validation_fraction, stratify=stratify)
        if val.shape[0] < 2:
            raise ValueError("The validation set is too small. Increase 'validation_fraction' "
                             "or the size of your dataset.")
        take = (lambda A, idx: A[backend.asarray(idx)]) if on_device(X, backend) else \
            (lambda A, idx: A[idx])
        y_val = y[val]
        if isinstance(self, ClassifierMixin):
            y_val = self._label_binarizer.inverse_transform(y_val)
        sw = (None, None) if sample_weight is None else (sample_weight[train], sample_weight[val])
        return take(X, train), y[train], sw[0], (take(X, val), y_val, sw[1])

    def _update_no_improvement_count(self, network, validation, dtype, best):
        if validation is not None:
            X_val, y_val, sw_val = validation
            predictions = self._predict_with(network, X_val, dtype)
            if np.issubdtype(predictions.dtype, np.floating) and not np.isfinite(
                    predictions).all():
                score = np.nan
            else:
                score = self._score_function(y_val, predictions, sample_weight=sw_val)
            self.validation_scores_.append(score)
            if self.verbose:
                print("Validation score: %f" % self.validation_scores_[-1])
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                best = engine.network_weights(network)
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]
        return best

    def _iteration_ends(self, optimizer):
        """scikit-learn's 'invscaling' schedule: lr_init / (t + 1) ** power_t, per epoch."""
        if self.solver == "sgd" and self.learning_rate == "invscaling":
            optimizer.lr = float(self.learning_rate_init) / (self.t_ + 1) ** self.power_t

    def _trigger_stopping(self, optimizer) -> bool:
        """Stop, or with SGD's 'adaptive' schedule divide the learning rate by 5 first."""
        what = "Validation score" if self.early_stopping else "Training loss"
        message = (f"{what} did not improve more than tol={self.tol:f} for "
                   f"{self.n_iter_no_change} consecutive epochs.")
        if self.solver != "sgd" or self.learning_rate != "adaptive":
            if self.verbose:
                print(message + " Stopping.")
            return True
        if optimizer.lr <= 1e-6:
            if self.verbose:
                print(message + " Learning rate too small. Stopping.")
            return True
        optimizer.lr = optimizer.lr / 5.0
        if self.verbose:
            print(message + " Setting learning rate to %f" % optimizer.lr)
        return False

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Fit the model to data matrix X and target(s) y.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            NumPy, pandas or SciPy sparse on the host, or a CuPy array when
            ``device`` is the GPU (then it is used where it is).
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
        sample_weight : array-like of shape (n_samples,), optional

        Returns
        -------
        self
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=False)

    # ------------------------------------------------------------ predict
    def _network(self):
        dtype = self.coefs_[0].dtype
        return engine.build_network(self.coefs_, self.intercepts_, self.activation,
                                    self._backend(), dtype), dtype

    def _forward(self, X, check_input=True):
        """Outputs (N, n_outputs_) after the output activation; X on the device gives them there."""
        if check_input:
            X = check_features(self, X)
        network, dtype = self._network()
        outputs = engine.predict_outputs(network, X, self.out_activation_, dtype)
        return outputs if on_device(X, network.backend) else network.backend.to_numpy(outputs)

    def _predict_with(self, network, X, dtype):
        host = network.backend.to_numpy(engine.predict_outputs(network, X, self.out_activation_,
                                                               dtype))
        return self._outputs_to_predictions(host)

    # ------------------------------------------------------------ pickling
    def __getstate__(self):
        """Everything fitted is on the host already; a backend object in ``device``
        becomes its kind ("gpu" or "cpu"), so a GPU-fitted model loads anywhere."""
        state = dict(super().__getstate__())
        if isinstance(state.get("device"), Backend):
            state["device"] = state["device"].device
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier, scikit-learn's, trained by gpubackprop.

    Parameters are scikit-learn's ``MLPClassifier``'s (same defaults and
    meanings; ``solver`` "sgd" or "adam", ``max_fun`` accepted and unused as
    it is only for "lbfgs"), plus:

    device : {"auto", "cpu", "gpu", "numpy", "numba"} or Backend, default="auto"
        Where to train and predict: "auto" takes the GPU when one is usable.
    dtype : {"float32", "float64"} or None, default=None
        Training dtype; None follows the input as scikit-learn does (float32
        stays float32, anything else becomes float64). float32 is the fast
        choice on a GPU.
    class_weight : dict, "balanced" or None, default=None
        Weights of the classes, multiplied into ``sample_weight`` (see
        ``sklearn.utils.class_weight.compute_sample_weight``).

    Attributes are scikit-learn's: ``classes_``, ``coefs_``, ``intercepts_``
    (host NumPy arrays in the training dtype), ``loss_``, ``loss_curve_``,
    ``best_loss_``, ``validation_scores_``, ``best_validation_score_``,
    ``n_iter_``, ``t_``, ``n_features_in_``, ``feature_names_in_``,
    ``n_layers_``, ``n_outputs_``, ``out_activation_``.
    """

    _parameter_constraints: dict = {
        **_BaseMLP._parameter_constraints,
        "class_weight": [dict, list, StrOptions({"balanced"}), None],
    }
    _parameter_constraints.pop("loss")

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 device="auto", dtype=None, class_weight=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.device = device
        self.dtype = dtype
        self.class_weight = class_weight

    def _output_activation(self) -> str:
        return "softmax" if self._label_binarizer.y_type_ == "multiclass" else "logistic"

    def _validate_input(self, X, y, incremental, reset):
        X, y = check_training_data(self, X, y, reset=reset, y_numeric=False)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        self._y_labels = y
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError("warm_start can only be used where `y` has the same "
                                     "classes as in the previous call to fit. Previously "
                                     f"got {self.classes_}, `y` has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has "
                                 f"{self.classes_}. 'y' has {classes}.")
        return X, self._label_binarizer.transform(y).astype(bool)

    def _sample_weight(self, X, y, sample_weight):
        labels = self.__dict__.pop("_y_labels")
        if self.class_weight is None:
            return super()._sample_weight(X, y, sample_weight)
        weights = compute_sample_weight(self.class_weight, labels)
        if sample_weight is not None:
            weights = weights * super()._sample_weight(X, y, sample_weight)
        return weights

    def _score_function(self, y, predictions, sample_weight=None):
        return accuracy_score(y, predictions, sample_weight=sample_weight)

    def _outputs_to_predictions(self, outputs):
        if self.n_outputs_ == 1:
            outputs = outputs.ravel()
        return self._label_binarizer.inverse_transform(outputs)

    def predict(self, X):
        """Predicted classes, shape (n_samples,) or (n_samples, n_classes) for multilabel."""
        check_is_fitted(self)
        outputs = self._forward(X)
        backend = self._backend()
        return self._outputs_to_predictions(backend.to_numpy(outputs) if on_device(
            outputs, backend) else outputs)

    @available_if(_check_solver)
    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over the given data; ``classes`` is needed on the first call."""
        if _check_partial_fit_first_call(self, classes):
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def predict_proba(self, X):
        """Class probabilities, (n_samples, n_classes), columns in ``classes_`` order.

        A CuPy array on the GPU backend gives a CuPy array.
        """
        check_is_fitted(self)
        outputs = self._forward(X)
        if self.n_outputs_ == 1:
            xp = self._backend().xp if on_device(outputs, self._backend()) else np
            p = outputs.ravel()
            return xp.stack([1 - p, p], axis=1)
        return outputs

    def predict_log_proba(self, X):
        """``log(predict_proba(X))``."""
        probabilities = self.predict_proba(X)
        backend = self._backend()
        return (backend.xp if on_device(probabilities, backend) else np).log(probabilities)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor, scikit-learn's, trained by gpubackprop.

    Parameters are scikit-learn's ``MLPRegressor``'s (``loss`` "squared_error"
    only; ``solver`` "sgd" or "adam"), plus ``device`` and ``dtype`` as in
    :class:`MLPClassifier`. Attributes are scikit-learn's.
    """

    _parameter_constraints: dict = {
        **_BaseMLP._parameter_constraints,
        "loss": [StrOptions({"squared_error"})],
    }

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *,
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 device="auto", dtype=None):
        self.loss = loss
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.device = device
        self.dtype = dtype

    def _output_activation(self) -> str:
        return "identity"

    def _validate_input(self, X, y, incremental, reset):
        X, y = check_training_data(self, X, y, reset=reset, y_numeric=True)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, y

    def _score_function(self, y, predictions, sample_weight=None):
        return r2_score(y, predictions, sample_weight=sample_weight)

    def _outputs_to_predictions(self, outputs):
        return outputs.ravel() if outputs.shape[1] == 1 else outputs

    def predict(self, X):
        """Predicted values, (n_samples,) or (n_samples, n_outputs); on the device for a
        device input."""
        check_is_fitted(self)
        return self._outputs_to_predictions(self._forward(X))

    @available_if(_check_solver)
    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over the given data."""
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)
