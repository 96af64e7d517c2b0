"""The LSTM and GRU cells and time loops as compiled loops.

Each function is the fused form of the generic cell method of the same name in
:class:`~..base.Backend` (same arguments, same gate layout, same aliasing
rules): the gate nonlinearities, the state update and, backward, the gate
derivatives from the saved gates, element by element, where NumPy makes a
dozen full-array passes. The time loops (``lstm_forward_split`` and the rest)
run each pass whole, a block of the batch's rows per thread through all the
steps, with the per-step recurrent products single-threaded inside.

In float32 the loops take :func:`~.recurrent.tanh_float32` (within 5 ulp, as in
the Elman RNN's loops) for ``tanh`` and ``sigmoid(z) = (1 + tanh(z / 2)) / 2``
for the gates: both vectorise, where libm's scalar ``exp`` and ``tanh`` leave
the loop 3x slower than NumPy's passes. That sigmoid is within about 1.2e-7
absolute (it saturates at 2**-23 and 1 - 2**-23, where the exact form keeps a
relative accuracy in the tails); a gate's effect is absolute, so training does
not see it. float64 takes libm's exact forms.

Importing this module imports Numba.
"""

from __future__ import annotations

import numba
import numpy as np

from numba import prange

from .blas import gemm
from .kernels import JIT_OPTIONS, jit, sigmoid
from .recurrent import tanh_float32
from .split import parallel_jit


@numba.njit(**JIT_OPTIONS, inline="always")
def _tanh(x, approximate):
    return tanh_float32(x) if approximate else np.tanh(x)


@numba.njit(**JIT_OPTIONS, inline="always")
def _sigmoid(x, approximate, one):
    if approximate:
        half = np.float32(0.5)
        return half + half * tanh_float32(half * x)
    return sigmoid(x, one)


@jit
def lstm_cell_forward(G, c_prev, h_out, c_out, gates_out, approximate):
    """:meth:`~..base.Backend.lstm_cell_forward`; G, gates_out (N, 4H), the rest (N, H)."""
    n, H = c_prev.shape
    one = G.dtype.type(1)
    for r in range(n):
        # Row by row, each loop one simple pass over 1-D views (the transcendental
        # ones alone, so that they vectorise).
        Gr, A = G[r], gates_out[r]
        for j in range(2 * H):
            A[j] = _sigmoid(Gr[j], approximate, one)  # i, f
        for j in range(2 * H, 3 * H):
            A[j] = _tanh(Gr[j], approximate)  # g
        for j in range(3 * H, 4 * H):
            A[j] = _sigmoid(Gr[j], approximate, one)  # o
        i, f, g, o = A[:H], A[H:2 * H], A[2 * H:3 * H], A[3 * H:]
        cp, c, h = c_prev[r], c_out[r], h_out[r]
        for j in range(H):
            c[j] = f[j] * cp[j] + i[j] * g[j]
        for j in range(H):
            h[j] = o[j] * _tanh(c[j], approximate)


@jit
def lstm_cell_backward(dh, dc, gates, c_prev, c, dG_out, dc_prev_out, approximate):
    """:meth:`~..base.Backend.lstm_cell_backward`; gates, dG_out (N, 4H), the rest (N, H)."""
    n, H = c.shape
    one = c.dtype.type(1)
    for r in range(n):
        A, dA = gates[r], dG_out[r]
        i, f, g, o = A[:H], A[H:2 * H], A[2 * H:3 * H], A[3 * H:]
        di, df, dg, do = dA[:H], dA[H:2 * H], dA[2 * H:3 * H], dA[3 * H:]
        dhr, dcr, cp, cr, dcp = dh[r], dc[r], c_prev[r], c[r], dc_prev_out[r]
        for j in range(H):
            do[j] = _tanh(cr[j], approximate)  # tanh(c_t), for now
        for j in range(H):
            tanh_c, d = do[j], dhr[j]
            # dc_t in total: from step t+1, plus through h_t = o * tanh(c_t).
            dc_total = (one - tanh_c * tanh_c) * o[j] * d + dcr[j]
            di[j] = dc_total * g[j] * (i[j] * (one - i[j]))
            df[j] = dc_total * cp[j] * (f[j] * (one - f[j]))
            dg[j] = dc_total * i[j] * (one - g[j] * g[j])
            do[j] = d * tanh_c * (o[j] * (one - o[j]))
            dcp[j] = dc_total * f[j]


