"""Gated recurrent layers, LSTM and GRU, trained by backpropagation through time.

The equations, gate order and parameter layout are PyTorch's (``torch.nn.LSTM``,
``torch.nn.GRU``), so weights exchange with it (:func:`torch_state_dict`,
:func:`load_torch_state_dict`). With ``G`` the pre-activations of step t:

LSTM, gates i, f, g, o stacked in rows of ``weight_ih`` (4H, D) and ``weight_hh`` (4H, H)::

    G   = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh                    (N, 4H)
    i, f, o = sigmoid(G_i, G_f, G_o);   g = tanh(G_g)
    c_t = f * c_{t-1} + i * g;          h_t = o * tanh(c_t)

GRU, gates r, z, n stacked in rows of ``weight_ih`` (3H, D) and ``weight_hh`` (3H, H)::

    Gx = x_t W_ih^T + b_ih;   Gh = h_{t-1} W_hh^T + b_hh                (N, 3H)
    r, z = sigmoid(Gx_r + Gh_r, Gx_z + Gh_z);   n = tanh(Gx_n + r * Gh_n)
    h_t = (1 - z) * n + z * h_{t-1}

The input projections of all steps are one GEMM, the weight gradients one GEMM
each over all steps; the time loops are the backend's
(:meth:`~..backends.base.Backend.lstm_forward`, ``gru_forward`` and their backward
passes: per step one recurrent GEMM and one call of the cell method, which a backend
may fuse; the fused CPU backend compiles each loop whole). Options, truncated BPTT included, are
those of the Elman :class:`~.recurrent.RNN` (see :mod:`.recurrent`); truncation
cuts both the hidden and (LSTM) the cell state's gradient at block starts.
docs/recurrent.md derives the backward passes step by step.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..validation import check_choice, check_positive
from .layers import LAYER_TYPES, Layer, init_weights, require_forward
from .recurrent import INITIAL_STATES, check_sequences, initial_state, orthogonal
from .workspace import Workspace


class GatedRecurrent(Layer):
    """What LSTM and GRU share: parameters, options, buffers, truncation, gradients.

    Parameters
    ----------
    units : int
        Width ``H`` of the hidden state.
    return_sequences : bool
        False (many-to-one): the output is the last hidden state (N, H).
        True (many-to-many): every hidden state (N, T, H).
    bptt_steps : int, optional
        Truncate backpropagation through time to blocks of this many steps,
        as :class:`~.recurrent.RNN` does; None is full BPTT.
    h0 : {"zeros", "learn"}
        Initial state: zeros, or learnt parameters shared by all sequences
        (``h0`` (H,), and ``c0`` (H,) for the LSTM). A state passed to
        :meth:`forward` replaces them.

    Parameters are ``weight_ih`` (gates * H, D), ``weight_hh`` (gates * H, H),
    ``bias_ih`` and ``bias_hh`` (gates * H,), torch's names and layouts.
    ``weight_ih`` is Xavier-uniform and ``weight_hh`` orthogonal, gate by gate,
    drawn from the model's seeded host generator; biases start at zero.
    """

    input_ndim = 3
    #: Gate blocks in the weights' rows: 4 for the LSTM, 3 for the GRU.
    gates = 0
    #: Names of the initial states (and learnt parameters), hidden state first.
    states = ("h0",)
    #: Hidden widths (multiples of ``units``) of the buffers training keeps per time step.
    kept_widths = 0

    def __init__(self, units: int, return_sequences: bool = False,
                 bptt_steps: int | None = None, h0: str = "zeros"):
        super().__init__()
        self.units = check_positive(units, "units", integer=True)
        self.return_sequences = bool(return_sequences)
        self.bptt_steps = None if bptt_steps is None else check_positive(
            bptt_steps, "bptt_steps", integer=True)
        self.h0 = check_choice(h0, INITIAL_STATES, "initial state")
        self.n_in = None
        #: Gradient of the loss with respect to each initial state (N, H) after
        #: ``backward``, by name ("h0", "c0"), when that state was given or learnt.
        self.initial_state_grads: dict = {}
        self._saved = None
        self._given: dict = {}
        self._workspace = Workspace()

    @property
    def kind(self) -> str:
        return type(self).__name__

    # -------------------------------------------------------------- building
    def parameter_shapes(self, in_shape: tuple) -> tuple[dict, tuple]:
        if len(in_shape) != 2:
            raise InputError(f"{self.kind} takes sequences of shape (time steps, features), "
                             f"got samples of shape {tuple(in_shape)}")
        H, rows = self.units, self.gates * self.units
        shapes = {"weight_ih": (rows, in_shape[1]), "weight_hh": (rows, H),
                  "bias_ih": (rows,), "bias_hh": (rows,)}
        if self.h0 == "learn":
            shapes.update({name: (H,) for name in self.states})
        return shapes, ((in_shape[0], H) if self.return_sequences else (H,))

    def kept_per_step(self, in_shape: tuple) -> int:
        # The time-major input copy (D), the class's gate and state buffers, and with
        # return_sequences the outputs' gradients (H per step).
        return in_shape[-1] + (self.kept_widths + self.return_sequences) * self.units

    def build(self, backend, in_shape, rng, precision) -> tuple:
        super().build(backend, in_shape, rng, precision)
        shapes, out_shape = self.parameter_shapes(in_shape)
        self.n_in = n_in = in_shape[1]
        dtype, H = precision.param, self.units
        W_ih = np.concatenate([init_weights(rng, n_in, H, "tanh", "xavier").T
                               for _ in range(self.gates)])
        W_hh = np.concatenate([orthogonal(rng, H) for _ in range(self.gates)])
        self.params = {"weight_ih": backend.asarray(W_ih.astype(dtype)),
                       "weight_hh": backend.asarray(W_hh.astype(dtype)),
                       "bias_ih": backend.asarray(self._initial_bias().astype(dtype)),
                       "bias_hh": backend.zeros(shapes["bias_hh"], dtype)}
        for name in shapes:
            if name not in self.params:
                self.params[name] = backend.zeros(shapes[name], dtype)
        self.grads = {name: backend.zeros(shape, dtype) for name, shape in shapes.items()}
        return out_shape

    def _initial_bias(self) -> np.ndarray:
        """``bias_ih`` at initialisation (gates * H,): zeros."""
        return np.zeros(self.gates * self.units)

    # --------------------------------------------------------------- forward
    def forward(self, X, train: bool = True, **initial):
        """Run the sequences ``X`` (N, T, D) through the layer.

        Parameters
        ----------
        X : array, shape (N, T, D), on the layer's backend
        train : bool
            Keep what :meth:`backward` needs.
        h0, c0 : arrays, shape (N, H), optional
            Initial hidden (and, for the LSTM, cell) state of each sequence,
            replacing the layer's own.

        Returns
        -------
        array, shape (N, H), or (N, T, H) with ``return_sequences``
        """
        unknown = set(initial) - set(self.states)
        if unknown:
            raise InputError(f"{self.kind} has no initial state {sorted(unknown)[0]!r}; "
                             f"it takes {', '.join(self.states)}")
        backend, P = self.backend, self.params
        N, T, D = check_sequences(X, self.n_in, self.kind)
        H, rows = self.units, self.gates * self.units
        # Training reuses the layer's buffers: its output is valid until the next training pass.
        buffer = self._buffer if train else (
            lambda name, shape: backend.empty(shape, P["weight_ih"].dtype))
        # Time-major layout: step t's rows are contiguous.
        X_tm = buffer("X_tm", (T * N, D))
        X_tm.reshape(T, N, D)[...] = X.transpose(1, 0, 2)
        # Input projections of all time steps in one GEMM: (T*N, D) @ (D, gates*H).
        XW = backend.gemm(X_tm, P["weight_ih"], trans_b=True,
                          out=buffer("XW", (T * N, rows))).reshape(T, N, rows)
        # States[0] is h_{-1}, States[t + 1] is h_t (likewise Cells for the LSTM).
        starts = {}
        for name in self.states:
            starts[name] = buffer(name, (T + 1, N, H))
            starts[name][0] = initial_state(initial.get(name), P.get(name), N, H,
                                            f"initial state {name}")
        with backend.recurrent_pass((self.kind, "forward", tuple(XW.shape), str(XW.dtype))):
            saved = self._run_forward(XW, starts, buffer)
        if train:
            self._saved = (X_tm, saved)
            self._given = {name: initial.get(name) is not None for name in self.states}
        States = starts["h0"]
        return States[1:].transpose(1, 0, 2) if self.return_sequences else States[T]

    def _run_forward(self, XW, starts: dict, buffer) -> dict:
        """The time loop; returns the arrays the backward loop needs, by name."""
        raise NotImplementedError

    # -------------------------------------------------------------- backward
    def backward(self, dY):
        """Backpropagate through time; fills ``grads`` (and ``initial_state_grads``),
        returns dX (N, T, D).

        Parameters
        ----------
        dY : array, shape (N, H), or (N, T, H) with ``return_sequences``
        """
        require_forward(self, self._saved)
        X_tm, saved = self._saved
        self._saved = None
        T, N, H = saved["h0"].shape[0] - 1, saved["h0"].shape[1], self.units
        k = self.bptt_steps or T
        if self.return_sequences:
            # Time-major copy of the outputs' gradients; each step adds its carry in place.
            dH = self._buffer("dH", (T, N, H))
            dH[...] = dY.transpose(1, 0, 2)
            first, last = 0, None
        else:
            dH, last = None, self._buffer("dh_last", (N, H))
            last[...] = dY
            first = max(T - k, 0)  # earlier steps get no gradient from the last output
        to_start = any(self._given.values()) or self.h0 == "learn"
        with self.backend.recurrent_pass((self.kind, "backward", (T, N, H), str(X_tm.dtype),
                                          first, k)):
            dG_ih, dG_hh, reached = self._run_backward(saved, dH, last, first, k, to_start)
        self._weight_gradients(X_tm, saved["h0"], dG_ih, dG_hh, first)
        # Initial states: per sequence (N, H); a learnt one (H,) sums over the batch.
        self.initial_state_grads = reached
        for name in self.states if self.h0 == "learn" else ():
            if name in reached and not self._given[name]:
                self.backend.sum_rows(reached[name], out=self.grads[name])
            else:
                self.grads[name][...] = 0
        # Input gradient dX = dG_ih W_ih for all steps in one GEMM, back to (N, T, D).
        if not self.needs_input_grad:
            return None
        rows = dG_ih.shape[-1]
        dX = self.backend.gemm(dG_ih.reshape(T * N, rows), self.params["weight_ih"])
        return dX.reshape(T, N, -1).transpose(1, 0, 2)

    def _run_backward(self, saved: dict, dH, last, first: int, k: int, to_start: bool):
        """The reverse time loop.

        Returns ``(dG_ih, dG_hh, reached)``: the gradients (T, N, gates*H) of the
        input and recurrent projections (the same array for the LSTM, zero
        before ``first``), and the initial states' gradients by name, when
        ``to_start`` and step 0 is reached.
        """
        raise NotImplementedError

    def _weight_gradients(self, X_tm, States, dG_ih, dG_hh, first: int) -> None:
        """Weight and bias gradients summed over all steps, one GEMM each."""
        backend, G = self.backend, self.grads
        T, N, H = States.shape[0] - 1, States.shape[1], self.units
        if first:
            dG_ih[:first] = 0
            dG_hh[:first] = 0
        rows = dG_ih.shape[-1]
        ih, hh = dG_ih.reshape(T * N, rows), dG_hh.reshape(T * N, rows)
        # dW_ih = dG_ih^T X, dW_hh = dG_hh^T H_prev over all (step, sample) rows.
        backend.gemm(ih, X_tm, trans_a=True, out=G["weight_ih"])
        backend.gemm(hh, States[:T].reshape(T * N, H), trans_a=True, out=G["weight_hh"])
        # Bias gradients: the projections' gradients summed over samples and steps.
        backend.sum_rows(ih, out=G["bias_ih"])
        if hh is ih:
            G["bias_hh"][...] = G["bias_ih"]
        else:
            backend.sum_rows(hh, out=G["bias_hh"])

    def _buffer(self, name: str, shape: tuple):
        """A training buffer of the layer's dtype, reused across steps."""
        return self._workspace.get(self.backend, name, shape, self.params["weight_ih"].dtype)

    def config(self) -> dict:
        return {"type": self.kind, "units": self.units,
                "return_sequences": self.return_sequences, "bptt_steps": self.bptt_steps,
                "h0": self.h0}


