"""A first run's compile in another process: the disk-cache probe, the process, the switch.

The processes here get their own empty Numba cache (``NUMBA_CACHE_DIR``), as
on a fresh install; Numba reads it once at import, hence the scripts run in
child processes.
"""

import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from gpubackprop.backends.numba.background import (BACKGROUND_ENV, background_allowed,
                                                   compiles_in_foreground)
from gpubackprop.errors import InputError

from conftest import REPO

pytestmark = pytest.mark.numba


#: Prepended to every script: ``compile_counter(names)``, the class of a Numba event
#: listener that appends the name of each function whose compile begins to ``names``.
COMPILE_COUNTER = """
from numba.core import event as _event


def compile_counter(names):
    class Count(_event.Listener):
        def on_start(self, ev):
            names.append(ev.data["dispatcher"].py_func.__name__)

        def on_end(self, ev):
            pass

    return Count
"""


def run_script(source: str, cache_dir, background: str = "1", timeout: float = 600) -> dict:
    """Run ``source`` after :data:`COMPILE_COUNTER` in a fresh interpreter with an empty
    Numba cache; its last stdout line parsed as JSON."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir), **{BACKGROUND_ENV: background},
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", COMPILE_COUNTER + textwrap.dedent(source)],
                          env=env,
                          cwd=cache_dir, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("value, allowed", [("", True), ("1", True), (" 0 ", False)])
def test_the_switch_reads_its_values(value, allowed):
    assert background_allowed({BACKGROUND_ENV: value}) is allowed
    assert background_allowed({}) is True


def test_an_unknown_switch_value_is_one_line_naming_the_variable():
    with pytest.raises(InputError, match=f"{BACKGROUND_ENV}='yes'.*1.*0"):
        background_allowed({BACKGROUND_ENV: "yes"})


def test_compiles_in_foreground_holds_in_its_context_only(monkeypatch):
    monkeypatch.setenv(BACKGROUND_ENV, "1")
    with compiles_in_foreground():
        assert not background_allowed()
        other_thread = []
        thread = threading.Thread(target=lambda: other_thread.append(background_allowed()))
        thread.start()
        thread.join()
    assert background_allowed() and other_thread == [True]


def test_a_process_that_cannot_start_counts_as_finished(monkeypatch):
    """No fork left: no error reaches training, which then compiles in its own process."""
    import numba

    from gpubackprop.backends.numba import background

    def no_fork(*args, **kwargs):
        raise BlockingIOError(11, "Resource temporarily unavailable")

    @numba.njit
    def add_one(x):
        return x + 1

    monkeypatch.setattr(background.subprocess, "Popen", no_fork)
    process = background.BackgroundCompile(add_one, (numba.int64,))
    assert process.finished() and process.wait() is None


def test_bench_and_parity_compile_in_the_foreground(monkeypatch):
    """Their measurements and comparisons are of the compiled step from its first batch."""
    from gpubackprop.bench import suite
    from gpubackprop.verify import parity

    seen = []

    def record(*args, **kwargs):
        seen.append(background_allowed())
        raise KeyboardInterrupt  # stop there: the rest needs data and time

    monkeypatch.setenv(BACKGROUND_ENV, "1")
    monkeypatch.setattr(suite, "usable_cpus", record)
    monkeypatch.setattr(parity, "get_backend", record)
    for call in (lambda: suite.run_bench(suite.BenchConfig(device="cpu")),
                 lambda: parity.run_parity(against="numba")):
        with pytest.raises(KeyboardInterrupt):
            call()
    assert seen == [False, False]
    assert background_allowed()


TOY_KERNELS = """
import numba

@numba.njit(cache=True)
def weighted_sum(a, b):
    return (a * b).sum()
