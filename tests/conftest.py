"""Fixtures shared by the test files."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The folder holding mnist/ and fashion-mnist/ IDX files (see ../shared/datasets).

    ``$GPUBACKPROP_DATA`` if set, else ``<repo>/../shared/datasets``.
    """
    folder = Path(os.environ.get("GPUBACKPROP_DATA") or REPO.parent / "shared" / "datasets")
    if not (folder / "mnist").is_dir():
        pytest.skip(f"real IDX data not found in {folder}/mnist; set GPUBACKPROP_DATA "
                    f"to the folder holding mnist/ and fashion-mnist/")
    return folder