class LSTM(GatedRecurrent):
    """Long short-term memory layer, ``torch.nn.LSTM``'s equations and layout.

    Parameters
    ----------
    units, return_sequences, bptt_steps, h0
        As :class:`GatedRecurrent`; ``h0="learn"`` learns both ``h0`` and ``c0``.
    forget_bias : float
        Initial value of the forget gate's block of ``bias_ih`` (``bias_hh``
        starts at zero): 1.0, the usual choice (Jozefowicz et al., 2015), makes
        the cell keep its state at first; 0.0 is PyTorch's mean.

    Shapes: ``X`` (N, T, D), ``weight_ih`` (4H, D), ``weight_hh`` (4H, H),
    ``bias_ih``, ``bias_hh`` (4H,), gate blocks i, f, g, o.
    """

    gates = 4
    states = ("h0", "c0")
    #: The input projections overwritten by the gates (4H), their gradients dG (4H), and
    #: the hidden and cell states (2H).
    kept_widths = 10

    def __init__(self, units: int, return_sequences: bool = False,
                 bptt_steps: int | None = None, h0: str = "zeros", forget_bias: float = 1.0):
        super().__init__(units, return_sequences, bptt_steps, h0)
        self.forget_bias = float(forget_bias)
        if not np.isfinite(self.forget_bias):
            raise InputError(f"forget_bias must be finite, got {forget_bias!r}")

    def _initial_bias(self) -> np.ndarray:
        b = super()._initial_bias()
        b[self.units:2 * self.units] = self.forget_bias
        return b

    def _run_forward(self, XW, starts, buffer) -> dict:
        backend, P = self.backend, self.params
        States, Cells = starts["h0"], starts["c0"]
        T, N, rows = XW.shape
        # Both biases added to the input projections of all steps at once.
        XW += P["bias_ih"] + P["bias_hh"]
        # The time loop is the backend's: the fused CPU backend compiles it whole.
        backend.lstm_forward(XW, P["weight_hh"], States, Cells, buffer("HW", (N, rows)))
        return {"h0": States, "c0": Cells, "gates": XW}

    def _run_backward(self, saved, dH, last, first, k, to_start):
        backend, W_hh = self.backend, self.params["weight_hh"]
        Gates, Cells = saved["gates"], saved["c0"]
        T, N, rows = Gates.shape
        dG = self._buffer("dG", (T, N, rows))
        carry = self._buffer("carry", (N, self.units))  # dh_{t-1} from step t: dG_t W_hh
        dc, dc_prev = self._buffer("dc", (N, self.units)), self._buffer("dc_prev", (N, self.units))
        # The time loop is the backend's: the fused CPU backend compiles it whole.
        if backend.lstm_backward(dG, dH, last, Gates, Cells, W_hh, carry, dc, dc_prev, first, k,
                                 to_start):
            return dG, dG, {"h0": carry.copy(), "c0": dc.copy()}
        return dG, dG, {}

    def config(self) -> dict:
        return {**super().config(), "forget_bias": self.forget_bias}


