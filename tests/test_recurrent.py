"""The Elman RNN and backpropagation through time, on every usable backend.

The ``backend`` fixture (tests/conftest.py) runs each test on NumPy and, where a
GPU is usable, on CuPy (marked ``gpu``).
"""

import json
import re

import numpy as np
import pytest

from gpubackprop import (RNN, InputError, Linear, Sequential, TimeDistributed,
                         TrainingDivergedError)
from gpubackprop.cli.main import main
from gpubackprop.verify.gradient_check import check_backward, check_layer, check_model
from gpubackprop.nn.layers import layer_from_config
from gpubackprop.nn.losses import MeanSquaredError, SoftmaxCrossEntropy
from gpubackprop.nn.precision import Precision
from gpubackprop.cli.pipeline import TrainConfig
from gpubackprop.data.sequences import adding_problem, sine_next_step
from gpubackprop.training.trainer import Trainer

N, T, D, H = 2, 6, 3, 4  # the gradient checks run through T = 6 time steps


def built(backend, layer, n_in=D, seed=1):
    """``layer`` built in float64 with a non-zero bias (and learnt h0) to exercise them."""
    rng = np.random.default_rng(seed)
    layer.build(backend, (None, n_in), rng, Precision.uniform("float64"))
    layer.params["b"][...] = backend.asarray(rng.normal(0, 0.2, layer.units))
    if "h0" in layer.params:
        layer.params["h0"][...] = backend.asarray(rng.normal(0, 0.5, layer.units))
    return layer


def host(backend, array):
    return backend.to_numpy(array)


def data(backend, *shape, seed=0):
    return backend.asarray(np.random.default_rng(seed).standard_normal(shape))


# ------------------------------------------------------------------ forward
def test_backprop_activation_may_write_into_dY(backend):
    """The RNN converts dh_t to dz_t in place, as the backend's contract allows."""
    Y = data(backend, 3, 5, seed=1) * 0.5
    dY = data(backend, 3, 5, seed=2)
    for name in ("tanh", "sigmoid"):
        expected = host(backend, backend.backprop_activation(dY, Y, name))
        inplace = dY.copy()
        backend.backprop_activation(inplace, Y, name, out=inplace)
        np.testing.assert_allclose(host(backend, inplace), expected, rtol=1e-12)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
def test_forward_is_the_elman_recurrence(backend, activation):
    layer = built(backend, RNN(H, activation, return_sequences=True, h0="learn"))
    X = data(backend, N, T, D)
    Y = host(backend, layer.forward(X, train=False))
    W, U, b, h = (host(backend, layer.params[k]) for k in ("W", "U", "b", "h0"))
    f = np.tanh if activation == "tanh" else (lambda z: 1 / (1 + np.exp(-z)))
    h = np.broadcast_to(h, (N, H))
    for t in range(T):
        h = f(host(backend, X)[:, t] @ W + h @ U + b)
        np.testing.assert_allclose(Y[:, t], h, rtol=1e-12, atol=1e-14)
    last = built(backend, RNN(H, activation, h0="learn"))
    assert last.forward(X, train=False).shape == (N, H)
    np.testing.assert_allclose(host(backend, last.forward(X, train=False)), Y[:, -1], rtol=1e-12)


def test_initialisation_is_seeded_xavier_and_orthogonal(backend):
    first, second = (built(backend, RNN(8), n_in=5, seed=3) for _ in range(2))
    U = host(backend, first.params["U"])
    np.testing.assert_allclose(U @ U.T, np.eye(8), atol=1e-12)
    assert np.abs(host(backend, first.params["W"])).max() <= np.sqrt(6 / (5 + 8))
    for name in ("W", "U"):
        np.testing.assert_array_equal(host(backend, first.params[name]),
                                      host(backend, second.params[name]))


# --------------------------------------------------------- gradient checks
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("h0", ["zeros", "learn"])
@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
def test_gradient_check_full_bptt(backend, return_sequences, h0, activation):
    layer = built(backend, RNN(H, activation, return_sequences=return_sequences, h0=h0))
    errors = check_layer(layer, data(backend, N, T, D), rtol=1e-6)
    assert set(errors) == {"X", "W", "U", "b"} | ({"h0"} if h0 == "learn" else set())