"""


def test_a_signature_compiles_in_another_process_and_loads_here(tmp_path):
    """Cold: the probe compiles nothing; the background process fills the disk cache;
    then this process loads it without compiling."""
    (tmp_path / "toy_kernels.py").write_text(TOY_KERNELS)
    result = run_script("""
        import json, sys
        sys.path.insert(0, ".")
        import numpy as np
        from numba.core import event
        from gpubackprop.backends.numba.background import (
            compile_in_background, load_compiled, signature_of)
        from toy_kernels import weighted_sum

        compiles = []
        Count = compile_counter(compiles)
        a = np.arange(4.0)
        signature = signature_of(weighted_sum, (a, a))
        with event.install_listener("numba:compile", Count()):
            cold = load_compiled(weighted_sum, signature)
            compiled_when_cold = len(weighted_sum.overloads)
            refused = list(compiles)
            process = compile_in_background(weighted_sum, signature)
            same = compile_in_background(weighted_sum, signature) is process
            code = process.wait(timeout=300)
            warm = load_compiled(weighted_sum, signature)
            value = float(weighted_sum(a, a))
        print(json.dumps(dict(cold=cold, compiled_when_cold=compiled_when_cold, same=same,
                              code=code, warm=warm, value=value, refused=refused,
                              compiles=compiles)))
    """, tmp_path)
    # The cold probe's compile started (the event) and was stopped there; none after.
    assert result == dict(cold=False, compiled_when_cold=0, same=True, code=0, warm=True,
                          value=14.0, refused=["weighted_sum"], compiles=["weighted_sum"])


def test_background_compiles_of_one_signature_wait_for_each_other(tmp_path):
    """While another process holds a signature's compile lock, its background compile
    waits; :func:`wait_for_background_compiles` returns once a running one has ended."""
    (tmp_path / "toy_kernels.py").write_text(TOY_KERNELS)
    result = run_script("""
        import fcntl, json, os, subprocess, sys, time
        sys.path.insert(0, ".")
        import numpy as np
        from gpubackprop.backends.numba import background
        from toy_kernels import weighted_sum

        a = np.arange(4)
        signature = background.signature_of(weighted_sum, (a, a))
        lock = background._lock_path("toy_kernels", "weighted_sum", signature)
        def blocked_on_a_lock(pid):
            # The kernel lists a process waiting for a flock as a "->" line of /proc/locks.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                for line in open("/proc/locks"):
                    fields = line.split()
                    if "->" in fields and str(pid) in fields:
                        return True
                if process.process.poll() is not None:
                    return False
                time.sleep(0.01)
            return False

        with background._held(lock):
            process = background.BackgroundCompile(weighted_sum, signature)
            if os.path.exists("/proc/locks"):
                waited_for_lock = blocked_on_a_lock(process.process.pid)
            else:  # no lock table to read: a child still running after 10 s is waiting
                try:
                    process.wait(timeout=10)
                    waited_for_lock = False
                except subprocess.TimeoutExpired:
                    waited_for_lock = True
            cold_while_held = background.load_compiled(weighted_sum, signature)
        first = process.wait(timeout=300)

        b = np.arange(4.0, dtype=np.float32)
        other = background.signature_of(weighted_sum, (b, b))
        process = background.BackgroundCompile(weighted_sum, other)
        held_by_child = False
        deadline = time.monotonic() + 60
        while not held_by_child and time.monotonic() < deadline:
            with open(background._lock_path("toy_kernels", "weighted_sum", other), "a") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    time.sleep(0.02)
                except BlockingIOError:
                    held_by_child = True
        background.wait_for_background_compiles()
        warm_after_wait = background.load_compiled(weighted_sum, other)
        print(json.dumps(dict(waited_for_lock=waited_for_lock, cold_while_held=cold_while_held,
                              first=first, held_by_child=held_by_child,
                              warm_after_wait=warm_after_wait,
                              second=process.wait(timeout=60))))
    """, tmp_path)
    assert result == dict(waited_for_lock=True, cold_while_held=False, first=0,
                          held_by_child=True, warm_after_wait=True, second=0)


@pytest.mark.slow
def test_a_first_run_trains_eagerly_until_the_step_is_compiled(tmp_path):
    """The whole step on a cold cache: the first batch runs eagerly while another process
    compiles; once it has, batches run compiled; the weights equal those of a run that
    took the same two paths in the foreground, bit for bit."""
    result = run_script("""
        import json
        import numpy as np
        from numba.core import event
        from gpubackprop.backends.numba.background import compiles_in_foreground
        from gpubackprop.nn.model import mlp
        from gpubackprop.nn.plan import EagerStep
        from gpubackprop.backends.numba.parallel import ParallelMLPStep

        rng = np.random.default_rng(0)
        X = rng.standard_normal((40, 12)).astype(np.float32)
        labels = rng.integers(0, 3, 40)
        T = np.eye(3, dtype=np.float32)[labels]
        first, second = np.arange(0, 16), np.arange(16, 32)

        def model():
            return mlp(12, [9], 3, device="numba", seed=3)

        starts = []
        Count = compile_counter(starts)
        event.register("numba:compile", Count())
        net = model()
        step = net.compile_step("cross_entropy", "adam", 16)
        with step:
            step(X, T, labels, first)
            eager_after_first = step.eager_batches
            process = step._gate.compiling
            code = process.wait(timeout=600)
            step(X, T, labels, second)
        described = step.describe()

        with compiles_in_foreground():
            reference = model()
            plan_step = reference.compile_step("cross_entropy", "adam", 16)
            with plan_step:
                EagerStep(plan_step.plan)(X, T, labels, first)
                plan_step(X, T, labels, second)
        same = all(np.array_equal(a, b) for a, b in
                   zip(net.state_arrays().values(), reference.state_arrays().values()))
        print(json.dumps(dict(kind=type(step).__name__, eager_after_first=eager_after_first,
                              code=code, eager=step.eager_batches, same=same,
                              reference_eager=plan_step.eager_batches, described=described,
                              train_step_compiles=starts.count("train_step"))))
    """, tmp_path)
    assert result["kind"] == "ParallelMLPStep"
    assert result["eager_after_first"] == 1 and result["code"] == 0
    assert result["eager"] == 1, "the batch after the background compile ran eagerly"
    assert result["reference_eager"] == 0
    # One compile of train_step began here, the probe's, stopped at once: none ran here.
    assert result["train_step_compiles"] == 1
    assert result["same"]
    assert "first 1 batches ran on the eager path" in result["described"]


@pytest.mark.numba
def test_a_first_split_product_compiles_in_the_background_and_runs_whole_meanwhile(tmp_path):
    """On a cold cache the split product's first use starts its compile in another process;
    the products stay whole (one call) until it is done, then split."""
    result = run_script("""
        import json, numba
        import numpy as np
        from gpubackprop.backends import get_backend
        from gpubackprop.backends.numba import backend as backend_module, split
        from gpubackprop.cpu_threads import ThreadChooser

        ThreadChooser.threads = lambda self: 2
        calls = []

        class Counted(split.rows_split_chosen):
            def __enter__(self):
                calls.append(super().__enter__())
                return calls[-1]

        split.rows_split_chosen = Counted
        backend = get_backend("numba")
        rng = np.random.default_rng(0)
        A, B = rng.standard_normal((128, 96)), rng.standard_normal((96, 64))
        with backend.step_context():
            first = backend.gemm(A, B)
            whole_while_compiling = calls == []
            code = backend_module._SPLIT_GATES[A.dtype].compiling.wait(timeout=300)
            second = backend.gemm(A, B)
            with backend.unsplit_products():
                backend.gemm(A, B)
        print(json.dumps(dict(whole=whole_while_compiling, calls=calls, code=code,
                              same=bool(np.allclose(first, A @ B) and np.allclose(second, A @ B)),
                              threads=numba.get_num_threads())))
    """, tmp_path)
    if result["threads"] < 2:
        pytest.skip("two Numba threads are needed to split")
    assert result == dict(whole=True, calls=[2], code=0, same=True, threads=result["threads"])
