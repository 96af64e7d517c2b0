"""CPU thread decisions: usable CPUs from cgroup files, the wait policy, the thread chooser."""

from __future__ import annotations

import pytest

from gpubackprop import cpu_threads
from gpubackprop.cpu_threads import (OPT_OUT, WAIT_POLICY, IdleMeter, ThreadChooser,
                                     idle_cpu_seconds,
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
    assert "OMP_WAIT_POLICY" not in chosen and "GOMP_SPINCOUNT" not in chosen
    assert wait_policy_environment({"GOMP_SPINCOUNT": "0"})["OMP_WAIT_POLICY"] == "PASSIVE"
    assert "GOMP_SPINCOUNT" not in wait_policy_environment({"GOMP_SPINCOUNT": "0"})
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
    assert used[:6] == [2, 2, 2, 1, 1, 1]  # the probe: a run on each count, current first
    assert used[6:16] == [2] * 10
    assert all(decision[2] == 2 for decision in chooser.decisions)


def test_chooser_falls_back_to_one_thread_under_contention_and_returns():
    chooser = ThreadChooser(2, probe_steps=2, interval=5, margin=1.1)
    # Steps 0-29: the parallel step is 2x slower (a busy sibling); then 2x faster.
    slow_parallel = lambda n, step: (2.0 if n == 2 else 1.0) if step < 30 else 1.0 / n  # noqa
    used = run_chooser(chooser, slow_parallel, 60)
    assert used[4:9] == [1] * 5
    assert chooser.decisions[0][2] == 1 and chooser.decisions[-1][2] == 2


def test_chooser_probes_at_once_when_a_busy_process_slows_the_running_count():
    chooser = ThreadChooser(2, probe_steps=3, interval=300, shift=1.3, window=5,
                            serial_interval=1000)
    # A busy process starts at step 100: the parallel step becomes 3x slower.
    loaded = lambda n, step: (1.0 / n) * (3.0 if n == 2 and step >= 100 else 1.0)  # noqa: E731
    used = run_chooser(chooser, loaded, 200)
    # Three slow steps make the median of five slow; a probe of six; then one thread.
    assert used[100:103] == [2] * 3
    assert used[103:109] == [2] * 3 + [1] * 3
    assert used[109:200] == [1] * 91
    assert [decision[2] for decision in chooser.decisions] == [2, 1]


def test_chooser_steps_that_vary_within_the_shift_do_not_probe():
    chooser = ThreadChooser(2, probe_steps=3, interval=300, shift=1.3, window=5)
    factors = (0.9, 1.0, 1.1, 1.2, 0.95)  # within 1.3x of one another's medians
    noisy = lambda n, step: factors[step % 5] / n  # noqa: E731
    used = run_chooser(chooser, noisy, 300)
    assert len(chooser.decisions) == 1 and used[6:] == [2] * 294


def test_chooser_interval_doubles_while_the_count_holds_and_resets_on_a_switch():
    chooser = ThreadChooser(2, probe_steps=1, interval=10, max_interval=35, shift=100)
    run_chooser(chooser, lambda n, step: 1.0 / n, 2)
    assert chooser.interval == 20
    run_chooser(chooser, lambda n, step: 1.0 / n, 20 + 2)
    assert chooser.interval == 35  # 40, capped
    run_chooser(chooser, lambda n, step: 1.0 * n, 35 + 2)  # now one thread is faster
    assert chooser.current == 1 and chooser.interval == 50  # one thread's first interval
    run_chooser(chooser, lambda n, step: 1.0 / n, 50 + 2)  # and now two threads again
    assert chooser.current == 2 and chooser.interval == 10


def test_chooser_on_one_thread_probes_often_to_find_a_freed_cpu():
    # A busy process holds the second CPU for 200 steps; the one-thread step's time is the
    # same throughout, so only the short serial interval finds that the CPU came back.
    chooser = ThreadChooser(2, probe_steps=2, interval=300, serial_interval=20,
                            max_serial_interval=60)
    loaded = lambda n, step: 1.0 if n == 1 else (1.5 if step < 200 else 0.5)  # noqa: E731
    used = run_chooser(chooser, loaded, 300)
    assert used[4:24] == [1] * 20 and used[24:28] == [1, 1, 2, 2]
    # Each probe that keeps one thread doubles the wait, up to 60: 20, 40, 60, 60, ...
    probes = [step for step in range(5, 200) if used[step - 1:step + 1] == [1, 2]]
    gaps = [later - earlier - 4 for earlier, later in zip(probes, probes[1:])]
    assert gaps[:3] == [40, 60, 60]
    back = used.index(2, 200)
    assert back < 200 + 60 + 4 and used[back + 4:] == [2] * (300 - back - 4)


def test_chooser_takes_one_thread_unless_the_parallel_count_wins_by_the_margin():
    chooser = ThreadChooser(2, probe_steps=3, interval=5, margin=1.2)
    run_chooser(chooser, lambda n, step: 0.9 if n == 2 else 1.0, 30)
    assert chooser.current == 1  # 10% faster in parallel: within the 20% margin
    chooser = ThreadChooser(2, probe_steps=3, interval=5, margin=1.2)
    run_chooser(chooser, lambda n, step: 0.8 if n == 2 else 1.0, 30)
    assert chooser.current == 2


def test_chooser_compares_means_of_parallel_steps_that_are_fast_or_very_slow():
    # Beside a busy process: two parallel steps of three are fast, one waits 4x as long.
    chooser = ThreadChooser(2, probe_steps=3, interval=50)
    bimodal = lambda n, step: 1.0 if n == 1 else (2.4 if step == 2 else 0.6)  # noqa
    run_chooser(chooser, bimodal, 6)
    serial, parallel, chosen = chooser.decisions[0]
    assert parallel == pytest.approx(1.2) and chosen == 1  # its median (0.6) would say 2


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
            "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('KMP_BLOCKTIME'), "
            "os.environ.get('GOMP_SPINCOUNT'))\n")
    env = {k: v for k, v in __import__("os").environ.items()
           if k not in WAIT_POLICY and k != OPT_OUT}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.stdout.split() == ["PASSIVE", "0", WAIT_POLICY["GOMP_SPINCOUNT"]], out.stderr
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.stdout.split() == ["ACTIVE", "0", "None"], out.stderr


