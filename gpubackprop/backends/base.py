"""The Backend: every array operation on model data, written once against ``xp``.

``xp`` is NumPy or CuPy. The generic methods here are the reference
implementation; a GPU backend overrides only the operations it fuses into
a CUDA kernel and calls ``super()`` where a kernel cannot serve.

Conventions: batches are row-major ``(N, features)``; activation
derivatives are computed from what the registry
(:mod:`gpubackprop.nn.activations`) says the forward pass saved: the outputs
``Y`` (never recomputing the activation), or the inputs ``Z`` where the
derivative needs them; methods that take ``out=`` may write their result in place.
"""

from __future__ import annotations

import contextlib
import functools
import weakref

import numpy as np

from ..errors import InputError
from ..memory import available_host_memory
from ..nn.activations import NAMES as ACTIVATIONS
from ..nn.bptt import starts_block, step_gradient
from ..nn.update_rules import LR, STATE_DTYPE, STEP, UPDATE_RULES, WEIGHT_DECAY

#: Added to the global norm in :meth:`Backend.clip_by_global_norm` before dividing:
#: the scale is ``min(1, max_norm / (norm + CLIP_EPSILON))``. PyTorch's
#: ``clip_grad_norm_`` adds 1e-6 instead, so its clipped norm is smaller by a
#: relative ``(1e-6 - 1e-12) / norm``: 1e-7 for a norm of 10.
CLIP_EPSILON = 1e-12
#: The dtypes every fused kernel, CUDA or Numba, is compiled for.
KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def kernel_can_take(arrays, xp, address, dtypes=None) -> bool:
    """Whether a fused kernel can take ``arrays``, each in the dtype it reads it as.

    All must be non-empty C-contiguous ``xp.ndarray`` arrays, each of its
    expected dtype, and any two must be either the same memory or disjoint:
    a kernel reads and writes element ``i`` in the same step, so exact
    aliasing is safe and partial overlap is not.

    Parameters
    ----------
    arrays : sequence of arrays
    xp : module
        ``numpy`` or ``cupy``; its ``may_share_memory`` screens each pair cheaply.
    address : callable
        The address of an array's first element (an int), asked only of pairs
        that may share memory.
    dtypes : sequence of dtype, optional
        What the kernel reads each array as, one per array: its parameter types
        with the type parameters bound (``T*`` with ``T = float``,
        ``const double*``). By default every array as the first one's dtype,
        which must be one of :data:`KERNEL_DTYPES` (a kernel with one type ``T``).
    """
    if dtypes is None:
        if arrays[0].dtype not in KERNEL_DTYPES:
            return False
        dtypes = (arrays[0].dtype,) * len(arrays)
    if len(dtypes) != len(arrays):
        return False
    for X, dtype in zip(arrays, dtypes):
        if not (isinstance(X, xp.ndarray) and X.dtype == dtype and X.flags.c_contiguous
                and X.size > 0):
            return False
    for i, A in enumerate(arrays):
        for B in arrays[i + 1:]:
            if A is not B and xp.may_share_memory(A, B) and not (
                    A.shape == B.shape and address(A) == address(B)):
                return False
    return True


class CheckedGroups:
    """Groups of arrays a kernel was found able to take, remembered while they all live.

    What :func:`kernel_can_take` checks (dtype, contiguity, size, memory
    addresses) never changes over an array's life, so a group of long-lived
    buffers (a parameter, its gradient and its optimizer state, updated every
    step) needs checking once. Groups are keyed by the arrays' identities and
    dropped when any member is freed; an id reused by a new array is not
    mistaken for the old one.
    """

    def __init__(self):
        self._groups: dict[tuple[int, ...], tuple] = {}

    def __contains__(self, arrays) -> bool:
        refs = self._groups.get(tuple(map(id, arrays)))
        return refs is not None and all(ref() is X for ref, X in zip(refs, arrays))

    def add(self, arrays) -> None:
        """Remember ``arrays`` (a tuple) as checked, until one of them is freed."""
        key = tuple(map(id, arrays))
        forget = functools.partial(self._forget, key)
        self._groups[key] = tuple(weakref.ref(X, forget) for X in arrays)

    def _forget(self, key, _ref) -> None:
        self._groups.pop(key, None)

    def __len__(self) -> int:
        return len(self._groups)


#: Constants of SplitMix64 (Steele, Lea and Flood 2014): the golden-ratio increment and
#: the two odd multipliers of its finaliser.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))
_SHIFTS = (np.uint64(30), np.uint64(27), np.uint64(31))


def permutation_keys(xp, n: int, key: int):
    """Sort keys of a random permutation of ``range(n)``: (n,) uint64, all distinct.

    Key ``i`` is SplitMix64's output for counter ``i`` of stream ``key``: the
    map from ``i`` is a bijection of 64-bit integers (an odd multiply, an
    add, xor-shifts and odd multiplies), so no two keys tie and sorting them
    draws every order without the bias of ties. Stateless: the same ``key``
    gives the same keys on every backend.
    """
    Z = xp.arange(n, dtype=np.uint64)
    Z *= _GOLDEN
    Z += np.uint64(key)
    for shift, multiplier in zip(_SHIFTS, _MIX):
        Z ^= Z >> shift
        Z *= multiplier
    Z ^= Z >> _SHIFTS[-1]
    return Z


def step_state_fits(state, xp) -> bool:
    """Whether a kernel can read ``state`` as an optimizer step state.

    It must be a one-dimensional C-contiguous float64 ``xp.ndarray`` (see
    :mod:`gpubackprop.nn.update_rules` for its layout).
    """
    return (isinstance(state, xp.ndarray) and state.dtype == STATE_DTYPE and state.ndim == 1
            and state.flags.c_contiguous)


# ---------------------------------------------------------- activation formulas
# One entry per activation of the registry (gpubackprop.nn.activations), written
# once against ``xp``: forward ``f(xp, Z, out) -> out`` (``out`` may be ``Z``) and
# derivative ``f'(xp, S) -> array`` from the saved array ``S`` the registry names
# (the output Y, or the input Z); None means f' = 1.

