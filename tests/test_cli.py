"""The command line: info, train iris, one-line errors with exit status 2."""

import json
import subprocess
import sys

import pytest

from gpubackprop.backends import gpu_status
from gpubackprop.cli.main import main


def test_info_names_backend_and_reason(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "numpy" in out and "auto ->" in out
    assert gpu_status().reason in out
    from gpubackprop.backends import cpu_status

    if cpu_status().fused:
        from gpubackprop.backends.numba import blas as cpu_blas

        assert ("through NumPy's OpenBLAS" in out) == cpu_blas.NUMPY_BLAS


def test_train_iris_reaches_90_percent_and_writes_outputs(tmp_path, capsys):
    plot = tmp_path / "mse.png"
    assert main(["train", "iris", "--out", str(tmp_path / "run"), "--plot", str(plot)]) == 0
    lines = capsys.readouterr().out.splitlines()
    progress = [line for line in lines if line.startswith("iteration")]
    assert [line.split()[1] for line in progress] == [f"{i}/1000" for i in range(100, 1001, 100)]
    assert all(" MSE " in line for line in progress)
    summary = json.loads((tmp_path / "run" / "history.json").read_text())
    assert summary["test_accuracy"] >= 0.90
    assert f"test accuracy {summary['test_accuracy']:.4f}" in "\n".join(lines)
    assert len(summary["history"]["loss"]) == 1000
    assert summary["history"]["loss"][-1] < summary["history"]["loss"][0] / 10
    assert summary["config"]["hidden"] == [4] and summary["config"]["lr"] == 0.1
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("**/*.tmp"))


@pytest.mark.parametrize("args, message", [
    (["train", "iris", "--lr", "0"], "argument --lr: must be a positive number"),
    (["train", "iris", "--batch-size", "-3"], "argument --batch-size: must be a positive integer"),
    (["train", "iris", "--optimizer", "adagrad"], "argument --optimizer: unknown 'adagrad'"),
    (["train", "iris", "--activation", "swish"], "argument --activation: unknown 'swish'"),
    (["train", "iris", "--device", "tpu"], "argument --device: unknown 'tpu'"),
])
def test_user_errors_are_one_line_and_exit_2(args, message, capsys):
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == captured.err.strip().splitlines()[0]
    assert captured.err.startswith("gpubackprop: error: ") and message in captured.err
    assert "Traceback" not in captured.err


@pytest.mark.skipif(gpu_status().usable, reason="this machine has a usable GPU")
def test_train_on_missing_gpu_exits_2_naming_the_cause(capsys):
    assert main(["train", "iris", "--device", "gpu", "--epochs", "1"]) == 2
    assert f"no usable GPU: {gpu_status().reason}" in capsys.readouterr().err


def test_console_script_module_runs():
    result = subprocess.run([sys.executable, "-m", "gpubackprop", "train", "iris", "--lr", "-1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


@pytest.mark.skipif(gpu_status().usable, reason="this machine has a usable GPU")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_check_without_gpu_exits_2_with_the_reason(dtype, capsys):
    assert main(["check", "--dtype", dtype]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and gpu_status().reason in err
