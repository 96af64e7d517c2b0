"""Datasets behind one interface: :func:`load_dataset` returns a :class:`Dataset`.

``iris`` (a CSV file in this package) and ``digits`` (bundled with
scikit-learn, imported only when asked for) get a seeded, stratified
train/test split here (:func:`~.split.stratified_split`). ``mnist`` and ``fashion-mnist`` come with
their own split as IDX files, found or downloaded by :mod:`gpubackprop.data.mnist`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .mnist import CLASS_NAMES, read_mnist
from .split import stratified_split
from ..validation import check_choice, check_labels


@dataclass(frozen=True)
class Dataset:
    """Train and test arrays of one dataset.

    Attributes
    ----------
    X_train : ndarray, shape (N_train, D), float32
    y_train : ndarray, shape (N_train,), int64 class labels
    X_test : ndarray, shape (N_test, D), float32
    y_test : ndarray, shape (N_test,), int64 class labels
    n_classes : int
    image_shape : tuple of int or None
        (height, width) when each row is a flattened image.
    class_names : tuple of str
    """

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    image_shape: tuple | None = None
    class_names: tuple = ()

    @property
    def n_features(self) -> int:
        return int(self.X_train.shape[1])


#: The iris table (150 rows: four measurements in cm, then the class number).
IRIS_FILE = Path(__file__).with_name("iris.csv")
IRIS_CLASSES = ("setosa", "versicolor", "virginica")


def _split_bundled(name: str, X: np.ndarray, y: np.ndarray, class_names, test_size: float,
                   seed: int, image_shape=None) -> Dataset:
    train, test = stratified_split(y, test_size, seed)
    return Dataset(name, X[train].astype(np.float32), y[train].astype(np.int64),
                   X[test].astype(np.float32), y[test].astype(np.int64),
                   n_classes=len(class_names), image_shape=image_shape,
                   class_names=tuple(str(c) for c in class_names))


def load_iris(test_size: float = 0.3, seed: int = 0) -> Dataset:
    """Fisher's iris: 150 samples, 4 features, 3 classes; seeded stratified split."""
    table = np.loadtxt(IRIS_FILE, delimiter=",", comments="#")
    return _split_bundled("iris", table[:, :4], table[:, 4].astype(np.int64), IRIS_CLASSES,
                          test_size, seed)


def load_digits(test_size: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits scaled to [0, 1]: 1797 samples, 64 features, 10 classes."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    return _split_bundled("digits", bunch.data / 16.0, bunch.target, bunch.target_names,
                          test_size, seed, image_shape=(8, 8))


def load_mnist(name: str = "mnist", data_dir=None, download: bool = True,
               mirrors=None) -> Dataset:
    """MNIST or Fashion-MNIST: 60000 train and 10000 test images of 28x28, 10 classes.

    Parameters
    ----------
    name : {"mnist", "fashion-mnist"}
    data_dir : str or path, optional
        Searched first, as ``data_dir/<name>`` then ``data_dir``; see
        :mod:`gpubackprop.data.mnist` for the other folders searched.
    download : bool
        Download into the user's cache when no folder has the four files.
    mirrors : str or list of str, optional
        Base URLs to download from instead of the public mirrors.

    Returns
    -------
    Dataset
        ``X_*`` float32 of shape (N, 784) in [0, 1] (pixel / 255), ``y_*``
        int64 of shape (N,), ``image_shape=(28, 28)``.

    Raises
    ------
    DataFileError
        Files missing (the message says where to put them), damaged, or
        failing their sha256 check.
    """
    arrays = read_mnist(name, data_dir, download, mirrors)
    key = name.lower()
    X_train, X_test = (_unit_pixels(arrays[role]) for role in ("train_images", "test_images"))
    return Dataset(key, X_train, arrays["train_labels"].astype(np.int64),
                   X_test, arrays["test_labels"].astype(np.int64), n_classes=10,
                   image_shape=(28, 28), class_names=CLASS_NAMES[key])


def _unit_pixels(images: np.ndarray) -> np.ndarray:
    """uint8 images (N, H, W) -> float32 rows (N, H*W) in [0, 1]."""
    X = images.reshape(len(images), -1).astype(np.float32)
    X /= 255.0
    return X


LOADERS = {"iris": load_iris, "digits": load_digits,
           "mnist": load_mnist, "fashion-mnist": load_mnist}


def load_dataset(name: str, seed: int = 0, **options) -> Dataset:
    """Load a dataset by name.

    Parameters
    ----------
    name : {"iris", "digits", "mnist", "fashion-mnist"}
    seed : int
        Seed of the train/test split for datasets that have none of their own.
    **options
        Passed to the loader (``data_dir``, ``download`` for the IDX datasets).
    """
    key = check_choice(name, LOADERS, "dataset")
    if key in ("iris", "digits"):
        return LOADERS[key](seed=seed)
    return LOADERS[key](key, **options)


def one_hot(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Host one-hot encoding.

    Parameters
    ----------
    y : array_like, shape (N,)
        Integer class labels in [0, n_classes).
    n_classes : int

    Returns
    -------
    ndarray, shape (N, n_classes), float32
    """
    labels = check_labels(y, len(y), n_classes)
    Y = np.zeros((len(labels), n_classes), dtype=np.float32)
    Y[np.arange(len(labels)), labels] = 1.0
    return Y


def standardize(X_train: np.ndarray, *others: np.ndarray):
    """Scale features to zero mean, unit variance using training statistics only.

    Returns the transformed ``X_train`` followed by each of ``others``.
    """
    mean = X_train.mean(axis=0)
    std = X_train.std(axis=0)
    std[std == 0] = 1.0
    return tuple(((X - mean) / std).astype(np.float32) for X in (X_train, *others))


def validation_split(X: np.ndarray, y: np.ndarray, fraction: float, seed: int):
    """Hold out a seeded random ``fraction`` of the rows.

    Returns
    -------
    X_train, y_train, X_val, y_val
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(X))
    n_val = int(round(len(X) * fraction))
    val, train = order[:n_val], order[n_val:]
    return X[train], y[train], X[val], y[val]
