"""The fused CPU backend: NumPy arrays, with Numba-compiled loops for the elementwise work.

Matrix products stay with NumPy's BLAS. The operations that NumPy runs as a
chain of full-array passes (Adam is about twelve, each a trip through memory)
run as one compiled loop from :mod:`.kernels` instead. Each override
takes its kernel when the arrays suit it (float32 or float64, one dtype,
C-contiguous, non-empty, the expected shapes, no partial overlap: the rule of
:func:`~..base.kernel_can_take`, shared with the CuPy backend) and otherwise
calls the NumPy method, so every input the reference accepts still works.
An MLP of Linear layers trained with cross-entropy skips the layer path
altogether: the backend's step compiler (:class:`.parallel.WholeStepCompiler`)
turns its step plan into the whole-step path of :mod:`.parallel`, split
across threads.

Importing this module imports Numba; :func:`gpubackprop.backends.get_backend`
does so only when the fused CPU backend is asked for.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys

import numpy as np

from . import kernels as cpu_kernels
from .parallel import WholeStepCompiler
from ...nn.activations import CODES, RECURRENT_NAMES
from ...nn.update_rules import UPDATE_RULES
from ..base import DERIVATIVES, kernel_can_take, step_state_fits
from ..numpy.backend import NumpyBackend

def kernel_fits(*arrays) -> bool:
    """Whether a loop can take these NumPy arrays; see :func:`~..base.kernel_can_take`."""
    return kernel_can_take(arrays, np, _host_address)


def _cell_shapes(state, states: tuple, blocks: tuple, gates: int) -> bool:
    """Whether ``states`` are (N, H) like ``state`` and ``blocks`` (N, gates * H)."""
    if state.ndim != 2:
        return False
    n, h = state.shape
    return all(S.shape == (n, h) for S in states) and \
        all(B.shape == (n, gates * h) for B in blocks)


#: Fewest output rows (or, where the rows are fewer, columns) a product splits across
#: threads: two blocks of at least 32.
MIN_SPLIT_ROWS = 64
#: Fewest multiply-adds (M K N) a product splits across threads: below, one call's cost
#: is mostly fixed (iris's 105x4x4 products), and the first one would compile the split.
MIN_SPLIT_WORK = 1 << 18


def _splits_product(A, B, trans_a: bool, trans_b: bool, out) -> bool:
    """Whether :meth:`NumbaBackend.gemm` splits ``op(A) @ op(B)`` across threads: inside a
    training step (NumPy's OpenBLAS found and held at one thread), two or more Numba
    threads, 2-D operands a kernel could take (C-contiguous, one float dtype, ``out`` of
    the product's shape and disjoint from them), at least :data:`MIN_SPLIT_ROWS` rows or
    columns and :data:`MIN_SPLIT_WORK` multiply-adds, not both operands transposed."""
    if A.ndim != 2 or B.ndim != 2 or (trans_a and trans_b) or _UNSPLIT.get():
        return False
    m, k, n = A.shape[trans_a], A.shape[1 - trans_a], B.shape[1 - trans_b]
    if max(m, n) < MIN_SPLIT_ROWS or m * k * n < MIN_SPLIT_WORK or B.shape[trans_b] != k or (
            out is not None and out.shape != (m, n)):
        return False
    if not (kernel_fits(A, B) if out is None else kernel_fits(A, B, out)):
        return False
    import numba

    from .blas import NUMPY_BLAS, numpy_blas_threads

    return (NUMPY_BLAS and numpy_blas_threads() == 1 and numba.get_num_threads() > 1
            and _split_compiled(A))


#: Per dtype, whether the split product runs without compiling now (see _split_compiled).
_SPLIT_GATES: dict = {}


def _split_compiled(A) -> bool:
    """Whether the split product of ``A``'s dtype runs without compiling now. The first
    time it would compile, it compiles in a background process where first runs may
    (:class:`.background.CompileGate`) and products stay whole meanwhile: a first
    epoch's products and validation do not wait for it."""
    gate = _SPLIT_GATES.get(A.dtype)
    if gate is None:
        from .background import CompileGate
        from .split import gemm_blocks

        gate = _SPLIT_GATES[A.dtype] = CompileGate(gemm_blocks)
    return gate(lambda: (A, A, A, False, False, 2, False))


#: Set within :meth:`NumbaBackend.unsplit_products`.
_UNSPLIT = contextvars.ContextVar("gpubackprop_unsplit_products", default=False)


#: threadpoolctl's controller, and how many modules were imported when it was made.
_CONTROLLER: list = [None, -1]


def _blas_controller():
    """threadpoolctl's controller of the BLAS libraries loaded, found again only after
    more modules were imported (one may have loaded another BLAS, SciPy's say): looking
    them up for every ``with step:`` (once per epoch; iris runs 1000) took 0.57 ms each."""
    if _CONTROLLER[1] != len(sys.modules):
        from threadpoolctl import ThreadpoolController

        _CONTROLLER[:] = [ThreadpoolController(), len(sys.modules)]
    return _CONTROLLER[0]


def _output_gradients(dH, last, carry) -> tuple:
    """``(dH, has_dH, last)`` for a compiled gated backward loop: the outputs' gradients
    it reads (``dH`` (T, N, H), or ``last`` (N, H) alone), the other replaced by a
    stand-in of its type that the loop never reads (``last``'s as one step, ``carry``)."""
    if dH is not None:
        return dH, True, carry
    return last.reshape((1, *last.shape)), False, last


def _host_address(X) -> int:
    return X.__array_interface__["data"][0]


class NumbaBackend(NumpyBackend):
    """NumPy on the host, with fused CPU kernels compiled by Numba."""

    name = "numba"
    #: An MLP of Linear layers trained with cross-entropy runs as one parallel whole step.
    step_compilers = (WholeStepCompiler(),)

    def batch_copies(self) -> int:
        """The parallel step keeps one batch of pre-activations per thread."""
        import numba

        from .parallel import MAX_PARTS

        return min(numba.get_num_threads(), MAX_PARTS)

    # --------------------------------------------------------------- products
    def step_context(self):
        """NumPy's OpenBLAS at one thread during training steps: the whole MLP step splits
        its own products across Numba's threads, and so do :meth:`gemm` and the time loops
        (see :mod:`.split`); an idle OpenBLAS thread would spin on a core they need."""
        return _blas_controller().limit(limits=1, user_api="blas")

    @contextlib.contextmanager
    def unsplit_products(self):
        """Within, :meth:`gemm` does not split products (one OpenBLAS thread inside a step):
        a first run's eager batches, while the whole step compiles in a background process
        that takes a core."""
        token = _UNSPLIT.set(True)
        try:
            yield
        finally:
            _UNSPLIT.reset(token)

    def gemm(self, A, B, trans_a: bool = False, trans_b: bool = False, out=None):
        # Inside a step (NumPy's BLAS at one thread): blocks of output rows, one per Numba
        # thread, run on all threads or on one, whichever measures faster.
        if not _splits_product(A, B, trans_a, trans_b, out):
            return super().gemm(A, B, trans_a, trans_b, out=out)
        from .split import gemm_blocks, rows_split_chosen

        m, n = A.shape[trans_a], B.shape[1 - trans_b]
        if out is None:
            out = np.empty((m, n), A.dtype)
        # Blocks of rows; of columns where the rows are too few (the RNN's input weight
        # gradient: 28 x (steps * batch) by (steps * batch) x 128).
        by_columns = m < MIN_SPLIT_ROWS
        with rows_split_chosen(("gemm", A.shape, B.shape, trans_a, trans_b,
                                str(A.dtype))) as parts:
            # Blocks of at least MIN_SPLIT_ROWS / 2, however many threads there are.
            blocks = min(parts, 2 * (n if by_columns else m) // MIN_SPLIT_ROWS)
            gemm_blocks(A, B, out, trans_a, trans_b, blocks, by_columns)
        return out

    # ------------------------------------------------------------ activations
    def bias_activation(self, Z, b, name: str, out=None):
        # Fused where the loop beats NumPy: activations without exp or tanh.
        code, Y = CODES.get(name), Z if out is None else out
        if code is None or code in cpu_kernels.LIBM_FORWARD or not (
                Z.ndim == 2 and b.shape == Z.shape[1:] and Y.shape == Z.shape
                and kernel_fits(Z, b, Y)):
            return super().bias_activation(Z, b, name, out=out)
        cpu_kernels.bias_activation(Z, b, Y, code)
        return Y

    def backprop_activation(self, dY, S, name: str, out=None):
        # Fused where f' has neither exp nor tanh; identity (f' = 1, no derivative
        # formula) needs no kernel: the generic method returns dY or copies it.
        code = CODES.get(name)
        if code is None or code in cpu_kernels.LIBM_DERIVATIVE or DERIVATIVES[name] is None \
                or dY.ndim != 2 or dY.shape != S.shape:
            return super().backprop_activation(dY, S, name, out=out)
        fits = kernel_fits(dY, S) if out is None else \
            out.shape == dY.shape and kernel_fits(dY, S, out)
        if not fits:
            return super().backprop_activation(dY, S, name, out=out)
        dZ = np.empty_like(dY) if out is None else out
        cpu_kernels.activation_backward(dY, S, dZ, code)
        return dZ

    # -------------------------------------------------------------- recurrent
    def recurrent_forward(self, XW, U, b, States, name: str = "tanh",
                          zero_start: bool = False) -> None:
        T, N, H = XW.shape if XW.ndim == 3 else (0, 0, 0)
        if name not in RECURRENT_NAMES or States.shape != (T + 1, N, H) or \
                U.shape != (H, H) or b.shape != (H,) or not kernel_fits(XW, U, b, States):
            return super().recurrent_forward(XW, U, b, States, name, zero_start)
        from . import recurrent as cpu_recurrent

        cpu_recurrent.forward(XW, U, b, States, name, zero_start)

    def recurrent_backward(self, dZ, States, U, name: str, first: int, block: int,
                           to_h0: bool, last=None, db=None):
        T, N, H = dZ.shape if dZ.ndim == 3 else (0, 0, 0)
        given = () if last is None else (last,)
        bias = () if db is None else (db,)
        if name not in RECURRENT_NAMES or States.shape != (T + 1, N, H) or \
                U.shape != (H, H) or any(A.shape != (N, H) for A in given) or \
                any(b.shape != (H,) for b in bias) or not kernel_fits(dZ, States, U, *given,
                                                                       *bias):
            return super().recurrent_backward(dZ, States, U, name, first, block, to_h0, last,
                                              db)
        from . import recurrent as cpu_recurrent

        return cpu_recurrent.backward(dZ, States, U, np.empty((N, H), dZ.dtype), name, first,
                                      block, to_h0, last, db)

    def recurrent_pass(self, key: tuple):
        # Per-step GEMMs are small: one BLAS thread or all, whichever the timings favour.
        from .recurrent import blas_threads_chosen

        return blas_threads_chosen(key)

    # ------------------------------------------------------- gated recurrent cells
    # Time loops compiled whole and cells compiled per step (numba/gated.py) where the
    # arrays suit them, else the generic method; the lazy import keeps Numba's
    # compilation off other paths.
    def lstm_forward(self, XW, W_hh, States, Cells, HW) -> None:
        T, N, rows = XW.shape if XW.ndim == 3 else (0, 0, 0)
        H = rows // 4
        if not (rows == 4 * H and W_hh.shape == (rows, H) and States.shape == (T + 1, N, H)
                and Cells.shape == States.shape and HW.shape == (N, rows)
                and kernel_fits(XW, W_hh, States, Cells, HW)):
            return super().lstm_forward(XW, W_hh, States, Cells, HW)
        from . import gated
        from .blas import NUMPY_BLAS
        from .split import rows_split_chosen

        # One block of the batch's rows per thread, through all the time steps.
        with rows_split_chosen(("lstm forward", XW.shape, str(XW.dtype))) as parts:
            gated.lstm_forward_split(XW, W_hh, States, Cells, HW, XW.dtype == np.float32,
                                     NUMPY_BLAS, max(1, min(parts, N)))

    def lstm_backward(self, dG, dH, last, Gates, Cells, W_hh, carry, dc, dc_prev,
                      first: int, block: int, to_start: bool) -> bool:
        T, N, rows = Gates.shape if Gates.ndim == 3 else (0, 0, 0)
        H = rows // 4
        given = dH if dH is not None else last
        if not (rows == 4 * H and W_hh.shape == (rows, H) and dG.shape == Gates.shape
                and Cells.shape == (T + 1, N, H) and given is not None
                and given.shape == ((T, N, H) if dH is not None else (N, H))
                and all(A.shape == (N, H) for A in (carry, dc, dc_prev))
                and kernel_fits(dG, given, Gates, Cells, W_hh, carry, dc, dc_prev)):
            return super().lstm_backward(dG, dH, last, Gates, Cells, W_hh, carry, dc, dc_prev,
                                         first, block, to_start)
        from . import gated
        from .blas import NUMPY_BLAS
        from .split import rows_split_chosen

        key = ("lstm backward", Gates.shape, str(Gates.dtype), first, block, dH is not None)
        with rows_split_chosen(key) as parts:
            return bool(gated.lstm_backward_split(
                dG, *_output_gradients(dH, last, carry), Gates, Cells, W_hh, carry, dc,
                dc_prev, first, block, to_start, Gates.dtype == np.float32, NUMPY_BLAS,
                max(1, min(parts, N))))

    def gru_forward(self, XW, W_hh, b_hh, States, Gates, Gh) -> None:
        T, N, rows = XW.shape if XW.ndim == 3 else (0, 0, 0)
        H = rows // 3
        if not (rows == 3 * H and W_hh.shape == (rows, H) and b_hh.shape == (rows,)
                and States.shape == (T + 1, N, H) and Gates.shape == (T, N, 4 * H)
                and Gh.shape == (N, rows) and kernel_fits(XW, W_hh, b_hh, States, Gates, Gh)):
            return super().gru_forward(XW, W_hh, b_hh, States, Gates, Gh)
        from . import gated
        from .blas import NUMPY_BLAS
        from .split import rows_split_chosen

        # One block of the batch's rows per thread, through all the time steps.
        with rows_split_chosen(("gru forward", XW.shape, str(XW.dtype))) as parts:
            gated.gru_forward_split(XW, W_hh, b_hh, States, Gates, Gh, XW.dtype == np.float32,
                                    NUMPY_BLAS, max(1, min(parts, N)))

    def gru_backward(self, dGx, dGh, dH, last, Gates, States, W_hh, carry, direct,
                     first: int, block: int, to_start: bool) -> bool:
        T, N, wide = Gates.shape if Gates.ndim == 3 else (0, 0, 0)
        H = wide // 4
        given = dH if dH is not None else last
        if not (wide == 4 * H and W_hh.shape == (3 * H, H) and dGx.shape == (T, N, 3 * H)
                and dGh.shape == dGx.shape and States.shape == (T + 1, N, H)
                and given is not None
                and given.shape == ((T, N, H) if dH is not None else (N, H))
                and carry.shape == (N, H) and direct.shape == (N, H)
                and kernel_fits(dGx, dGh, given, Gates, States, W_hh, carry, direct)):
            return super().gru_backward(dGx, dGh, dH, last, Gates, States, W_hh, carry,
                                        direct, first, block, to_start)
        from . import gated
        from .blas import NUMPY_BLAS
        from .split import rows_split_chosen

        key = ("gru backward", Gates.shape, str(Gates.dtype), first, block, dH is not None)
        with rows_split_chosen(key) as parts:
            return bool(gated.gru_backward_split(
                dGx, dGh, *_output_gradients(dH, last, carry), Gates, States, W_hh, carry,
                direct, first, block, to_start, NUMPY_BLAS, max(1, min(parts, N))))

    def lstm_cell_forward(self, G, c_prev, h_out, c_out, gates_out):
        if not (_cell_shapes(c_prev, (h_out, c_out), (G, gates_out), 4)
                and kernel_fits(G, c_prev, h_out, c_out, gates_out)):
            return super().lstm_cell_forward(G, c_prev, h_out, c_out, gates_out)
        from . import gated

        gated.lstm_cell_forward(G, c_prev, h_out, c_out, gates_out, G.dtype == np.float32)
        return h_out, c_out, gates_out

    def lstm_cell_backward(self, dh, dc, gates, c_prev, c, dG_out, dc_prev_out):
        if not (_cell_shapes(c, (dh, dc, c_prev, dc_prev_out), (gates, dG_out), 4)
                and kernel_fits(dh, dc, gates, c_prev, c, dG_out, dc_prev_out)):
            return super().lstm_cell_backward(dh, dc, gates, c_prev, c, dG_out, dc_prev_out)
        from . import gated

        gated.lstm_cell_backward(dh, dc, gates, c_prev, c, dG_out, dc_prev_out,
                                 c.dtype == np.float32)
        return dG_out, dc_prev_out

    def gru_cell_forward(self, Gx, Gh, h_prev, h_out, gates_out):
        if not (_cell_shapes(h_prev, (h_out,), (Gx, Gh), 3)
                and _cell_shapes(h_prev, (), (gates_out,), 4)
                and kernel_fits(Gx, Gh, h_prev, h_out, gates_out)):
            return super().gru_cell_forward(Gx, Gh, h_prev, h_out, gates_out)
        from . import gated

        gated.gru_cell_forward(Gx, Gh, h_prev, h_out, gates_out, Gx.dtype == np.float32)
        return h_out, gates_out

    def gru_cell_backward(self, dh, gates, h_prev, dGx_out, dGh_out, dh_prev_out):
        if not (_cell_shapes(h_prev, (dh, dh_prev_out), (dGx_out, dGh_out), 3)
                and _cell_shapes(h_prev, (), (gates,), 4)
                and kernel_fits(dh, gates, h_prev, dGx_out, dGh_out, dh_prev_out)):
            return super().gru_cell_backward(dh, gates, h_prev, dGx_out, dGh_out, dh_prev_out)
        from . import gated

        gated.gru_cell_backward(dh, gates, h_prev, dGx_out, dGh_out, dh_prev_out)
        return dGx_out, dGh_out, dh_prev_out

    # ----------------------------------------------------------------- losses
    def softmax_cross_entropy(self, Z, T, weights=None):
        if weights is not None or Z.ndim != 2 or Z.shape != T.shape or not kernel_fits(Z, T):
            return super().softmax_cross_entropy(Z, T, weights)
        dZ = np.empty_like(Z)
        loss = cpu_kernels.softmax_cross_entropy(Z, T, dZ)
        return np.asarray(loss, dtype=Z.dtype), dZ

    # ------------------------------------------------------------- optimizers
    def advance_optimizer(self, rule: str, state) -> None:
        if rule not in cpu_kernels.FUSED_RULES or not step_state_fits(state, np):
            return super().advance_optimizer(rule, state)
        cpu_kernels.advance(UPDATE_RULES[rule].code, state)

    def _fused_update(self, kernel, W, dW, state, *slots) -> bool:
        """Run ``kernel(W, dW, *slots, state)`` over flat views if the arrays suit it."""
        arrays = (W, dW, *slots)
        if not (all(A.shape == W.shape for A in arrays) and kernel_fits(*arrays)
                and step_state_fits(state, np)):
            return False
        kernel(*(A.reshape(-1) for A in arrays), state)
        return True

    def sgd_update(self, W, dW, state) -> None:
        if not self._fused_update(cpu_kernels.sgd_step, W, dW, state):
            super().sgd_update(W, dW, state)

    def momentum_update(self, W, dW, state, V) -> None:
        if not self._fused_update(cpu_kernels.momentum_step, W, dW, state, V):
            super().momentum_update(W, dW, state, V)

    def adam_update(self, W, dW, state, M, V) -> None:
        if not self._fused_update(cpu_kernels.adam_step, W, dW, state, M, V):
            super().adam_update(W, dW, state, M, V)

    def rmsprop_update(self, W, dW, state, V, B=None, G=None) -> None:
        # Unused slots are never read by the loop: V stands in for them.
        slots = (V, V if B is None else B, V if G is None else G)
        if not self._fused_update(cpu_kernels.rmsprop_step, W, dW, state, *slots):
            super().rmsprop_update(W, dW, state, V, B, G)
