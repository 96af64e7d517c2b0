"""Recurrent layers trained by backpropagation through time (BPTT).

An Elman RNN reads a batch of sequences ``X`` (N, T, D) one time step at a
time; the hidden state of the previous step feeds the current one:

    h_t = f(x_t W + h_{t-1} U + b),    t = 0 .. T-1,    h_{-1} = h0.

The backward pass walks the steps in reverse. The gradient reaching ``h_t``
is the gradient of the step's own output plus the gradient carried back from
step ``t+1`` through ``U``; it passes through the activation (from the saved
``h_t``) and is carried on to ``h_{t-1}``.

Truncated BPTT (``bptt_steps=k``) cuts that carry into blocks of ``k`` steps
counted back from the last step: blocks ``[T-k, T-1]``, ``[T-2k, T-k-1]``, ...,
the first block (starting at step 0, possibly shorter than ``k``) keeps its
link to ``h0``. The forward pass is unchanged; in the backward pass no gradient
crosses from the first step of a block into the step before it. So the
gradient of the output at step ``t`` reaches only the steps of its own block up
to ``t``: at most ``k`` time steps (``t-k+1 .. t``). With ``return_sequences=False``
(only the last step has an output) the gradient reaches exactly the last ``k``
steps and ``h0`` only when ``k >= T``. With ``k >= T`` the result is full BPTT.
This is the usual "detach the hidden state every k steps" scheme, applied
within one batch of sequences.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .activations import RECURRENT_NAMES as RECURRENT_ACTIVATIONS
from .layers import LAYER_TYPES, Layer, init_weights, layer_from_config, require_forward
from ..validation import check_choice, check_positive
from .workspace import Workspace

INITIAL_STATES = ("zeros", "learn")


class RNN(Layer):
    """Elman recurrent layer: ``h_t = f(x_t W + h_{t-1} U + b)``.

    Parameters
    ----------
    units : int
        Width ``H`` of the hidden state.
    activation : {"sigmoid", "tanh"}
        One of :data:`~.activations.RECURRENT_NAMES`: bounded, with the
        derivative from the output (the hidden states the layer keeps).
    return_sequences : bool
        False (many-to-one): the output is the last hidden state (N, H).
        True (many-to-many): the output holds every hidden state (N, T, H).
    bptt_steps : int, optional
        Truncate backpropagation through time to blocks of this many steps
        (see the module docstring for the exact definition); None is full BPTT.
    h0 : {"zeros", "learn"}
        Initial hidden state: zeros, or a learnt parameter ``h0`` (H,) shared
        by all sequences. Either is replaced by a state passed to :meth:`forward`.

    Shapes: ``X`` (N, T, D), ``W`` (D, H), ``U`` (H, H), ``b`` (H,), ``h0`` (H,).
    ``W`` is Xavier-uniform and ``U`` a random orthogonal matrix, both drawn from
    the model's seeded host generator.
    """

    input_ndim = 3

    def __init__(self, units: int, activation: str = "tanh", return_sequences: bool = False,
                 bptt_steps: int | None = None, h0: str = "zeros"):
        super().__init__()
        self.units = check_positive(units, "units", integer=True)
        self.activation = check_choice(activation, RECURRENT_ACTIVATIONS, "RNN activation")
        self.return_sequences = bool(return_sequences)
        self.bptt_steps = None if bptt_steps is None else check_positive(
            bptt_steps, "bptt_steps", integer=True)
        self.h0 = check_choice(h0, INITIAL_STATES, "initial state")
        self.n_in = None
        #: Gradient of the loss with respect to the initial state (N, H) after
        #: ``backward``, when that state was passed in or learnt; else None.
        self.dh0 = None
        self._X = self._H = None
        self._h0_given = False
        self._workspace = Workspace()

    def build(self, backend, in_shape, rng, precision) -> tuple:
        super().build(backend, in_shape, rng, precision)
        if len(in_shape) != 2:
            raise InputError(f"RNN takes sequences of shape (time steps, features), got "
                             f"samples of shape {tuple(in_shape)}")
        self.n_in = n_in = in_shape[1]
        dtype = precision.param
        H = self.units
        W = init_weights(rng, n_in, H, self.activation, "xavier")
        self.params = {"W": backend.asarray(W.astype(dtype)),
                       "U": backend.asarray(orthogonal(rng, H).astype(dtype)),
                       "b": backend.zeros((H,), dtype)}
        if self.h0 == "learn":
            self.params["h0"] = backend.zeros((H,), dtype)
        self.grads = {name: backend.zeros(W.shape, dtype) for name, W in self.params.items()}
        return (in_shape[0], H) if self.return_sequences else (H,)

    def parameter_shapes(self, in_shape: tuple) -> tuple[dict, tuple]:
        if len(in_shape) != 2:
            raise InputError(f"RNN takes sequences of shape (time steps, features), got "
                             f"samples of shape {tuple(in_shape)}")
        H = self.units
        shapes = {"W": (in_shape[1], H), "U": (H, H), "b": (H,)}
        if self.h0 == "learn":
            shapes["h0"] = (H,)
        return shapes, ((in_shape[0], H) if self.return_sequences else (H,))

    def forward(self, X, train: bool = True, h0=None):
        """Run the sequences ``X`` (N, T, D) through the layer.

        Parameters
        ----------
        X : array, shape (N, T, D), on the layer's backend
        train : bool
            Keep what :meth:`backward` needs.
        h0 : array, shape (N, H), optional
            Initial hidden state of each sequence, replacing the layer's own.

        Returns
        -------
        array, shape (N, H) or (N, T, H) with ``return_sequences``
        """
        backend, P = self.backend, self.params
        N, T, D = self._check_input(X)
        H = self.units
        # Training reuses the layer's buffers: its output is valid until the next training pass.
        buffer = self._buffer if train else (lambda name, shape: backend.empty(shape, P["W"].dtype))
        # Time-major layout: step t's rows are contiguous.
        X_tm = buffer("X_tm", (T * N, D))
        X_tm.reshape(T, N, D)[...] = X.transpose(1, 0, 2)
        # Input projections of all time steps in one GEMM: (T*N, D) @ (D, H).
        XW = backend.gemm(X_tm, P["W"], out=buffer("XW", (T * N, H))).reshape(T, N, H)
        # States[0] is h0, States[t + 1] is h_t.
        States = buffer("States", (T + 1, N, H))
        States[0] = self._initial_state(h0, N)
        zero_start = h0 is None and self.h0 != "learn"  # h_{-1} = 0: no product at step 0
        backend.recurrent_forward(XW, P["U"], P["b"], States, self.activation, zero_start)
        if train:
            self._X, self._H, self._h0_given = X_tm, States, h0 is not None
        if self.return_sequences:
            return States[1:].transpose(1, 0, 2)
        return States[T]

    def backward(self, dY):
        """Backpropagate through time; fills ``grads`` (and ``dh0``), returns dX (N, T, D).

        Parameters
        ----------
        dY : array, shape (N, H), or (N, T, H) with ``return_sequences``
        """
        backend, P, G = self.backend, self.params, self.grads
        States, X_tm = self._H, self._X
        require_forward(self, States)
        T, N, H = States.shape[0] - 1, States.shape[1], States.shape[2]
        k = self.bptt_steps or T
        # dZ starts as the gradient of the outputs, time-major (many-to-one: the last step's
        # alone, passed as it is); each step turns its slice into dz_t.
        dZ = self._buffer("dZ", (T, N, H))
        if self.return_sequences:
            dZ[...] = dY.transpose(1, 0, 2)
            first, last = 0, None
        else:
            first, last = max(T - k, 0), dY  # earlier steps get no gradient from the last output
        # A given or learnt h_{-1} needs its gradient; otherwise it was zero (no product at
        # step 0, see forward).
        to_h0 = self._h0_given or self.h0 == "learn"
        # The time loop, which also sums dz over samples and steps into the bias gradient.
        carry_h0 = backend.recurrent_backward(dZ, States, P["U"], self.activation, first, k,
                                              to_h0, last, G["b"])
        dZ_rows = dZ.reshape(T * N, H)
        # Weight gradients summed over all steps, one GEMM each: dW = X^T dZ, dU = H_prev^T dZ
        # (from step 1 on when h_{-1} is zero: step 0 adds nothing to dU).
        backend.gemm(X_tm, dZ_rows, trans_a=True, out=G["W"])
        start = 0 if to_h0 else 1
        backend.gemm(States[start:T].reshape((T - start) * N, H), dZ_rows[start * N:],
                     trans_a=True, out=G["U"])
        # Initial state: per sequence dh0 (N, H); a learnt h0 (H,) sums it over the batch.
        self.dh0 = carry_h0
        if self.h0 == "learn":
            if carry_h0 is None or self._h0_given:
                G["h0"][...] = 0
            else:
                backend.sum_rows(carry_h0, out=G["h0"])
        # Input gradient dX = dZ W^T for all steps in one GEMM, back to (N, T, D).
        dX = None
        if self.needs_input_grad:
            dX = backend.gemm(dZ_rows, P["W"], trans_b=True).reshape(T, N, -1).transpose(1, 0, 2)
        self._X = self._H = None
        return dX

    def _buffer(self, name: str, shape: tuple):
        """A training buffer of the layer's dtype, reused across steps."""
        return self._workspace.get(self.backend, name, shape, self.params["W"].dtype)

    def config(self) -> dict:
        return {"type": "RNN", "units": self.units, "activation": self.activation,
                "return_sequences": self.return_sequences, "bptt_steps": self.bptt_steps,
                "h0": self.h0}

    def _check_input(self, X) -> tuple:
        return check_sequences(X, self.n_in, "RNN")

    def _initial_state(self, h0, n: int):
        """The initial state h_{-1}: given (N, H), learnt (H,) or zeros."""
        return initial_state(h0, self.params.get("h0"), n, self.units)