class GRU(GatedRecurrent):
    """Gated recurrent unit layer, ``torch.nn.GRU``'s equations and layout.

    Parameters
    ----------
    units, return_sequences, bptt_steps, h0
        As :class:`GatedRecurrent`.

    Shapes: ``X`` (N, T, D), ``weight_ih`` (3H, D), ``weight_hh`` (3H, H),
    ``bias_ih``, ``bias_hh`` (3H,), gate blocks r, z, n.
    """

    gates = 3
    #: The input projections (3H), the saved r, z, n and Gh_n (4H), the gradients of both
    #: projections dGx and dGh (6H), and the hidden states (H).
    kept_widths = 14

    def _run_forward(self, XW, starts, buffer) -> dict:
        backend, P = self.backend, self.params
        States = starts["h0"]
        T, N, rows = XW.shape
        # The input bias added to the input projections of all steps at once.
        XW += P["bias_ih"]
        Gates = buffer("gates", (T, N, 4 * self.units))
        # The time loop is the backend's: the fused CPU backend compiles it whole.
        backend.gru_forward(XW, P["weight_hh"], P["bias_hh"], States, Gates,
                            buffer("Gh", (N, rows)))
        return {"h0": States, "gates": Gates}

    def _run_backward(self, saved, dH, last, first, k, to_start):
        backend, W_hh = self.backend, self.params["weight_hh"]
        Gates, States = saved["gates"], saved["h0"]
        T, N, _ = Gates.shape
        rows = 3 * self.units
        dGx = self._buffer("dGx", (T, N, rows))
        dGh = self._buffer("dGh", (T, N, rows))
        carry = self._buffer("carry", (N, self.units))  # dh_{t-1} from step t
        direct = self._buffer("direct", (N, self.units))  # its part through z: dh_t * z
        # The time loop is the backend's: the fused CPU backend compiles it whole.
        if backend.gru_backward(dGx, dGh, dH, last, Gates, States, W_hh, carry, direct, first,
                                k, to_start):
            return dGx, dGh, {"h0": carry.copy()}
        return dGx, dGh, {}


