"""The CUDA sources ship inside the wheel and are found both in the source tree and installed."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import gpubackprop
from gpubackprop.backends.cupy import library as _kernels

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from this checkout with the installed build backend (no network)."""
    outdir = tmp_path_factory.mktemp("dist")
    result = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation",
                             "--outdir", str(outdir), str(REPO)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"building the wheel failed:\n{result.stdout}\n{result.stderr}"
    (path,) = outdir.glob("gpubackprop-*.whl")
    return path


def test_wheel_contains_every_kernel_source_and_header(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    where = "gpubackprop/backends/cupy/kernels"
    expected = {f"{where}/{path.name}" for path in (REPO / where).glob("*.cu")}
    assert expected, f"no {where}/*.cu in the checkout"
    assert expected >= {f"{where}/{name}" for name in _kernels.KERNEL_FILES}
    expected |= {f"{where}/{name}" for name in _kernels.HEADER_FILES}  # the generated codes
    assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"


def test_installed_wheel_finds_its_packaged_kernels(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run([sys.executable, "-c", "from gpubackprop.backends.cupy.library import "
                             "kernel_dir; print(kernel_dir())"],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == site / "gpubackprop" / "backends" / "cupy" / "kernels"


def test_source_tree_kernels_are_found():
    if not Path(gpubackprop.__file__).resolve().is_relative_to(REPO):
        pytest.skip("gpubackprop is imported from an installation, not from this checkout")
    assert _kernels.kernel_dir() == REPO / "gpubackprop" / "backends" / "cupy" / "kernels"
