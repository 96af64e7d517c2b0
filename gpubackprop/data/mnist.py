"""Finding, downloading and verifying the MNIST and Fashion-MNIST IDX files.

Each dataset is four files. They are looked for, in order, in

1. ``data_dir/<name>`` and ``data_dir`` itself, when a ``data_dir`` is given;
2. ``$GPUBACKPROP_DATA/<name>``;
3. the user's cache, ``$XDG_CACHE_HOME/gpubackprop/<name>`` (default
   ``~/.cache/gpubackprop/<name>``);
4. ``/usr/share/datasets/<name>``, where Debian's ``dataset-fashion-mnist``
   package installs Fashion-MNIST;

and the first folder holding all four is used; otherwise they are downloaded
into the cache. A file may be gzipped (``.gz``) or not: the sha256 checked is
of the uncompressed content, which does not depend on how it was compressed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .download import fetch
from ..errors import DataFileError
from ..fileio import remove_if_empty
from .idx import MAX_IDX_BYTES, content_sha256, read_idx
from ..validation import check_choice

NAMES = ("mnist", "fashion-mnist")

#: Base URLs per dataset; a file's URL is base + file name.
MIRRORS = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/",
              "https://storage.googleapis.com/cvdf-datasets/mnist/"),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}

#: Environment variable naming mirrors of the whole data folder, whitespace
#: separated; a file's URL is base + "<name>/" + file name.
MIRROR_ENV = "GPUBACKPROP_MIRROR"
DATA_ENV = "GPUBACKPROP_DATA"
DEBIAN_DIR = Path("/usr/share/datasets")

#: Role -> (file name, shape).
FILES = {
    "train_images": ("train-images-idx3-ubyte.gz", (60000, 28, 28)),
    "train_labels": ("train-labels-idx1-ubyte.gz", (60000,)),
    "test_images": ("t10k-images-idx3-ubyte.gz", (10000, 28, 28)),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", (10000,)),
}

#: sha256 of the uncompressed content of each file.
SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte.gz":
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte.gz":
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte.gz":
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte.gz":
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz":
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte.gz":
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte.gz":
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte.gz":
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}

CLASS_NAMES = {
    "mnist": tuple(str(digit) for digit in range(10)),
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                      "Shirt", "Sneaker", "Bag", "Ankle boot"),
}


def cache_dir(name: str) -> Path:
    """``$XDG_CACHE_HOME/gpubackprop/<name>``, or ``~/.cache/gpubackprop/<name>``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gpubackprop" / name


def search_dirs(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The folders searched for dataset ``name``, in order (see the module docstring)."""
    dirs = [Path(data_dir) / name, Path(data_dir)] if data_dir is not None else []
    if os.environ.get(DATA_ENV):
        dirs.append(Path(os.environ[DATA_ENV]) / name)
    return dirs + [cache_dir(name), DEBIAN_DIR / name]


def mirror_bases(name: str, mirrors=None) -> list[str]:
    """Base URLs of dataset ``name``, each ending in "/".

    From ``mirrors`` (base URLs of this dataset) if given, else from
    ``$GPUBACKPROP_MIRROR`` (base URLs of a copy of the data folder, which
    holds ``<name>/<file>``), else :data:`MIRRORS`.
    """
    if mirrors is not None:
        bases = [mirrors] if isinstance(mirrors, str) else list(mirrors)
    elif os.environ.get(MIRROR_ENV):
        bases = [base.rstrip("/") + f"/{name}/" for base in os.environ[MIRROR_ENV].split()]
    else:
        bases = MIRRORS[name]
    return [base if base.endswith("/") else base + "/" for base in bases]


def locate(name: str, data_dir: str | os.PathLike | None = None, download: bool = True,
           mirrors=None) -> dict[str, Path]:
    """Paths of the four files of ``name``, downloading them if no folder has them all.

    Parameters
    ----------
    name : {"mnist", "fashion-mnist"}
    data_dir : str or path, optional
        Searched first, as ``data_dir/<name>`` then ``data_dir``.
    download : bool
        Download missing files into :func:`cache_dir` when no folder has all four.
    mirrors : str or list of str, optional
        Base URLs to download from instead of the defaults.

    Returns
    -------
    dict
        Role (``"train_images"``, ...) -> path of an existing file.

    Raises
    ------
    DataFileError
        Not found and not downloadable; the message lists the folders searched
        and the file names to put in one of them.
    """
    name = check_choice(name, NAMES, "IDX dataset")
    dirs = search_dirs(name, data_dir)
    for folder in dirs:
        found = {role: _existing(folder, file_name) for role, (file_name, _) in FILES.items()}
        if all(found.values()):
            return found
    if not download:
        raise DataFileError(f"{name} not found and download=False.\n"
                             f"{_where_to_put(name, dirs)}")
    target = cache_dir(name)
    # The folders a download creates, removed again if it fails and leaves them empty.
    created = [folder for folder in (*reversed(target.parents), target) if not folder.exists()]
    paths = {}
    for role, (file_name, _) in FILES.items():
        paths[role] = _existing(target, file_name)
        if paths[role] is None:
            urls = [base + file_name for base in mirror_bases(name, mirrors)]
            try:
                paths[role] = fetch(urls, target / file_name, sha256=SHA256[name][file_name],
                                    sha256_of=content_sha256, max_bytes=MAX_IDX_BYTES)
            except DataFileError as exc:
                remove_if_empty(created)
                raise DataFileError(f"{exc}\n{_where_to_put(name, dirs)}") from None
    return paths


def read_mnist(name: str = "mnist", data_dir: str | os.PathLike | None = None,
               download: bool = True, mirrors=None) -> dict[str, np.ndarray]:
    """The four arrays of ``name``, checked for shape and sha256.

    Parameters are those of :func:`locate`.

    Returns
    -------
    dict
        ``"train_images"``: uint8 (60000, 28, 28); ``"train_labels"``: uint8
        (60000,) in 0..9; ``"test_images"``: uint8 (10000, 28, 28);
        ``"test_labels"``: uint8 (10000,) in 0..9. The checksums pin the
        content, so the label range and the dtype need no check of their own.
    """
    name = check_choice(name, NAMES, "IDX dataset")
    paths = locate(name, data_dir, download, mirrors)
    return {role: read_idx(paths[role], shape=shape,
                           sha256=SHA256[name][file_name])
            for role, (file_name, shape) in FILES.items()}


def _existing(folder: Path, file_name: str) -> Path | None:
    """``folder/file_name``, or the same name without ``.gz``, if it is a file."""
    for path in (folder / file_name, folder / file_name.removesuffix(".gz")):
        if path.is_file():
            return path
    return None


def _where_to_put(name: str, dirs: list[Path]) -> str:
    files = ", ".join(file_name for file_name, _ in FILES.values())
    folders = "\n".join(f"  {folder}" for folder in dirs)
    debian = (f"\nOn Debian, apt install dataset-fashion-mnist puts them into "
              f"{DEBIAN_DIR / name}." if name == "fashion-mnist" else "")
    return (f"Supply the 4 files {files} (gzipped or not) in one of three ways: pass "
            f"--data-dir DIR (data_dir= in Python) for a folder that holds them, set "
            f"{DATA_ENV}=DIR for a folder holding {name}/, or put them into the cache folder "
            f"{cache_dir(name)} (where a download puts them). The folders searched, in "
            f"order:\n{folders}{debian}")
