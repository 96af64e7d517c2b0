"""Data-parallel training over MPI ranks: ``mpiexec -n 2`` and ``-n 3`` launched from here.

Each launch runs ``tests/distributed_worker.py`` under a strict timeout, so a
hang fails the test instead of stalling the suite. Skipped where mpi4py or
``mpiexec`` is missing, except under CI=true (``.ci/run`` installs the mpi extra).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from functools import partial
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest

from extras import require
from local_http import local_http_server

require("mpi4py", "mpi")

from distributed_worker import DEFAULTS, train_case  # noqa: E402
from gpubackprop.distributed.communicator import find_mpiexec  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("distributed_worker.py")
#: Seconds one launch may take (Numba's first compile of the split step included).
LAUNCH_TIMEOUT = 240
#: Seconds a failing run may take to stop every rank.
FAULT_TIMEOUT = 60
#: float32 weights after the cases' steps: 2 and 3 ranks against one process (the
#: rank-weighted sum rounds differently from one sum over the batch).
FLOAT32_TOLERANCE = dict(rtol=1e-4, atol=1e-5)
#: float64: summation order only.
FLOAT64_TOLERANCE = dict(rtol=1e-11, atol=1e-13)


@pytest.fixture(scope="module")
def mpiexec():
    found = find_mpiexec()
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no mpiexec on PATH or beside this Python (the mpi extra's mpich)")
        pytest.skip("no mpiexec on PATH or beside this Python (pip install mpich)")
    return found


def launch(mpiexec, ranks: int, *args, timeout: float = LAUNCH_TIMEOUT, cwd=None,
           environment=None):
    """Run ``mpiexec -n ranks`` of ``args``; fails (not hangs) past ``timeout`` seconds.

    ``environment`` sets variables for the ranks (None as a value removes one)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]))
    for key, value in (environment or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    try:
        return subprocess.run([mpiexec, "-n", str(ranks), *map(str, args)], env=env, cwd=cwd,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"mpiexec -n {ranks} did not finish in {timeout} s (a hang): "
                    f"{(exc.stderr or b'')[-2000:]!r}")


def run_worker(mpiexec, ranks: int, scenario: str, options: dict, out: Path, **kwargs):
    return launch(mpiexec, ranks, sys.executable, WORKER, scenario, json.dumps(options), out,
                  **kwargs)


#: Cases that each run in one launch per rank count (see distributed_worker.DEFAULTS).
CASES = [
    {},                                                      # eager, Adam, cross-entropy
    {"dtype": "float32"},
    {"backend": "numba"},                                    # the whole step, split
    {"backend": "numba", "optimizer": "momentum", "batch_size": 16, "hidden": [6, 4]},
    {"loss": "mse", "reduction": "sum", "output_activation": "sigmoid", "optimizer": "sgd",
     "batch_size": None, "epochs": 3},                       # a summed gradient, full batch
    {"optimizer": "sgd", "clip_norm": 0.05, "weight_decay": 0.01},
    {"backend": "cupy-emulated"},                            # the NCCL path, emulated
]


@pytest.fixture(scope="module")
def distributed_runs(mpiexec, tmp_path_factory):
    """``{ranks: folder}`` of the cases trained with 2 and 3 ranks."""
    runs = {}
    for ranks in (2, 3):
        out = tmp_path_factory.mktemp(f"ranks{ranks}")
        result = run_worker(mpiexec, ranks, "train", {"cases": CASES}, out)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[ranks] = out
    return runs


def reference_backend(name: str, request):
    return request.getfixturevalue("emulated_gpu") if name == "cupy-emulated" else name


@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.parametrize("index", range(len(CASES)), ids=[
    "-".join(f"{k}={v}" for k, v in case.items()) or "default" for case in CASES])
def test_ranks_train_as_one_process(distributed_runs, ranks, index, request):
    case = {**DEFAULTS, **CASES[index]}
    single = train_case(case, reference_backend(case["backend"], request))
    saved = np.load(distributed_runs[ranks] / f"case{index}.npz")
    info = json.loads((distributed_runs[ranks] / f"case{index}.json").read_text())
    assert info["ranks"] == ranks
    assert info["compiler"] == single.step.compiler  # the same compiler took both plans
    tolerance = FLOAT32_TOLERANCE if case["dtype"] == "float32" else FLOAT64_TOLERANCE
    for name, W in single.model.state_arrays().items():
        np.testing.assert_allclose(saved[name], W, **tolerance,
                                   err_msg=f"{name} after {ranks} ranks' training")
    np.testing.assert_allclose(saved["loss"], single.history.loss, **tolerance,
                               err_msg="the global batch losses")


def test_a_mismatch_between_ranks_stops_every_rank_at_start_up(mpiexec, tmp_path):
    result = run_worker(mpiexec, 3, "mismatch", {"rank": 1}, tmp_path, timeout=FAULT_TIMEOUT)
    assert result.returncode == 0, result.stderr[-2000:]
    # One report per rank (mpiexec may join the ranks' lines: read them by pattern).
    reports = re.findall(r"rank (\d) (stopped: .*?every rank stopped|trained)", result.stdout)
    assert sorted(rank for rank, _ in reports) == ["0", "1", "2"], result.stdout
    for _, report in reports:
        assert "data fingerprint differs on rank 1 (" in report, report
        assert "rank 0 has" in report and "model configuration" not in report, report


def test_a_rank_that_raises_stops_every_rank_and_is_named(mpiexec, tmp_path):
    result = run_worker(mpiexec, 2, "raise", {"rank": 1}, tmp_path, timeout=FAULT_TIMEOUT)
    assert result.returncode != 0
    assert "gpubackprop: error: rank 1 of 2 failed: RuntimeError: injected failure; " \
           "stopping every rank" in result.stderr, result.stderr[-2000:]
    assert_one_report(result.stderr)


def assert_one_report(stderr: str) -> None:
    """One ``gpubackprop: error:`` report and MPICH's abort line: no traceback, no repeat."""
    assert "Traceback" not in stderr, stderr[-2000:]
    assert stderr.count("gpubackprop: error:") == 1, stderr[-2000:]
    unexpected = [line for line in stderr.splitlines() if line.strip() and not (
        "gpubackprop: error:" in line or "MPI_Abort" in line)]
    assert not unexpected, stderr[-2000:]


def test_a_killed_rank_does_not_hang_the_others(mpiexec, tmp_path):
    result = run_worker(mpiexec, 3, "kill", {"rank": 2}, tmp_path, timeout=FAULT_TIMEOUT)
    assert result.returncode != 0, result.stdout[-2000:]


def checkpoint_arrays(folder: Path) -> dict:
    from gpubackprop.training.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(folder, device="numpy")
    return {**checkpoint.model.state_arrays(),
            **{f"optimizer/{key}": value for key, value in
               checkpoint.optimizer.state_arrays(checkpoint.model.backend).items()}}


def test_the_command_line_trains_on_rank_0s_output_and_resumes_on_other_rank_counts(
        mpiexec, tmp_path):
    train = [sys.executable, "-m", "gpubackprop", "train", "digits", "--device", "numpy",
             "--dtype", "float64", "--hidden", "16"]
    first = launch(mpiexec, 2, *train, "--distributed", "--epochs", "2", "--out",
                   tmp_path / "run")
    assert first.returncode == 0, first.stderr[-2000:]
    lines = first.stdout.splitlines()
    # Rank 0 alone prints: one start-up line naming the communicator, one line per epoch.
    assert sum(line.startswith("distributed: 2 ranks, MPI (") for line in lines) == 1
    assert sum(line.startswith("epoch 1/2") for line in lines) == 1
    assert sum(line.startswith("test accuracy") for line in lines) == 1
    resumed = launch(mpiexec, 3, *train, "--distributed", "mpi", "--epochs", "3", "--resume",
                     tmp_path / "run")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "distributed: 3 ranks" in resumed.stdout
    alone = subprocess.run([*train, "--epochs", "3", "--out", tmp_path / "alone"],
                           capture_output=True, text=True, timeout=LAUNCH_TIMEOUT,
                           env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert alone.returncode == 0, alone.stderr[-2000:]
    expected = checkpoint_arrays(tmp_path / "alone")
    for name, value in checkpoint_arrays(tmp_path / "run").items():
        np.testing.assert_allclose(value, expected[name], **FLOAT64_TOLERANCE, err_msg=name)


def test_the_command_line_reports_a_start_up_mismatch_once(mpiexec, tmp_path):
    train = [sys.executable, "-m", "gpubackprop", "train", "digits", "--device", "numpy",
             "--hidden", "8", "--epochs", "1", "--distributed"]
    # MPMD: rank 1 is given another seed.
    result = launch(mpiexec, 1, *train, "--seed", "1", ":", "-n", "1", *train, "--seed", "2",
                    timeout=FAULT_TIMEOUT)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith(
        "gpubackprop: error: the 2 ranks do not start alike: "), result.stderr[-2000:]
    assert "seed differs on rank 1 (2; rank 0 has 1)" in errors[0]


def test_the_command_line_reports_one_rank_s_failure_once(mpiexec, tmp_path):
    train = [sys.executable, "-m", "gpubackprop", "train", "--device", "numpy", "--hidden", "8",
             "--epochs", "1", "--distributed", "--no-download"]
    # MPMD: rank 0 trains on the bundled digits; rank 1 looks for MNIST in an empty folder.
    result = launch(mpiexec, 1, *train, "digits", ":", "-n", "1", *train, "mnist",
                    "--data-dir", tmp_path, timeout=FAULT_TIMEOUT,
                    environment=no_data_but_from(None, tmp_path))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "gpubackprop: error: rank 1 of 2 failed: DataFileError: mnist not found" in \
        result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and \
        result.stderr.count("gpubackprop: error:") == 1, result.stderr[-2000:]


class CountingHandler(SimpleHTTPRequestHandler):
    """Serves the shared datasets folder and counts each path asked for."""

    def do_GET(self):
        self.server.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(shared_datasets):
    """An HTTP mirror of the datasets folder on 127.0.0.1; ``.requests`` lists the paths."""
    with local_http_server(partial(CountingHandler, directory=str(shared_datasets)),
                           requests=[]) as server:
        yield server


def no_data_but_from(mirror_url, tmp_path) -> dict:
    """Variables for ranks that find no dataset on disk (an empty cache under ``tmp_path``)
    and may download only from ``mirror_url`` (None: the public mirrors)."""
    return {"GPUBACKPROP_DATA": None, "GPUBACKPROP_MIRROR": mirror_url,
            "XDG_CACHE_HOME": str(tmp_path / "cache")}


def train_mnist_from(mirror_url: str, mpiexec, tmp_path):
    """``train mnist --distributed`` over 2 ranks, the dataset only at ``mirror_url``."""
    return launch(mpiexec, 2, sys.executable, "-m", "gpubackprop", "train", "mnist", "--device",
                  "numpy", "--hidden", "4", "--epochs", "1", "--batch-size", "1000",
                  "--distributed", cwd=tmp_path, environment=no_data_but_from(mirror_url, tmp_path))


def test_rank_0_downloads_the_dataset_once_and_the_others_read_it(mpiexec, mirror, tmp_path):
    from gpubackprop.data.mnist import FILES

    result = train_mnist_from(f"http://127.0.0.1:{mirror.server_port}", mpiexec, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "test accuracy" in result.stdout
    names = sorted(file_name for file_name, _ in FILES.values())
    assert sorted(mirror.requests) == [f"/mnist/{name}" for name in names]  # once each
    assert sorted(path.name for path in (tmp_path / "cache" / "gpubackprop" / "mnist").iterdir()) \
        == names


def test_a_failed_download_on_rank_0_stops_every_rank_with_one_line(mpiexec, mirror, tmp_path):
    result = train_mnist_from(f"http://127.0.0.1:{mirror.server_port}/absent", mpiexec,
                              tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    # Rank 0 alone asked (404 drops the one mirror) and alone reported, with no abort: the
    # error was raised on every rank alike.
    assert mirror.requests == ["/absent/mnist/train-images-idx3-ubyte.gz"], mirror.requests
    assert result.stderr.startswith("gpubackprop: error: could not download "), \
        result.stderr[-2000:]
    assert "HTTP 404" in result.stderr and result.stderr.count("error") == 1 and \
        "Traceback" not in result.stderr and "MPI_Abort" not in result.stderr, \
        result.stderr[-2000:]
