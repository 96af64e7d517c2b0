"""``gpubackprop selftest``: its summary, its stand-ins without a GPU, failing steps,
exit statuses, and a run where Numba cannot be imported (as on the GPU machine)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gpubackprop.backends import get_backend, gpu_status
from gpubackprop.backends.cupy.library import KERNEL_FILES
from gpubackprop.bench.fused_calls import CALLS, time_fused_calls
from gpubackprop.cli.main import main
from gpubackprop.verify import selftest
from gpubackprop.verify.parity import ParityReport, ParityRow, format_report
from gpubackprop.verify.selftest import (FAILED, NOT_RUN, OK, TIMED_OUT, Step, plan,
                                         read_parity, run_selftest, why_not_run)

REPO = Path(__file__).resolve().parents[1]
STATUSES = {OK, FAILED, TIMED_OUT, NOT_RUN}
#: Makes ``import numba`` fail in every process that has this folder on PYTHONPATH.
NO_NUMBA = '''import sys
class _NoNumba:
    def find_spec(self, name, path=None, target=None):
        if name == "numba" or name.startswith("numba."):
            raise ImportError(f"No module named {name!r} (hidden by the test)")
sys.meta_path.insert(0, _NoNumba())
'''
#: The steps the command-line run takes: cheap ones, a GPU step and each kind of stand-in.
CLI_STEPS = ["kernels", "kernels-emulated", "parity-float32", "parity-emulated-float64",
             "train-iris", "train-iris-cpu", "fused-calls-numba"]


@pytest.fixture(scope="module")
def run_without_numba(tmp_path_factory):
    """``selftest`` on CLI_STEPS in a process where ``import numba`` fails."""
    hide = tmp_path_factory.mktemp("no-numba")
    (hide / "sitecustomize.py").write_text(NO_NUMBA)
    out = tmp_path_factory.mktemp("selftest") / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hide), str(REPO)]),
           "MPLBACKEND": "Agg"}
    result = subprocess.run([sys.executable, "-m", "gpubackprop", "selftest", "--out", str(out),
                             "--steps", *CLI_STEPS], capture_output=True, text=True, env=env,
                            cwd=hide, timeout=600)
    summary = json.loads((out / "summary.json").read_text())
    return result, out, summary, {step["name"]: step for step in summary["steps"]}


def test_the_summary_lists_every_planned_step_in_order(run_without_numba):
    result, out, summary, steps = run_without_numba
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(steps) == [step.name for step in plan(out)]
    for step in steps.values():
        assert step["status"] in STATUSES
        assert step["seconds"] >= 0
        if step["status"] == NOT_RUN:
            assert step["reason"] and step["log"] is None
        else:
            assert (out / step["log"]).is_file()
            assert step["command"][0] == sys.executable
    unselected = set(steps) - set(CLI_STEPS) - {"environment"}
    assert unselected and all(steps[name]["reason"] == "not selected (--steps)"
                              for name in unselected)
    assert summary["exit_status"] == 0
    assert summary["seconds"] > 0


def test_the_table_is_printed_last_and_written_as_markdown(run_without_numba):
    result, out, summary, steps = run_without_numba
    lines = result.stdout.splitlines()
    table = lines.index(next(line for line in lines if line.startswith("step ")))
    assert [line.split()[0] for line in lines[table + 1:table + 1 + len(steps)]] == list(steps)
    assert lines[-1].startswith("selftest finished in")
    markdown = (out / "summary.md").read_text()
    for name, step in steps.items():
        assert f"| {name} | {step['status']} |" in markdown


@pytest.mark.skipif(gpu_status().usable, reason="this machine has a GPU: the GPU steps run")
def test_without_a_gpu_gpu_steps_are_not_run_with_the_reason(run_without_numba):
    result, out, summary, steps = run_without_numba
    environment = json.loads((out / "environment.json").read_text())
    reason = environment["gpu_status"]["reason"]
    for name in ("kernels", "parity-float32", "train-iris"):
        assert steps[name]["status"] == NOT_RUN
        assert steps[name]["reason"] == f"no usable GPU: {reason}"


def test_without_numba_everything_else_runs(run_without_numba):
    result, out, summary, steps = run_without_numba
    assert steps["environment"]["status"] == OK
    assert steps["environment"]["facts"]["cpu_status"]["numba_version"] is None
    assert steps["fused-calls-numba"]["status"] == NOT_RUN
    assert "Numba" in steps["fused-calls-numba"]["reason"]
    train = steps["train-iris-cpu"]
    assert train["status"] == OK and "backend=numpy" in train["facts"]["model"]
    assert 0.8 <= train["facts"]["test_accuracy"] <= 1.0 and train["facts"]["n_test"] == 45


def test_the_emulated_kernel_build_is_timed_per_file(run_without_numba):
    result, out, summary, steps = run_without_numba
    kernels = steps["kernels-emulated"]
    if kernels["status"] == NOT_RUN:  # no host C++ compiler, or no tests/cuda_emulation
        assert kernels["reason"]
        return
    assert kernels["status"] == OK
    for phase in ("first", "warm"):
        assert set(kernels["facts"][phase]["files"]) == set(KERNEL_FILES)
        assert kernels["facts"][phase]["total_s"] >= kernels["facts"][phase]["construct_s"] > 0


def test_the_emulated_kernels_parity_rows_are_summarised(run_without_numba):
    result, out, summary, steps = run_without_numba
    parity = steps["parity-emulated-float64"]
    if parity["status"] == NOT_RUN:  # no host C++ compiler, or no tests/cuda_emulation
        assert parity["reason"]
        return
    rows = json.loads((out / "parity-emulated-float64.json").read_text())["rows"]
    assert parity["status"] == OK and parity["facts"]["rows"] == len(rows) > 10
    assert parity["facts"]["failed"] == []
    worst = max(row["max_rel"] for row in rows)
    assert parity["facts"]["worst_rel"]["value"] == pytest.approx(worst, rel=1e-3)  # 4 digits


def _python(code: str, name: str, timeout: float = 60, **options) -> Step:
    return Step(name, f"python -c {code!r}", ("-c", code), timeout, **options)


def test_failing_hanging_and_crashing_steps_are_recorded_and_the_rest_run(tmp_path):
    grandchild = tmp_path / "grandchild.pid"
    hang = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(120)']); open(sys.argv[1], 'w').write(str(p.pid)); "
            "time.sleep(120)")
    steps = [_python("print('first')", "first"),
             _python("raise SystemExit(3)", "fails"),
             Step("hangs", "sleeps past its limit", ("-c", hang, str(grandchild)), 3),
             _python("import os; os.abort()", "crashes"),
             _python("print('last')", "last")]
    began = time.perf_counter()
    summary = run_selftest(tmp_path / "out", steps, stream=open(os.devnull, "w"))
    assert time.perf_counter() - began < 60
    results = {step["name"]: step for step in summary["steps"]}
    assert [results[name]["status"] for name in results] == [OK, FAILED, TIMED_OUT, FAILED, OK]
    assert results["fails"]["reason"] == "exit status 3"
    assert results["hangs"]["reason"] == "killed after 3 s"
    assert results["crashes"]["reason"] == "killed by signal SIGABRT"
    assert (tmp_path / "out" / results["last"]["log"]).read_text().rstrip().endswith("last")
    assert summary["exit_status"] == 1
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary
    pid = int(grandchild.read_text())
    for _ in range(50):  # the hung step's whole process group is killed, its child too
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the hung step's child {pid} outlived it")


def test_a_step_never_reports_an_earlier_runs_file(tmp_path):
    (tmp_path / "facts.json").write_text('{"from": "an earlier run"}')
    step = _python("raise SystemExit(1)", "writes-nothing", outputs=("facts.json",),
                   read=selftest.json_reader("facts.json"))
    (result,) = run_selftest(tmp_path, [step], stream=open(os.devnull, "w"))["steps"]
    assert result["status"] == FAILED
    assert result["facts"]["read_error"].startswith("FileNotFoundError")


def test_a_spent_budget_leaves_the_remaining_steps_not_run(tmp_path):
    steps = [_python("print('x')", "one"), _python("print('y')", "two")]
    summary = run_selftest(tmp_path, steps, budget=1.0, stream=open(os.devnull, "w"))
    assert [step["status"] for step in summary["steps"]] == [NOT_RUN, NOT_RUN]
    assert "budget of 1 s was spent" in summary["steps"][0]["reason"]
    assert summary["exit_status"] == 0


def test_a_failing_step_makes_the_command_exit_1(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(selftest, "plan", lambda out, data_dir, cache: [
        _python("raise SystemExit(1)", "environment")])
    assert main(["selftest", "--out", str(tmp_path)]) == 1
    assert "environment  failed" in capsys.readouterr().out


@pytest.mark.parametrize("budget", ["0", "-5", "nan", "inf"])
def test_a_budget_that_is_no_positive_number_is_a_one_line_error(tmp_path, capsys, budget):
    assert main(["selftest", "--out", str(tmp_path), "--budget", budget]) == 2
    assert capsys.readouterr().err.startswith("gpubackprop: error: --budget must be a positive")
    assert not (tmp_path / "summary.json").exists()


def test_an_unknown_step_is_a_one_line_error(tmp_path, capsys):
    assert main(["selftest", "--out", str(tmp_path), "--steps", "no-such-step"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("gpubackprop: error: unknown step(s) no-such-step; the steps are: "
                            "environment, kernels")
    assert len(error.strip().splitlines()) == 1


def test_stand_ins_run_only_without_a_gpu_and_needs_give_the_reason():
    gpu = Step("real", "on the GPU", ("-c", ""), 1, needs=("gpu",))
    stand_in = Step("cpu", "its stand-in", ("-c", ""), 1, needs=("numba",), stand_in=True)
    assert why_not_run(gpu, {"gpu": "no usable GPU: none"}) == "no usable GPU: none"
    assert why_not_run(gpu, {}) is None
    assert why_not_run(stand_in, {}) == "the GPU ran the real step (this is its CPU stand-in)"
    assert why_not_run(stand_in, {"gpu": "x", "numba": "Numba is absent"}) == "Numba is absent"
    assert why_not_run(stand_in, {"gpu": "x"}) is None


def test_parity_facts_come_from_the_check_table():
    rows = [ParityRow("bias_activation relu", "elementwise", 1e-7, 2e-6, 1e-5, 1e-6, True),
            ParityRow("ce grad 0.W", "gemm", 3e-5, 1e-7, 1e-4, 1e-5, False)]
    report = ParityReport("float32", "numpy", "cupy", device="X", tf32=False, rows=rows)
    facts = read_parity(format_report(report), Path("."))
    assert facts == {"rows": 2, "failed": ["ce grad 0.W"],
                     "worst_abs": {"row": "ce grad 0.W", "value": 3e-5},
                     "worst_rel": {"row": "bias_activation relu", "value": 2e-6}}


def test_plan_trains_digits_when_no_mnist_files_are_found(tmp_path, monkeypatch):
    monkeypatch.setattr(selftest, "mnist_folder", lambda data_dir: None)
    names = [step.name for step in plan(tmp_path)]
    assert "train-digits" in names and "train-mnist" not in names
    monkeypatch.setattr(selftest, "mnist_folder", lambda data_dir: tmp_path / "mnist")
    steps = {step.name: step for step in plan(tmp_path)}
    assert "--no-download" in steps["train-mnist"].argv
    assert steps["bench"].env == {"GPUBACKPROP_DATA": str(tmp_path)}


@pytest.mark.parametrize("call", CALLS, ids=[call.label for call in CALLS])
def test_fused_call_inputs_are_never_all_zero(call):
    backend = get_backend("numpy")
    arrays = [A for A in call.arguments(backend, np.random.default_rng(0), np.dtype("float32"))
              if isinstance(A, np.ndarray)]
    assert arrays and all(np.any(A != 0, axis=-1).all() for A in arrays)  # no zero row


def test_fused_call_timings_have_one_row_per_call():
    rows = time_fused_calls(get_backend("numpy"), "float32", CALLS[:2])
    assert [row["label"] for row in rows] == [call.label for call in CALLS[:2]]
    for row in rows:
        assert row["fused_us"] > 0 and row["unfused_us"] > 0
        assert row["speedup"] == pytest.approx(row["unfused_us"] / row["fused_us"])
        assert "fused_device_us" not in row  # NumPy has no CUDA events


class _ClockEvent:
    """A CUDA event stand-in that records the host clock."""

    def record(self):
        self.at = time.perf_counter()


def test_fused_call_timings_take_cuda_events_where_the_array_module_has_them():
    from types import SimpleNamespace

    from gpubackprop.backends.numpy.backend import NumpyBackend

    backend = NumpyBackend()
    cuda = SimpleNamespace(Event=_ClockEvent,
                           get_elapsed_time=lambda start, stop: (stop.at - start.at) * 1e3)
    backend.xp = SimpleNamespace(**{name: getattr(np, name) for name in dir(np)
                                    if not name.startswith("__")}, cuda=cuda)
    (row,) = time_fused_calls(backend, "float32", CALLS[-1:])
    for key in ("fused", "unfused"):  # events around the same loop: the same µs per call
        assert row[f"{key}_device_us"] == pytest.approx(row[f"{key}_us"], rel=0.5)