class TimeDistributed(Layer):
    """Apply a feed-forward layer to every time step: (N, T, F) -> (N, T, K).

    The steps are folded into the batch, ``(N*T, F)``, so the wrapped layer
    (e.g. ``Linear``) runs once for all steps; its gradients sum over them.

    Parameters
    ----------
    layer : Layer or dict
        The layer to apply, or its :meth:`Layer.config`.
    """

    input_ndim = 3

    def __init__(self, layer):
        self.layer = layer_from_config(layer) if isinstance(layer, dict) else layer
        super().__init__()
        self._shape = None

    def build(self, backend, in_shape, rng, precision) -> tuple:
        super().build(backend, in_shape, rng, precision)
        if len(in_shape) < 2:
            raise InputError(f"TimeDistributed takes sequences of shape (time steps, ...), got "
                             f"samples of shape {tuple(in_shape)}")
        out_shape = self.layer.build(backend, in_shape[1:], rng, precision)
        self.params, self.grads = self.layer.params, self.layer.grads
        return (in_shape[0], *out_shape)

    def parameter_shapes(self, in_shape: tuple) -> tuple[dict, tuple]:
        if len(in_shape) < 2:
            raise InputError(f"TimeDistributed takes sequences of shape (time steps, ...), got "
                             f"samples of shape {tuple(in_shape)}")
        shapes, out_shape = self.layer.parameter_shapes(in_shape[1:])
        return shapes, (in_shape[0], *out_shape)

    def training_buffers(self) -> list:
        return self.layer.training_buffers()

    @property
    def needs_input_grad(self) -> bool:
        return self.layer.needs_input_grad

    @needs_input_grad.setter
    def needs_input_grad(self, value: bool) -> None:
        self.layer.needs_input_grad = value

    def forward(self, X, train: bool = True):
        N, T = X.shape[:2]
        Y = self.layer.forward(X.reshape(N * T, -1), train=train)
        if train:
            self._shape = (N, T)
        return Y.reshape(N, T, -1)

    def backward(self, dY):
        require_forward(self, self._shape)
        N, T = self._shape
        self._shape = None
        dX = self.layer.backward(dY.reshape(N * T, -1))
        return None if dX is None else dX.reshape(N, T, -1)

    def config(self) -> dict:
        return {"type": "TimeDistributed", "layer": self.layer.config()}


