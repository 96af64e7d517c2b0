"""CPU thread decisions: usable CPUs from cgroup files, the wait policy, the thread chooser."""

from __future__ import annotations

import pytest

from gpubackprop import cpu_threads
from gpubackprop.cpu_threads import (OPT_OUT, WAIT_POLICY, ThreadChooser,
                                              cgroup_cpu_quota, usable_cpus,
                                              wait_policy_environment)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize("cpu_max, quota", [("150000 100000\n", 1.5), ("max 100000\n", None),
                                            ("50000 100000", 0.5), ("garbage", None)])
def test_cgroup_v2_cpu_max(tmp_path, cpu_max, quota):
    write(tmp_path / "proc", "0::/user.slice/job\n")
    write(tmp_path / "fs/user.slice/job/cpu.max", cpu_max)
    assert cgroup_cpu_quota(tmp_path / "proc", tmp_path / "fs") == quota


def test_cgroup_v2_takes_the_lowest_quota_up_to_the_root(tmp_path):
    write(tmp_path / "proc", "0::/outer/inner\n")
    write(tmp_path / "fs/outer/inner/cpu.max", "max 100000")
    write(tmp_path / "fs/outer/cpu.max", "300000 100000")
    write(tmp_path / "fs/cpu.max", "max 100000")
    assert cgroup_cpu_quota(tmp_path / "proc", tmp_path / "fs") == 3.0


@pytest.mark.parametrize("quota_us, quota", [("-1", None), ("200000", 2.0), ("25000", 0.25)])
def test_cgroup_v1_cfs_quota(tmp_path, quota_us, quota):
    write(tmp_path / "proc", "4:memory:/x\n3:cpu,cpuacct:/docker/abc\n0::/\n")
    write(tmp_path / "fs/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", quota_us)
    write(tmp_path / "fs/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000")
    assert cgroup_cpu_quota(tmp_path / "proc", tmp_path / "fs") == quota


def test_no_cgroup_file_means_no_quota(tmp_path):
    assert cgroup_cpu_quota(tmp_path / "missing", tmp_path) is None


@pytest.mark.parametrize("affinity, quota, cpus", [(8, None, 8), (8, 1.5, 2), (2, 6.0, 2),
                                                   (4, 0.2, 1), (4, float("inf"), 4)])
def test_usable_cpus_caps_the_affinity_by_the_quota(affinity, quota, cpus):
    assert usable_cpus(affinity, quota) == cpus


def test_wait_policy_never_replaces_what_the_user_set(monkeypatch):
    monkeypatch.setattr(cpu_threads, "usable_cpus", lambda: 64)
    chosen = wait_policy_environment({"OMP_WAIT_POLICY": "ACTIVE"})
    assert "OMP_WAIT_POLICY" not in chosen
    assert chosen["KMP_BLOCKTIME"] == WAIT_POLICY["KMP_BLOCKTIME"]
    assert wait_policy_environment({OPT_OUT: "1"}) == {}


def test_numba_threads_follow_a_quota_below_the_machine(monkeypatch):
    monkeypatch.setattr(cpu_threads.os, "cpu_count", lambda: 16)
    monkeypatch.setattr(cpu_threads, "usable_cpus", lambda: 3)
    assert wait_policy_environment({})["NUMBA_NUM_THREADS"] == "3"
    assert "NUMBA_NUM_THREADS" not in wait_policy_environment({"NUMBA_NUM_THREADS": "16"})
    monkeypatch.setattr(cpu_threads, "usable_cpus", lambda: 16)
    assert "NUMBA_NUM_THREADS" not in wait_policy_environment({})


def run_chooser(chooser, seconds_of, steps):
    """Drive ``chooser`` for ``steps`` steps; ``seconds_of(threads, step)`` fakes the timing."""
    used = []
    for step in range(steps):
        threads = chooser.threads()
        used.append(threads)
        chooser.record(threads, seconds_of(threads, step))
    return used


def test_chooser_keeps_the_parallel_count_while_it_is_faster():
    chooser = ThreadChooser(2, probe_steps=3, interval=10)
    used = run_chooser(chooser, lambda n, step: 1.0 / n, 40)
    assert used[:6] == [2, 1, 2, 1, 2, 1]  # the probe, interleaved
    assert used[6:16] == [2] * 10
    assert all(decision[2] == 2 for decision in chooser.decisions)


def test_chooser_falls_back_to_one_thread_under_contention_and_returns():
    chooser = ThreadChooser(2, probe_steps=2, interval=5, hysteresis=1.1)
    # Steps 0-29: the parallel step is 2x slower (a busy sibling); then 2x faster.
    slow_parallel = lambda n, step: (2.0 if n == 2 else 1.0) if step < 30 else 1.0 / n  # noqa
    used = run_chooser(chooser, slow_parallel, 60)
    assert used[4:9] == [1] * 5
    assert chooser.decisions[0][2] == 1 and chooser.decisions[-1][2] == 2


def test_chooser_does_not_switch_within_the_hysteresis():
    chooser = ThreadChooser(2, probe_steps=3, interval=5, hysteresis=1.2)
    run_chooser(chooser, lambda n, step: 1.1 if n == 2 else 1.0, 30)
    assert chooser.current == 2  # 10% slower in parallel: within the 20% margin


def test_a_single_cpu_chooser_never_probes():
    chooser = ThreadChooser(1)
    assert run_chooser(chooser, lambda n, step: 1.0, 5) == [1] * 5
    assert chooser.decisions == []


def test_one_chooser_per_step_shape_and_none_when_fixed(monkeypatch):
    monkeypatch.delenv(OPT_OUT, raising=False)
    key = (((784, 512), (512, 10)), 128, "float32")
    assert cpu_threads.chooser_for(key, 2) is cpu_threads.chooser_for(key, 2)
    assert cpu_threads.chooser_for(key, 2) is not cpu_threads.chooser_for((key, 1), 2)
    assert cpu_threads.chooser_for(key, 1) is None
    monkeypatch.setenv(OPT_OUT, "1")
    assert cpu_threads.chooser_for(key, 2) is None


def test_importing_gpubackprop_sets_the_wait_policy_unless_the_user_did():
    import subprocess
    import sys

    code = ("import os, sys\n"
            "import gpubackprop\n"
            "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('KMP_BLOCKTIME'))\n")
    env = {k: v for k, v in __import__("os").environ.items()
           if k not in WAIT_POLICY and k != OPT_OUT}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.stdout.split() == ["PASSIVE", "0"], out.stderr
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.stdout.split() == ["ACTIVE", "0"], out.stderr
