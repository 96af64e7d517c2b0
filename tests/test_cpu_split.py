"""The fused CPU backend's products and time loops split into blocks of rows (a product with
few rows: of columns), one per thread, inside a training step (backends/numba/split.py)."""

import numpy as np
import pytest

from gpubackprop.backends import get_backend
from gpubackprop.nn.model import mlp

pytestmark = pytest.mark.numba


@pytest.fixture
def numba_backend():
    import numba

    if numba.get_num_threads() < 2:
        pytest.skip("two Numba threads are needed to split")
    from gpubackprop.backends.numba.blas import NUMPY_BLAS

    if not NUMPY_BLAS:
        pytest.skip("NumPy's OpenBLAS is needed for single-threaded products in threads")
    return get_backend("numba")


@pytest.fixture(params=[1, 2], ids=["one thread", "two threads"])
def splits(monkeypatch, request):
    """(blocks, by columns) of each split product, recorded; the chooser picks one thread
    or two (the blocks are the same: two)."""
    from gpubackprop.backends.numba import split
    from gpubackprop.cpu_threads import ThreadChooser

    calls = []
    original = split.gemm_blocks
    monkeypatch.setattr(split, "gemm_blocks",
                        lambda *a: calls.append(a[-2:]) or original(*a))
    monkeypatch.setattr(ThreadChooser, "threads", lambda self: request.param)
    return calls


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("M, K, N, by_columns", [
    (129, 65, 40, False),   # an odd row count: blocks of 64 and 65 rows
    (28, 300, 129, True),   # too few rows: blocks of 64 and 65 columns
], ids=["rows", "columns"])
def test_a_split_product_is_the_product(numba_backend, splits, dtype, trans_a, trans_b, M, K,
                                        N, by_columns):
    from gpubackprop.backends.numba.blas import numpy_blas_threads

    rng = np.random.default_rng(0)
    A = rng.standard_normal((K, M) if trans_a else (M, K)).astype(dtype)
    B = rng.standard_normal((N, K) if trans_b else (K, N)).astype(dtype)
    expected = (A.T if trans_a else A) @ (B.T if trans_b else B)
    with numba_backend.step_context():
        assert numpy_blas_threads() == 1
        out = numba_backend.gemm(A, B, trans_a, trans_b)
        given = np.full_like(expected, np.nan)
        assert numba_backend.gemm(A, B, trans_a, trans_b, out=given) is given
    assert splits == [(2, by_columns)] * 2
    # The chooser's pick changes which threads run the blocks, not the arithmetic.
    assert np.array_equal(out, given)
    # Rounding grows with the sums' length and size: relative to the largest entry.
    tolerance = (1e-5 if dtype == np.float32 else 1e-12) * np.abs(expected).max()
    for result in (out, given):
        np.testing.assert_allclose(result, expected, rtol=0, atol=tolerance)


def test_products_split_only_where_they_can(numba_backend, splits):
    rng = np.random.default_rng(1)
    A, B = rng.standard_normal((128, 64)), rng.standard_normal((64, 128))
    with numba_backend.step_context():
        few = rng.standard_normal((60, 100))
        numba_backend.gemm(few, few.T.copy())                # too few rows and columns
        numba_backend.gemm(A[:, :4].copy(), B[:4, :8].copy())  # too little work (iris-sized)
        numba_backend.gemm(np.asfortranarray(A), B)          # not C-contiguous
        numba_backend.gemm(A.astype(np.float32), B)          # two dtypes
        numba_backend.gemm(A.T, A, trans_a=True, trans_b=True)  # both transposed
        with pytest.raises(ValueError):
            numba_backend.gemm(A, B.T)                       # mismatched: NumPy's error
    assert splits == []
    from gpubackprop.backends.numba.blas import numpy_blas_threads

    if (numpy_blas_threads() or 1) > 1:
        numba_backend.gemm(A, B)  # outside a step: OpenBLAS's own threads
        assert splits == []


def test_a_step_holds_numpys_blas_at_one_thread_and_gives_it_back(numba_backend):
    from gpubackprop.backends.numba.blas import numpy_blas_threads

    before = numpy_blas_threads()
    step = mlp(6, [5], 3, device=numba_backend, seed=0).compile_step("mse", "adam", 4)
    with step:
        assert numpy_blas_threads() == 1
    assert numpy_blas_threads() == before


def test_the_result_does_not_depend_on_the_threads_chosen(numba_backend, monkeypatch):
    """Resumed runs and runs beside other work stay bit-identical: the blocks are fixed."""
    from gpubackprop.cpu_threads import ThreadChooser

    rng = np.random.default_rng(2)
    A, B = rng.standard_normal((200, 300)), rng.standard_normal((300, 70))
    results = []
    for threads in (1, 2):
        monkeypatch.setattr(ThreadChooser, "threads", lambda self, _n=threads: _n)
        with numba_backend.step_context():
            results.append(numba_backend.gemm(A, B))
    assert np.array_equal(results[0], results[1])


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("settings", [
    {}, {"return_sequences": True}, {"bptt_steps": 3, "h0": "learn"},
    {"bptt_steps": 4, "return_sequences": True, "h0": "learn"}],
    ids=["many-to-one", "sequences", "truncated-learnt-h0", "truncated-sequences"])
def test_the_gated_time_loops_compiled_by_rows_are_the_reference_loops(
        numba_backend, monkeypatch, settings, threads, kind):
    """The fused CPU backend runs the LSTM's and GRU's time loops whole, a block of rows
    per thread: outputs, input and weight gradients and the initial states' gradients are
    those of the NumPy backend's loops, whichever thread count the chooser picks."""
    from gpubackprop import GRU, LSTM, Sequential
    from gpubackprop.backends.numba import gated
    from gpubackprop.cpu_threads import ThreadChooser

    calls = []
    for name in (f"{kind}_forward_split", f"{kind}_backward_split"):
        original = getattr(gated, name)
        monkeypatch.setattr(gated, name, lambda *a, _f=original, _n=name: calls.append(
            (_n, a[-1])) or _f(*a))
    monkeypatch.setattr(ThreadChooser, "threads", lambda self: threads)
    X = np.random.default_rng(0).standard_normal((37, 9, 5))
    results = {}
    for device in (numba_backend, "numpy"):
        layer_type = {"lstm": LSTM, "gru": GRU}[kind]
        model = Sequential([layer_type(6, **settings)], n_inputs=5, device=device,
                           dtype="float64", seed=1, input_grad=True)
        layer = model.layers[0]
        with model.compile_step("mse", "sgd", 37):
            Y = layer.forward(X, train=True)
            dX = layer.backward(np.random.default_rng(2).standard_normal(Y.shape))
        results[device if isinstance(device, str) else "numba"] = (
            Y.copy(), dX.copy(), {name: G.copy() for name, G in layer.grads.items()})
    assert calls == [(f"{kind}_forward_split", 2), (f"{kind}_backward_split", 2)]
    (Y, dX, grads), (Y_ref, dX_ref, grads_ref) = results["numba"], results["numpy"]
    np.testing.assert_allclose(Y, Y_ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dX, dX_ref, rtol=1e-12, atol=1e-13)
    assert grads.keys() == grads_ref.keys()
    for name in grads:
        np.testing.assert_allclose(grads[name], grads_ref[name], rtol=1e-12, atol=1e-13,
                                   err_msg=name)
