"""How many CPU threads the fused CPU path should use, and how they should wait.

Three concerns, each a small pure function or class so tests can feed it
sample files and fake timings:

- :func:`usable_cpus`: the CPUs this process may really use: its affinity
  mask, capped by a cgroup CPU quota (v2 ``cpu.max`` or v1
  ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), as containers set them.
- :func:`wait_policy_environment`: environment variables that make idle
  threads sleep instead of spinning (OpenMP's ``OMP_WAIT_POLICY=PASSIVE``,
  Intel's ``KMP_BLOCKTIME=0``). OpenBLAS's thread timeout is left alone: with
  its shortest value, one benchmark run saw the NumPy BLAS epochs jump a
  hundredfold mid-run, and that was never explained. A thread
  that spins while its sibling is descheduled by another process's work
  burns the CPU that sibling needs. They must be set before Numba's OpenMP
  layer or the BLAS library starts its threads, and never replace a value the
  user set; :func:`apply_wait_policy` does both.
- :class:`ThreadChooser`: measures steps with one thread and with all of
  them, now and then, and keeps the faster, switching only for a clear gain;
  :func:`chooser_for` keeps one per step shape for the parallel MLP step.

Importing this module imports nothing beyond the standard library.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

#: Set unless the user set them: idle threads of OpenMP (GNU, Intel/LLVM) sleep at once.
WAIT_POLICY = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}
#: Set to ``0`` to leave the thread environment and count exactly as the user set them.
OPT_OUT = "GPUBACKPROP_CPU_THREADS_AS_IS"


def cgroup_cpu_quota(proc_cgroup: str = "/proc/self/cgroup",
                     root: str = "/sys/fs/cgroup") -> float | None:
    """The CPU quota of this process's cgroup, in CPUs (e.g. 1.5), or None for none.

    Reads cgroup v2 ``cpu.max`` ("max 100000" or "150000 100000") at the
    process's cgroup path, else v1 ``cpu.cfs_quota_us`` (-1: none) and
    ``cpu.cfs_period_us`` of its ``cpu`` controller; the lowest quota from
    the cgroup up to the root applies.
    """
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # cgroup v2
            for folder in _up_to_root(Path(root), path):
                quotas.append(_v2_quota(folder / "cpu.max"))
        elif "cpu" in controllers.split(","):
            base = Path(root) / controllers
            if not base.exists():
                base = Path(root) / "cpu"
            for folder in _up_to_root(base, path):
                quotas.append(_v1_quota(folder))
    quotas = [q for q in quotas if q is not None]
    return min(quotas) if quotas else None


def _up_to_root(base: Path, path: str):
    """``base/path``, then each parent folder up to ``base``."""
    parts = [p for p in path.strip("/").split("/") if p]
    for n in range(len(parts), -1, -1):
        yield base.joinpath(*parts[:n])


def _v2_quota(path: Path) -> float | None:
    try:
        fields = path.read_text().split()
    except OSError:
        return None
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_quota(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (all CPUs where the OS has no mask)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def usable_cpus(affinity: int | None = None, quota: float | None = None) -> int:
    """CPUs to run threads on: the affinity mask, capped by a cgroup quota (rounded up).

    Parameters
    ----------
    affinity, quota : optional
        Given for tests; read from the system when omitted (``quota`` then
        from :func:`cgroup_cpu_quota`; pass ``float("inf")`` for none).
    """
    affinity = affinity_cpus() if affinity is None else affinity
    quota = cgroup_cpu_quota() if quota is None else quota
    if quota is None or not math.isfinite(quota):
        return max(1, affinity)
    return max(1, min(affinity, math.ceil(quota)))


def wait_policy_environment(environ) -> dict:
    """The variables :func:`apply_wait_policy` would set: those of :data:`WAIT_POLICY`
    the user has not set, plus ``NUMBA_NUM_THREADS`` when the usable CPUs are fewer
    than Numba would otherwise start (it counts every CPU of the machine)."""
    if environ.get(OPT_OUT, "") not in ("", "0"):
        return {}
    chosen = {name: value for name, value in WAIT_POLICY.items() if name not in environ}
    if "NUMBA_NUM_THREADS" not in environ:
        cpus = usable_cpus()
        if cpus < (os.cpu_count() or cpus):
            chosen["NUMBA_NUM_THREADS"] = str(cpus)
    return chosen


def apply_wait_policy(environ=os.environ) -> dict:
    """Set :func:`wait_policy_environment` in ``environ``; returns what was set.

    Effective only before Numba's threading layer and the BLAS library start
    their threads, so importing :mod:`gpubackprop` calls it first of all.
    """
    chosen = wait_policy_environment(environ)
    environ.update(chosen)
    return chosen


class ThreadChooser:
    """Pick the faster of one thread and ``n`` threads for a repeated step, from timings.

    The chooser alternates between *probing* (a few steps timed with each
    count) and *running* with the faster count for ``interval`` steps, then
    probes again (other work on the machine comes and goes). A switch away
    from the current count needs the other count's median step to be faster
    by the factor ``hysteresis``, so noise does not flip it back and forth.

    Use: ``n = chooser.threads()`` before a step, ``chooser.record(n, seconds)``
    after it.

    Parameters
    ----------
    n : int
        The parallel thread count (the alternative is 1).
    probe_steps : int
        Steps timed with each count per probe.
    interval : int
        Steps run between probes.
    hysteresis : float
        Required speed-up factor (> 1) to change counts.
    """

    def __init__(self, n: int, probe_steps: int = 3, interval: int = 300,
                 hysteresis: float = 1.1):
        self.n = max(1, int(n))
        self.probe_steps, self.interval = probe_steps, interval
        self.hysteresis = hysteresis
        self.current = self.n
        #: (serial median, parallel median, chosen count) of every finished probe.
        self.decisions: list = []
        self._plan: list = []
        self._times = {1: [], self.n: []}
        self._since_probe = 0
        if self.n > 1:
            self._start_probe()

    def _start_probe(self) -> None:
        # Interleaved, current count first: n, 1, n, 1, ...
        other = 1 if self.current == self.n else self.n
        self._plan = [self.current, other] * self.probe_steps
        self._times = {1: [], self.n: []}

    def threads(self) -> int:
        """The thread count for the next step."""
        return self._plan[0] if self._plan else self.current

    def record(self, threads: int, seconds: float) -> None:
        """The step just run used ``threads`` and took ``seconds``."""
        if self.n == 1:
            return
        if self._plan:
            if threads == self._plan[0]:
                self._plan.pop(0)
                self._times[threads].append(seconds)
            if not self._plan:
                self._decide()
            return
        self._since_probe += 1
        if self._since_probe >= self.interval:
            self._start_probe()

    def _decide(self) -> None:
        import statistics

        serial = statistics.median(self._times[1])
        parallel = statistics.median(self._times[self.n])
        if self.current == self.n and parallel > serial * self.hysteresis:
            self.current = 1
        elif self.current == 1 and serial > parallel * self.hysteresis:
            self.current = self.n
        self.decisions.append((serial, parallel, self.current))
        self._since_probe = 0


#: One chooser per step shape, kept across epochs (a step object lasts one epoch).
_CHOOSERS: dict = {}


def chooser_for(key, n: int) -> ThreadChooser | None:
    """The :class:`ThreadChooser` of the step identified by ``key`` (shapes, batch,
    dtype), for ``n`` parallel parts; None when ``n`` is 1 or the user opted out
    (:data:`OPT_OUT`), in which case the step keeps Numba's thread count."""
    if n <= 1 or os.environ.get(OPT_OUT, "") not in ("", "0"):
        return None
    key = (key, n)
    if key not in _CHOOSERS:
        _CHOOSERS[key] = ThreadChooser(n)
    return _CHOOSERS[key]
