"""Matrix products inside Numba code: NumPy's BLAS, SciPy's through ``np.dot``, and the fallback."""

import glob
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.numba


@pytest.fixture
def cpu_blas():
    from gpubackprop.backends.numba import blas as cpu_blas
    return cpu_blas


def blas_paths(cpu_blas):
    """The paths :func:`gemm` can take here: NumPy's BLAS only where it was found."""
    return [True, False] if cpu_blas.NUMPY_BLAS else [False]


def operands(rng, dtype, transpose_a, transpose_b):
    """A, B and ``op(A) @ op(B)``; B a block of a wider matrix (contiguous rows, longer stride)."""
    A = rng.standard_normal((40, 23)).astype(dtype)
    if transpose_a:
        A = np.ascontiguousarray(A.T)
    shape = (17, 23) if transpose_b else (23, 17)
    B = rng.standard_normal((shape[0] + 8, shape[1] + 5)).astype(dtype)[3:3 + shape[0], :shape[1]]
    expected = (A.T if transpose_a else A) @ (B.T if transpose_b else B)
    return A, B, expected


def test_numpy_blas_is_used_where_numpy_bundles_it(cpu_blas):
    folders = [os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs"),
               os.path.join(os.path.dirname(np.__file__), ".dylibs")]
    bundled = [path for folder in folders
               for path in glob.glob(os.path.join(folder, "libscipy_openblas64_*"))]
    if not bundled:
        pytest.skip("this NumPy does not bundle scipy-openblas64 (not a PyPI wheel)")
    assert cpu_blas.NUMPY_BLAS


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("transpose", [(False, False), (True, False), (False, True)],
                         ids=["A@B", "A.T@B", "A@B.T"])
def test_gemm_matches_numpy_on_every_path(cpu_blas, rng, dtype, transpose):
    A, B, expected = operands(rng, dtype, *transpose)
    for numpy_blas in blas_paths(cpu_blas):
        # C is a row block of a taller buffer, as the parallel step's dW[K_k] is.
        buffer = np.full((expected.shape[0] + 4, expected.shape[1]), np.nan, dtype)
        C = buffer[2:2 + expected.shape[0]]
        cpu_blas.gemm(A, B, C, *transpose, numpy_blas)
        tolerance = 1e-12 if dtype == "float64" else 2e-6
        error = np.abs(C - expected).max() / np.abs(expected).max()
        assert error < tolerance, f"numpy_blas={numpy_blas}: relative error {error:.1e}"
        # Only C's rows were written.
        assert np.isnan(buffer[:2]).all() and np.isnan(buffer[-2:]).all()


@pytest.mark.slow
def test_without_numpys_blas_the_stand_ins_are_bound_and_np_dot_is_used(tmp_path):
    # A fresh interpreter in which NumPy's library cannot be found: the symbols are bound to
    # stand-ins (which raise), and the parallel step still trains through np.dot.
    script = """
import glob
found = glob.glob
glob.glob = lambda pattern, *a, **k: [] if "openblas64" in pattern else found(pattern, *a, **k)
import numpy as np
from gpubackprop.backends.numba import blas as cpu_blas, parallel as cpu_parallel
assert not cpu_blas.NUMPY_BLAS and not cpu_parallel.NUMPY_BLAS
from gpubackprop.nn.model import mlp
from gpubackprop.nn.optim import get_optimizer
rng = np.random.default_rng(0)
X = rng.standard_normal((30, 9)); y = rng.integers(0, 3, 30); T = np.eye(3)[y]
model = mlp(9, [5], 3, device="numba", dtype="float64", seed=0)
plan = model.plan("cross_entropy", get_optimizer("sgd", lr=0.1), 30)
with cpu_parallel.WholeStepCompiler().compile(plan) as step:
    losses = [step(X, T, y, np.arange(30))[0] for _ in range(20)]
assert losses[-1] < losses[0], losses
print("ok", losses[0], losses[-1])
"""
    import gpubackprop

    package_root = os.path.dirname(os.path.dirname(gpubackprop.__file__))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=600, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": package_root})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok"), result.stdout
    assert "stand-in was called" not in result.stderr