@pytest.mark.parametrize("return_sequences", [False, True])
def test_gradient_check_given_initial_state(backend, return_sequences):
    layer = built(backend, RNN(H, return_sequences=return_sequences))
    layer.needs_input_grad = True
    X, H0 = data(backend, N, T, D), data(backend, N, H, seed=1)
    Y = layer.forward(X, h0=H0)
    R = data(backend, *Y.shape, seed=2)
    dX = layer.backward(R.copy())
    analytic = {"X": dX, "h0 given": layer.dh0, **layer.grads}

    def loss():
        return float((layer.forward(X, train=False, h0=H0) * R).sum())

    errors = check_backward(loss, {"X": X, "h0 given": H0, **layer.params}, analytic, rtol=1e-6)
    assert max(errors.values()) <= 1e-6


def test_gradient_check_models(backend):
    """Stacked RNNs, a many-to-one classifier and a per-step (TimeDistributed) readout."""
    X = data(backend, N, T, D)
    classifier = Sequential([RNN(5, return_sequences=True), RNN(H, h0="learn"), Linear(3)],
                            n_inputs=D, device=backend, dtype="float64", seed=2)
    labels = backend.asarray(np.array([0, 2]))
    check_model(classifier, SoftmaxCrossEntropy(), X, backend.one_hot(labels, 3, np.float64))
    per_step = Sequential([RNN(H, return_sequences=True, h0="learn"), TimeDistributed(Linear(2))],
                          n_inputs=D, device=backend, dtype="float64", seed=3)
    assert per_step.forward(X).shape == (N, T, 2)
    check_model(per_step, MeanSquaredError(), X, data(backend, N, T, 2, seed=4))


# ------------------------------------------------------------- truncation
def gradients(layer, X, R):
    layer.needs_input_grad = True
    layer.forward(X)
    dX = layer.backward(R.copy())
    backend = layer.backend
    return {"X": host(backend, dX), **{k: host(backend, g) for k, g in layer.grads.items()}}


@pytest.mark.parametrize("return_sequences", [False, True])
def test_truncation_to_at_least_T_steps_is_full_bptt(backend, return_sequences):
    X = data(backend, N, T, D)
    R = data(backend, *((N, T, H) if return_sequences else (N, H)), seed=1)
    full = gradients(built(backend, RNN(H, return_sequences=return_sequences, h0="learn")), X, R)
    for k in (T, T + 3):
        cut = gradients(built(backend, RNN(H, return_sequences=return_sequences, h0="learn",
                                           bptt_steps=k)), X, R)
        for name in full:
            np.testing.assert_array_equal(cut[name], full[name])


@pytest.mark.parametrize("k", [1, 2, 4])
def test_truncated_many_to_one_is_bptt_of_the_last_k_steps(backend, k):
    """With k < T the gradient is that of the last k steps started from a fixed h_{T-k-1}."""
    layer = built(backend, RNN(H, h0="learn", bptt_steps=k))
    X = data(backend, N, T, D)
    R = data(backend, N, H, seed=1)
    truncated = gradients(layer, X, R)
    # The earlier steps and the initial state receive nothing.
    assert not truncated["X"][:, :T - k].any() and not truncated["h0"].any()
    # Reference: numerical gradient of the tail, its start state held constant.
    start = layer.forward(X[:, :T - k], train=False).copy()
    tail = X[:, T - k:].copy()

    def loss():
        return float((layer.forward(tail, train=False, h0=start) * R).sum())

    arrays = {"X tail": tail, **{k_: layer.params[k_] for k_ in ("W", "U", "b")}}
    analytic = {"X tail": truncated["X"][:, T - k:],
                **{k_: truncated[k_] for k_ in ("W", "U", "b")}}
    check_backward(loss, arrays, analytic, rtol=1e-6)
    full = gradients(built(backend, RNN(H, h0="learn")), X, R)
    assert np.abs(full["U"] - truncated["U"]).max() > 1e-3


@pytest.mark.parametrize("k", [2, 4])
def test_truncated_many_to_many_is_blockwise_bptt(backend, k):
    """Blocks of k steps counted back from the end; each block backpropagates to its start
    state, held constant, except the first, which reaches the (learnt) h0."""
    layer = built(backend, RNN(H, return_sequences=True, h0="learn", bptt_steps=k))
    X = data(backend, N, T, D)
    R = data(backend, N, T, H, seed=1)
    truncated = gradients(layer, X, R)
    States = layer.forward(X, train=False).copy()
    starts = list(range(T - k, 0, -k))[::-1]
    bounds = list(zip([0] + starts, starts + [T]))

    def loss():
        total = 0.0
        for begin, end in bounds:
            h0 = States[:, begin - 1] if begin else None
            Y = layer.forward(X[:, begin:end], train=False, h0=h0)
            total += float((Y * R[:, begin:end]).sum())
        return total

    check_backward(loss, {"X": X, **layer.params}, truncated, rtol=1e-6)


