"""The Elman RNN's time loop as one compiled call per pass: no Python per time step.

Per step the forward pass makes one product ``h_{t-1} U`` (BLAS, through
:func:`.blas.gemm`; none at step 0 from a zero initial state) and one fused pass ``h_t = f(HU + XW[t] + b)``; the
backward pass one fused pass ``dz_t = (dh_t + carry) * f'(h_t)`` (summed into the
bias gradient on the way) and one product ``carry = dz_t U^T``. The products over all steps at once (input
projection, weight gradients) stay with the layer. Sums are taken in the
order of the generic loop of :class:`~..base.Backend` (``(HU + XW) + b``,
``(dh + carry) * f'``), so results differ from the NumPy backend's only by
the ``tanh`` implementation's rounding. A step's rows depend only on the same rows of
the step before, so each pass runs as blocks of the batch's rows, one per Numba thread,
through all the time steps (:mod:`.split`): the threads meet once per pass.

``tanh`` inside a compiled loop is a scalar libm call per element, several
times slower than NumPy's vectorised one; in float32 the tanh RNN's loops
take :func:`tanh_float32` instead, a rational approximation (within 5 ulp of the
exact value, saturating at 1 - 2**-22) that the compiler vectorises.

Importing this module imports Numba.
"""

from __future__ import annotations

import time

import numba
import numpy as np
from numba import prange

from ...cpu_threads import chooser_for
from .blas import NUMPY_BLAS, gemm, numpy_blas_threads, set_numpy_blas_threads
from .split import parallel_jit, rows_split_chosen
from .kernels import ACTIVATION_CODES, JIT_OPTIONS, TANH, activate, derivative, jit

#: Odd numerator and even denominator coefficients of :func:`tanh_float32` (Eigen's
#: ``generic_fast_tanh_float``), lowest power first, and where it clamps its argument.
_TANH_P = (4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05,
           5.12229709037114e-08, -8.60467152213735e-11, 2.00018790482477e-13,
           -2.76076847742355e-16)
_TANH_Q = (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04,
           1.19825839466702e-06)
_TANH_CLAMP = 7.90531110763549805


@numba.njit(**JIT_OPTIONS, inline="always")
def tanh_float32(x):
    """``tanh(x)`` for a float32 ``x`` as ``x p(x^2) / q(x^2)``; NaN stays NaN."""
    c = np.float32(_TANH_CLAMP)
    a = min(max(x, -c), c)
    a2 = a * a
    p = np.float32(_TANH_P[6])
    for k in range(5, -1, -1):
        p = p * a2 + np.float32(_TANH_P[k])
    q = np.float32(_TANH_Q[3])
    for k in range(2, -1, -1):
        q = q * a2 + np.float32(_TANH_Q[k])
    return x if abs(x) < np.float32(0.0004) else a * p / q


@numba.njit(**JIT_OPTIONS, inline="always")
def _activate(z, code, approximate, zero, one):
    """:func:`~.kernels.activate`, with :func:`tanh_float32` when ``approximate``."""
    if approximate and code == TANH:
        return tanh_float32(z)
    return activate(z, code, zero, one)


@jit
def _forward_rows(XW, U, b, States, code, approximate, zero_start, numpy_blas, lo, hi):
    """States[t + 1] = f(States[t] @ U + XW[t] + b) for t = 0 .. T-1, batch rows lo:hi;
    shapes as :meth:`~..base.Backend.recurrent_forward`. Rows are independent: each
    block can run on a thread of its own."""
    T, h = XW.shape[0], XW.shape[2]
    zero, one = XW.dtype.type(0), XW.dtype.type(1)
    for t in range(T):
        HU = States[t + 1, lo:hi]
        # The recurrent product into h_t's slot (zero from a zero h_{-1}), then bias,
        # input projection and activation.
        if t == 0 and zero_start:
            for i in range(hi - lo):
                for j in range(h):
                    HU[i, j] = zero
        else:
            gemm(States[t, lo:hi], U, HU, False, False, numpy_blas)
        XWt = XW[t, lo:hi]
        for i in range(hi - lo):
            for j in range(h):
                HU[i, j] = _activate((HU[i, j] + XWt[i, j]) + b[j], code, approximate, zero,
                                     one)


