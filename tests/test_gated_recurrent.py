"""LSTM and GRU: the backend cell methods and the layers, against PyTorch and gradient checks.

Every test runs on each backend fixture (tests/conftest.py): NumPy, Numba, the
emulated CuPy backend and, where usable, a real GPU.
"""

import numpy as np
import pytest

N, D, H = 5, 3, 4


def _torch_cell_grads(torch, cell, x, h_prev, c_prev, R):
    """Outputs of a torch cell and the gradients of ``sum(output * R)`` (float64)."""
    x, h_prev = (torch.tensor(a, requires_grad=True) for a in (x, h_prev))
    if c_prev is None:
        out = (cell(x, h_prev),)
        inputs = {"x": x, "h_prev": h_prev}
    else:
        c_prev = torch.tensor(c_prev, requires_grad=True)
        out = cell(x, (h_prev, c_prev))
        inputs = {"x": x, "h_prev": h_prev, "c_prev": c_prev}
    loss = sum((y * torch.tensor(r)).sum() for y, r in zip(out, R))
    loss.backward()
    grads = {k: v.grad.numpy() for k, v in inputs.items()}
    grads.update({k: v.grad.numpy() for k, v in cell.named_parameters()})
    return [y.detach().numpy() for y in out], grads


def _torch_cell(torch, kind, seed):
    torch.manual_seed(seed)
    cell = (torch.nn.LSTMCell if kind == "lstm" else torch.nn.GRUCell)(D, H).double()
    with torch.no_grad():
        for p in cell.parameters():  # larger than the default so the gates saturate unevenly
            p.uniform_(-0.8, 0.8)
    return cell, {k: v.detach().numpy() for k, v in cell.named_parameters()}


