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