@jit
def _backward_rows(dZ, States, U, carry, code, first, block, to_h0, last, has_last, db_part,
                   numpy_blas, lo, hi):
    """Backpropagation through time in place on dZ, batch rows lo:hi; True when
    ``carry`` holds dh0.

    Shapes and arguments as :meth:`~..base.Backend.recurrent_backward`; ``last``
    (N, H) is read only when ``has_last``; ``carry`` (N, H) is scratch space;
    ``db_part`` (H,) receives the sum of these rows of dZ over the steps, once done.
    """
    T, h = dZ.shape[0], dZ.shape[2]
    zero, one = dZ.dtype.type(0), dZ.dtype.type(1)
    rows = carry[lo:hi]
    for j in range(h):
        db_part[j] = zero
    # Steps no gradient reaches: zero with ``last`` (for the weight gradients' products),
    # else as given; either way in the bias gradient, as the products take them.
    for t in range(first):
        for i in range(lo, hi):
            for j in range(h):
                if has_last:
                    dZ[t, i, j] = zero
                db_part[j] += dZ[t, i, j]
    pending = False  # whether carry holds dz_{t+1} U^T, still to be added to dh_t
    for t in range(T - 1, first - 1, -1):
        dz, Ht = dZ[t, lo:hi], States[t + 1, lo:hi]
        # dz_t = (dh_t + carry from step t+1) * f'(h_t), in place; with ``last`` the
        # step's own output gradient is last's rows at T-1 and zero before (not read).
        if has_last:
            own = last[lo:hi]
            for i in range(hi - lo):
                for j in range(h):
                    if t == T - 1:
                        g = own[i, j]
                    else:
                        g = rows[i, j] if pending else zero
                    dz[i, j] = g * derivative(Ht[i, j], code, zero, one)
        else:
            for i in range(hi - lo):
                for j in range(h):
                    g = dz[i, j] + rows[i, j] if pending else dz[i, j]
                    dz[i, j] = g * derivative(Ht[i, j], code, zero, one)
        # The bias gradient of these rows, while dz_t is in cache.
        for i in range(hi - lo):
            for j in range(h):
                db_part[j] += dz[i, j]
        pending = False
        if t > 0 and (T - t) % block == 0:
            continue  # truncated BPTT: nothing flows into step t-1
        if t == 0 and not to_h0:
            continue  # a zero initial state needs no gradient
        # Carry back through the recurrent weights: carry = dz_t U^T.
        gemm(dz, U, rows, False, True, numpy_blas)
        if t == 0:
            return True
        pending = True
    return False


@parallel_jit
def _forward_split(XW, U, b, States, code, approximate, zero_start, numpy_blas, parts):
    """:func:`_forward_rows` on ``parts`` blocks of batch rows at once, one thread each."""
    n = XW.shape[1]
    for k in prange(parts):
        _forward_rows(XW, U, b, States, code, approximate, zero_start, numpy_blas,
                      n * k // parts, n * (k + 1) // parts)


@parallel_jit
def _backward_split(dZ, States, U, carry, code, first, block, to_h0, last, has_last,
                    db_parts, numpy_blas, parts):
    """:func:`_backward_rows` on ``parts`` blocks of batch rows at once, block ``k``'s bias
    gradient into ``db_parts[k]``; True when ``carry`` holds dh0 (every block reaches
    step 0 or none does)."""
    n = dZ.shape[1]
    reached = np.zeros(parts, np.bool_)
    for k in prange(parts):
        reached[k] = _backward_rows(dZ, States, U, carry, code, first, block, to_h0, last,
                                    has_last, db_parts[k], numpy_blas, n * k // parts,
                                    n * (k + 1) // parts)
    return reached[0]


def forward(XW, U, b, States, name: str, zero_start: bool = False) -> None:
    """:meth:`~..base.Backend.recurrent_forward` in one compiled call."""
    code, approximate = ACTIVATION_CODES[name], XW.dtype == np.float32
    with rows_split_chosen(("rnn forward", XW.shape, str(XW.dtype))) as parts:
        _forward_split(XW, U, b, States, code, approximate, zero_start, NUMPY_BLAS,
                       max(1, min(parts, XW.shape[1])))


def backward(dZ, States, U, carry, name: str, first: int, block: int, to_h0: bool,
             last=None, db=None):
    """:meth:`~..base.Backend.recurrent_backward` in one compiled call; dh0 is ``carry``."""
    code = ACTIVATION_CODES[name]
    # ``last``, or a stand-in of its type that the loop never reads.
    given = carry if last is None else last
    key = ("rnn backward", dZ.shape, str(dZ.dtype), first, block, last is None)
    with rows_split_chosen(key) as parts:
        # The same blocks whichever thread count runs them: so are the bias sums.
        blocks = max(1, min(parts, dZ.shape[1]))
        db_parts = np.empty((blocks, dZ.shape[2]), dZ.dtype)
        reached = _backward_split(dZ, States, U, carry, code, first, block, to_h0, given,
                                  last is not None, db_parts, NUMPY_BLAS, blocks)
    if db is not None:
        # The blocks' bias sums, in block order.
        db[...] = db_parts[0]
        for part in db_parts[1:]:
            db += part
    return carry if reached else None


class blas_threads_chosen:
    """Run a pass with the BLAS thread count its
    :class:`~gpubackprop.cpu_threads.ThreadChooser` picks (one, or NumPy's
    OpenBLAS's own count), timing it for the chooser.

    The products per step are small: when another process holds a CPU, waiting
    for a descheduled BLAS thread at every one of them costs more than they
    gain, and one thread is faster. Where NumPy's OpenBLAS is not found the
    pass runs as it is.
    """

    def __init__(self, key):
        self.previous = numpy_blas_threads()
        self.chooser = None if self.previous is None else chooser_for(key, self.previous)

    def __enter__(self):
        if self.chooser is not None:
            self.threads = self.chooser.threads()
            if self.threads != self.previous:
                set_numpy_blas_threads(self.threads)
            self.started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.chooser is not None:
            self.chooser.record(self.threads, time.perf_counter() - self.started)
            if self.threads != self.previous:
                set_numpy_blas_threads(self.previous)
        return False