def test_lstm_cell_matches_torch_lstmcell(backend, torch):
    cell, P = _torch_cell(torch, "lstm", 0)
    rng = np.random.default_rng(0)
    x, h_prev, c_prev, Rh, Rc = (rng.standard_normal(s) for s in
                                 [(N, D), (N, H), (N, H), (N, H), (N, H)])
    (h_ref, c_ref), ref = _torch_cell_grads(torch, cell, x, h_prev, c_prev, (Rh, Rc))
    G = x @ P["weight_ih"].T + h_prev @ P["weight_hh"].T + P["bias_ih"] + P["bias_hh"]
    put, get = (lambda a: backend.asarray(a.copy())), backend.to_numpy  # copies: written in place
    h, c, gates = (backend.zeros(s, np.float64) for s in [(N, H), (N, H), (N, 4 * H)])
    G_dev = put(G)
    # Gates written over the pre-activations, as the contract allows.
    backend.lstm_cell_forward(G_dev, put(c_prev), h, c, G_dev)
    np.testing.assert_allclose(get(h), h_ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(get(c), c_ref, rtol=1e-12, atol=1e-14)
    gates = G_dev
    dG = backend.zeros((N, 4 * H), np.float64)
    dc = put(Rc)
    # dc_prev written over dc, as the contract allows.
    backend.lstm_cell_backward(put(Rh), dc, gates, put(c_prev), c, dG, dc)
    dG = get(dG)
    np.testing.assert_allclose(get(dc), ref["c_prev"], rtol=1e-12, atol=1e-14)
    expected = {"x": dG @ P["weight_ih"], "h_prev": dG @ P["weight_hh"],
                "weight_ih": dG.T @ x, "weight_hh": dG.T @ h_prev,
                "bias_ih": dG.sum(0), "bias_hh": dG.sum(0)}
    for name, value in expected.items():
        np.testing.assert_allclose(value, ref[name], rtol=1e-12, atol=1e-14, err_msg=name)


def test_gru_cell_matches_torch_grucell(backend, torch):
    cell, P = _torch_cell(torch, "gru", 1)
    rng = np.random.default_rng(1)
    x, h_prev, Rh = (rng.standard_normal(s) for s in [(N, D), (N, H), (N, H)])
    (h_ref,), ref = _torch_cell_grads(torch, cell, x, h_prev, None, (Rh,))
    Gx = x @ P["weight_ih"].T + P["bias_ih"]
    Gh = h_prev @ P["weight_hh"].T + P["bias_hh"]
    put, get = (lambda a: backend.asarray(a.copy())), backend.to_numpy  # copies: written in place
    h_dev = put(h_prev)
    gates = backend.zeros((N, 4 * H), np.float64)
    # h_t written over h_{t-1}, as the contract allows.
    backend.gru_cell_forward(put(Gx), put(Gh), h_dev, h_dev, gates)
    np.testing.assert_allclose(get(h_dev), h_ref, rtol=1e-12, atol=1e-14)
    dGx, dGh = (backend.zeros((N, 3 * H), np.float64) for _ in range(2))
    dh = put(Rh)
    # dh_prev written over dh, as the contract allows.
    backend.gru_cell_backward(dh, gates, put(h_prev), dGx, dGh, dh)
    dGx, dGh = get(dGx), get(dGh)
    expected = {"x": dGx @ P["weight_ih"], "h_prev": get(dh) + dGh @ P["weight_hh"],
                "weight_ih": dGx.T @ x, "weight_hh": dGh.T @ h_prev,
                "bias_ih": dGx.sum(0), "bias_hh": dGh.sum(0)}
    for name, value in expected.items():
        np.testing.assert_allclose(value, ref[name], rtol=1e-12, atol=1e-14, err_msg=name)


# ------------------------------------------------------------------ layers
from gpubackprop import GRU, LSTM, InputError, Linear, Sequential  # noqa: E402
from gpubackprop.nn.gated_recurrent import load_torch_state_dict, torch_state_dict  # noqa: E402
from gpubackprop.nn.layers import layer_from_config  # noqa: E402
from gpubackprop.nn.losses import MeanSquaredError, SoftmaxCrossEntropy  # noqa: E402
from gpubackprop.nn.precision import Precision  # noqa: E402
from gpubackprop.verify.gradient_check import check_backward, check_layer, check_model  # noqa: E402

T = 6  # the gradient checks run through 6 time steps
LAYERS = {"lstm": LSTM, "gru": GRU}


def built(backend, layer, n_in=D, seed=1):
    """``layer`` built in float64, biases (and learnt initial states) made non-zero."""
    rng = np.random.default_rng(seed)
    layer.build(backend, (None, n_in), rng, Precision.uniform("float64"))
    for name, P in layer.params.items():
        if name != "weight_ih" and name != "weight_hh":
            P[...] = backend.asarray(rng.normal(0, 0.5, P.shape))
    return layer


def data(backend, *shape, seed=0):
    return backend.asarray(np.random.default_rng(seed).standard_normal(shape))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("h0", ["zeros", "learn"])
def test_gradient_check(backend, kind, return_sequences, h0):
    layer = built(backend, LAYERS[kind](H, return_sequences=return_sequences, h0=h0))
    errors = check_layer(layer, data(backend, N, T, D), rtol=1e-6)
    learnt = set(layer.states) if h0 == "learn" else set()
    assert set(errors) == {"X", "weight_ih", "weight_hh", "bias_ih", "bias_hh"} | learnt
    assert max(errors.values()) <= 1e-6


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_gradient_check_given_initial_states(backend, kind, return_sequences):
    layer = built(backend, LAYERS[kind](H, return_sequences=return_sequences))
    layer.needs_input_grad = True
    X = data(backend, N, T, D)
    given = {name: data(backend, N, H, seed=i + 1) for i, name in enumerate(layer.states)}
    Y = layer.forward(X, **given)
    R = data(backend, *Y.shape, seed=9)
    dX = layer.backward(R.copy())
    analytic = {"X": dX, **{f"{k} given": v for k, v in layer.initial_state_grads.items()},
                **layer.grads}

    def loss():
        return float((layer.forward(X, train=False, **given) * R).sum())

    arrays = {"X": X, **{f"{k} given": v for k, v in given.items()}, **layer.params}
    errors = check_backward(loss, arrays, analytic, rtol=1e-6)
    assert set(errors) >= {f"{k} given" for k in layer.states}
    assert max(errors.values()) <= 1e-6


def test_gradient_check_stacked_classifier(backend):
    X = data(backend, N, T, D)
    model = Sequential([LSTM(5, return_sequences=True, h0="learn"), GRU(H), Linear(3)],
                       n_inputs=D, device=backend, dtype="float64", seed=2)
    labels = backend.asarray(np.array([0, 2, 1, 1, 0]))
    errors = check_model(model, SoftmaxCrossEntropy(), X, backend.one_hot(labels, 3, np.float64))
    assert max(errors.values()) <= 1e-6


def _torch_stack(torch, kind, n_layers, seed):
    torch.manual_seed(seed)
    module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind]
    return module(D, H, num_layers=n_layers, batch_first=True).double()


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_stacked_layers_match_torch(backend, torch, kind, return_sequences):
    """Two stacked layers with torch's weights: outputs and every gradient, initial
    states included, equal torch.nn.LSTM/GRU's in float64."""
    reference = _torch_stack(torch, kind, 2, seed=3)
    layers = [built(backend, LAYERS[kind](H, return_sequences=True), seed=4),
              built(backend, LAYERS[kind](H, return_sequences=return_sequences), n_in=H,
                    seed=5)]
    load_torch_state_dict(layers, reference.state_dict())
    rng = np.random.default_rng(6)
    X = rng.standard_normal((N, T, D))
    starts = {name: rng.standard_normal((2, N, H)) for name in layers[0].states}
    R = rng.standard_normal((N, T, H) if return_sequences else (N, H))
    # torch
    X_t = torch.tensor(X, requires_grad=True)
    starts_t = {k: torch.tensor(v, requires_grad=True) for k, v in starts.items()}
    state = (starts_t["h0"], starts_t["c0"]) if kind == "lstm" else starts_t["h0"]
    out, _ = reference(X_t, state)
    Y_ref = out if return_sequences else out[:, -1]
    (Y_ref * torch.tensor(R)).sum().backward()
    # ours
    put, get = backend.asarray, backend.to_numpy
    layers[0].needs_input_grad = True
    Y = put(X)
    for depth, layer in enumerate(layers):
        Y = layer.forward(Y, **{k: put(v[depth].copy()) for k, v in starts.items()})
    np.testing.assert_allclose(get(Y), Y_ref.detach().numpy(), rtol=1e-12, atol=1e-13)
    dY = put(R)
    for layer in reversed(layers):
        dY = layer.backward(dY)
    tolerance = dict(rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(get(dY), X_t.grad.numpy(), **tolerance, err_msg="dX")
    for name, value in starts_t.items():
        for depth, layer in enumerate(layers):
            np.testing.assert_allclose(get(layer.initial_state_grads[name]),
                                       value.grad[depth].numpy(), **tolerance,
                                       err_msg=f"{name} of layer {depth}")
    grads = {f"{name}_l{depth}": get(layer.grads[name])
             for depth, layer in enumerate(layers) for name in layer.grads}
    for name, value in reference.named_parameters():
        np.testing.assert_allclose(grads[name], value.grad.numpy(), **tolerance, err_msg=name)
    exported = torch_state_dict(layers)
    assert set(exported) == set(reference.state_dict())
    for name, value in reference.state_dict().items():
        np.testing.assert_array_equal(exported[name], value.numpy())


# ------------------------------------------------------------- truncation
def _gradients(layer, X, R):
    layer.needs_input_grad = True
    layer.forward(X)
    dX = layer.backward(R.copy())
    get = layer.backend.to_numpy
    return {"X": get(dX), **{k: get(g) for k, g in layer.grads.items()}}


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_truncation_to_at_least_T_steps_is_full_bptt(backend, kind, return_sequences):
    X = data(backend, N, T, D)
    R = data(backend, *((N, T, H) if return_sequences else (N, H)), seed=1)
    full = _gradients(built(backend, LAYERS[kind](H, return_sequences, h0="learn")), X, R)
    for k in (T, T + 2):
        cut = _gradients(built(backend, LAYERS[kind](H, return_sequences, bptt_steps=k,
                                                     h0="learn")), X, R)
        for name in full:
            np.testing.assert_array_equal(cut[name], full[name])


def _states_after(layer, X):
    """The states (h, and c for the LSTM) after the last step of ``X``, by name."""
    layer.forward(X)
    saved = layer._saved[1]
    layer._saved = None
    return {name: saved[name][-1].copy() for name in layer.states}


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_truncated_bptt_is_blockwise_bptt(backend, kind, return_sequences):
    """Blocks of k steps counted back from the end; each block backpropagates to its start
    states, held constant, except the first, which reaches the learnt initial states; with
    one output only the last block gets any gradient."""
    k = 4
    layer = built(backend, LAYERS[kind](H, return_sequences, bptt_steps=k, h0="learn"))
    X = data(backend, N, T, D)
    R = data(backend, *((N, T, H) if return_sequences else (N, H)), seed=1)
    truncated = _gradients(layer, X, R)
    bounds = [(0, T - k), (T - k, T)]
    starts = {begin: _states_after(layer, X[:, :begin]) for begin, _ in bounds if begin}

    def loss():
        total = 0.0
        for begin, end in bounds:
            Y = layer.forward(X[:, begin:end], train=False, **starts.get(begin, {}))
            if return_sequences:
                total += float((Y * R[:, begin:end]).sum())
            elif end == T:
                total += float((Y * R).sum())
        return total

    if not return_sequences:
        assert not truncated["X"][:, :T - k].any()
        assert all(not truncated[name].any() for name in layer.states)
    check_backward(loss, {"X": X, **layer.params}, truncated, rtol=1e-6)


# --------------------------------------------------------------- options
def test_forget_bias_initialises_the_forget_gate(backend):
    layer = LSTM(H, forget_bias=2.5)
    layer.build(backend, (None, D), np.random.default_rng(0), Precision.uniform("float64"))
    b = backend.to_numpy(layer.params["bias_ih"])
    np.testing.assert_array_equal(b[H:2 * H], 2.5)
    assert not b[:H].any() and not b[2 * H:].any()
    assert not backend.to_numpy(layer.params["bias_hh"]).any()


def test_layers_rebuild_from_config():
    for layer in (LSTM(7, return_sequences=True, bptt_steps=3, h0="learn", forget_bias=0.5),
                  GRU(5, bptt_steps=2)):
        rebuilt = layer_from_config(layer.config())
        assert type(rebuilt) is type(layer) and rebuilt.config() == layer.config()


def test_clear_errors_for_bad_input(backend):
    layer = built(backend, LSTM(H))
    with pytest.raises(InputError, match=r"LSTM input must have shape \(N, time steps"):
        layer.forward(data(backend, N, D))
    with pytest.raises(InputError, match="5 features per time step.*built for 3"):
        layer.forward(data(backend, N, T, 5))
    with pytest.raises(InputError, match=r"initial state c0 must have shape \(5, 4\)"):
        layer.forward(data(backend, N, T, D), c0=data(backend, N, H + 1))
    with pytest.raises(InputError, match="GRU has no initial state 'c0'"):
        built(backend, GRU(H)).forward(data(backend, N, T, D), c0=data(backend, N, H))
    with pytest.raises(InputError, match="forget_bias must be finite"):
        LSTM(H, forget_bias=float("nan"))
    with pytest.raises(InputError, match="initial state"):
        GRU(H, h0="random")
    with pytest.raises(InputError, match="weight_hh_l0 has shape"):
        load_torch_state_dict([layer], {"weight_ih_l0": np.zeros((4 * H, D)),
                                        "weight_hh_l0": np.zeros((H, H)),
                                        "bias_ih_l0": 0, "bias_hh_l0": 0})
    with pytest.raises(InputError, match="one kind, LSTM or GRU"):
        torch_state_dict([layer, built(backend, GRU(H))])
