"""Parity: the same computations on the NumPy reference and on CuPy (or on the
fused CPU backend), compared row by row.

A *case* is a function ``case(reference, candidate, dtype)`` that runs one
computation on both backends from identical host inputs and yields
:class:`Comparison` tuples (name, kind, reference result, candidate result).
``kind`` picks the tolerance: ``"elementwise"`` for one fused kernel on
identical inputs, ``"gemm"`` for anything downstream of a matrix product
(the model's activations, loss, gradients and trained weights). A new layer
type adds its rows by appending a case to :data:`CASES`.

A row passes when every element satisfies ``|candidate - reference| <= atol
+ rtol |reference|`` and both are finite. The absolute term is needed
because CuPy's kernels flush subnormals to zero and sums near zero have no
meaningful relative error.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable, Iterable, NamedTuple

import numpy as np

from ..backends import Backend, get_backend, gpu_status
from ..errors import GPUUnavailableError, InputError
from ..nn.activations import ACTIVATIONS, NAMES as ACTIVATION_NAMES, RECURRENT_NAMES
from ..nn.layers import Linear, Tanh
from ..machine import cpu_model
from ..nn.losses import MeanSquaredError, SoftmaxCrossEntropy
from ..nn.model import Sequential
from ..nn.optim import SGD, Adam, AdamW, Momentum, RMSprop
from ..nn.gated_recurrent import GRU, LSTM, GatedRecurrent
from ..nn.recurrent import RNN
from ..backends.numba.background import compiles_in_foreground

#: (rtol, atol) by dtype and row kind.
TOLERANCES = {
    ("float64", "elementwise"): (1e-10, 1e-12),
    ("float64", "gemm"): (1e-10, 1e-12),
    ("float32", "elementwise"): (1e-5, 1e-6),
    ("float32", "gemm"): (1e-4, 1e-5),
}

TRAINING_STEPS = 100


class Comparison(NamedTuple):
    """One named result computed on both backends, as host arrays."""

    name: str
    kind: str
    expected: np.ndarray
    actual: np.ndarray


@dataclass(frozen=True)
class ParityRow:
    """The comparison of one named result.

    ``max_rel`` is taken over the elements with ``|expected| > atol``
    (elsewhere the absolute tolerance decides); 0 when there are none.
    """

    name: str
    kind: str
    max_abs: float
    max_rel: float
    rtol: float
    atol: float
    passed: bool


@dataclass
class ParityReport:
    """Every row of one parity run and the conditions it ran under."""

    dtype: str
    reference: str
    candidate: str
    device: str | None = None
    tf32: bool | None = None
    rows: list[ParityRow] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.rows) and all(row.passed for row in self.rows)


Case = Callable[[Backend, Backend, np.dtype], Iterable[Comparison]]


def compare(comparison: Comparison, dtype: np.dtype) -> ParityRow:
    """Errors of one comparison against the tolerance of its dtype and kind."""
    rtol, atol = TOLERANCES[(np.dtype(dtype).name, comparison.kind)]
    expected = np.asarray(comparison.expected, dtype=np.float64)
    actual = np.asarray(comparison.actual, dtype=np.float64)
    if expected.shape != actual.shape:
        return ParityRow(comparison.name, comparison.kind, np.inf, np.inf, rtol, atol, False)
    finite = bool(np.isfinite(expected).all() and np.isfinite(actual).all())
    error = np.abs(actual - expected)
    magnitude = np.abs(expected)
    max_abs = float(error.max(initial=0.0))
    large = magnitude > atol
    max_rel = float((error[large] / magnitude[large]).max(initial=0.0))
    passed = finite and bool((error <= atol + rtol * magnitude).all())
    return ParityRow(comparison.name, comparison.kind, max_abs, max_rel, rtol, atol, passed)


def compare_backends(reference: Backend, candidate: Backend, dtype="float32",
                     cases: Iterable[Case] | None = None) -> list[ParityRow]:
    """Run every case on both backends and compare the results row by row."""
    dtype = np.dtype(dtype)
    cases = CASES if cases is None else cases
    return [compare(comparison, dtype) for case in cases
            for comparison in case(reference, candidate, dtype)]


@compiles_in_foreground()
def run_parity(dtype="float32", against: str = "gpu") -> ParityReport:
    """Compare the NumPy reference with another backend (TF32 off on the GPU).

    Parameters
    ----------
    dtype : {"float32", "float64"}
    against : {"gpu", "numba"}
        The CuPy backend, or the fused CPU backend.

    Raises
    ------
    GPUUnavailableError
        When ``against="gpu"`` and no usable GPU is found, with the reason.
    InputError
        When ``against="numba"`` and Numba does not import, with the reason.
    """
    reference = get_backend("numpy")
    if against == "numba":
        candidate = get_backend("numba")
        report = ParityReport(np.dtype(dtype).name, reference.name, candidate.name,
                              device=cpu_model(), tf32=None)
        report.rows = compare_backends(reference, candidate, dtype)
        return report
    status = gpu_status()
    if not status.usable:
        raise GPUUnavailableError(f"no usable GPU: {status.reason}")
    candidate = get_backend("gpu")
    previous = candidate.set_tf32(False)
    try:
        report = ParityReport(np.dtype(dtype).name, reference.name, candidate.name,
                              device=status.device_name, tf32=candidate.tf32_enabled())
        report.rows = compare_backends(reference, candidate, dtype)
    finally:
        candidate.set_tf32(previous)
    return report


def format_report(report: ParityReport) -> str:
    """The report as a plain-text table with a one-line verdict."""
    tf32 = "" if report.tf32 is None else (
        f", TF32 {'on' if report.tf32 else 'off'} during the check")
    lines = [f"parity {report.reference} vs {report.candidate}, {report.dtype}, "
             f"device {report.device or 'unknown'}{tf32}"]
    width = max([len(row.name) for row in report.rows] + [len("row")])
    lines.append(f"{'row':<{width}}  {'kind':<11}  {'max abs err':>11}  {'max rel err':>11}"
                 f"  {'rtol':>7}  {'atol':>7}  result")
    for row in report.rows:
        lines.append(f"{row.name:<{width}}  {row.kind:<11}  {row.max_abs:>11.3e}  "
                     f"{row.max_rel:>11.3e}  {row.rtol:>7.0e}  {row.atol:>7.0e}  "
                     f"{'pass' if row.passed else 'FAIL'}")
    failed = sum(not row.passed for row in report.rows)
    verdict = "PASS" if report.passed else "FAIL"
    lines.append(f"{verdict}: {len(report.rows) - failed} of {len(report.rows)} rows "
                 "within tolerance")
    return "\n".join(lines)


def check_main(dtype="float32", against: str = "gpu") -> int:
    """``gpubackprop check``: print the parity table.

    Returns
    -------
    int
        0 when every row passes, 1 when any fails, 2 when the backend to
        check is not usable here (a one-line reason is printed to stderr
        instead of the table).
    """
    try:
        report = run_parity(dtype, against)
    except (GPUUnavailableError, InputError) as exc:  # raised before anything is computed
        print(f"gpubackprop check: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 0 if report.passed else 1


# ---------------------------------------------------------------------- cases
def _host(backend: Backend, X) -> np.ndarray:
    """A host copy of ``X`` (a copy even on NumPy, so later in-place ops cannot change it)."""
    return np.array(backend.to_numpy(X), copy=True)


def _gated_cell_cases(on_both, draw, dtype, n: int, h: int) -> Iterable[Comparison]:
    """The LSTM and GRU cell methods, forward then backward from the reference's forward
    outputs, on n samples of h units (see :func:`kernel_cases` for ``on_both`` and ``draw``)."""
    def new(be, *shape):
        return be.empty(shape, dtype)

    def rows(label, outputs, ref, got):
        for output, expected, actual in zip(outputs, ref, got):
            yield Comparison(f"{label} {output}", "elementwise", expected, actual)

    G, c_prev = draw(n, 4 * h, scale=2.0), draw(n, h)
    (ref, _), (got, _) = on_both(lambda be, G, c_prev: be.lstm_cell_forward(
        G, c_prev, new(be, n, h), new(be, n, h), new(be, n, 4 * h)), G, c_prev)
    yield from rows("lstm_cell_forward", ("h", "c", "gates"), ref, got)
    _h, c, gates = ref
    (ref, _), (got, _) = on_both(lambda be, dh, dc, gates, c_prev, c: be.lstm_cell_backward(
        dh, dc, gates, c_prev, c, new(be, n, 4 * h), new(be, n, h)),
        draw(n, h), draw(n, h), gates, c_prev, c)
    yield from rows("lstm_cell_backward", ("dG", "dc_prev"), ref, got)

    Gx, Gh, h_prev = draw(n, 3 * h, scale=2.0), draw(n, 3 * h, scale=2.0), draw(n, h)
    (ref, _), (got, _) = on_both(lambda be, Gx, Gh, h_prev: be.gru_cell_forward(
        Gx, Gh, h_prev, new(be, n, h), new(be, n, 4 * h)), Gx, Gh, h_prev)
    yield from rows("gru_cell_forward", ("h", "gates"), ref, got)
    gates = ref[1]
    (ref, _), (got, _) = on_both(lambda be, dh, gates, h_prev: be.gru_cell_backward(
        dh, gates, h_prev, new(be, n, 3 * h), new(be, n, 3 * h), new(be, n, h)),
        draw(n, h), gates, h_prev)
    yield from rows("gru_cell_backward", ("dGx", "dGh", "dh_prev"), ref, got)


def kernel_cases(reference: Backend, candidate: Backend, dtype) -> Iterable[Comparison]:
    """Each fused operation once, on identical random inputs (elementwise rows)."""
    rng = np.random.default_rng(1234)
    n, d = 257, 67  # not multiples of the block or warp size

    def draw(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(dtype)

    def on_both(op, *host_arrays):
        """``op(backend, *arrays)`` on each backend with fresh copies of the inputs.

        ``op`` returns a tuple of outputs (or None for in-place updates).
        Returns ``[(outputs, inputs)]`` as host copies, reference first.
        """
        runs = []
        for backend in (reference, candidate):
            arrays = [backend.asarray(np.array(A)) for A in host_arrays]
            outputs = op(backend, *arrays) or ()
            runs.append(([_host(backend, R) for R in outputs],
                         [_host(backend, A) for A in arrays]))
        return runs

    for name in ACTIVATION_NAMES:
        (ref, _), (got, _) = on_both(lambda be, Z: (be.activation(Z, name),),
                                     draw(n, d, scale=4.0))
        yield Comparison(f"activation {name}", "elementwise", ref[0], got[0])
        (ref, _), (got, _) = on_both(lambda be, Z, b: (be.bias_activation(Z, b, name),),
                                     draw(n, d, scale=4.0), draw(d))
        yield Comparison(f"bias_activation {name}", "elementwise", ref[0], got[0])
        if ACTIVATIONS[name].needs_input:
            # The form a layer uses to keep the pre-activation: Z + b stays in Z, f goes to Y.
            def keeping(be, Z, b):
                return (be.bias_activation(Z, b, name, out=be.empty(Z.shape, Z.dtype)),)

            (ref, ref_in), (got, got_in) = on_both(keeping, draw(n, d, scale=4.0), draw(d))
            yield Comparison(f"bias_activation {name} keeping Z", "elementwise", ref[0], got[0])
            yield Comparison(f"bias_activation {name} kept Z", "elementwise", ref_in[0],
                             got_in[0])
        Z = draw(n, d, scale=3.0)
        # The saved array the backward pass reads: the output, or the input where f' needs it.
        S = Z if ACTIVATIONS[name].needs_input else _host(
            reference, reference.activation(reference.asarray(Z), name))
        (ref, _), (got, _) = on_both(lambda be, dY, S: (be.backprop_activation(dY, S, name),),
                                     draw(n, d), S)
        yield Comparison(f"backprop_activation {name}", "elementwise", ref[0], got[0])
    for name in RECURRENT_NAMES:
        (ref, _), (got, _) = on_both(
            lambda be, XW, HU, b: (be.recurrent_activation(XW, HU, b, name),),
            draw(n, d), draw(n, d), draw(d))
        yield Comparison(f"recurrent_activation {name}", "elementwise", ref[0], got[0])
    yield from _gated_cell_cases(on_both, draw, dtype, n, d)
    T = np.eye(d, dtype=dtype)[rng.integers(0, d, size=n)]
    (ref, _), (got, _) = on_both(lambda be, Z, T: be.softmax_cross_entropy(Z, T),
                                 draw(n, d, scale=5.0), T)
    yield Comparison("softmax_cross_entropy loss", "elementwise", ref[0], got[0])
    yield Comparison("softmax_cross_entropy dZ", "elementwise", ref[1], got[1])

    # Every optimizer setting with its own code path, three steps from the same state.
    for label, optimizer in OPTIMIZER_ROWS.items():
        spec = optimizer.spec
        roles = [role for role in spec.slot_roles(optimizer.settings) if role is not None]
        W, dW = draw(n, d), draw(n, d)
        # Second moments positive and above the squared first ones (a variance stays >= 0).
        slots = [np.abs(draw(n, d, scale=0.1)) + dtype.type(0.01)
                 if role in SECOND_MOMENTS else draw(n, d, scale=0.01) for role in roles]

        def steps(be, W, dW, *slots):
            state = be.asarray(optimizer.host_step_state())
            it = iter(slots)
            arrays = [None if role is None else next(it)
                      for role in spec.slot_roles(optimizer.settings)]
            for _ in range(3):
                be.advance_optimizer(spec.rule.name, state)
                getattr(be, f"{spec.rule.name}_update")(W, dW, state, *arrays)
            return (state,)

        (ref, ref_in), (got, got_in) = on_both(steps, W, dW, *slots)
        yield Comparison(f"{label} step state", "elementwise", ref[0], got[0])
        for i, slot in enumerate(("W", *roles)):
            position = 0 if i == 0 else i + 1  # inputs are W, dW, then the slots
            yield Comparison(f"{label} {slot}", "elementwise", ref_in[position],
                             got_in[position])


#: Slots that hold averages of squared gradients (non-negative).
SECOND_MOMENTS = ("v", "square_avg")
#: The optimizer settings :func:`kernel_cases` compares (each takes three steps).
OPTIMIZER_ROWS = {
    "sgd weight_decay": SGD(lr=0.1, weight_decay=0.01),
    "momentum": Momentum(lr=0.1, momentum=0.9),
    "momentum nesterov weight_decay": Momentum(lr=0.1, momentum=0.9, nesterov=True,
                                               weight_decay=0.01),
    "momentum heavy_ball": Momentum(lr=0.1, momentum=0.9, convention="sklearn"),
    "momentum heavy_ball nesterov": Momentum(lr=0.1, momentum=0.9, convention="sklearn",
                                             nesterov=True),
    "adam": Adam(lr=1e-3),
    "adam weight_decay unscaled eps": Adam(lr=1e-3, weight_decay=0.01, convention="sklearn"),
    "adamw": AdamW(lr=1e-3, weight_decay=0.1),
    "rmsprop": RMSprop(lr=1e-2),
    "rmsprop centered momentum weight_decay": RMSprop(lr=1e-2, centered=True, momentum=0.9,
                                                      weight_decay=0.01),
}


def _model_case(label: str, build: Callable[[], list], loss, n_inputs: int = 64,
                n_classes: int = 10, batch: int = 128, steps: int | None = None) -> Case:
    """A case that builds the same model on both backends and compares, in order:
    each layer's forward output, the loss, every gradient, and every parameter
    after :data:`TRAINING_STEPS` steps of SGD with momentum on a few fixed batches.
    With ``steps`` the inputs are sequences (batch, steps, n_inputs).

    Momentum, not Adam: Adam divides by sqrt(V), so a gradient that is rounding
    noise (a sum that cancels) becomes a full-size step and the two backends'
    weights drift apart by design rather than by error.
    """

    def case(reference: Backend, candidate: Backend, dtype) -> Iterable[Comparison]:
        rng = np.random.default_rng(7)
        batches = []
        for _ in range(4):
            shape = (batch, n_inputs) if steps is None else (batch, steps, n_inputs)
            X = rng.standard_normal(shape).astype(dtype)
            T = np.eye(n_classes, dtype=dtype)[rng.integers(0, n_classes, size=batch)]
            batches.append((X, T))
        models = [Sequential(build(), n_inputs=n_inputs, device=backend, dtype=dtype, seed=3)
                  for backend in (reference, candidate)]
        X, T = batches[0]
        outputs, losses, grads = [], [], []
        for model in models:
            H = model.backend.asarray(X)
            layer_outputs = []
            for layer in model.layers:
                H = layer.forward(H)
                layer_outputs.append(_host(model.backend, H))
            value, dY = loss(model.backend, H, model.backend.asarray(T))
            model.backward(dY)
            outputs.append(layer_outputs)
            losses.append(_host(model.backend, value))
            grads.append({name: _host(model.backend, g) for name, g in model.gradients().items()})
        for i, layer in enumerate(models[0].layers):
            yield Comparison(f"{label} forward {i} {_describe(layer)}", "gemm",
                             outputs[0][i], outputs[1][i])
        yield Comparison(f"{label} loss", "gemm", *losses)
        for name in grads[0]:
            yield Comparison(f"{label} grad {name}", "gemm", grads[0][name], grads[1][name])

        for model in models:
            optimizer = Momentum(lr=0.05, momentum=0.9)
            for step in range(TRAINING_STEPS):
                X, T = batches[step % len(batches)]
                backend = model.backend
                _, dY = loss(backend, model.forward(backend.asarray(X)), backend.asarray(T))
                model.backward(dY)
                optimizer.step(model)
        trained = [model.state_arrays() for model in models]
        for name in trained[0]:
            yield Comparison(f"{label} {TRAINING_STEPS} steps {name}", "gemm",
                             trained[0][name], trained[1][name])

    return case


def _describe(layer) -> str:
    if isinstance(layer, Linear):
        return f"Linear({layer.units}, {layer.activation})"
    if isinstance(layer, RNN):
        bptt = f", bptt {layer.bptt_steps}" if layer.bptt_steps else ""
        return f"RNN({layer.units}, {layer.activation}{bptt})"
    if isinstance(layer, GatedRecurrent):
        bptt = f", bptt {layer.bptt_steps}" if layer.bptt_steps else ""
        return f"{layer.kind}({layer.units}{bptt})"
    return type(layer).__name__


#: The parity cases run by :func:`run_parity`, in report order.
CASES: list[Case] = [
    kernel_cases,
    _model_case("ce", lambda: [Linear(48, "sigmoid"), Linear(32, "tanh"), Linear(24, "relu"),
                               Linear(16, "silu"), Linear(10)], SoftmaxCrossEntropy()),
    _model_case("mse", lambda: [Linear(32), Tanh(), Linear(10, "sigmoid")], MeanSquaredError()),
    # Every hidden state of a 12-step sequence, a learnt h0 and truncated BPTT.
    _model_case("rnn", lambda: [RNN(32, "tanh", return_sequences=True, h0="learn"),
                                RNN(24, "sigmoid", bptt_steps=4), Linear(10)],
                SoftmaxCrossEntropy(), n_inputs=16, steps=12),
    # Stacked LSTMs (every state, learnt h0 and c0; then truncated BPTT), likewise GRUs.
    _model_case("lstm", lambda: [LSTM(32, return_sequences=True, h0="learn"),
                                 LSTM(24, bptt_steps=4), Linear(10)],
                SoftmaxCrossEntropy(), n_inputs=16, steps=12),
    _model_case("gru", lambda: [GRU(32, return_sequences=True, h0="learn"),
                                GRU(24, bptt_steps=4), Linear(10)],
                SoftmaxCrossEntropy(), n_inputs=16, steps=12),
]
