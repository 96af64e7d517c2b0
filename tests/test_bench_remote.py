"""The benchmark's runner in a process of its own (gpubackprop/bench/remote.py)."""

from __future__ import annotations

import math
import os
import subprocess

import pytest

from gpubackprop.bench import remote
from gpubackprop.bench.remote import RemoteRunner
from gpubackprop.bench.runners import Unavailable
from gpubackprop.cpu_threads import OPT_OUT
from gpubackprop.errors import GpubackpropError

TINY = {"n_train": 256, "n_test": 100}
OPTIONS = {"batch_size": 64, "device": "cpu", "seed": 0, "optimizer": "adam"}


@pytest.fixture(autouse=True)
def synthetic_data(monkeypatch):
    monkeypatch.delenv("GPUBACKPROP_DATA", raising=False)


def test_a_remote_runner_times_epochs_in_its_own_process_and_ends_with_close():
    runner = RemoteRunner("gemm", "784-128-10", TINY, OPTIONS)
    try:
        assert runner.name == "GEMMs alone" and runner.device == "cpu"
        seconds = [runner.epoch(), runner.epoch()]
        assert all(0 < s < 60 for s in seconds)
        assert math.isnan(runner.accuracy())  # the GEMM-only runner trains nothing
        assert runner.facts() == {}  # the GEMM-only runner has no library to report
        assert runner._process.pid != os.getpid() and runner._process.poll() is None
    finally:
        runner.close()
    assert runner._process.poll() == 0


def test_the_child_gets_the_users_thread_environment(monkeypatch):
    """What gpubackprop set for its own threads is not passed on; what the user set is."""
    from gpubackprop import cpu_threads

    seen = {}
    popen = subprocess.Popen

    def spy(*args, env=None, **kwargs):
        seen.update(env)
        return popen(*args, env=env, **kwargs)

    monkeypatch.setattr(remote.subprocess, "Popen", spy)
    monkeypatch.setitem(cpu_threads._SET_HERE, "OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv("KMP_BLOCKTIME", "7")  # as if the user's own
    monkeypatch.delitem(cpu_threads._SET_HERE, "KMP_BLOCKTIME", raising=False)
    RemoteRunner("gemm", "784-128-10", TINY, OPTIONS).close()
    assert "OMP_WAIT_POLICY" not in seen and seen["KMP_BLOCKTIME"] == "7"
    assert seen[OPT_OUT] == "1"  # the child's gpubackprop sets nothing either
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"  # restored here


def test_a_runner_the_child_cannot_build_is_unavailable_with_its_reason():
    with pytest.raises(Unavailable, match="the textbook loop is an MLP"):
        RemoteRunner("textbook", "rnn-28x28-128-10", TINY, OPTIONS)


def test_a_failure_in_the_child_is_one_library_error():
    with pytest.raises(GpubackpropError, match="runner process failed: KeyError"):
        RemoteRunner("gemm", "784-7-10", TINY, OPTIONS)


def test_a_child_that_dies_is_reported_with_its_exit_status():
    runner = RemoteRunner("gemm", "784-128-10", TINY, OPTIONS)
    runner._process.kill()
    runner._process.wait()
    with pytest.raises(GpubackpropError, match="ended \\(exit status -9\\) before answering "
                                               "epoch"):
        runner.epoch()


def test_ctrl_c_leaves_the_child_to_its_parent_and_closing_ends_it():
    """Ctrl-C reaches the whole process group; the child ignores it (no traceback of its
    own) and ends once the parent closes its input."""
    import signal
    import time

    runner = RemoteRunner("gemm", "784-128-10", TINY, OPTIONS)
    os.kill(runner._process.pid, signal.SIGINT)
    time.sleep(0.2)
    assert runner._process.poll() is None and runner.epoch() > 0
    runner._process.stdin.close()  # as when the parent dies
    assert runner._process.wait(timeout=30) == 0
