"""gpubackprop bench: the report's files and fields for a tiny configuration.

No wall-clock assertions: speed is measured by the benchmark suite, not tested here.
"""

from __future__ import annotations

import json

import pytest

from gpubackprop.bench.suite import BenchConfig, run_bench, write_outputs
from gpubackprop.cli.main import main
from gpubackprop.errors import InputError

MACHINE_FIELDS = ("cpu", "cpu_count", "cpus_available", "gpu", "gpu_status", "cupy",
                  "cuda_runtime", "cuda_driver", "cupy_tf32", "numpy", "blas", "date", "torch")


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.delenv("GPUBACKPROP_DATA", raising=False)
    monkeypatch.setattr("gpubackprop.bench.suite.SETTLE_S", 0.0)  # the rest's own test counts
    return BenchConfig(models=["784-128-10"], epochs=1, n_train=256, n_test=100, note="test run")


def test_report_has_every_field(tiny, tmp_path):
    report = run_bench(tiny, log=lambda line: None)
    paths = write_outputs(report, tmp_path)
    assert [path.name for path in paths] == ["bench.json", "bench.md", "bench.png"]
    saved = json.loads(paths[0].read_text())
    for name in MACHINE_FIELDS:
        assert name in saved["machine"], name
    assert saved["machine"]["note"] == "test run"
    for loaded in saved["machine"]["blas"].get("loaded", []):
        # The kernels OpenBLAS runs (OPENBLAS_CORETYPE can force older ones) are in the table.
        architecture = loaded.rsplit("(", 1)[1].rstrip(")")
        assert f"kernels {architecture}" in paths[1].read_text()
    if saved["machine"]["cpu_backend"] == "numba":
        from gpubackprop.backends.numba import blas as cpu_blas

        assert (saved["machine"]["cpu_step_blas"] == "NumPy's OpenBLAS") == cpu_blas.NUMPY_BLAS
        assert f"through {saved['machine']['cpu_step_blas']}" in paths[1].read_text()
    ours = next(row for row in saved["results"] if row["key"] == "ours")
    compiler = "numba-whole-step" if saved["machine"]["cpu_backend"] == "numba" else "eager"
    assert ours["step_compiler"] == compiler
    assert f"784-128-10 gpubackprop ({saved['machine']['cpu_backend']}): {compiler}" in \
        saved["markdown"]
    reference = next(row for row in saved["results"] if row["key"] == "ours-numpy")
    assert reference["step_compiler"] == "eager"
    assert next(row for row in saved["results"] if row["key"] == "gemm")["step_compiler"] is None
    keys = {row["key"] for row in saved["results"]}
    assert {"ours", "gemm", "textbook", "sklearn", "ours-sklearn"} <= keys
    for row in saved["results"]:
        assert len(row["epoch_times_s"]) == 1 and row["epoch_s_min"] > 0
        assert row["samples_per_s"] > 0 and row["time_vs_ours"] > 0
        assert row["test_accuracy"] is None if row["key"] == "gemm" else \
            0 <= row["test_accuracy"] <= 1
    ratios = saved["ratios"]["784-128-10"]
    assert {"ours/sklearn", "ours/gemm", "ours/textbook", "ours-sklearn/sklearn"} <= set(ratios)
    assert "first 256 training samples only" in saved["data"]
    assert saved["markdown"] == paths[1].read_text()
    assert "| 784-128-10 | gpubackprop (numpy) | cpu |" in saved["markdown"]
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_timed_cpu_epoch_starts_after_a_rest(tiny, monkeypatch):
    from gpubackprop.bench import runners, suite

    events = []
    monkeypatch.setattr(suite, "settle", lambda: events.append("rest"))
    for key in ("ours", "gemm"):
        runner = runners.RUNNERS[key]
        monkeypatch.setattr(runner, "epoch", lambda self, epoch=runner.epoch, key=key: (
            events.append(key), epoch(self))[1])
    tiny.epochs, tiny.runners = 2, ["gemm"]
    report = run_bench(tiny, log=lambda line: None)
    warm_up, timed = events[:2], events[2:]
    assert warm_up == ["ours", "gemm"]  # untimed, no rest needed
    assert timed == ["rest", "ours", "rest", "gemm", "rest", "gemm", "rest", "ours"]
    assert f"starts after {suite.SETTLE_S} s of rest" in report["markdown"]


def test_estimator_row_compares_with_scikit_learn_at_its_settings(tiny):
    tiny.runners = ["sklearn", "ours-sklearn"]
    report = run_bench(tiny, log=lambda line: None)
    rows = {row["key"]: row for row in report["results"]}
    assert set(rows) == {"ours", "sklearn", "ours-sklearn"}
    assert rows["ours-sklearn"]["implementation"] == "gpubackprop.sklearn MLPClassifier"
    assert 0 <= rows["ours-sklearn"]["test_accuracy"] <= 1
    ratio = report["ratios"]["784-128-10"]["ours-sklearn/sklearn"]
    assert ratio["of_min"] == pytest.approx(rows["ours-sklearn"]["epoch_s_min"]
                                            / rows["sklearn"]["epoch_s_min"])
    assert "ours-sklearn/sklearn" in report["markdown"]
    tiny.runners = ["sklearn", "scikit"]
    with pytest.raises(InputError, match="unknown runner.*scikit"):
        run_bench(tiny, log=lambda line: None)


def test_rnn_rows_skip_the_mlp_only_alternatives(tiny):
    tiny.models = ["rnn-28x28-128-10"]
    report = run_bench(tiny, log=lambda line: None)
    assert {row["key"] for row in report["results"]} >= {"ours", "gemm"}
    assert any("recurrent" in why for why in report["skipped"].values())


def test_cli_rejects_an_unknown_model(capsys):
    assert main(["bench", "--models", "784-7-10"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_cli_rejects_an_unknown_runner(capsys):
    assert main(["bench", "--runners", "sklearn,scikit"]) == 2
    assert "unknown runner(s) scikit" in capsys.readouterr().err


def test_gated_recurrent_rows_run_against_torch(tiny, torch):
    tiny.models = ["lstm-28x28-128-10", "gru-28x28-128-10"]
    tiny.runners = ["torch", "gemm"]
    report = run_bench(tiny, log=lambda line: None)
    for model in tiny.models:
        rows = {row["key"] for row in report["results"] if row["model"] == model}
        assert rows == {"ours", "torch"}  # the GEMM-only runner covers MLPs and the RNN only
        assert "ours/torch" in report["ratios"][model]
    assert any("not the lstm" in why for why in report["skipped"].values())
    # PyTorch ran in a process of its own (gpubackprop/bench/remote.py), which reported it.
    assert report["machine"]["torch"] == torch.__version__
    assert report["machine"]["torch_threads"] >= 1