def test_pytorch_loads_with_the_users_thread_environment(tmp_path):
    """The benchmark's PyTorch reads the environment as the user left it, while gpubackprop's
    own settings stay in force before and after (a stand-in ``torch`` records what it saw)."""
    import subprocess
    import sys

    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "import os\n"
        "SEEN = {k: os.environ.get(k) for k in ('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT', "
        "'KMP_BLOCKTIME')}\n")
    code = ("import os, gpubackprop\n"
            "from gpubackprop.bench.runners import import_torch\n"
            "torch = import_torch()\n"
            "print(torch.SEEN['OMP_WAIT_POLICY'], torch.SEEN['GOMP_SPINCOUNT'], "
            "torch.SEEN['KMP_BLOCKTIME'])\n"
            "print(os.environ['OMP_WAIT_POLICY'], os.environ['GOMP_SPINCOUNT'])\n")
    env = {k: v for k, v in __import__("os").environ.items()
           if k not in WAIT_POLICY and k != OPT_OUT}
    env["KMP_BLOCKTIME"] = "7"  # the user's own: kept for PyTorch as well
    env["PYTHONPATH"] = f"{tmp_path}:{env.get('PYTHONPATH', '')}"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300)
    seen, after = out.stdout.splitlines()
    assert seen.split() == ["None", "None", "7"], out.stderr
    assert after.split() == ["PASSIVE", WAIT_POLICY["GOMP_SPINCOUNT"]]


PROC_STAT = """cpu  10 0 10 900 100 0 0 0 0 0
cpu0 5 0 5 400 50 0 0 0 0 0
cpu1 5 0 5 500 50 0 0 0 0 0
intr 12345
"""