LAYER_TYPES.update(LSTM=LSTM, GRU=GRU)


#: The parameters ``torch.nn.LSTM``/``GRU`` names ``<name>_l<depth>``.
TORCH_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def torch_state_dict(layers) -> dict:
    """The parameters of stacked LSTM (or GRU) layers under ``torch.nn.LSTM``'s
    (``torch.nn.GRU``'s) names, ``weight_ih_l0`` ..., as NumPy arrays.

    ``torch.nn.LSTM(D, H, num_layers=len(layers), batch_first=True)`` loads them
    with ``load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})``.
    """
    _check_stack(layers)
    return {f"{name}_l{depth}": layer.backend.to_numpy(layer.params[name]).copy()
            for depth, layer in enumerate(layers) for name in TORCH_NAMES}


def load_torch_state_dict(layers, state: dict) -> None:
    """Copy a ``torch.nn.LSTM``/``GRU`` state dict (tensors or arrays) into built layers."""
    _check_stack(layers)
    for depth, layer in enumerate(layers):
        for name in TORCH_NAMES:
            key = f"{name}_l{depth}"
            if key not in state:
                raise InputError(f"the state dict has no {key!r} for layer {depth}")
            value = state[key]
            value = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
            target = layer.params[name]
            if value.shape != tuple(target.shape):
                raise InputError(f"{key} has shape {value.shape}, layer {depth} "
                                 f"({layer.kind}) needs {tuple(target.shape)}")
            target[...] = layer.backend.asarray(value.astype(target.dtype))


def _check_stack(layers) -> None:
    kinds = {type(layer) for layer in layers}
    if not layers or len(kinds) != 1 or not issubclass(kinds.pop(), GatedRecurrent) or \
            any(layer.backend is None for layer in layers):
        raise InputError("torch state dicts exchange with a non-empty stack of built layers "
                         "of one kind, LSTM or GRU")