@jit
def gru_cell_forward(Gx, Gh, h_prev, h_out, gates_out, approximate):
    """:meth:`~..base.Backend.gru_cell_forward`; Gx, Gh (N, 3H), gates_out (N, 4H)."""
    n, H = h_prev.shape
    one = Gx.dtype.type(1)
    for r in range(n):
        X, R, A = Gx[r], Gh[r], gates_out[r]
        for j in range(2 * H):
            A[j] = _sigmoid(X[j] + R[j], approximate, one)  # r, z
        reset, update, new, gh_n = A[:H], A[H:2 * H], A[2 * H:3 * H], A[3 * H:]
        for j in range(H):
            gh_n[j] = R[2 * H + j]
            new[j] = reset[j] * gh_n[j] + X[2 * H + j]
        for j in range(H):
            new[j] = _tanh(new[j], approximate)
        hp, h = h_prev[r], h_out[r]
        for j in range(H):
            h[j] = new[j] + (hp[j] - new[j]) * update[j]


@jit
def gru_cell_backward(dh, gates, h_prev, dGx_out, dGh_out, dh_prev_out):
    """:meth:`~..base.Backend.gru_cell_backward`; gates (N, 4H), dGx/dGh (N, 3H)."""
    n, H = h_prev.shape
    one = h_prev.dtype.type(1)
    for r in range(n):
        A, dX, dR = gates[r], dGx_out[r], dGh_out[r]
        reset, update, new, gh_n = A[:H], A[H:2 * H], A[2 * H:3 * H], A[3 * H:]
        hp, dhr, dhp = h_prev[r], dh[r], dh_prev_out[r]
        for j in range(H):
            d = dhr[j]
            # Through h_t = (1 - z) * n + z * h_{t-1}, then tanh' from n.
            dn = (one - update[j]) * d * (one - new[j] * new[j])
            dX[2 * H + j] = dn
            dR[2 * H + j] = dn * reset[j]
            dr = dn * gh_n[j] * (reset[j] * (one - reset[j]))
            dX[j] = dR[j] = dr
            dz = (hp[j] - new[j]) * d * (update[j] * (one - update[j]))
            dX[H + j] = dR[H + j] = dz
            dhp[j] = d * update[j]


@jit
def _lstm_forward_rows(XW, W_hh, States, Cells, HW, approximate, numpy_blas, lo, hi):
    """:meth:`~..base.Backend.lstm_forward` for batch rows lo:hi (rows are independent)."""
    for t in range(XW.shape[0]):
        # G_t = h_{t-1} W_hh^T + XW[t], then the cell, its gates over XW[t].
        G, XWt = HW[lo:hi], XW[t, lo:hi]
        gemm(States[t, lo:hi], W_hh, G, False, True, numpy_blas)
        for i in range(hi - lo):
            for j in range(G.shape[1]):
                G[i, j] += XWt[i, j]
        lstm_cell_forward(G, Cells[t, lo:hi], States[t + 1, lo:hi], Cells[t + 1, lo:hi], XWt,
                          approximate)


