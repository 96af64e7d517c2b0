"""Microseconds per fused call against the unfused generic chain it replaces.

Each entry of :data:`CALLS` calls one :class:`~gpubackprop.backends.base.Backend`
method twice over: as the backend overrides it (a CUDA or Numba kernel) and as
``Backend`` writes it (a chain of whole-array ``xp`` operations), on the same
backend, arrays and shapes (those of the MNIST preset's first layer and a
batch of 128). Inputs are random normal, never all zeros; each timing starts
after warm-up calls (compilation, allocators) and synchronises the device
before and after the timed loop. Where the array module has CUDA events
(CuPy), the device time between two events is reported beside the wall time.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..backends.base import Backend
from ..nn.optim import get_optimizer

BATCH, HIDDEN, INPUTS, CLASSES = 128, 512, 784, 10
WARMUP_CALLS = 3
REPEATS = 5
#: Seconds each timed loop aims for; the loop runs at least MIN_CALLS calls.
TARGET_LOOP_S = 0.02
MIN_CALLS, MAX_CALLS = 5, 1000


@dataclass(frozen=True)
class Call:
    """One fused method: its label, method name, and its arguments from a random generator."""

    label: str
    method: str
    arguments: Callable[[Backend, np.random.Generator, np.dtype], tuple]


def _normal(backend, rng, dtype, *shape, scale=1.0):
    return backend.asarray((scale * rng.standard_normal(shape)).astype(dtype))


def _one_hot(backend, rng, dtype):
    return backend.asarray(np.eye(CLASSES, dtype=dtype)[rng.integers(0, CLASSES, BATCH)])


def _step_state(backend, name: str, lr: float, steps: int = 10):
    """The step state of ``name`` on ``backend`` after ``steps`` advances (on the device)."""
    optimizer = get_optimizer(name, lr=lr)
    for _ in range(steps):
        state = optimizer.begin_step(backend)
    return state


def _adam(backend, rng, dtype):
    W, dW, M = (_normal(backend, rng, dtype, INPUTS, HIDDEN) for _ in range(3))
    V = backend.asarray(np.abs(rng.standard_normal((INPUTS, HIDDEN))).astype(dtype))
    return W, dW, _step_state(backend, "adam", 1e-3), M, V


def _rows(backend, rng, dtype, *widths, scale=1.0):
    """Random (BATCH, w HIDDEN) arrays, one per ``w`` of ``widths`` (outputs too: never zeros)."""
    return tuple(_normal(backend, rng, dtype, BATCH, w * HIDDEN, scale=scale) for w in widths)


def _lstm_forward(backend, rng, dtype):
    """G, c_prev and the outputs h, c, gates of one LSTM step."""
    return _rows(backend, rng, dtype, 4, scale=2.0) + _rows(backend, rng, dtype, 1, 1, 1, 4)


def _lstm_backward(backend, rng, dtype):
    """dh, dc, the saved gates, c_prev and c of a forward step, and the outputs dG, dc_prev."""
    _G, c_prev, _h, c, gates = step = _lstm_forward(backend, rng, dtype)
    backend.lstm_cell_forward(*step)
    dh, dc, dG, dc_prev = _rows(backend, rng, dtype, 1, 1, 4, 1)
    return dh, dc, gates, c_prev, c, dG, dc_prev


def _gru_forward(backend, rng, dtype):
    """Gx, Gh, h_prev and the outputs h, gates of one GRU step."""
    return _rows(backend, rng, dtype, 3, 3, scale=2.0) + _rows(backend, rng, dtype, 1, 1, 4)


def _gru_backward(backend, rng, dtype):
    """dh, the saved gates and h_prev of a forward step, and the outputs dGx, dGh, dh_prev."""
    _Gx, _Gh, h_prev, _h, gates = step = _gru_forward(backend, rng, dtype)
    backend.gru_cell_forward(*step)
    dh, dGx, dGh, dh_prev = _rows(backend, rng, dtype, 1, 3, 3, 1)
    return dh, gates, h_prev, dGx, dGh, dh_prev


#: The fused calls timed, in report order.
CALLS = (
    Call(f"bias + relu ({BATCH}x{HIDDEN})", "bias_activation",
         lambda be, rng, dt: (_normal(be, rng, dt, BATCH, HIDDEN),
                              _normal(be, rng, dt, HIDDEN), "relu")),
    Call(f"bias + sigmoid ({BATCH}x{HIDDEN})", "bias_activation",
         lambda be, rng, dt: (_normal(be, rng, dt, BATCH, HIDDEN),
                              _normal(be, rng, dt, HIDDEN), "sigmoid")),
    Call(f"relu backward ({BATCH}x{HIDDEN})", "backprop_activation",
         lambda be, rng, dt: (_normal(be, rng, dt, BATCH, HIDDEN),
                              be.activation(_normal(be, rng, dt, BATCH, HIDDEN), "relu"),
                              "relu")),
    Call(f"sigmoid backward ({BATCH}x{HIDDEN})", "backprop_activation",
         lambda be, rng, dt: (_normal(be, rng, dt, BATCH, HIDDEN),
                              be.activation(_normal(be, rng, dt, BATCH, HIDDEN), "sigmoid"),
                              "sigmoid")),
    Call(f"softmax + cross-entropy ({BATCH}x{CLASSES})", "softmax_cross_entropy",
         lambda be, rng, dt: (_normal(be, rng, dt, BATCH, CLASSES, scale=3.0),
                              _one_hot(be, rng, dt))),
    Call(f"sgd ({INPUTS}x{HIDDEN})", "sgd_update",
         lambda be, rng, dt: (_normal(be, rng, dt, INPUTS, HIDDEN),
                              _normal(be, rng, dt, INPUTS, HIDDEN, scale=1e-3),
                              _step_state(be, "sgd", 1e-2))),
    Call(f"momentum ({INPUTS}x{HIDDEN})", "momentum_update",
         lambda be, rng, dt: (_normal(be, rng, dt, INPUTS, HIDDEN),
                              _normal(be, rng, dt, INPUTS, HIDDEN, scale=1e-3),
                              _step_state(be, "momentum", 1e-2),
                              _normal(be, rng, dt, INPUTS, HIDDEN, scale=1e-3))),
    Call(f"adam ({INPUTS}x{HIDDEN})", "adam_update", _adam),
    Call(f"LSTM cell forward ({BATCH}x{HIDDEN})", "lstm_cell_forward", _lstm_forward),
    Call(f"LSTM cell backward ({BATCH}x{HIDDEN})", "lstm_cell_backward", _lstm_backward),
    Call(f"GRU cell forward ({BATCH}x{HIDDEN})", "gru_cell_forward", _gru_forward),
    Call(f"GRU cell backward ({BATCH}x{HIDDEN})", "gru_cell_backward", _gru_backward),
)


def time_fused_calls(backend: Backend, dtype="float32", calls=CALLS) -> list[dict]:
    """Time every call fused and unfused on ``backend``.

    Returns
    -------
    list of dict
        Per call: ``label``, ``method``, ``fused_us`` and ``unfused_us`` (wall
        microseconds per call, median of :data:`REPEATS` loops), ``speedup``
        (unfused / fused), and ``fused_device_us`` / ``unfused_device_us``
        where CUDA events exist.
    """
    dtype = np.dtype(dtype)
    rows = []
    for call in calls:
        rng = np.random.default_rng(0)
        arguments = call.arguments(backend, rng, dtype)
        fused = getattr(backend, call.method)
        generic = getattr(Backend, call.method)
        row = {"label": call.label, "method": call.method, "dtype": dtype.name}
        for key, function in (("fused", lambda: fused(*arguments)),
                              ("unfused", lambda: generic(backend, *arguments))):
            wall, device = _time(backend, function)
            row[f"{key}_us"] = wall
            if device is not None:
                row[f"{key}_device_us"] = device
        row["speedup"] = row["unfused_us"] / row["fused_us"]
        rows.append(row)
    return rows


def _time(backend: Backend, function) -> tuple[float, float | None]:
    """Median wall (and CUDA-event) microseconds per call of ``function``."""
    for _ in range(WARMUP_CALLS):
        function()
    backend.synchronize()
    began = time.perf_counter()
    function()
    backend.synchronize()
    single = max(time.perf_counter() - began, 1e-7)
    calls = int(min(MAX_CALLS, max(MIN_CALLS, TARGET_LOOP_S / single)))
    events = getattr(getattr(backend.xp, "cuda", None), "Event", None)
    walls, devices = [], []
    for _ in range(REPEATS):
        start, stop = (events(), events()) if events is not None else (None, None)
        backend.synchronize()
        began = time.perf_counter()
        if start is not None:
            start.record()
        for _ in range(calls):
            function()
        if stop is not None:
            stop.record()
        backend.synchronize()
        walls.append((time.perf_counter() - began) / calls * 1e6)
        if start is not None:
            devices.append(backend.xp.cuda.get_elapsed_time(start, stop) / calls * 1e3)
    return statistics.median(walls), statistics.median(devices) if devices else None


def format_table(rows: list[dict], backend_name: str) -> str:
    """The timings as a markdown table."""
    device = any("fused_device_us" in row for row in rows)
    head = "| call | fused µs | unfused µs | unfused ÷ fused |"
    rule = "|---|---:|---:|---:|"
    if device:
        head += " fused µs (CUDA events) | unfused µs (CUDA events) |"
        rule += "---:|---:|"
    lines = [f"Per call on {backend_name}, {rows[0]['dtype'] if rows else ''}, median of "
             f"{REPEATS} loops after {WARMUP_CALLS} warm-up calls:", "", head, rule]
    for row in rows:
        line = (f"| {row['label']} | {row['fused_us']:.1f} | {row['unfused_us']:.1f} "
                f"| {row['speedup']:.2f} |")
        if device:
            line += f" {row['fused_device_us']:.1f} | {row['unfused_device_us']:.1f} |"
        lines.append(line)
    return "\n".join(lines) + "\n"