def test_idle_cpu_seconds_sums_idle_and_iowait_of_the_given_cpus(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    stat.write_text(PROC_STAT)
    monkeypatch.setattr(cpu_threads.os, "sysconf", lambda name: 100)
    assert idle_cpu_seconds(str(stat), {0, 1}) == pytest.approx(10.0)
    assert idle_cpu_seconds(str(stat), {1}) == pytest.approx(5.5)
    assert idle_cpu_seconds(str(tmp_path / "missing"), {0}) is None
    stat.write_text("cpu0 5 0 5 x 50\n")
    assert idle_cpu_seconds(str(stat), {0}) is None


def test_idle_meter_gives_the_idle_cpus_between_calls():
    readings = iter([(0.0, 100.0), (2.0, 101.0), (3.0, 103.0), (4.0, None)])
    now = {}

    def clock():
        now["t"], now["idle"] = next(readings)
        return now["t"]

    meter = IdleMeter(seconds=lambda: now["idle"], clock=clock)
    assert meter() is None  # no period yet
    assert meter() == pytest.approx(0.5)  # 1 idle second in 2 s
    assert meter() == pytest.approx(2.0)
    assert meter() is None  # unreadable


def chooser_with_idle(idle_levels):
    """A chooser on one thread whose idle meter reads ``idle_levels(clock)``; each step
    advances a fake clock by 0.05 s."""
    clock = {"t": 0.0}
    chooser = ThreadChooser(2, probe_steps=2, interval=300, serial_interval=20,
                            max_serial_interval=1000, idle=lambda: idle_levels(clock["t"]),
                            clock=lambda: clock["t"], idle_check_s=0.1)

    def step_time(n, step):
        clock["t"] += 0.05
        return 1.0 if n == 1 else 1.5  # one thread wins whenever probed

    return chooser, step_time


def test_chooser_on_one_thread_probes_when_the_cpus_turn_idle():
    # Busy CPUs until t = 20 s (step 400), then one idle CPU.
    chooser, step_time = chooser_with_idle(lambda t: 0.0 if t < 20.0 else 1.0)
    used = run_chooser(chooser, step_time, 480)
    probes = [step for step in range(5, 480) if used[step] == 2]
    # 20 steps, 40, 80, 160 between probes while busy; then one within a few checks of t=20.
    later = [step for step in probes if step >= 400]
    assert later and later[0] <= 400 + 6
    assert not [step for step in probes if 330 < step < 400]


def test_chooser_ignores_idle_cpus_when_one_thread_won_on_them():
    chooser, step_time = chooser_with_idle(lambda t: 1.0)  # idle throughout: a tiny step
    used = run_chooser(chooser, step_time, 200)
    probes = [step for step in range(5, 200) if used[step] == 2 and used[step - 1] == 1
              and used[step - 2] == 1]
    # The doubling schedule only: probes start at 24, 68, 152 (20, 40, 80 steps apart), their
    # parallel steps two later.
    assert probes == [26, 70, 154]


def test_chooser_ignores_the_slow_first_steps_after_a_pause():
    """After a rest, parallel steps ran slowly for a while: no probe for that."""
    clock = {"t": 0.0}

    def step_time(n, step):
        # Steps of 1 ms (parallel); a 1 s pause before step 100, after which 3 steps take 5 ms.
        clock["t"] += 1.0 if step == 100 else 0.0
        seconds = 0.005 if 100 <= step < 103 else 0.001
        seconds = seconds if n == 2 else 0.002
        clock["t"] += seconds
        return seconds

    def run(warmup_s):
        clock["t"] = 0.0
        chooser = ThreadChooser(2, probe_steps=3, interval=300, window=5, warmup_s=warmup_s,
                                clock=lambda: clock["t"])
        return chooser, run_chooser(chooser, step_time, 200)

    chooser, used = run(warmup_s=0.0195)
    assert used[:19] == [2] * 19  # the steps of the first 19.5 ms are not timed
    assert used[19:25] == [2, 2, 2, 1, 1, 1] and used[25:] == [2] * 175
    assert len(chooser.decisions) == 1
    chooser, used = run(warmup_s=0.0)  # the same slow steps, watched: a probe
    assert used[100:103] == [2, 2, 2] and 1 in used[103:120] and len(chooser.decisions) == 2
