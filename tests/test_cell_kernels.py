"""The CuPy backend's fused LSTM and GRU cell kernels against the generic methods.

Each override of ``kernels/recurrent_cells.cu`` runs on a real GPU where one is
usable and, everywhere, on the emulated CuPy backend, and must agree with the
generic NumPy method (the reference; tests/test_gated_recurrent.py checks it
against PyTorch) within the parity check's elementwise tolerances, with states
of more elements than one launch grid so the grid-stride loops run more than
once. Each test also checks that the kernel ran, once per call, rather than the
fallback; the fallback tests check the reverse for inputs a kernel cannot take.
"""

import numpy as np
import pytest

from gpubackprop.backends import NumpyBackend, get_backend
from gpubackprop.verify.parity import TOLERANCES

DTYPES = [np.float32, np.float64]


@pytest.fixture(scope="module", params=[pytest.param("gpu", id="cupy", marks=pytest.mark.gpu),
                                        pytest.param("emulated", id="cupy-emulated")])
def gpu(request):
    """The CuPy backend on the GPU, or emulated on the CPU."""
    if request.param == "emulated":
        return request.getfixturevalue("emulated_gpu")
    return get_backend("gpu")


@pytest.fixture(scope="module")
def cpu():
    return NumpyBackend()


@pytest.fixture
def launches(gpu, monkeypatch):
    """The names of the kernels ``gpu`` launches during the test, in order."""
    names = []
    launch = gpu._launch

    def recording(name, *args):
        names.append(name)
        return launch(name, *args)

    monkeypatch.setattr(gpu, "_launch", recording)
    return names


def _sizes(gpu) -> tuple[int, int]:
    """(N, H) with N H above the threads of one grid, H odd so rows straddle blocks."""
    from gpubackprop.backends.cupy.backend import BLOCK

    grid = gpu.max_blocks * BLOCK
    n_rows, n_cols = 257, grid // 256 + 13
    assert n_rows * n_cols > grid
    return n_rows, n_cols


def _random(shape, dtype, scale=1.0, seed=0):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(dtype)


def _check(gpu, actual, expected, dtype, what):
    rtol, atol = TOLERANCES[(np.dtype(dtype).name, "elementwise")]
    np.testing.assert_allclose(gpu.to_numpy(actual), expected, rtol=rtol, atol=atol,
                               err_msg=what)


def _lstm_step(cpu, N, H, dtype):
    """Host arrays of one LSTM step: G, c_prev and the generic forward's h, c, gates."""
    G, c_prev = _random((N, 4 * H), dtype, 2.0), _random((N, H), dtype, seed=1)
    h, c, gates = np.empty((N, H), dtype), np.empty((N, H), dtype), np.empty((N, 4 * H), dtype)
    cpu.lstm_cell_forward(G, c_prev, h, c, gates)
    return G, c_prev, h, c, gates


