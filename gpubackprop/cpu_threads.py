"""How many CPU threads the fused CPU path should use, and how they should wait.

Three concerns, each a small pure function or class so tests can feed it
sample files and fake timings:

- :func:`usable_cpus`: the CPUs this process may really use: its affinity
  mask, capped by a cgroup CPU quota (v2 ``cpu.max`` or v1
  ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), as containers set them.
- :func:`wait_policy_environment`: environment variables that make idle
  threads sleep instead of spinning (OpenMP's ``OMP_WAIT_POLICY=PASSIVE``,
  Intel's ``KMP_BLOCKTIME=0``), after a short spin for GNU OpenMP
  (``GOMP_SPINCOUNT=3000``: a step's parallel regions, and the steps of an
  epoch, follow one another within microseconds, and a thread put to sleep
  between them must be woken by the kernel each time; a thread chooser that
  has picked one thread leaves the others asleep). OpenBLAS's thread timeout
  is left alone: with its shortest value, one benchmark run saw the NumPy
  BLAS epochs jump a hundredfold mid-run, and that was never explained. A
  thread that spins while its sibling is descheduled by another process's
  work burns the CPU that sibling needs. They must be set before Numba's OpenMP
  layer or the BLAS library starts its threads, and never replace a value the
  user set; :func:`apply_wait_policy` does both, and
  :func:`users_thread_environment` takes them back while another library
  (PyTorch, in the benchmark) loads its own OpenMP.
- :class:`ThreadChooser`: measures steps with one thread and with all of
  them, now and then, and keeps all only for a clear gain; it measures
  again when steps slow, or when the CPUs turn idle (:class:`IdleMeter`,
  from ``/proc/stat``); :func:`chooser_for` keeps one per step shape (the
  parallel MLP step, the RNN's time loops).

Importing this module imports nothing beyond the standard library.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path

#: Set unless the user set them: idle threads of OpenMP (GNU, Intel/LLVM) sleep, GNU's
#: after 3000 spins (its passive default is none).
WAIT_POLICY = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0", "GOMP_SPINCOUNT": "3000"}
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
    if "OMP_WAIT_POLICY" in environ:
        # The spin count would cut short the spin of the user's own policy.
        chosen.pop("GOMP_SPINCOUNT", None)
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
    if environ is os.environ:
        _SET_HERE.update(chosen)
    return chosen


#: What :func:`apply_wait_policy` set in this process's environment.
_SET_HERE: dict = {}


@contextlib.contextmanager
def users_thread_environment():
    """The environment as the user set it, inside the ``with`` block.

    For loading another library whose OpenMP reads the variables once, when
    it loads (PyTorch's own libgomp): it then waits as it would without
    gpubackprop. Numba's threading layer, if already started, keeps what it
    read; if it starts inside the block, it reads the user's settings too.
    """
    ours = {name: value for name, value in _SET_HERE.items()
            if os.environ.get(name) == value}
    for name in ours:
        del os.environ[name]
    try:
        yield
    finally:
        for name, value in ours.items():
            os.environ.setdefault(name, value)


def idle_cpu_seconds(path: str = "/proc/stat", cpus=None) -> float | None:
    """Seconds CPUs ``cpus`` (default: this process's affinity mask) have been idle since
    boot (idle plus I/O wait, from Linux's ``/proc/stat``), or None where it cannot be read."""
    if cpus is None:
        try:
            cpus = os.sched_getaffinity(0)
        except AttributeError:
            return None
    try:
        lines = Path(path).read_text().splitlines()
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    total = 0
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            if len(fields) < 5 or not all(field.isdigit() for field in fields[3:5]):
                return None
            total += int(fields[3]) + int(fields[4])
    return total / ticks if total else None


class IdleMeter:
    """CPUs idle on average between successive calls: ``meter()`` returns it, or None
    on the first call and where :func:`idle_cpu_seconds` cannot read.

    Parameters
    ----------
    seconds, clock : callables, optional
        Idle CPU seconds so far, and the time; :func:`idle_cpu_seconds` and
        ``time.monotonic`` by default (given for tests).
    """

    def __init__(self, seconds=idle_cpu_seconds, clock=None):
        self.seconds, self.clock = seconds, clock or time.monotonic
        self._last = None

    def __call__(self) -> float | None:
        now, idle = self.clock(), self.seconds()
        previous, self._last = self._last, (None if idle is None else (now, idle))
        if idle is None or previous is None or now <= previous[0]:
            return None
        return (idle - previous[1]) / (now - previous[0])


class ThreadChooser:
    """Pick the faster of one thread and ``n`` threads for a repeated step, from timings.

    The chooser alternates between *probing* (a run of a few steps timed on
    each count, the running count first: beside a busy process, a parallel step
    right after a one-thread step is faster than parallel steps in a row, its
    woken thread getting the CPU at once) and *running* with the chosen count,
    then probes again
    (other work on the machine comes and goes). The ``n`` threads are chosen
    only when their mean step is faster than one thread's by the factor
    ``margin``: on a near tie one thread wins, as it leaves the other CPUs to
    the other work and its steps do not wait for a descheduled sibling (beside
    a busy process, parallel steps are fast or several times slower, at
    random, so means are compared, not medians).

    Running ``n`` threads, it probes again after ``interval`` steps, or sooner
    when the median of the last ``window`` steps has moved from the mean the
    last probe measured by the factor ``shift`` or more (a busy process
    started: a parallel step slows at once beside one). Running one thread, it
    probes after ``serial_interval`` steps: a busy process that ends leaves a
    one-thread step's time as it was, so only a probe finds the CPU it freed.
    Each probe that keeps the count doubles that count's interval, up to
    ``max_interval`` or ``max_serial_interval`` (a probe costs steps on the
    slower count: under heavy load a parallel step can take several times a
    serial one); a switch starts the new count at its first interval. With an
    ``idle`` meter, one thread probes sooner, once ``serial_interval`` steps
    have run, when the CPUs it may use turn idle (at least half a CPU on
    average over ``idle_check_s``) after they were busy in the first check
    since the probe: the other work ended. Where one thread won on idle CPUs
    (a step too small to split), idle CPUs trigger nothing.

    Steps in the first ``warmup_s`` seconds of stepping, at the start and
    after a pause of more than ``pause_s`` between steps (an epoch's end, a
    validation pass), are neither timed nor watched: after a rest, parallel
    steps ran slowly for a while on an idle machine, which would look like a
    busy one.

    Use: ``n = chooser.threads()`` before a step, ``chooser.record(n, seconds)``
    after it.

    Parameters
    ----------
    n : int
        The parallel thread count (the alternative is 1).
    probe_steps : int
        Steps timed with each count per probe.
    interval : int
        Steps run on ``n`` threads between probes, at first and after a switch.
    margin : float
        Factor (> 1) by which ``n`` threads must be faster to be chosen.
    shift : float
        Factor (> 1) by which the running count's recent median step must move
        to probe before the interval is up.
    window : int
        Steps in that recent median.
    max_interval : int
        Longest interval the doubling reaches.
    serial_interval : int
        Steps run on one thread between probes, at first.
    max_serial_interval : int
        Longest interval the doubling reaches on one thread.
    idle : callable, optional
        Returns the CPUs idle on average since its previous call, or None
        (:class:`IdleMeter`); ``clock`` (seconds) paces its calls.
    idle_check_s : float
        Least time between two calls of ``idle``.
    warmup_s : float
        Seconds of steps ignored at the start and after a pause.
    pause_s : float
        Seconds between two steps that count as a pause.
    """

    def __init__(self, n: int, probe_steps: int = 5, interval: int = 300,
                 margin: float = 1.1, shift: float = 1.3, window: int = 5,
                 max_interval: int = 1200, serial_interval: int = 50,
                 max_serial_interval: int = 400, idle=None, clock=None,
                 idle_check_s: float = 0.1, warmup_s: float = 0.0, pause_s: float = 0.05):
        self.n = max(1, int(n))
        self.probe_steps = probe_steps
        self.margin, self.shift, self.window = margin, shift, window
        #: Per thread count: (first interval, longest interval).
        self.intervals = {self.n: (interval, max(interval, max_interval)),
                          1: (serial_interval, max(serial_interval, max_serial_interval))}
        #: Steps to run on the current count before the next probe.
        self.interval = interval
        self.idle, self.idle_check_s = idle, idle_check_s
        self.clock = clock or time.perf_counter
        self._idle_checked = None  # clock time of the last idle check since the probe
        self._idle_at_first_check = None
        self.warmup_s, self.pause_s = warmup_s, pause_s
        self._warm_from = None  # clock time from which steps count
        self._last_end = None  # clock time at which the previous step ended
        self.current = self.n
        #: (serial mean, parallel mean, chosen count) of every finished probe.
        self.decisions: list = []
        self._plan: list = []
        self._times = {1: [], self.n: []}
        self._since_probe = 0
        self._recent: list = []
        if self.n > 1:
            self._start_probe()

    def _start_probe(self) -> None:
        # In two runs, current count first: n, n, n, 1, 1, 1.
        other = 1 if self.current == self.n else self.n
        self._plan = [self.current] * self.probe_steps + [other] * self.probe_steps
        self._times = {1: [], self.n: []}

    def threads(self) -> int:
        """The thread count for the next step."""
        return self._plan[0] if self._plan else self.current

    def record(self, threads: int, seconds: float) -> None:
        """The step just run used ``threads`` and took ``seconds``."""
        if self.n == 1 or self._warming_up(seconds):
            return
        if self._plan:
            if threads == self._plan[0]:
                self._plan.pop(0)
                self._times[threads].append(seconds)
            if not self._plan:
                self._decide()
            return
        self._since_probe += 1
        self._recent = [*self._recent[1 - self.window:], seconds]
        if self._since_probe >= self.interval or self._shifted() or self._cpus_freed():
            self._start_probe()

    def _warming_up(self, seconds: float) -> bool:
        """Whether this step ran in the ``warmup_s`` seconds after the start or a pause."""
        now = self.clock()
        started = now - seconds
        if self._last_end is None or started - self._last_end > self.pause_s:
            self._warm_from, self._recent = started + self.warmup_s, []
        self._last_end = now
        return now <= self._warm_from

    def _cpus_freed(self) -> bool:
        """Whether, on one thread, the CPUs turned idle since the first check after the probe."""
        if self.idle is None or self.current != 1:
            return False
        now = self.clock()
        if self._idle_checked is None:
            self._idle_checked = now
            self.idle()  # starts the meter's period
            return False
        if now - self._idle_checked < self.idle_check_s:
            return False
        self._idle_checked = now
        idle = self.idle()
        if idle is None:
            return False
        if self._idle_at_first_check is None:
            self._idle_at_first_check = idle
            return False
        return (self._idle_at_first_check < 0.5 <= idle
                and self._since_probe >= self.intervals[1][0])

    def _shifted(self) -> bool:
        """Whether the last ``window`` steps' median left the last probe's mean by ``shift``."""
        import statistics

        if len(self._recent) < self.window:
            return False
        serial, parallel, _ = self.decisions[-1]
        measured = serial if self.current == 1 else parallel
        recent = statistics.median(self._recent)
        return recent > measured * self.shift or recent * self.shift < measured

    def _decide(self) -> None:
        import statistics

        serial = statistics.fmean(self._times[1])
        parallel = statistics.fmean(self._times[self.n])
        kept = self.current
        self.current = self.n if serial > parallel * self.margin else 1
        first, longest = self.intervals[self.current]
        self.interval = min(2 * self.interval, longest) if self.current == kept else first
        self._idle_checked = self._idle_at_first_check = None
        self.decisions.append((serial, parallel, self.current))
        self._since_probe = 0
        self._recent = []


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
        _CHOOSERS[key] = ThreadChooser(n, idle=IdleMeter(), warmup_s=0.1)
    return _CHOOSERS[key]
