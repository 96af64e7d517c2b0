"""Loading real MNIST and Fashion-MNIST, and where the files are looked for."""

import numpy as np
import pytest

from gpubackprop.data import mnist
from gpubackprop.data.datasets import load_dataset, load_mnist, one_hot
from gpubackprop.errors import DataFileError, InputError

FILE_NAMES = [file_name for file_name, _ in mnist.FILES.values()]


@pytest.fixture(scope="module")
def digits(shared_datasets):
    return load_dataset("mnist", data_dir=shared_datasets, download=False)


@pytest.fixture(scope="module")
def fashion(shared_datasets):
    return load_mnist("fashion-mnist", data_dir=shared_datasets / "fashion-mnist",
                      download=False)


@pytest.mark.parametrize("which", ["digits", "fashion"])
def test_real_data_shapes_range_and_labels(request, which):
    data = request.getfixturevalue(which)
    assert data.X_train.shape == (60000, 784) and data.X_test.shape == (10000, 784)
    assert data.y_train.shape == (60000,) and data.y_test.shape == (10000,)
    assert data.X_train.dtype == data.X_test.dtype == np.float32
    assert data.y_train.dtype == data.y_test.dtype == np.int64
    for X in (data.X_train, data.X_test):
        assert X.min() == 0.0 and X.max() == 1.0
    for y in (data.y_train, data.y_test):
        assert np.array_equal(np.unique(y), np.arange(10))
    assert data.n_classes == 10 and data.image_shape == (28, 28)
    assert data.n_features == 784 and len(data.class_names) == 10


def test_names_classes_and_known_values(digits, fashion):
    assert digits.name == "mnist" and digits.class_names[7] == "7"
    assert fashion.name == "fashion-mnist"
    assert fashion.class_names == ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
    # Widely quoted first labels of each file.
    assert digits.y_train[:5].tolist() == [5, 0, 4, 1, 9]
    assert digits.y_test[:3].tolist() == [7, 2, 1]
    assert fashion.y_train[:3].tolist() == [9, 0, 0]
    # Pixels are exactly byte / 255 (checked on a slice: whole arrays cost page faults).
    head = digits.X_train[:2000]
    assert np.array_equal(np.round(head * 255) / 255, head)


def test_sha256_mismatch_names_file_and_both_checksums(shared_datasets, monkeypatch):
    wrong = dict(mnist.SHA256["mnist"], **{"t10k-labels-idx1-ubyte.gz": "0" * 64})
    monkeypatch.setitem(mnist.SHA256, "mnist", wrong)
    with pytest.raises(DataFileError) as info:
        mnist.read_mnist("mnist", data_dir=shared_datasets, download=False)
    message = str(info.value)
    assert str(shared_datasets / "mnist" / "t10k-labels-idx1-ubyte.gz") in message
    assert "expected " + "0" * 64 in message
    assert "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2" in message


def test_test_file_under_a_training_name_is_reported_by_its_shape(shared_datasets, tmp_path):
    real = shared_datasets / "mnist"
    for file_name in FILE_NAMES:
        (tmp_path / file_name).symlink_to(real / file_name.replace("train", "t10k"))
    with pytest.raises(DataFileError, match=r"train-images-idx3-ubyte.gz: expected an "
                                            r"array of shape \(60000, 28, 28\), the file "
                                            r"holds shape \(10000, 28, 28\)"):
        mnist.read_mnist("mnist", data_dir=tmp_path, download=False)


# Search order: locate() only checks that the files exist, so empty files will do.

@pytest.fixture
def places(monkeypatch, tmp_path):
    """Four candidate folders, none holding files yet, and no real ones searched."""
    folders = {key: tmp_path / key / "mnist" for key in ("arg", "env", "cache", "debian")}
    monkeypatch.setenv("GPUBACKPROP_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(mnist, "DEBIAN_DIR", tmp_path / "debian")
    folders["cache"] = tmp_path / "cache" / "gpubackprop" / "mnist"
    return folders


def fill(folder, gzipped=True):
    folder.mkdir(parents=True, exist_ok=True)
    for file_name in FILE_NAMES:
        (folder / (file_name if gzipped else file_name.removesuffix(".gz"))).touch()


def found_in(paths):
    folders = {path.parent for path in paths.values()}
    assert len(folders) == 1
    return folders.pop()


def test_argument_beats_env_beats_cache_beats_debian(places, tmp_path):
    for key in ("debian", "cache", "env", "arg"):
        fill(places[key])
        assert found_in(mnist.locate("mnist", data_dir=tmp_path / "arg",
                                     download=False)) == places[key]


def test_data_dir_may_hold_the_files_directly(places, tmp_path):
    fill(places["env"])
    fill(tmp_path / "flat", gzipped=False)
    paths = mnist.locate("mnist", data_dir=tmp_path / "flat", download=False)
    assert paths["train_images"] == tmp_path / "flat" / "train-images-idx3-ubyte"


def test_a_folder_missing_one_file_is_passed_over(places):
    fill(places["env"])
    fill(places["debian"])
    (places["env"] / "t10k-labels-idx1-ubyte.gz").unlink()
    assert found_in(mnist.locate("mnist", download=False)) == places["debian"]


def test_offline_error_names_every_folder_and_file(places, tmp_path):
    with pytest.raises(DataFileError) as info:
        load_mnist("mnist", data_dir=tmp_path / "arg", download=False)
    message = str(info.value)
    searched = [tmp_path / "arg" / "mnist", tmp_path / "arg", places["env"], places["cache"],
                places["debian"]]
    positions = [message.index(f"  {folder}\n" if folder != searched[-1] else f"  {folder}")
                 for folder in searched]
    assert positions == sorted(positions)
    assert all(file_name in message for file_name in FILE_NAMES)
    assert "download=False" in message


def test_unknown_dataset_name():
    with pytest.raises(InputError, match="unknown IDX dataset 'kmnist'"):
        mnist.locate("kmnist", download=False)


def test_one_hot():
    Y = one_hot(np.array([2, 0, 1, 2]), 3)
    assert Y.dtype == np.float32
    assert Y.tolist() == [[0, 0, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]]
    with pytest.raises(InputError, match=r"labels in \[0, 3\], outside \[0, 3\)"):
        one_hot([0, 3], 3)