def _zero_row(xp, Z):
    # A zero row rather than a scalar 0: NumPy vectorises the broadcast row
    # but not the scalar (about 2.4x faster on a 128x512 batch).
    return xp.zeros(Z.shape[-1:], dtype=Z.dtype)


def _sigmoid(xp, Z, out):
    """``exp(min(z, 0)) / (1 + exp(-|z|))``.

    That is ``1 / (1 + e^-z)`` for z >= 0 and ``e^z / (1 + e^z)`` below.

    Neither exponential can overflow, and both tails keep a few ulps of
    relative accuracy (``0.5 + 0.5 tanh(z / 2)`` rounds to 0 below about -17
    in float32). Arithmetic rather than ``where``, which NumPy runs branch by
    branch (about 10x slower on random signs).
    """
    numerator = xp.minimum(Z, _zero_row(xp, Z))
    xp.exp(numerator, out=numerator)
    denominator = xp.abs(Z)
    xp.negative(denominator, out=denominator)
    xp.exp(denominator, out=denominator)
    denominator += Z.dtype.type(1)
    return xp.divide(numerator, denominator, out=out)


def _relu(xp, Z, out):
    return xp.maximum(Z, _zero_row(xp, Z), out=out)


def _identity(xp, Z, out):
    if out is not Z:
        out[...] = Z
    return out


def _silu(xp, Z, out):
    S = _sigmoid(xp, Z, xp.empty_like(Z))
    return xp.multiply(Z, S, out=out)


def _sigmoid_derivative(xp, Y):
    D = xp.subtract(Y.dtype.type(1), Y)
    D *= Y
    return D


def _tanh_derivative(xp, Y):
    D = xp.multiply(Y, Y)
    return xp.subtract(Y.dtype.type(1), D, out=D)


def _silu_derivative(xp, Z):
    # s (1 + z (1 - s)) with s = sigmoid(z).
    one = Z.dtype.type(1)
    S = _sigmoid(xp, Z, xp.empty_like(Z))
    D = xp.subtract(one, S)
    D *= Z
    D += one
    D *= S
    return D


#: ``f(xp, Z, out)`` of every activation, by name.
FORWARD = {"identity": _identity, "relu": _relu, "sigmoid": _sigmoid,
           "tanh": lambda xp, Z, out: xp.tanh(Z, out=out), "silu": _silu}
#: ``f'(xp, S)`` of every activation from its saved array, by name (None: f' = 1).
DERIVATIVES = {"identity": None, "relu": lambda xp, Y: Y > 0, "sigmoid": _sigmoid_derivative,
               "tanh": _tanh_derivative, "silu": _silu_derivative}


def _formula(table: dict, name: str):
    try:
        return table[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown activation {name!r}; valid names: "
                         f"{', '.join(ACTIVATIONS)}") from None


def _split(X, parts: int) -> list:
    """The ``parts`` equal column blocks of ``X`` (N, parts * H), as views."""
    H = X.shape[-1] // parts
    return [X[:, k * H:(k + 1) * H] for k in range(parts)]