# ------------------------------------------------------------- bad input
def test_clear_errors_for_bad_input(backend):
    layer = built(backend, RNN(H))
    with pytest.raises(InputError, match=r"\(N, time steps, features\)"):
        layer.forward(data(backend, N, D))
    with pytest.raises(InputError, match="5 features per time step.*built for 3"):
        layer.forward(data(backend, N, T, 5))
    with pytest.raises(InputError, match=r"initial state must have shape \(2, 4\)"):
        layer.forward(data(backend, N, T, D), h0=data(backend, N, H + 1))
    with pytest.raises(InputError, match="RNN activation"):
        RNN(H, activation="relu")
    with pytest.raises(InputError, match="bptt_steps"):
        RNN(H, bptt_steps=0)
    with pytest.raises(InputError, match="initial state"):
        RNN(H, h0="random")
    model = Sequential([RNN(H), Linear(2)], n_inputs=D, device=backend)
    trainer = Trainer(model, verbose=0)
    assert model.input_ndim == 3
    with pytest.raises(InputError, match=r"X must have shape \(N, time steps, features\)"):
        trainer.fit(np.zeros((4, D)), np.zeros(4, dtype=int))
    X = np.zeros((4, T, D))
    X[1, 2, 0] = np.nan
    with pytest.raises(InputError, match=r"NaN.*nan at row 1, step 2, feature 0"):
        trainer.fit(X, np.zeros(4, dtype=int))


def test_layers_rebuild_from_config():
    for layer in (RNN(7, "sigmoid", return_sequences=True, bptt_steps=3, h0="learn"),
                  TimeDistributed(Linear(2, "tanh"))):
        rebuilt = layer_from_config(layer.config())
        assert type(rebuilt) is type(layer) and rebuilt.config() == layer.config()


# ------------------------------------------------------------- training
# Adding problem: predicting the mean gives MSE 1/6, the RNN must remember two marked values.
# Next-step sine: predicting 0 gives MSE 0.5.
@pytest.mark.parametrize("task, steps, n_inputs, lr, epochs, max_mse", [
    (adding_problem, 10, 2, 3e-3, 15, 0.04),
    (sine_next_step, 20, 1, 5e-3, 8, 2e-3),
], ids=["adding_problem", "sine_next_step"])
def test_learns_a_sequence_task(backend, task, steps, n_inputs, lr, epochs, max_mse):
    X, y = task(2000, steps, seed=0)
    X_test, y_test = task(500, steps, seed=100)
    model = Sequential([RNN(16), Linear(1)], n_inputs=n_inputs, device=backend, seed=0)
    trainer = Trainer(model, loss="mse", lr=lr, batch_size=32, clip_norm=1.0, verbose=0)
    trainer.fit(X, y, epochs=epochs)
    assert trainer.evaluate(X_test, y_test)["loss"] < max_mse


def exploding_model(backend):
    """T=50 sequences through an RNN whose U has spectral radius 3 (and large W)."""
    model = Sequential([RNN(16), Linear(1)], n_inputs=2, device=backend, seed=0)
    model.layers[0].params["U"] *= 3
    model.layers[0].params["W"] *= 3
    return model


def test_clip_norm_keeps_long_sequences_finite(backend):
    X, y = adding_problem(256, 50, seed=0)
    model = exploding_model(backend)
    Y = model.forward(backend.asarray(X[:32]))
    _, dY = MeanSquaredError()(backend, Y, backend.asarray(y[:32]))
    model.backward(dY)
    norm = np.sqrt(sum(float((g * g).sum()) for g in model.gradients().values()))
    assert norm > 1e3  # the gradients do explode
    trainer = Trainer(model, loss="mse", optimizer="sgd", lr=1.0, batch_size=32,
                      clip_norm=1.0, verbose=0)
    history = trainer.fit(X, y, epochs=3)
    # Clipped, the training stays bounded, but its path is chaotic (spectral radius 3):
    # float32 rounding that differs between backends moves the largest batch loss by
    # order one (up to 11 seen), so the bound is loose. Unclipped, it diverges.
    assert np.all(np.isfinite(history.loss)) and max(history.loss) < 100
    unclipped = Trainer(exploding_model(backend), loss="mse", optimizer="sgd", lr=1.0,
                        batch_size=32, verbose=0)
    with pytest.raises(TrainingDivergedError), np.errstate(over="ignore", invalid="ignore"):
        unclipped.fit(X, y, epochs=3)
    assert all(np.isfinite(host(backend, W)).all() for W in model.parameters().values())