@parallel_jit
def lstm_forward_split(XW, W_hh, States, Cells, HW, approximate, numpy_blas, parts):
    """:func:`_lstm_forward_rows` on ``parts`` blocks of batch rows at once, one thread each."""
    n = XW.shape[1]
    for k in prange(parts):
        _lstm_forward_rows(XW, W_hh, States, Cells, HW, approximate, numpy_blas,
                           n * k // parts, n * (k + 1) // parts)


@jit
def _step_gradient_rows(t, T, dH, has_dH, last, back, pending, lo, hi):
    """dh_t of batch rows lo:hi (:func:`~gpubackprop.nn.bptt.step_gradient`): with ``dH``
    (T, N, H), its rows plus ``back`` (the carry from step t+1, added in place) when
    ``pending``; else ``last``'s rows at the last step, and the carry before it."""
    if has_dH:
        dh = dH[t, lo:hi]
        if pending:
            for i in range(dh.shape[0]):
                for j in range(dh.shape[1]):
                    dh[i, j] += back[i, j]
        return dh
    return last[lo:hi] if t == T - 1 else back


@jit
def _lstm_backward_rows(dG, dH, has_dH, last, Gates, Cells, W_hh, carry, dc, dc_prev, first,
                        block, to_start, approximate, numpy_blas, lo, hi):
    """:meth:`~..base.Backend.lstm_backward` for batch rows lo:hi (rows are independent);
    ``dH`` is read only when ``has_dH``."""
    T = Gates.shape[0]
    dc_t, dc_before, back = dc[lo:hi], dc_prev[lo:hi], carry[lo:hi]
    dc_t[:, :] = 0
    pending = swapped = False
    for t in range(T - 1, first - 1, -1):
        # dh_t: own output's gradient plus dG_{t+1} W_hh carried from step t+1.
        dh = _step_gradient_rows(t, T, dH, has_dH, last, back, pending, lo, hi)
        # Through the cell: dG_t, and dc_{t-1} = dc_t * f, which step t-1 receives.
        lstm_cell_backward(dh, dc_t, Gates[t, lo:hi], Cells[t, lo:hi], Cells[t + 1, lo:hi],
                           dG[t, lo:hi], dc_before, approximate)
        dc_t, dc_before = dc_before, dc_t
        swapped = not swapped
        pending = False
        if t > 0 and (T - t) % block == 0:
            dc_t[:, :] = 0  # truncated BPTT: step t starts a block
            continue
        if t == 0 and not to_start:
            break  # zero initial states need no gradient
        # Carry back through the recurrent weights: dh_{t-1} gets dG_t W_hh.
        gemm(dG[t, lo:hi], W_hh, back, False, False, numpy_blas)
        if t == 0:
            if swapped:
                # Element by element: a slice assignment would compile NumPy's shape check
                # and its error message, seconds more of a cold compile.
                _copy_rows(dc_t, dc[lo:hi])
            return True
        pending = True
    return False


@jit
def _copy_rows(source, out):
    """``out[:, :] = source``, both (n, w)."""
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = source[i, j]


@parallel_jit
def lstm_backward_split(dG, dH, has_dH, last, Gates, Cells, W_hh, carry, dc, dc_prev, first,
                        block, to_start, approximate, numpy_blas, parts):
    """:func:`_lstm_backward_rows` on ``parts`` blocks of batch rows at once; True when step
    0 was reached (every block reaches it or none does)."""
    n = Gates.shape[1]
    reached = np.zeros(parts, np.bool_)
    for k in prange(parts):
        reached[k] = _lstm_backward_rows(dG, dH, has_dH, last, Gates, Cells, W_hh, carry, dc,
                                         dc_prev, first, block, to_start, approximate,
                                         numpy_blas, n * k // parts, n * (k + 1) // parts)
    return reached[0]


@jit
def _gru_forward_rows(XW, W_hh, b_hh, States, Gates, Gh, approximate, numpy_blas, lo, hi):
    """:meth:`~..base.Backend.gru_forward` for batch rows lo:hi (rows are independent)."""
    for t in range(XW.shape[0]):
        # Gh_t = h_{t-1} W_hh^T + b_hh, then the cell: h_t, and r, z, n, Gh_n saved.
        G = Gh[lo:hi]
        gemm(States[t, lo:hi], W_hh, G, False, True, numpy_blas)
        for i in range(hi - lo):
            for j in range(G.shape[1]):
                G[i, j] += b_hh[j]
        gru_cell_forward(XW[t, lo:hi], G, States[t, lo:hi], States[t + 1, lo:hi],
                         Gates[t, lo:hi], approximate)


@parallel_jit
def gru_forward_split(XW, W_hh, b_hh, States, Gates, Gh, approximate, numpy_blas, parts):
    """:func:`_gru_forward_rows` on ``parts`` blocks of batch rows at once, one thread each."""
    n = XW.shape[1]
    for k in prange(parts):
        _gru_forward_rows(XW, W_hh, b_hh, States, Gates, Gh, approximate, numpy_blas,
                          n * k // parts, n * (k + 1) // parts)


@jit
def _gru_backward_rows(dGx, dGh, dH, has_dH, last, Gates, States, W_hh, carry, direct, first,
                       block, to_start, numpy_blas, lo, hi):
    """:meth:`~..base.Backend.gru_backward` for batch rows lo:hi (rows are independent);
    ``dH`` is read only when ``has_dH``."""
    T, w = Gates.shape[0], hi - lo
    back, through_z = carry[lo:hi], direct[lo:hi]
    pending = False
    for t in range(T - 1, first - 1, -1):
        # dh_t: own output's gradient plus the carry from step t+1.
        dh = _step_gradient_rows(t, T, dH, has_dH, last, back, pending, lo, hi)
        # Through the cell: dGx_t, dGh_t, and dh_t * z.
        gru_cell_backward(dh, Gates[t, lo:hi], States[t, lo:hi], dGx[t, lo:hi], dGh[t, lo:hi],
                          through_z)
        pending = False
        if t > 0 and (T - t) % block == 0:
            continue  # truncated BPTT: step t starts a block
        if t == 0 and not to_start:
            break  # a zero initial state needs no gradient
        # Carry back: dh_{t-1} = dGh_t W_hh + dh_t * z.
        gemm(dGh[t, lo:hi], W_hh, back, False, False, numpy_blas)
        for i in range(w):
            for j in range(back.shape[1]):
                back[i, j] += through_z[i, j]
        if t == 0:
            return True
        pending = True
    return False


@parallel_jit
def gru_backward_split(dGx, dGh, dH, has_dH, last, Gates, States, W_hh, carry, direct, first,
                       block, to_start, numpy_blas, parts):
    """:func:`_gru_backward_rows` on ``parts`` blocks of batch rows at once; True when step
    0 was reached (every block reaches it or none does)."""
    n = Gates.shape[1]
    reached = np.zeros(parts, np.bool_)
    for k in prange(parts):
        reached[k] = _gru_backward_rows(dGx, dGh, dH, has_dH, last, Gates, States, W_hh, carry,
                                        direct, first, block, to_start, numpy_blas,
                                        n * k // parts, n * (k + 1) // parts)
    return reached[0]