def _gru_step(cpu, N, H, dtype):
    """Host arrays of one GRU step: Gx, Gh, h_prev and the generic forward's h, gates."""
    Gx, Gh = _random((N, 3 * H), dtype, 2.0), _random((N, 3 * H), dtype, 2.0, seed=1)
    h_prev = _random((N, H), dtype, seed=2)
    h, gates = np.empty((N, H), dtype), np.empty((N, 4 * H), dtype)
    cpu.gru_cell_forward(Gx, Gh, h_prev, h, gates)
    return Gx, Gh, h_prev, h, gates


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("in_place", [False, True], ids=["new arrays", "in place"])
def test_lstm_cell_forward(gpu, cpu, launches, dtype, in_place):
    N, H = _sizes(gpu)
    G, c_prev, h, c, gates = _lstm_step(cpu, N, H, dtype)
    G_d, c_prev_d = gpu.asarray(G), gpu.asarray(c_prev)
    # In place: the gates over the pre-activations and c_t over c_{t-1}, as the contract allows.
    gates_d = G_d if in_place else gpu.empty((N, 4 * H), dtype)
    c_d = c_prev_d if in_place else gpu.empty((N, H), dtype)
    h_d = gpu.empty((N, H), dtype)
    out = gpu.lstm_cell_forward(G_d, c_prev_d, h_d, c_d, gates_d)
    assert launches == ["lstm_cell_forward"]
    assert out[0] is h_d and out[1] is c_d and out[2] is gates_d
    for name, actual, expected in (("h", h_d, h), ("c", c_d, c), ("gates", gates_d, gates)):
        _check(gpu, actual, expected, dtype, name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("in_place", [False, True], ids=["new arrays", "in place"])
def test_lstm_cell_backward(gpu, cpu, launches, dtype, in_place):
    N, H = _sizes(gpu)
    _G, c_prev, _h, c, gates = _lstm_step(cpu, N, H, dtype)
    dh, dc = _random((N, H), dtype, seed=3), _random((N, H), dtype, seed=4)
    dG, dc_prev = np.empty((N, 4 * H), dtype), np.empty((N, H), dtype)
    cpu.lstm_cell_backward(dh, dc, gates, c_prev, c, dG, dc_prev)
    dc_d = gpu.asarray(dc)
    # In place: dc_{t-1} over dc_t, as the contract allows.
    dc_prev_d = dc_d if in_place else gpu.empty((N, H), dtype)
    dG_d = gpu.empty((N, 4 * H), dtype)
    out = gpu.lstm_cell_backward(gpu.asarray(dh), dc_d, gpu.asarray(gates), gpu.asarray(c_prev),
                                 gpu.asarray(c), dG_d, dc_prev_d)
    assert launches == ["lstm_cell_backward"]
    assert out[0] is dG_d and out[1] is dc_prev_d
    _check(gpu, dG_d, dG, dtype, "dG")
    _check(gpu, dc_prev_d, dc_prev, dtype, "dc_prev")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("in_place", [False, True], ids=["new arrays", "in place"])
def test_gru_cell_forward(gpu, cpu, launches, dtype, in_place):
    N, H = _sizes(gpu)
    Gx, Gh, h_prev, h, gates = _gru_step(cpu, N, H, dtype)
    h_prev_d = gpu.asarray(h_prev)
    # In place: h_t over h_{t-1}, as the contract allows.
    h_d = h_prev_d if in_place else gpu.empty((N, H), dtype)
    gates_d = gpu.empty((N, 4 * H), dtype)
    out = gpu.gru_cell_forward(gpu.asarray(Gx), gpu.asarray(Gh), h_prev_d, h_d, gates_d)
    assert launches == ["gru_cell_forward"]
    assert out[0] is h_d and out[1] is gates_d
    _check(gpu, h_d, h, dtype, "h")
    _check(gpu, gates_d, gates, dtype, "gates")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("in_place", [False, True], ids=["new arrays", "in place"])
def test_gru_cell_backward(gpu, cpu, launches, dtype, in_place):
    N, H = _sizes(gpu)
    _Gx, _Gh, h_prev, _h, gates = _gru_step(cpu, N, H, dtype)
    dh = _random((N, H), dtype, seed=3)
    dGx, dGh, dh_prev = (np.empty((N, 3 * H), dtype), np.empty((N, 3 * H), dtype),
                         np.empty((N, H), dtype))
    cpu.gru_cell_backward(dh, gates, h_prev, dGx, dGh, dh_prev)
    dh_d = gpu.asarray(dh)
    # In place: the direct share of dh_{t-1} over dh_t, as the contract allows.
    dh_prev_d = dh_d if in_place else gpu.empty((N, H), dtype)
    dGx_d, dGh_d = gpu.empty((N, 3 * H), dtype), gpu.empty((N, 3 * H), dtype)
    out = gpu.gru_cell_backward(dh_d, gpu.asarray(gates), gpu.asarray(h_prev), dGx_d, dGh_d,
                                dh_prev_d)
    assert launches == ["gru_cell_backward"]
    assert out[0] is dGx_d and out[1] is dGh_d and out[2] is dh_prev_d
    for name, actual, expected in (("dGx", dGx_d, dGx), ("dGh", dGh_d, dGh),
                                   ("dh_prev", dh_prev_d, dh_prev)):
        _check(gpu, actual, expected, dtype, name)


# ----------------------------------------------------------------- fallbacks
def _strided(gpu, A):
    """``A`` on the device as a non-contiguous view (every other column of a wider array)."""
    wide = np.zeros((A.shape[0], 2 * A.shape[1]), A.dtype)
    wide[:, ::2] = A
    return gpu.asarray(wide)[:, ::2]


@pytest.mark.parametrize("case", ["non-contiguous", "float16", "one float64 argument",
                                  "wrong gate width"])
def test_lstm_cell_forward_falls_back_where_the_kernel_cannot_serve(gpu, cpu, launches, case):
    N, H = 6, 5
    dtype = np.float16 if case == "float16" else np.float32
    G, c_prev, h, c, gates = _lstm_step(cpu, N, H, dtype)
    G_d = _strided(gpu, G) if case == "non-contiguous" else gpu.asarray(G)
    c_prev_d = gpu.asarray(c_prev.astype(np.float64) if case == "one float64 argument"
                           else c_prev)
    gates_d = gpu.empty((N, 4 * H), dtype)
    h_d, c_d = gpu.empty((N, H), dtype), gpu.empty((N, H), dtype)
    if case == "wrong gate width":
        # Gates of width 4H + 1 are not an LSTM's: the generic method's slices decide.
        G_d = gpu.asarray(np.concatenate([G, G[:, :1]], axis=1))
        gates_d = gpu.empty((N, 4 * H + 1), dtype)
    gpu.lstm_cell_forward(G_d, c_prev_d, h_d, c_d, gates_d)
    assert launches == []
    rtol = 1e-2 if dtype == np.float16 else 1e-5
    np.testing.assert_allclose(gpu.to_numpy(h_d), h, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(gpu.to_numpy(c_d), c, rtol=rtol, atol=rtol)


def test_gru_cell_backward_falls_back_for_a_non_contiguous_gradient(gpu, cpu, launches):
    N, H = 6, 5
    _Gx, _Gh, h_prev, _h, gates = _gru_step(cpu, N, H, np.float64)
    dh = _random((N, H), np.float64, seed=3)
    expected = [np.empty((N, 3 * H)), np.empty((N, 3 * H)), np.empty((N, H))]
    cpu.gru_cell_backward(dh, gates, h_prev, *expected)
    outputs = [gpu.empty((N, 3 * H), np.float64), gpu.empty((N, 3 * H), np.float64),
               gpu.empty((N, H), np.float64)]
    gpu.gru_cell_backward(_strided(gpu, dh), gpu.asarray(gates), gpu.asarray(h_prev), *outputs)
    assert launches == []
    for actual, wanted in zip(outputs, expected):
        np.testing.assert_allclose(gpu.to_numpy(actual), wanted, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------ training
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_training_runs_the_cell_kernels_and_matches_numpy(monkeypatch, gpu, launches, kind,
                                                         dtype):
    import gpubackprop
    from gpubackprop import Linear, Sequential
    from gpubackprop.backends.cupy.graphs import GRAPHS_ENV
    from gpubackprop.training.trainer import Trainer

    # Launches are counted as Python issues them: every step unrecorded (a replayed CUDA
    # graph relaunches its recorded kernels without Python; tests/test_cuda_graphs_eager.py).
    monkeypatch.setenv(GRAPHS_ENV, "0")

    N, T, D, H, batch, epochs = 48, 7, 5, 33, 16, 2
    layer = getattr(gpubackprop, kind)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=N)
    X = (rng.standard_normal((3, T, D))[labels] + rng.standard_normal((N, T, D))).astype(dtype)
    trained = []
    for device in ("numpy", gpu):
        # Two stacked layers: many-to-many with learnt initial states into many-to-one.
        model = Sequential([layer(H, return_sequences=True, h0="learn"), layer(H), Linear(3)],
                           n_inputs=D, device=device, dtype=np.dtype(dtype).name, seed=0)
        Trainer(model, optimizer="sgd", lr=0.5, batch_size=batch, shuffle=False,
                verbose=0).fit(X, labels, epochs=epochs)
        trained.append({name: model.backend.to_numpy(W) for name, W in model.parameters().items()})
    # Every step of both layers went through the kernels, once each way.
    steps = 2 * T * (N // batch) * epochs
    name = kind.lower()
    assert launches.count(f"{name}_cell_backward") == steps
    assert launches.count(f"{name}_cell_forward") >= steps
    rtol, atol = TOLERANCES[(np.dtype(dtype).name, "gemm")]
    expected, actual = trained
    assert sorted(actual) == sorted(expected)
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=rtol, atol=atol, err_msg=name)