def test_divergence_names_epoch_and_batch(backend):
    X, y = adding_problem(256, 50, seed=0)
    trainer = Trainer(exploding_model(backend), loss="mse", optimizer="sgd", lr=1.0,
                      batch_size=32, verbose=0)
    with np.errstate(over="ignore", invalid="ignore"):
        with pytest.raises(TrainingDivergedError) as caught:
            trainer.fit(X, y, epochs=3)
    assert re.search(r"in epoch \d+, batch \d+", str(caught.value))


# ------------------------------------------------------------- pipeline
def test_cli_trains_an_rnn_on_digit_rows(tmp_path, capsys):
    """8x8 digits read as 8 steps of 8 pixels (93% measured after 5 epochs)."""
    assert main(["train", "digits", "--model", "rnn", "--epochs", "5", "--device", "cpu",
                 "--quiet", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "history.json").read_text())
    assert summary["config"]["model"] == "rnn" and summary["config"]["clip_norm"] == 1.0
    assert summary["test_accuracy"] >= 0.9


def test_rnn_presets_and_their_errors():
    config = TrainConfig.for_dataset("mnist", model="rnn", lr=5e-4)
    assert (config.model, config.hidden, config.activation, config.lr) == ("rnn", [128], "tanh",
                                                                           5e-4)
    assert TrainConfig.for_dataset("mnist").model == "mlp"
    with pytest.raises(InputError, match="'iris' has no images"):
        TrainConfig.for_dataset("iris", model="rnn")
    with pytest.raises(InputError, match="recurrent models only"):
        TrainConfig.for_dataset("digits", bptt_steps=4)
    with pytest.raises(InputError, match="unknown model 'transformer'"):
        TrainConfig.for_dataset("digits", model="transformer")


# ------------------------------------------- compiled time loops and reused buffers
@pytest.mark.numba
@pytest.mark.parametrize("dtype, rtol", [("float32", 2e-5), ("float64", 1e-12)])
@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
@pytest.mark.parametrize("first, block, to_h0", [(0, 7, True), (0, 7, False), (0, 3, True),
                                                 (4, 3, False), (0, 1, True)])