def check_sequences(X, n_in: int, layer: str) -> tuple:
    """``(N, T, D)`` of a batch of sequences for a recurrent layer built for ``n_in``
    features per step; an InputError names what is wrong."""
    if X.ndim != 3:
        raise InputError(f"{layer} input must have shape (N, time steps, features), "
                         f"got shape {tuple(X.shape)}")
    N, T, D = X.shape
    if D != n_in:
        raise InputError(f"{layer} input has {D} features per time step, "
                         f"the layer was built for {n_in}")
    if N == 0 or T == 0:
        raise InputError(f"{layer} input is empty: shape {tuple(X.shape)}")
    return N, T, D


def initial_state(given, learnt, n: int, units: int, name: str = "initial state"):
    """A recurrent layer's initial state: ``given`` (N, H) if any, else the
    ``learnt`` parameter (H,) if any, else 0."""
    if given is not None:
        if tuple(given.shape) != (n, units):
            raise InputError(f"{name} must have shape ({n}, {units}), "
                             f"got {tuple(given.shape)}")
        return given
    return 0 if learnt is None else learnt


def orthogonal(rng: np.random.Generator, n: int) -> np.ndarray:
    """A random orthogonal matrix (n, n) in float64 (QR of a Gaussian, signs fixed)."""
    Q, R = np.linalg.qr(rng.standard_normal((n, n)))
    return Q * np.sign(np.diag(R))


LAYER_TYPES.update(RNN=RNN, TimeDistributed=TimeDistributed)