class Backend:
    """Array operations for forward passes, backward passes and updates.

    Parameters
    ----------
    xp : module
        ``numpy`` or ``cupy``.
    """

    name = "generic"
    #: Where the arrays live: "cpu" or "gpu".
    device = "cpu"
    #: True when reading a scalar back to the host costs nothing (no device sync).
    host_reads_are_free = True
    #: Compilers of training steps (see :mod:`gpubackprop.nn.plan`), asked in order; each
    #: has a ``name`` and ``compile(plan) -> Step | Declined``. The eager interpreter of
    #: the plan runs what none of them takes.
    step_compilers: tuple = ()

    def __init__(self, xp):
        self.xp = xp

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    # ------------------------------------------------------------------ memory
    def asarray(self, X, dtype=None):
        """Return ``X`` as a C-contiguous array of this backend (no copy when already one).

        C order whatever ``X``'s: CuPy keeps a Fortran-ordered host array in Fortran
        order, and a product whose operand is not C-contiguous cannot take the
        capture-safe cuBLAS call of a recorded step, nor a kernel's fast path.
        """
        return self.xp.asarray(X, dtype=dtype, order="C")

    def to_numpy(self, X) -> np.ndarray:
        """Return ``X`` as a NumPy array on the host."""
        return np.asarray(X)

    def zeros(self, shape, dtype):
        return self.xp.zeros(shape, dtype=dtype)

    def empty(self, shape, dtype):
        return self.xp.empty(shape, dtype=dtype)

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on the CPU)."""

    def batch_copies(self) -> int:
        """Extra copies of a batch's activations the fused training step keeps (per thread)."""
        return 0

    def free_memory(self) -> int | None:
        """Bytes that arrays of this backend can still take (None when unknown)."""
        return available_host_memory()

    # --------------------------------------------------------- linear algebra
    def gemm(self, A, B, trans_a: bool = False, trans_b: bool = False, out=None):
        """Matrix product ``op(A) @ op(B)`` with ``op`` an optional transpose.

        Parameters
        ----------
        A : array, shape (M, K), or (K, M) when ``trans_a``
        B : array, shape (K, P), or (P, K) when ``trans_b``
        out : array, shape (M, P), optional

        Returns
        -------
        array, shape (M, P)
        """
        A = A.T if trans_a else A
        B = B.T if trans_b else B
        return self.xp.matmul(A, B, out=out)

    def sum_rows(self, X, out=None):
        """Column sums of ``X`` (N, D) -> (D,), e.g. a bias gradient."""
        return X.sum(axis=0, out=out)

    # ------------------------------------------------------------ activations
    def activation(self, Z, name: str, out=None):
        """Apply an activation elementwise: ``Y = f(Z)`` with shape of ``Z``.

        ``out`` may be ``Z`` itself. The formula is this backend's entry of
        :data:`FORWARD` for ``name``.
        """
        if out is None:
            out = self.xp.empty_like(Z)
        return _formula(FORWARD, name)(self.xp, Z, out)

    def bias_activation(self, Z, b, name: str, out=None):
        """Add a bias row to ``Z`` in place and apply an activation.

        Parameters
        ----------
        Z : array, shape (N, D)
            Pre-activations without bias (typically a fresh GEMM result);
            holds ``Z + b`` afterwards.
        b : array, shape (D,)
        out : array, shape (N, D), optional
            Where ``f(Z + b)`` goes; ``Z`` itself when omitted. A layer whose
            activation's derivative needs the input (the registry's
            ``needs_input``) passes an ``out`` to keep ``Z + b``.

        Returns
        -------
        array, shape (N, D)
            ``f(Z + b)``, stored in ``out`` (or ``Z``).
        """
        Z += b
        return self.activation(Z, name, out=Z if out is None else out)

    def backprop_activation(self, dY, S, name: str, out=None):
        """Gradient through an activation, from what its forward pass saved.

        Parameters
        ----------
        dY : array, shape (N, D)
            Gradient of the loss with respect to ``Y``.
        S : array, shape (N, D)
            The saved array the registry names for ``name``: the output
            ``Y = f(Z)`` for most activations, the input ``Z`` for those whose
            derivative needs it (``ActivationSpec.needs_input``, e.g. SiLU).
        out : array, optional
            Where to write ``dZ``; may be ``dY`` itself.

        Returns
        -------
        array, shape (N, D)
            ``dZ = dY * f'(Z)``, ``f'`` from this backend's :data:`DERIVATIVES`.
        """
        derivative = _formula(DERIVATIVES, name)
        if derivative is None:  # f' = 1
            if out is None:
                return dY
            out[...] = dY
            return out
        # f'(Z) goes into a temporary first: ``out`` may be ``dY``, still unread.
        return self.xp.multiply(dY, derivative(self.xp, S), out=out)

    def recurrent_activation(self, XW, HU, b, name: str = "tanh"):
        """Hidden-state update of an Elman RNN step, in place on ``HU``.

        Parameters
        ----------
        XW : array, shape (N, H)
            Input projection ``x_t W`` of this time step.
        HU : array, shape (N, H)
            Recurrent projection ``h_{t-1} U``; overwritten with the result.
        b : array, shape (H,)

        Returns
        -------
        array, shape (N, H)
            ``h_t = f(XW + HU + b)``, stored in ``HU``.
        """
        HU += XW
        return self.bias_activation(HU, b, name)

    def recurrent_forward(self, XW, U, b, States, name: str = "tanh",
                          zero_start: bool = False) -> None:
        """All the steps of an Elman RNN, ``h_t = f(XW[t] + h_{t-1} U + b)``, in place.

        Parameters
        ----------
        XW : array, shape (T, N, H)
            Input projections ``x_t W`` of every step.
        U : array, shape (H, H)
        b : array, shape (H,)
        States : array, shape (T + 1, N, H)
            ``States[0]`` holds ``h_{-1}``; ``States[t + 1]`` receives ``h_t``.
        zero_start : bool
            ``States[0]`` is zero: step 0 makes no product (``h_{-1} U`` is zero).
        """
        for t in range(XW.shape[0]):
            # h_t = f(x_t W + h_{t-1} U + b), written in place into States[t + 1].
            if t == 0 and zero_start:
                HU = States[1]
                HU[...] = 0
            else:
                HU = self.gemm(States[t], U, out=States[t + 1])
            self.recurrent_activation(XW[t], HU, b, name)

    def recurrent_backward(self, dZ, States, U, name: str, first: int, block: int,
                           to_h0: bool, last=None, db=None):
        """Backpropagation through time over the steps ``first .. T-1``, in place on ``dZ``.

        Parameters
        ----------
        dZ : array, shape (T, N, H)
            In: the gradient of each step's own output (zero elsewhere), unless
            ``last`` is given. Out: ``dz_t``, the gradient of step t's
            pre-activation, for t >= ``first``; zero before ``first`` when ``last``
            is given.
        States : array, shape (T + 1, N, H)
            The forward pass's states (``States[t + 1]`` is ``h_t``).
        U : array, shape (H, H)
        first : int
            The earliest step any gradient reaches.
        block : int
            Truncation length k: nothing flows into step t-1 from a step t > 0
            with ``(T - t) % k == 0`` (k = T for full BPTT).
        to_h0 : bool
            Whether to carry the gradient back to the initial state.
        last : array, shape (N, H), optional
            The gradient of the last step's output, the only one (a many-to-one
            layer): ``dZ``'s values on entry are then not read, so it need not be
            zeroed first.
        db : array, shape (H,), optional
            Receives the bias gradient: ``dZ`` as it is when done, summed over the steps
            and the batch.

        Returns
        -------
        array, shape (N, H), or None
            ``dh0 = dz_0 U^T`` when ``to_h0`` and step 0 is reached, else None.
        """
        T, dh0 = dZ.shape[0], None
        if last is not None:
            dZ[...] = 0
            dZ[T - 1] = last
        for t in range(T - 1, first - 1, -1):
            # dZ[t] holds dh_t (own output + carry from step t+1); through the
            # activation from the saved output: dz_t = dh_t * f'(h_t), in place.
            dz = self.backprop_activation(dZ[t], States[t + 1], name, out=dZ[t])
            if starts_block(t, T, block):
                continue  # truncated BPTT: step t starts a block, nothing flows into step t-1
            if t == 0 and not to_h0:
                continue  # a zero initial state needs no gradient
            # Carry back through the recurrent weights: dh_{t-1} += dz_t U^T.
            carry = self.gemm(dz, U, trans_b=True)
            if t == 0:
                dh0 = carry
                break
            dZ[t - 1] += carry
        if db is not None:
            # The bias gradient: dz summed over the steps and the batch.
            self.sum_rows(dZ.reshape(-1, dZ.shape[2]), out=db)
        return dh0

    def step_context(self):
        """A context around a run of training steps (``with step:``): here a no-op; the
        fused CPU backend holds NumPy's BLAS at one thread in it (its threads are Numba's)."""
        return contextlib.nullcontext()

    def recurrent_pass(self, key: tuple):
        """A context around one pass of a layer's time loop (many small GEMMs).

        ``key`` names the pass and its shapes. Here a no-op; a backend may
        tune itself for the pass (the fused CPU backend picks its BLAS thread count).
        """
        return contextlib.nullcontext()

    # ------------------------------------------------------- gated recurrent cells
    # Gate layouts are PyTorch's (torch.nn.LSTM: i, f, g, o; torch.nn.GRU: r, z, n), so
    # weights exchange with it; docs/recurrent.md derives the backward passes.
    def lstm_forward(self, XW, W_hh, States, Cells, HW) -> None:
        """The LSTM's forward time loop: per step the recurrent product, then the cell.

        Parameters
        ----------
        XW : array, shape (T, N, 4H)
            Input projections plus both biases of every step; step t's gates are
            written over ``XW[t]`` (what the backward pass reads).
        W_hh : array, shape (4H, H)
        States, Cells : arrays, shape (T + 1, N, H)
            ``[0]`` holds h_{-1} and c_{-1}; ``[t + 1]`` receives h_t and c_t.
        HW : array, shape (N, 4H)
            Scratch space for ``G_t = h_{t-1} W_hh^T + XW[t]``.
        """
        for t in range(XW.shape[0]):
            # G_t = h_{t-1} W_hh^T + (x_t W_ih^T + b) in HW; the cell writes its gates over
            # XW[t] (another array than G_t: a compiled cell's loops vectorise only then).
            G = self.gemm(States[t], W_hh, trans_b=True, out=HW)
            G += XW[t]
            self.lstm_cell_forward(G, Cells[t], States[t + 1], Cells[t + 1], XW[t])

    def lstm_backward(self, dG, dH, last, Gates, Cells, W_hh, carry, dc, dc_prev,
                      first: int, block: int, to_start: bool) -> bool:
        """The LSTM's reverse time loop: per step the cell's backward, then the carry.

        Parameters
        ----------
        dG : array, shape (T, N, 4H)
            Receives the gradients of the steps' pre-activations (steps ``first`` on).
        dH : array, shape (T, N, H), or None
            The outputs' gradients (``return_sequences``), each step's carry added in place;
            None: only the last step has an output, its gradient ``last`` (N, H).
        Gates : array, shape (T, N, 4H); Cells : array, shape (T + 1, N, H)
            What the forward pass saved.
        W_hh : array, shape (4H, H)
        carry, dc, dc_prev : arrays, shape (N, H)
            Scratch: ``carry`` ends as dh_{-1} and ``dc`` as dc_{-1} when step 0 is reached.
        first, block : int
            The earliest step to reach, and the truncated-BPTT block length.
        to_start : bool
            Whether the initial states need their gradients.

        Returns
        -------
        bool
            Whether step 0 was reached with ``to_start`` (``carry`` and ``dc`` hold them).
        """
        T = Gates.shape[0]
        # dc_t from step t+1 and dc_{t-1} from step t: the two arrays, swapped after each
        # step (a compiled cell's loops vectorise only when they differ).
        dc_t, dc_before = dc, dc_prev
        dc_t[...] = 0
        pending = False
        for t in range(T - 1, first - 1, -1):
            # dh_t: own output's gradient plus dG_{t+1} W_hh carried from step t+1.
            dh = step_gradient(t, T, dH, last, carry, pending)
            # Through the cell: dG_t, and dc_{t-1} = dc_t * f, which step t-1 receives.
            self.lstm_cell_backward(dh, dc_t, Gates[t], Cells[t], Cells[t + 1], dG[t],
                                    dc_before)
            dc_t, dc_before = dc_before, dc_t
            pending = False
            if starts_block(t, T, block):
                dc_t[...] = 0  # truncated BPTT: step t starts a block
                continue
            if t == 0 and not to_start:
                break  # zero initial states need no gradient
            # Carry back through the recurrent weights: dh_{t-1} gets dG_t W_hh.
            self.gemm(dG[t], W_hh, out=carry)
            if t == 0:
                if dc_t is not dc:
                    dc[...] = dc_t
                return True
            pending = True
        return False

    def gru_forward(self, XW, W_hh, b_hh, States, Gates, Gh) -> None:
        """The GRU's forward time loop: per step the recurrent product, then the cell.

        Parameters
        ----------
        XW : array, shape (T, N, 3H)
            Input projections plus the input bias of every step.
        W_hh : array, shape (3H, H); b_hh : array, shape (3H,)
        States : array, shape (T + 1, N, H)
            ``[0]`` holds h_{-1}; ``[t + 1]`` receives h_t.
        Gates : array, shape (T, N, 4H)
            Receives each step's r, z, n and ``Gh_n`` (what the backward pass reads).
        Gh : array, shape (N, 3H)
            Scratch space for ``Gh_t = h_{t-1} W_hh^T + b_hh``.
        """
        for t in range(XW.shape[0]):
            # Gh_t = h_{t-1} W_hh^T + b_hh; the cell gives h_t and saves r, z, n, Gh_n.
            self.gemm(States[t], W_hh, trans_b=True, out=Gh)
            Gh += b_hh
            self.gru_cell_forward(XW[t], Gh, States[t], States[t + 1], Gates[t])

    def gru_backward(self, dGx, dGh, dH, last, Gates, States, W_hh, carry, direct,
                     first: int, block: int, to_start: bool) -> bool:
        """The GRU's reverse time loop: per step the cell's backward, then the carry.

        Parameters
        ----------
        dGx, dGh : arrays, shape (T, N, 3H)
            Receive the gradients of the steps' input and recurrent projections (steps
            ``first`` on).
        dH : array, shape (T, N, H), or None
            The outputs' gradients (``return_sequences``), each step's carry added in place;
            None: only the last step has an output, its gradient ``last`` (N, H).
        Gates : array, shape (T, N, 4H); States : array, shape (T + 1, N, H)
            What the forward pass saved.
        W_hh : array, shape (3H, H)
        carry, direct : arrays, shape (N, H)
            Scratch: ``carry`` ends as dh_{-1} when step 0 is reached.
        first, block : int
            The earliest step to reach, and the truncated-BPTT block length.
        to_start : bool
            Whether the initial state needs its gradient.

        Returns
        -------
        bool
            Whether step 0 was reached with ``to_start`` (``carry`` holds dh_{-1}).
        """
        T = Gates.shape[0]
        pending = False
        for t in range(T - 1, first - 1, -1):
            # dh_t: own output's gradient plus the carry from step t+1.
            dh = step_gradient(t, T, dH, last, carry, pending)
            # Through the cell: dGx_t, dGh_t, and dh_t * z into direct.
            self.gru_cell_backward(dh, Gates[t], States[t], dGx[t], dGh[t], direct)
            pending = False
            if starts_block(t, T, block):
                continue  # truncated BPTT: step t starts a block
            if t == 0 and not to_start:
                break  # a zero initial state needs no gradient
            # Carry back: dh_{t-1} = dGh_t W_hh + dh_t * z.
            self.gemm(dGh[t], W_hh, out=carry)
            carry += direct
            if t == 0:
                return True
            pending = True
        return False

    def lstm_cell_forward(self, G, c_prev, h_out, c_out, gates_out):
        """One LSTM step from its pre-activations: gates, cell state and hidden state.

        Parameters
        ----------
        G : array, shape (N, 4H)
            Pre-activations of step t, ``x_t W_ih^T + h_{t-1} W_hh^T + b_ih + b_hh``,
            in the gate order i, f, g, o.
        c_prev : array, shape (N, H)
            Cell state ``c_{t-1}``.
        h_out, c_out : arrays, shape (N, H)
            Receive ``h_t = o * tanh(c_t)`` and ``c_t = f * c_prev + i * g``.
            ``c_out`` may be ``c_prev``.
        gates_out : array, shape (N, 4H)
            Receives ``[sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)]``; may be ``G``.

        Returns
        -------
        (h_out, c_out, gates_out)
        """
        xp, H = self.xp, c_prev.shape[-1]
        sigmoid = FORWARD["sigmoid"]
        sigmoid(xp, G[:, :2 * H], gates_out[:, :2 * H])
        xp.tanh(G[:, 2 * H:3 * H], out=gates_out[:, 2 * H:3 * H])
        sigmoid(xp, G[:, 3 * H:], gates_out[:, 3 * H:])
        i, f, g, o = _split(gates_out, 4)
        ig = i * g
        xp.multiply(f, c_prev, out=c_out)
        c_out += ig
        xp.tanh(c_out, out=h_out)
        h_out *= o
        return h_out, c_out, gates_out

    def lstm_cell_backward(self, dh, dc, gates, c_prev, c, dG_out, dc_prev_out):
        """Gradients of one LSTM step, from the gates and cell states it saved.

        Parameters
        ----------
        dh : array, shape (N, H)
            Total gradient reaching ``h_t`` (its own output's and step t+1's).
        dc : array, shape (N, H)
            Gradient reaching ``c_t`` from step t+1 (zeros at the last step).
        gates : array, shape (N, 4H)
            The step's ``gates_out`` from :meth:`lstm_cell_forward`.
        c_prev, c : arrays, shape (N, H)
            ``c_{t-1}`` and ``c_t``.
        dG_out : array, shape (N, 4H)
            Receives the gradient with respect to the pre-activations ``G``, gate
            order i, f, g, o. Must not overlap ``gates``.
        dc_prev_out : array, shape (N, H)
            Receives ``dc_{t-1} = dc_t * f``, the part of the gradient reaching
            ``c_{t-1}`` (through the cell update). May be ``dc``.

        Returns
        -------
        (dG_out, dc_prev_out)
        """
        xp = self.xp
        one = gates.dtype.type(1)
        i, f, g, o = _split(gates, 4)
        di, df, dg, do = _split(dG_out, 4)
        tanh_c = xp.tanh(c)
        # do = dh * tanh(c_t), before tanh_c turns into tanh'(c_t).
        xp.multiply(dh, tanh_c, out=do)
        # dc_t in total: from step t+1, plus through h_t = o * tanh(c_t).
        xp.multiply(tanh_c, tanh_c, out=tanh_c)
        dc_total = xp.subtract(one, tanh_c, out=tanh_c)
        dc_total *= o
        dc_total *= dh
        dc_total += dc
        # Through c_t = f * c_{t-1} + i * g.
        xp.multiply(dc_total, g, out=di)
        xp.multiply(dc_total, c_prev, out=df)
        xp.multiply(dc_total, i, out=dg)
        xp.multiply(dc_total, f, out=dc_prev_out)
        # Through the gate nonlinearities, derivatives from their outputs.
        di *= DERIVATIVES["sigmoid"](xp, i)
        df *= DERIVATIVES["sigmoid"](xp, f)
        dg *= DERIVATIVES["tanh"](xp, g)
        do *= DERIVATIVES["sigmoid"](xp, o)
        return dG_out, dc_prev_out

    def gru_cell_forward(self, Gx, Gh, h_prev, h_out, gates_out):
        """One GRU step from its input and recurrent projections (torch.nn.GRU's equations).

        ``r = sigmoid(Gx_r + Gh_r)``, ``z = sigmoid(Gx_z + Gh_z)``,
        ``n = tanh(Gx_n + r * Gh_n)``, ``h_t = (1 - z) * n + z * h_{t-1}``.

        Parameters
        ----------
        Gx : array, shape (N, 3H)
            ``x_t W_ih^T + b_ih``, gate order r, z, n.
        Gh : array, shape (N, 3H)
            ``h_{t-1} W_hh^T + b_hh``, same order.
        h_prev : array, shape (N, H)
        h_out : array, shape (N, H)
            Receives ``h_t``; may be ``h_prev``.
        gates_out : array, shape (N, 4H)
            Receives ``[r, z, n, Gh_n]``, what :meth:`gru_cell_backward` needs.
            Must not overlap ``Gx`` or ``Gh``.

        Returns
        -------
        (h_out, gates_out)
        """
        xp, H = self.xp, h_prev.shape[-1]
        r, z, n, gh_n = _split(gates_out, 4)
        rz = gates_out[:, :2 * H]
        xp.add(Gx[:, :2 * H], Gh[:, :2 * H], out=rz)
        FORWARD["sigmoid"](xp, rz, rz)
        gh_n[...] = Gh[:, 2 * H:]
        xp.multiply(r, gh_n, out=n)
        n += Gx[:, 2 * H:]
        xp.tanh(n, out=n)
        # h_t = n + z * (h_{t-1} - n).
        update = xp.subtract(h_prev, n)
        update *= z
        xp.add(n, update, out=h_out)
        return h_out, gates_out

    def gru_cell_backward(self, dh, gates, h_prev, dGx_out, dGh_out, dh_prev_out):
        """Gradients of one GRU step, from the gates it saved.

        Parameters
        ----------
        dh : array, shape (N, H)
            Total gradient reaching ``h_t``.
        gates : array, shape (N, 4H)
            The step's ``gates_out`` from :meth:`gru_cell_forward`: r, z, n, Gh_n.
        h_prev : array, shape (N, H)
        dGx_out, dGh_out : arrays, shape (N, 3H)
            Receive the gradients with respect to ``Gx`` and ``Gh`` (gate order r, z, n).
        dh_prev_out : array, shape (N, H)
            Receives ``dh * z``, the part of the gradient reaching ``h_{t-1}``
            directly; the layer adds ``dGh W_hh``. May be ``dh``.

        Returns
        -------
        (dGx_out, dGh_out, dh_prev_out)
        """
        xp = self.xp
        one = gates.dtype.type(1)
        r, z, n, gh_n = _split(gates, 4)
        dx_r, dx_z, dx_n = _split(dGx_out, 3)
        dh_r, dh_z, dh_n = _split(dGh_out, 3)
        # Through h_t = (1 - z) * n + z * h_{t-1}: dn, then tanh' from n.
        xp.subtract(one, z, out=dx_n)
        dx_n *= dh
        dx_n *= DERIVATIVES["tanh"](xp, n)
        # Through n's pre-activation Gx_n + r * Gh_n.
        xp.multiply(dx_n, r, out=dh_n)
        xp.multiply(dx_n, gh_n, out=dx_r)
        dx_r *= DERIVATIVES["sigmoid"](xp, r)
        dh_r[...] = dx_r
        # dz = dh * (h_{t-1} - n), then sigmoid' from z.
        xp.subtract(h_prev, n, out=dx_z)
        dx_z *= dh
        dx_z *= DERIVATIVES["sigmoid"](xp, z)
        dh_z[...] = dx_z
        # The direct path h_{t-1} -> h_t (last: dh_prev_out may be dh).
        xp.multiply(dh, z, out=dh_prev_out)
        return dGx_out, dGh_out, dh_prev_out

    # ----------------------------------------------------------------- losses
    def one_hot(self, labels, n_classes: int, dtype):
        """Targets (N, n_classes) with a 1 in each row's label column."""
        xp = self.xp
        T = xp.zeros((labels.shape[0], n_classes), dtype=dtype)
        T[xp.arange(labels.shape[0]), labels] = 1
        return T

    def softmax(self, Z):
        """Softmax over the last axis of logits (N, C) or (N, T, C), stable for large logits."""
        xp = self.xp
        E = Z - Z.max(axis=-1, keepdims=True)
        xp.exp(E, out=E)
        E /= E.sum(axis=-1, keepdims=True)
        return E

    def softmax_cross_entropy(self, Z, T, weights=None):
        """Cross-entropy of softmax(Z) against targets, averaged over the rows, and its gradient.

        The softmax is over the last axis (the classes). Logits of a sequence
        model, (N, T, C), are per-step predictions: they are read as N*T rows
        of C classes, and the loss is the mean over all N*T of them (as
        ``torch.nn.functional.cross_entropy`` on the flattened (N*T, C)).

        Parameters
        ----------
        Z : array, shape (N, C) or (N, T, C)
            Logits.
        T : array, same shape as ``Z``
            Target distributions (one-hot rows for class labels).
        weights : array, shape (N,), optional
            Row weights summing to 1 (a weighted mean); ``1 / N`` each when omitted.

        Returns
        -------
        loss : 0-d array
            ``-sum(T * log_softmax(Z)) / R``, computed through log-softmax,
            with ``R`` the number of rows (N, or N*T); with weights
            ``-sum(weights * sum(T * log_softmax(Z), axis=1))`` (2-D logits only).
        dZ : array, same shape as ``Z``
            ``(softmax(Z) - T) / R``, or ``(softmax(Z) - T) * weights[:, None]``.
        """
        if Z.ndim < 2 or tuple(Z.shape) != tuple(T.shape):
            raise InputError(f"softmax cross-entropy needs logits of shape (N, classes) or "
                             f"(N, steps, classes) and targets of the same shape, got "
                             f"{tuple(Z.shape)} and {tuple(T.shape)}")
        if Z.ndim > 2 and weights is not None:
            raise InputError("row weights need logits of shape (N, classes)")
        if Z.ndim > 2:
            # Fold the leading axes into rows: a backend's fused 2-D kernel then serves.
            n_classes = Z.shape[-1]
            loss, dZ = self.softmax_cross_entropy(Z.reshape(-1, n_classes),
                                                  T.reshape(-1, n_classes))
            return loss, dZ.reshape(Z.shape)
        xp = self.xp
        n = Z.shape[0]
        # log_softmax(Z) = Z - max - log(sum(exp(Z - max))), never exp of a large number.
        shifted = Z - Z.max(axis=1, keepdims=True)
        P = xp.exp(shifted)
        row_sums = P.sum(axis=1, keepdims=True)
        log_probs = shifted - xp.log(row_sums)
        P /= row_sums
        P -= T
        if weights is None:
            loss = -(T * log_probs).sum() / n
            P *= Z.dtype.type(1.0 / n)
        else:
            loss = -((T * log_probs).sum(axis=1) * weights).sum()
            P *= weights[:, None]
        return loss, P

    def sigmoid_cross_entropy(self, Z, T, weights=None):
        """Binary cross-entropy of sigmoid(Z) against targets in [0, 1], and its gradient.

        Each of the K columns is its own binary problem (binary and multilabel
        classification); the loss sums over the columns and averages over the rows.

        Parameters
        ----------
        Z : array, shape (N, K)
            Logits.
        T : array, shape (N, K)
        weights : array, shape (N,), optional
            Row weights summing to 1; ``1 / N`` each when omitted.

        Returns
        -------
        loss : 0-d array
            ``sum over rows of weights * sum(softplus(Z) - T Z)``, the stable form
            of ``-T log p - (1 - T) log(1 - p)``.
        dZ : array, shape (N, K)
            ``(sigmoid(Z) - T) * weights[:, None]``.
        """
        xp = self.xp
        n = Z.shape[0]
        # softplus(z) = max(z, 0) + log(1 + exp(-|z|)): no overflow for any z.
        elementwise = xp.log1p(xp.exp(-xp.abs(Z)))
        elementwise += xp.maximum(Z, Z.dtype.type(0))
        elementwise -= T * Z
        dZ = self.activation(Z, "sigmoid")
        dZ -= T
        if weights is None:
            loss = elementwise.sum() / n
            dZ *= Z.dtype.type(1.0 / n)
        else:
            loss = (elementwise.sum(axis=1) * weights).sum()
            dZ *= weights[:, None]
        return loss, dZ

    def mse(self, Y, T, reduction: str = "mean", weights=None):
        """Squared error and its gradient.

        Parameters
        ----------
        Y, T : array, shape (N, K)
        reduction : {"mean", "sum", "half"}
            "mean" averages the N*K squared errors, "sum" adds them, "half" is
            half their sum over the K outputs averaged over the N rows
            (scikit-learn's squared error).
        weights : array, shape (N,), optional
            Row weights summing to 1, replacing the average over the rows
            ("mean" and "half"; "sum" takes none).

        Returns
        -------
        loss : 0-d array
            ``mean((Y - T) ** 2)``, ``sum((Y - T) ** 2)`` or ``sum((Y - T) ** 2) / (2 N)``.
        dY : array, shape (N, K)
            ``2 (Y - T) / (N K)``, ``2 (Y - T)`` or ``(Y - T) / N``; with
            weights the ``1 / N`` becomes ``weights[:, None]``.
        """
        diff = Y - T
        n = Y.shape[0]
        if weights is not None:
            if reduction == "sum":
                raise ValueError("row weights need a mean over the rows, not reduction='sum'")
            # Per-row sums of squares weighted, then the per-element factor of the reduction.
            factor = 2.0 / Y.shape[-1] if reduction == "mean" else 1.0
            loss = ((diff * diff).sum(axis=1) * weights).sum() * (factor / 2)
            diff *= weights[:, None]
            diff *= Y.dtype.type(factor)
            return loss, diff
        loss = (diff * diff).sum()
        scale = 2.0
        if reduction == "mean":
            loss /= diff.size
            scale /= diff.size
        elif reduction == "half":
            loss /= 2 * n
            scale = 1.0 / n
        diff *= Y.dtype.type(scale)
        return loss, diff

    # ------------------------------------------------------------- optimizers
    # Each update takes the optimizer's step state (a float64 vector on this
    # backend; layout in gpubackprop.nn.update_rules) after advance_optimizer, and
    # the parameter's state slots in the order of UpdateRule.slots. The
    # generic code reads the state's values on the host (a device read per call
    # on the GPU, where it is only the fallback); the fused kernels read it in place.
    def advance_optimizer(self, rule: str, state) -> None:
        """Start a step in place, on the device: ``step += 1``, then the rule's derived values.

        Parameters
        ----------
        rule : str
            An :data:`~gpubackprop.nn.update_rules.UPDATE_RULES` name.
        state : array, shape (len(layout),), float64
        """
        state[STEP] += 1
        derive = getattr(self, f"_derive_{rule}", None)
        if derive is not None:
            derive(state)

    def _derive_adam(self, state) -> None:
        """Adam's per-step values, by array operations on ``state`` (nothing leaves the device).

        ``step_size = lr sqrt(1 - b2^t) / (1 - b1^t)``: then
        ``W -= step_size M / (sqrt(V) + eps_hat)`` equals the textbook
        ``lr m_hat / (sqrt(v_hat) + eps)`` when ``eps_hat = eps sqrt(1 - b2^t)``
        (convention "pytorch"); ``eps_hat = eps`` is scikit-learn's (convention
        "sklearn"). ``shrink = 1 - lr weight_decay`` when the decay is
        decoupled (AdamW), else 1; and ``1 - b1``, ``1 - b2``.
        """
        xp, index = self.xp, UPDATE_RULES["adam"].index
        t, beta1, beta2 = state[STEP], state[index("beta1")], state[index("beta2")]
        state[index("one_minus_beta1")] = 1 - beta1
        state[index("one_minus_beta2")] = 1 - beta2
        state[index("shrink")] = xp.where(state[index("decoupled")] != 0,
                                          1 - state[LR] * state[WEIGHT_DECAY], 1.0)
        correction2 = xp.sqrt(1 - beta2 ** t)
        state[index("step_size")] = state[LR] * correction2 / (1 - beta1 ** t)
        eps = state[index("eps")]
        state[index("eps_hat")] = xp.where(state[index("convention")] != 0, eps,
                                           eps * correction2)

    def _derive_rmsprop(self, state) -> None:
        """RMSprop's ``1 - alpha``."""
        index = UPDATE_RULES["rmsprop"].index
        state[index("one_minus_alpha")] = 1 - state[index("alpha")]

    def _host_values(self, state) -> np.ndarray:
        """The step state's values on the host: the array itself on the CPU, else a read."""
        return state if self.device == "cpu" else self.to_numpy(state)

    def _gradient(self, W, dW, weight_decay: float):
        """``dW + weight_decay W`` (a new array), or ``dW`` itself without decay."""
        if weight_decay == 0:
            return dW
        G = self.xp.multiply(W, W.dtype.type(weight_decay))
        G += dW
        return G

    def sgd_update(self, W, dW, state) -> None:
        """``W -= lr g`` in place, ``g = dW + weight_decay W``."""
        s = self._host_values(state)
        W -= W.dtype.type(s[LR]) * self._gradient(W, dW, s[WEIGHT_DECAY])

    def momentum_update(self, W, dW, state, V) -> None:
        """Momentum in place; ``V`` is the buffer (velocity), shaped like ``W``.

        Convention "pytorch": ``V = mu V + g; W -= lr V`` (Nesterov:
        ``W -= lr (g + mu V)``). Convention "sklearn", the heavy ball:
        ``V = mu V - lr g; W += V`` (Nesterov: ``W += mu V - lr g``).
        """
        index = UPDATE_RULES["momentum"].index
        s, t = self._host_values(state), W.dtype.type
        mu, lr, nesterov = t(s[index("momentum")]), t(s[LR]), s[index("nesterov")] != 0
        G = self._gradient(W, dW, s[WEIGHT_DECAY])
        V *= mu
        if s[index("convention")] != 0:
            V -= lr * G
            W += mu * V - lr * G if nesterov else V
        else:
            V += G
            W -= lr * (G + mu * V) if nesterov else lr * V

    def adam_update(self, W, dW, state, M, V) -> None:
        """One Adam (or AdamW) step in place; ``M``, ``V`` are the moments, shaped like ``W``.

        ``g = dW + weight_decay W`` (coupled), or with ``decoupled`` (AdamW)
        ``W *= 1 - lr weight_decay`` first and ``g = dW``; then
        ``M = b1 M + (1 - b1) g``, ``V = b2 V + (1 - b2) g^2`` and
        ``W -= step_size M / (sqrt(V) + eps_hat)`` (see :meth:`_derive_adam`).
        """
        xp, index = self.xp, UPDATE_RULES["adam"].index
        s, t = self._host_values(state), W.dtype.type
        if s[index("decoupled")] != 0:
            if s[WEIGHT_DECAY] != 0:
                W *= t(s[index("shrink")])
            G = dW
        else:
            G = self._gradient(W, dW, s[WEIGHT_DECAY])
        A, B = xp.empty_like(W), xp.empty_like(W)
        M *= t(s[index("beta1")])
        M += xp.multiply(G, t(s[index("one_minus_beta1")]), out=A)
        V *= t(s[index("beta2")])
        xp.multiply(G, G, out=A)
        A *= t(s[index("one_minus_beta2")])
        V += A
        denom = xp.sqrt(V, out=A)
        denom += t(s[index("eps_hat")])
        B = xp.multiply(M, t(s[index("step_size")]), out=B)
        B /= denom
        W -= B

    def rmsprop_update(self, W, dW, state, V, B=None, G=None) -> None:
        """One RMSprop step in place, as ``torch.optim.RMSprop``.

        ``V = alpha V + (1 - alpha) g^2``; centered: ``G = alpha G + (1 - alpha) g``
        and ``d = sqrt(V - G^2) + eps``, else ``d = sqrt(V) + eps``; with
        momentum ``B = mu B + g / d; W -= lr B``, else ``W -= lr g / d``.
        ``B`` and ``G`` (shaped like ``W``) are None when unused.
        """
        xp, index = self.xp, UPDATE_RULES["rmsprop"].index
        s, t = self._host_values(state), W.dtype.type
        alpha, one_minus_alpha = t(s[index("alpha")]), t(s[index("one_minus_alpha")])
        mu, lr = t(s[index("momentum")]), t(s[LR])
        g = self._gradient(W, dW, s[WEIGHT_DECAY])
        V *= alpha
        V += one_minus_alpha * (g * g)
        if s[index("centered")] != 0:
            G *= alpha
            G += one_minus_alpha * g
            denom = xp.sqrt(V - G * G)
        else:
            denom = xp.sqrt(V)
        denom += t(s[index("eps")])
        if s[index("momentum")] != 0:
            B *= mu
            B += g / denom
            W -= lr * B
        else:
            W -= lr * g / denom

    def clip_by_global_norm(self, grads, max_norm: float):
        """Scale all gradients in place so their joint L2 norm is <= ``max_norm``.

        Every gradient is multiplied by ``min(1, max_norm / (norm + eps))``
        with ``norm`` the L2 norm of all of them together and ``eps`` =
        :data:`CLIP_EPSILON` (1e-12; PyTorch's ``clip_grad_norm_`` uses 1e-6,
        the same rule otherwise). A norm at or below ``max_norm`` leaves the
        gradients unchanged.

        Parameters
        ----------
        grads : list of arrays, any shapes
        max_norm : float

        Returns
        -------
        0-d array
            The norm before clipping (no host sync).
        """
        xp = self.xp
        total = sum((g * g).sum() for g in grads)
        norm = xp.sqrt(total)
        t = norm.dtype.type
        scale = xp.minimum(t(1), t(max_norm) / (norm + t(CLIP_EPSILON)))
        for g in grads:
            g *= scale.astype(g.dtype)
        return norm

    # --------------------------------------------------------------- sampling
    def permutation(self, n: int, rng: np.random.Generator):
        """A random permutation of ``range(n)``, (n,) int64, drawn from ``rng``."""
        return rng.permutation(n)

    def argmax_rows(self, Y):
        """Index of the largest entry along the last axis: (N, C) -> (N,), (N, T, C) -> (N, T)."""
        return Y.argmax(axis=-1)