@pytest.mark.parametrize("many_to_one", [False, True], ids=["dZ given", "last given"])
@pytest.mark.parametrize("zero_start", [False, True], ids=["h0", "zero h0"])
def test_compiled_time_loops_match_the_generic_loops(monkeypatch, dtype, rtol, activation,
                                                     first, block, to_h0, many_to_one,
                                                     zero_start):
    """Outputs, dz_t and dh0 of the compiled loops and the generic ones; with the last
    step's gradient alone given, dZ's values on entry (NaN here) are not read, and the
    steps before ``first`` come out zero; from a zero initial state the compiled loop
    skips step 0's product (the generic one here makes it)."""
    from gpubackprop.backends import get_backend
    from gpubackprop.backends.numba import recurrent as compiled

    fused, reference = get_backend("numba"), get_backend("numpy")
    calls = []
    for name in ("forward", "backward"):
        original = getattr(compiled, name)
        monkeypatch.setattr(compiled, name,
                            lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a))
    rng = np.random.default_rng(3)
    steps, n, h = 7, 5, 6
    XW = rng.standard_normal((steps, n, h)).astype(dtype)
    U = (rng.standard_normal((h, h)) / np.sqrt(h)).astype(dtype)
    b = rng.standard_normal(h).astype(dtype)
    dZ = rng.standard_normal((steps, n, h)).astype(dtype)
    results = []
    for backend in (fused, reference):
        States = np.empty((steps + 1, n, h), dtype)
        if zero_start:
            States[0] = 0
        else:
            States[0] = rng.standard_normal((n, h)) if backend is fused else results[0][0][0]
        backend.recurrent_forward(XW, U, b, States, activation, zero_start and backend is fused)
        db = np.full(h, np.nan, dtype)
        if many_to_one:
            grads = np.full_like(dZ, np.nan)
            dh0 = backend.recurrent_backward(grads, States, U, activation, first, block, to_h0,
                                             last=dZ[-1].copy(), db=db)
        else:
            grads = dZ.copy()
            dh0 = backend.recurrent_backward(grads, States, U, activation, first, block, to_h0,
                                             db=db)
        results.append((States, grads, dh0, db))
    (S_f, G_f, h0_f, db_f), (S_r, G_r, h0_r, db_r) = results
    # The bias gradient: dZ as it is when done, summed over steps and rows (the compiled
    # loop sums each block of rows as it goes).
    np.testing.assert_allclose(db_r, G_r.sum(axis=(0, 1)), rtol=rtol, atol=rtol)
    np.testing.assert_allclose(db_f, db_r, rtol=rtol, atol=rtol)
    assert calls == ["forward", "backward"]
    np.testing.assert_allclose(S_f, S_r, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(G_f, G_r, rtol=rtol, atol=rtol)
    if many_to_one:
        assert not G_f[:first].any() and not G_r[:first].any()
    assert (h0_f is None) == (h0_r is None) == (not to_h0 or first > 0)
    if h0_r is not None:
        np.testing.assert_allclose(h0_f, h0_r, rtol=rtol, atol=rtol)


def test_training_passes_reuse_their_buffers_and_inference_outputs_stay(backend):
    layer = built(backend, RNN(H, return_sequences=True))
    X1, X2 = data(backend, N, T, D, seed=1), data(backend, N, T, D, seed=2)
    kept = layer.forward(X1, train=False)
    expected = host(backend, kept).copy()
    layer.forward(X1, train=True)
    states = layer._H
    layer.backward(data(backend, N, T, H, seed=3))
    layer.forward(X2, train=True)
    assert layer._H is states  # the same buffer for the same batch shape
    np.testing.assert_array_equal(host(backend, kept), expected)
    # A shorter batch gets buffers of its own; the full-size ones are kept for the next.
    layer.forward(X2[:1], train=True)
    assert layer._H is not states
    layer.forward(X1, train=True)
    assert layer._H is states


@pytest.mark.numba
def test_float32_tanh_of_the_compiled_loops_is_within_5_ulp():
    from gpubackprop.backends.numba.recurrent import tanh_float32

    x = np.concatenate([np.linspace(-12, 12, 200_001, dtype=np.float32),
                        np.float32(10.0) ** np.linspace(-8, 1, 20_001, dtype=np.float32)])
    x = np.concatenate([x, -x])
    got = np.array([tanh_float32(v) for v in x], dtype=np.float64)
    exact = np.tanh(x.astype(np.float64))
    ulp = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(got - exact) / ulp) <= 5
    assert np.isnan(tanh_float32(np.float32("nan")))
    assert tanh_float32(np.float32("inf")) == pytest.approx(1, abs=3e-7)
    assert tanh_float32(np.float32(0)) == 0


@pytest.mark.numba
@pytest.mark.parametrize("chosen", [1, 2])
def test_compiled_passes_run_on_the_row_blocks_their_chooser_picks(monkeypatch, chosen):
    """A block of rows per thread, run on the threads the chooser picks; every product
    inside single-threaded; the NumPy backend's result."""
    import numba

    from gpubackprop.backends import get_backend
    from gpubackprop.cpu_threads import ThreadChooser
    from gpubackprop.backends.numba import blas, recurrent as compiled

    threads = numba.get_num_threads()
    if threads != 2:
        pytest.skip("exactly two Numba threads are needed to split the rows in two")
    before = blas.numpy_blas_threads()
    seen = []
    for name in ("_forward_split", "_backward_split"):
        original = getattr(compiled, name)
        monkeypatch.setattr(compiled, name, lambda *a, _f=original, _name=name: seen.append(
            (_name, a[-1], blas.numpy_blas_threads(), numba.get_num_threads())) or _f(*a))
    monkeypatch.setattr(ThreadChooser, "threads", lambda self: chosen)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((N, T, D)).astype(np.float32)
    dY = rng.standard_normal((N, H)).astype(np.float32)
    results = {}
    for name in ("numba", "numpy"):
        layer = RNN(H)
        layer.build(get_backend(name), (None, D), np.random.default_rng(0),
                    Precision.uniform("float32"))
        results[name] = (layer.forward(X, train=True).copy(), layer.backward(dY).copy(),
                         layer.grads["U"].copy())
    # The same two blocks of rows either way (the same arithmetic), on one thread or two.
    single = None if before is None else 1
    assert seen == [("_forward_split", 2, single, chosen), ("_backward_split", 2, single, chosen)]
    assert blas.numpy_blas_threads() == before  # restored after each pass
    assert numba.get_num_threads() == threads
    for ours, reference in zip(results["numba"], results["numpy"]):
        np.testing.assert_allclose(ours, reference, rtol=2e-5, atol=2e-6)
