"""The parity report machinery, exercised on the CPU with NumPy-based candidates.

The GPU run itself is in test_gpu_backend.py. Here a candidate that only
rounds differently (float64-accumulated GEMMs, sigmoid through exp) must pass
every row, and one with a wrong sigmoid derivative must fail the rows it touches.
"""

import numpy as np
import pytest

from gpubackprop.verify import parity
from gpubackprop.backends import NumpyBackend
from gpubackprop.nn.activations import NAMES as ACTIVATION_NAMES


class OtherRounding(NumpyBackend):
    """Same mathematics as NumPy, different rounding: what another library does."""

    name = "other-rounding"

    def gemm(self, A, B, trans_a=False, trans_b=False, out=None):
        A = A.T if trans_a else A
        B = B.T if trans_b else B
        if A.dtype == np.float32:
            result = (A.astype(np.float64) @ B.astype(np.float64)).astype(np.float32)
        else:
            result = np.einsum("ik,kj->ij", A, B, optimize=False)  # no BLAS blocking
        if out is None:
            return result
        out[...] = result
        return out

    def activation(self, Z, name, out=None):
        if name != "sigmoid":
            return super().activation(Z, name, out=out)
        out = np.empty_like(Z) if out is None else out
        with np.errstate(over="ignore"):
            out[...] = 1 / (1 + np.exp(-Z))
        return out


class WrongSigmoidGradient(NumpyBackend):
    name = "wrong"

    def backprop_activation(self, dY, Y, name, out=None):
        if name == "sigmoid":
            return dY * Y  # the factor (1 - Y) forgotten
        return super().backprop_activation(dY, Y, name, out=out)


class ForgottenForgetGate(NumpyBackend):
    """An LSTM backward pass that carries dc_t into c_{t-1} without the factor f."""

    name = "forgotten-forget-gate"

    def lstm_cell_backward(self, dh, dc, gates, c_prev, c, dG_out, dc_prev_out):
        super().lstm_cell_backward(dh, dc, gates, c_prev, c, dG_out, dc_prev_out)
        H = c.shape[1]
        dc_prev_out /= gates[:, H:2 * H]
        return dG_out, dc_prev_out


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rounding_differences_pass(dtype):
    rows = parity.compare_backends(NumpyBackend(), OtherRounding(), dtype)
    failed = [row.name for row in rows if not row.passed]
    assert not failed
    assert any(row.max_abs > 0 for row in rows if row.kind == "gemm")  # they did differ


@pytest.mark.slow
def test_wrong_gradient_fails_the_rows_it_touches():
    rows = {row.name: row for row in
            parity.compare_backends(NumpyBackend(), WrongSigmoidGradient(), "float64")}
    assert not rows["backprop_activation sigmoid"].passed
    assert not rows["ce grad 0.W"].passed  # layer 0 is Linear(48, sigmoid)
    assert not rows["ce 100 steps 0.W"].passed
    assert rows["backprop_activation tanh"].passed
    assert rows["ce forward 0 Linear(48, sigmoid)"].passed  # forward is untouched
    assert not rows["mse grad 0.W"].passed  # the mse output layer is sigmoid
    assert not rows["rnn grad 1.U"].passed  # layer 1 is RNN(24, sigmoid)
    assert not rows["rnn grad 0.h0"].passed  # reached through layer 1's backward
    assert rows["rnn forward 1 RNN(24, sigmoid, bptt 4)"].passed


@pytest.mark.slow
def test_wrong_lstm_cell_fails_the_lstm_rows_only():
    rows = {row.name: row for row in
            parity.compare_backends(NumpyBackend(), ForgottenForgetGate(), "float64")}
    assert not rows["lstm_cell_backward dc_prev"].passed
    assert rows["lstm_cell_backward dG"].passed
    assert not rows["lstm grad 0.weight_hh"].passed
    assert not rows["lstm grad 0.c0"].passed
    assert rows["lstm forward 1 LSTM(24, bptt 4)"].passed
    assert all(row.passed for name, row in rows.items() if not name.startswith("lstm"))


@pytest.mark.slow
def test_every_case_reports_rows_in_a_stable_order():
    names = [row.name for row in parity.compare_backends(NumpyBackend(), NumpyBackend())]
    assert len(names) == len(set(names))
    assert names[0] == f"activation {ACTIVATION_NAMES[0]}"
    for case in ("ce", "mse", "rnn", "lstm", "gru"):
        assert f"{case} loss" in names
    assert names[-1] == f"gru {parity.TRAINING_STEPS} steps 2.b"


def test_compare_needs_both_tolerances():
    exact = parity.compare(parity.Comparison("x", "elementwise", np.array([1.0, 0.0]),
                                             np.array([1.0 + 5e-6, 5e-7])), "float32")
    assert exact.passed and exact.max_abs == pytest.approx(5e-6)
    assert exact.max_rel == pytest.approx(5e-6)  # the element below atol is left out
    too_far = parity.compare(parity.Comparison("x", "elementwise", np.array([0.0]),
                                               np.array([2e-6])), "float32")
    assert not too_far.passed
    nan = parity.compare(parity.Comparison("x", "gemm", np.array([1.0]), np.array([np.nan])),
                         "float64")
    assert not nan.passed


def test_format_report_lists_every_row_and_the_verdict():
    rows = parity.compare_backends(NumpyBackend(), WrongSigmoidGradient(), "float32")
    report = parity.ParityReport("float32", "numpy", "wrong", device="test", tf32=False,
                                 rows=rows)
    text = parity.format_report(report)
    lines = text.splitlines()
    assert "float32" in lines[0] and "TF32 off" in lines[0]
    assert len(lines) == len(rows) + 3
    assert "backprop_activation sigmoid" in text and "FAIL" in text
    assert lines[-1].startswith("FAIL: ")
    assert not report.passed
