"""``gpubackprop selftest``: every piece of evidence about the GPU path, from one command.

The self-test is a list of :class:`Step` objects, each one process
(``python -m gpubackprop ...``, ``python -m gpubackprop.verify.probes ...`` or
``python -m pytest ...``) with its own time limit, so a hang or a crash in one
cannot stop the others. Each leaves a log in ``DIR/logs/`` and a
:class:`StepResult` (ok, failed, timed out, or not run with the reason); the
summary is printed last and written as ``summary.json`` and ``summary.md``.

Steps that need a GPU are marked not run where :func:`~gpubackprop.backends.gpu_status`
finds none, and their CPU stand-ins run instead: the kernels' host build, their
parity rows and the tests of the emulated CuPy backend (``tests/cuda_emulation/``,
in a source checkout), the parity tables against the fused CPU backend,
``train iris`` on the CPU and the fused-call timings on Numba.
The GPU's and Numba's state come from the environment step, run first in its own
process, so the self-test itself never imports CuPy or Numba.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, TextIO

from ..errors import DataFileError, InputError
from ..fileio import atomic_path, write_json
from . import emulation

OK, FAILED, TIMED_OUT, NOT_RUN = "ok", "failed", "timed out", "not run"
#: Seconds the whole self-test may take by default (8 minutes on an H100-class GPU).
DEFAULT_BUDGET_S = 480.0
#: A step is not started with less than this many seconds of the budget left.
MIN_STEP_S = 5.0
#: The first step; its JSON (DIR/environment.json) says whether a GPU and Numba are usable.
ENVIRONMENT = "environment"
#: What a step can need, besides nothing.
NEEDS = ("gpu", "numba", "emulation", "tests")
#: The test of the emulated backend's whole parity table (minutes on a busy CPU).
EMULATED_PARITY_TEST = "test_every_parity_row_passes_on_the_emulated_gpu"


@dataclass(frozen=True)
class Step:
    """One check, run as ``python ARGV...`` in a process of its own.

    Attributes
    ----------
    name : str
        Identifier (``--steps``), also the log's file name.
    title : str
        What the step shows, for the summary.
    argv : tuple of str
        Arguments after the Python interpreter.
    timeout : float
        Seconds before the step's process group is killed.
    needs : tuple of str
        From :data:`NEEDS`; a step whose need is not met is not run.
    stand_in : bool
        A CPU stand-in for a GPU step: run only where no GPU is usable.
    env : dict
        Extra environment variables of the process.
    outputs : tuple of str
        Files the step writes, relative to DIR; removed before it runs, so its
        facts never come from an earlier run.
    read : callable, optional
        ``read(log_text, out_dir) -> dict``: the facts the step produced.
    headline : callable, optional
        ``headline(facts) -> str``: one line for the summary table.
    """

    name: str
    title: str
    argv: tuple
    timeout: float
    needs: tuple = ()
    stand_in: bool = False
    env: dict = field(default_factory=dict)
    outputs: tuple = ()
    read: Callable[[str, Path], dict] | None = None
    headline: Callable[[dict], str] | None = None


@dataclass
class StepResult:
    """What one step did: status, reason, seconds, log file (relative to DIR) and facts."""

    name: str
    title: str
    status: str
    reason: str = ""
    seconds: float = 0.0
    log: str | None = None
    returncode: int | None = None
    command: list = field(default_factory=list)
    facts: dict = field(default_factory=dict)
    headline: str = ""


# ------------------------------------------------------------------- facts
def _json(out: Path, name: str) -> dict:
    return json.loads((out / name).read_text(encoding="utf-8"))


def json_reader(name: str) -> Callable[[str, Path], dict]:
    """A step's ``read``: the facts are the JSON file ``name`` the step wrote into DIR."""
    def read(log: str, out: Path) -> dict:
        return _json(out, name)
    return read


def environment_headline(facts: dict) -> str:
    gpu, cpu = facts.get("gpu_status", {}), facts.get("cpu_status", {})
    cuda = facts.get("cuda") or {}
    torch = facts.get("torch") or {}
    parts = []
    if gpu.get("usable"):
        device = cuda.get("device") or {}
        parts.append(f"{gpu.get('device_name')} (cc {device.get('compute_capability', '?')})")
        parts.append(f"driver {_cuda_version(gpu.get('cuda_driver'))}, "
                     f"runtime {_cuda_version(gpu.get('cuda_runtime'))}")
        parts.append(f"TF32 {'on' if cuda.get('tf32') is True else 'off'}")
    else:
        parts.append(f"no GPU ({gpu.get('reason', 'unknown')})")
    if cuda:
        cccl = cuda.get("cccl") or {}
        parts.append(f"CuPy {cuda.get('cupy')}, NVRTC {cuda.get('nvrtc')}, CCCL headers: "
                     f"{', '.join(cccl.get('found', [])) or 'none'}")
    parts.append(f"Numba {cpu.get('numba_version') or 'absent'}")
    parts.append(f"PyTorch {torch.get('version', 'absent')}")
    return "; ".join(parts)


def _cuda_version(number) -> str:
    return "?" if not isinstance(number, int) else f"{number // 1000}.{(number % 1000) // 10}"


def kernels_headline(facts: dict) -> str:
    def seconds(phase: dict) -> str:
        files = ", ".join(f"{name} {entry['first_get_s']:.2f}"
                          for name, entry in phase["files"].items())
        return f"{phase['total_s']:.2f} s (construct {phase['construct_s']:.2f}; {files})"
    return f"first {seconds(facts['first'])}; warm {seconds(facts['warm'])}"


#: One row of ``gpubackprop check``'s table (see ``verify.parity.format_report``).
PARITY_ROW = re.compile(r"^(?P<name>.+?)\s+(?P<kind>elementwise|gemm)\s+(?P<abs>\S+)\s+"
                        r"(?P<rel>\S+)\s+(?P<rtol>\S+)\s+(?P<atol>\S+)\s+(?P<result>pass|FAIL)$")


def read_parity(log: str, out: Path) -> dict:
    """Row count, failing rows and the worst absolute and relative errors of a parity table."""
    rows = [match.groupdict() for match in map(PARITY_ROW.match, log.splitlines()) if match]
    if not rows:
        return {"rows": 0}
    worst_abs = max(rows, key=lambda row: float(row["abs"]))
    worst_rel = max(rows, key=lambda row: float(row["rel"]))
    return {"rows": len(rows),
            "failed": [row["name"] for row in rows if row["result"] == "FAIL"],
            "worst_abs": {"row": worst_abs["name"], "value": float(worst_abs["abs"])},
            "worst_rel": {"row": worst_rel["name"], "value": float(worst_rel["rel"])}}


def parity_headline(facts: dict) -> str:
    if not facts.get("rows"):
        return "no parity table in the log"
    passed = facts["rows"] - len(facts["failed"])
    failed = f"; failing: {', '.join(facts['failed'])}" if facts["failed"] else ""
    return (f"{passed}/{facts['rows']} rows pass; worst rel {facts['worst_rel']['value']:.2e} "
            f"({facts['worst_rel']['row']}), worst abs {facts['worst_abs']['value']:.2e} "
            f"({facts['worst_abs']['row']}){failed}")


def junit_reader(xml_name: str):
    def read(log: str, out: Path) -> dict:
        root = ElementTree.parse(out / xml_name).getroot()
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors",
                                                            "skipped")}
        counts["seconds"] = float(suite.get("time", 0.0))
        counts["junit"] = xml_name
        return counts
    return read


def pytest_headline(facts: dict) -> str:
    passed = facts["tests"] - facts["failures"] - facts["errors"] - facts["skipped"]
    return (f"{passed} passed, {facts['failures']} failed, {facts['errors']} errors, "
            f"{facts['skipped']} skipped ({facts['junit']})")


TRAINED = re.compile(r"^model: (?P<model>.+) trained in (?P<seconds>[0-9.]+)s", re.M)
ACCURACY = re.compile(r"^test accuracy (?P<accuracy>[0-9.]+) \((?P<correct>\d+)/(?P<n>\d+)\)",
                      re.M)


def read_train(log: str, out: Path) -> dict:
    """Test accuracy and training seconds from ``gpubackprop train``'s output."""
    facts: dict = {}
    if (match := TRAINED.search(log)) is not None:
        facts.update(model=match["model"], train_seconds=float(match["seconds"]))
    if (match := ACCURACY.search(log)) is not None:
        facts.update(test_accuracy=float(match["accuracy"]), n_test=int(match["n"]))
    return facts


def train_headline(facts: dict) -> str:
    if "test_accuracy" not in facts:
        return "no test accuracy in the log"
    return (f"test accuracy {facts['test_accuracy']:.4f} of {facts['n_test']}, trained in "
            f"{facts.get('train_seconds', float('nan')):.2f} s: {facts.get('model', '?')}")


#: What ``gpubackprop bench --out DIR/bench`` writes.
BENCH_OUTPUTS = ("bench/bench.json", "bench/bench.md", "bench/bench.png")


def read_bench(log: str, out: Path) -> dict:
    """Per model: best epoch of ours and of PyTorch eager, and the median per-round ratio."""
    report = _json(out, BENCH_OUTPUTS[0])
    facts = {"data": report["data"], "models": {}}
    for row in report["results"]:
        facts["models"].setdefault(row["model"], {})[row["key"]] = row["epoch_s_min"]
    for model, ratios in report["ratios"].items():
        if "ours/torch" in ratios:
            facts["models"][model]["ours/torch median"] = ratios["ours/torch"]["median"]
    facts["skipped"] = report["skipped"]
    return facts


def bench_headline(facts: dict) -> str:
    parts = []
    for model, entry in facts["models"].items():
        torch = (f", PyTorch eager {entry['torch']:.3f} s (ours/torch "
                 f"{entry['ours/torch median']:.2f})" if "torch" in entry else
                 ", no PyTorch")
        parts.append(f"{model}: ours {entry.get('ours', float('nan')):.3f} s{torch}")
    return "best epoch " + "; ".join(parts)


def fused_headline(facts: dict) -> str:
    rows = facts["rows"]
    speedups = [row["speedup"] for row in rows]
    adam = next((row for row in rows if row["method"] == "adam_update"), None)
    text = (f"{len(rows)} calls on {facts['backend']}, unfused/fused "
            f"{min(speedups):.1f}x to {max(speedups):.1f}x")
    if adam is not None:
        text += f"; adam {adam['fused_us']:.1f} µs vs {adam['unfused_us']:.1f} µs unfused"
    return text


# -------------------------------------------------------------------- plan
def plan(out: Path, data_dir: Path | None = None, cupy_cache: Path | None = None) -> list[Step]:
    """Every step, GPU steps and their CPU stand-ins, in the order they run.

    ``train mnist`` becomes ``train digits`` when no folder holds the MNIST
    files (``data_dir``, ``$GPUBACKPROP_DATA``, the cache; nothing is
    downloaded). ``cupy_cache``, an empty folder, makes the kernels step time
    a true first compile.
    """
    mnist = mnist_folder(data_dir)
    data_env = {}
    if mnist is not None:  # the folder holding mnist/, as the tests and bench read it
        data_env["GPUBACKPROP_DATA"] = str(mnist.parent if mnist.name == "mnist" else mnist)
    kernels_env = {"CUPY_CACHE_DIR": str(cupy_cache)} if cupy_cache is not None else {}
    cli = ("-m", "gpubackprop")

    def probe(name, title, args, timeout, headline, read=None, **options) -> Step:
        """A step of ``verify/probes.py``, writing DIR/<name>.json: its facts unless ``read``."""
        written = f"{name}.json"
        return Step(name, title, ("-m", "gpubackprop.verify.probes", *args, "--json",
                                  str(out / written)), timeout, outputs=(written,),
                    read=read or json_reader(written), headline=headline, **options)

    def pytest(name, title, args, timeout, **options) -> Step:
        """A pytest run over the test suite; its facts come from its junit XML."""
        written = f"{name}.xml"
        return Step(name, title, ("-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs",
                                  str(emulation.TESTS), *args, f"--junitxml={out / written}"),
                    timeout, env=data_env, outputs=(written,), read=junit_reader(written),
                    headline=pytest_headline, **options)

    def parity(name, title, args, timeout, **options) -> Step:
        return Step(name, title, args, timeout, read=read_parity, headline=parity_headline,
                    **options)

    def train(name, title, args, timeout, **options) -> Step:
        return Step(name, title, (*cli, "train", *args), timeout, read=read_train,
                    headline=train_headline, **options)

    steps = [
        probe(ENVIRONMENT, "device, driver, runtime, CuPy, NVRTC, CCCL headers, TF32, "
              "nvidia-smi, versions, git commit", ("environment",), 120, environment_headline),
        probe("kernels", "NVRTC first compile and warm load of each kernel file",
              ("kernels", "--backend", "gpu"), 240, kernels_headline, needs=("gpu",),
              env=kernels_env),
        probe("kernels-emulated", "host build and load of each kernel file (emulation)",
              ("kernels", "--backend", "cupy-emulated"), 120, kernels_headline,
              needs=("emulation",), stand_in=True),
    ]
    for dtype in ("float32", "float64"):
        steps += [
            parity(f"parity-{dtype}", f"parity table NumPy vs CuPy, {dtype}",
                   (*cli, "check", "--dtype", dtype), 240, needs=("gpu",)),
            probe(f"parity-emulated-{dtype}", f"the fused kernels' parity rows, NumPy vs "
                  f"emulated CuPy, {dtype}", ("kernel-parity", "--backend", "cupy-emulated",
                                              "--dtype", dtype), 120, parity_headline,
                  read=read_parity, needs=("emulation",), stand_in=True),
        ]
    # float32 only, to keep the CPU run short: float64 compiles the fused CPU step once more.
    steps.append(parity("parity-numba-float32", "parity table NumPy vs the fused CPU backend, "
                        "float32", (*cli, "check", "--against", "numba", "--dtype", "float32"),
                        180, needs=("numba",), stand_in=True))
    steps += [
        train("train-iris", "gpubackprop train iris on the GPU", ("iris", "--device", "gpu"),
              120, needs=("gpu",)),
        train("train-iris-cpu", "gpubackprop train iris on the CPU",
              ("iris", "--device", "cpu"), 120, stand_in=True),
    ]
    if mnist is not None:
        steps.append(train("train-mnist", f"gpubackprop train mnist on the GPU ({mnist})",
                           ("mnist", "--device", "gpu", "--data-dir", str(mnist),
                            "--no-download"), 300, needs=("gpu",)))
    else:
        steps.append(train("train-digits", "gpubackprop train digits on the GPU (no MNIST "
                           "files found; pass --data-dir)", ("digits", "--device", "gpu"), 240,
                           needs=("gpu",)))
    steps += [
        probe("fused-calls", "µs per fused call vs its unfused chain on the GPU",
              ("fused", "--backend", "gpu"), 120, fused_headline, needs=("gpu",)),
        probe("fused-calls-numba", "µs per fused call vs its unfused chain on Numba",
              ("fused", "--backend", "numba"), 120, fused_headline, needs=("numba",),
              stand_in=True),
        Step("bench", "a short gpubackprop bench --device gpu: ours vs PyTorch eager per epoch",
             (*cli, "bench", "--device", "gpu", "--epochs", "3", "--out", str(out / "bench")),
             300, needs=("gpu",), env=data_env, outputs=BENCH_OUTPUTS, read=read_bench,
             headline=bench_headline),
    ]
    # The test suites last: the longest steps, so a spent budget cuts the fewest figures.
    steps += [
        pytest("gpu-tests", "the GPU test suite (pytest -m gpu)", ("-m", "gpu"), 300,
               needs=("gpu", "tests")),
        pytest("emulated-tests", "the tests of the emulated CuPy backend but its whole parity "
               "table (minutes; the test suite runs it)",
               ("-k", f"(cupy-emulated or emulated) and not {EMULATED_PARITY_TEST}"), 240,
               needs=("emulation", "tests"), stand_in=True),
    ]
    return steps


def mnist_folder(data_dir: Path | None) -> Path | None:
    """The folder holding the four MNIST files, found without downloading; None if none."""
    from ..data.mnist import locate

    try:
        return Path(locate("mnist", data_dir, download=False)["train_images"]).parent
    except DataFileError:
        return None


# ------------------------------------------------------------- conditions
def unmet_needs(out: Path) -> dict[str, str]:
    """Why each need of :data:`NEEDS` is not met here (a need met has no entry).

    The GPU's and Numba's state come from ``environment.json`` (the
    :data:`ENVIRONMENT` step's), never from importing CuPy or Numba in this process.
    """
    unmet = {}
    try:
        status = _json(out, f"{ENVIRONMENT}.json")
        gpu, cpu = status["gpu_status"], status["cpu_status"]
        if not gpu["usable"]:
            unmet["gpu"] = f"no usable GPU: {gpu['reason']}"
        if not cpu["fused"]:
            unmet["numba"] = cpu["reason"]
    except (OSError, ValueError, KeyError) as exc:
        why = f"unknown, the environment step recorded no backend status ({exc})"
        unmet.update(gpu=f"GPU {why}", numba=f"Numba {why}")
    reason = emulation.unavailable_reason()
    if reason is not None:
        unmet["emulation"] = reason
    if not (emulation.TESTS / "conftest.py").is_file():
        unmet["tests"] = (f"the test suite is not beside the package in "
                          f"{emulation.SOURCE_ROOT} (it ships only in a source checkout)")
    return unmet


def why_not_run(step: Step, unmet: dict[str, str]) -> str | None:
    """The reason ``step`` must not run under ``unmet``, or None when it may."""
    if step.stand_in and "gpu" not in unmet:
        return "the GPU ran the real step (this is its CPU stand-in)"
    for need in step.needs:
        if need in unmet:
            return unmet[need]
    return None


# ------------------------------------------------------------------ running
def run_step(step: Step, out: Path, timeout: float) -> StepResult:
    """Run one step's process (its own process group) with ``timeout``; read its facts."""
    log = out / "logs" / f"{step.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    for name in step.outputs:
        (out / name).unlink(missing_ok=True)
    command = [sys.executable, *step.argv]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg", **step.env,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(emulation.SOURCE_ROOT),
                                                       os.environ.get("PYTHONPATH")]))}
    result = StepResult(step.name, step.title, OK, log=str(log.relative_to(out)),
                        command=command)
    started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as handle:
        handle.write(f"$ {shlex.join(command)}\n\n")
        handle.flush()
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT,
                                   cwd=emulation.SOURCE_ROOT, env=env, start_new_session=True)
        try:
            result.returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            result.status, result.reason = TIMED_OUT, f"killed after {timeout:.0f} s"
    result.seconds = time.perf_counter() - started
    if result.status == OK and result.returncode != 0:
        result.status = FAILED
        result.reason = (f"killed by signal {signal.Signals(-result.returncode).name}"
                         if result.returncode < 0 else f"exit status {result.returncode}")
    if step.read is not None:
        try:
            result.facts = step.read(log.read_text(encoding="utf-8", errors="replace"), out)
            result.headline = step.headline(result.facts) if step.headline else ""
        except Exception as exc:  # a step that failed early leaves no facts to read
            result.facts = {"read_error": f"{type(exc).__name__}: {exc}"}
    return result


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def run_selftest(out, steps: list[Step], selected=None, budget: float = DEFAULT_BUDGET_S,
                 stream: TextIO | None = None) -> dict:
    """Run ``steps`` in order into ``out`` and write the summary; returns it as a dict.

    Parameters
    ----------
    out : Path
        Output folder (created).
    steps : list of Step
    selected : collection of str, optional
        Run only these steps (the others are recorded as not selected).
    budget : float
        Seconds for the whole run; each step's limit is cut to what is left.
    stream : text stream, optional
        Progress lines and the final table; ``sys.stdout`` when omitted.
    """
    stream = sys.stdout if stream is None else stream
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    deadline = started + budget
    began = datetime.datetime.now(datetime.timezone.utc)
    # The other steps' conditions come from this run's environment step, never an older one's.
    (out / f"{ENVIRONMENT}.json").unlink(missing_ok=True)
    results = []
    for index, step in enumerate(steps, 1):
        reason = None
        if selected is not None and step.name not in selected:
            reason = "not selected (--steps)"
        else:
            reason = why_not_run(step, unmet_needs(out))
        left = deadline - time.perf_counter()
        if reason is None and left < MIN_STEP_S:
            reason = f"the self-test's budget of {budget:.0f} s was spent"
        if reason is not None:
            results.append(StepResult(step.name, step.title, NOT_RUN, reason))
            continue
        print(f"[{index}/{len(steps)}] {step.name}: {step.title} ...", file=stream, flush=True)
        result = run_step(step, out, min(step.timeout, left))
        if result.status == TIMED_OUT and left < step.timeout:
            result.reason += " (the self-test's budget was running out)"
        results.append(result)
        print(f"    {result.status} in {result.seconds:.1f} s"
              f"{': ' + result.reason if result.reason else ''}", file=stream, flush=True)
    summary = {"started": began.isoformat(timespec="seconds"),
               "seconds": time.perf_counter() - started,
               "budget_s": budget, "out": str(out),
               "exit_status": exit_status(results),
               "steps": [asdict(result) for result in results]}
    write_json(out / "summary.json", summary)
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(summary_markdown(summary, out), encoding="utf-8")
    print(file=stream)
    print(format_table(results), file=stream)
    print(f"\nselftest finished in {summary['seconds']:.1f} s; wrote summary.json, summary.md "
          f"and logs/ in {out}", file=stream)
    return summary


def exit_status(results: list[StepResult]) -> int:
    """1 when a step that ran failed or timed out, else 0 (steps not run do not count)."""
    return int(any(result.status in (FAILED, TIMED_OUT) for result in results))


# ------------------------------------------------------------------ reports
def _what(result: StepResult) -> str:
    if result.status == NOT_RUN:
        return result.reason
    text = result.headline or result.facts.get("read_error", "")
    return f"{result.reason}; {text}" if result.reason and text else result.reason or text


def format_table(results: list[StepResult]) -> str:
    """The plain-text summary table: step, status, seconds, result or reason."""
    width = max(len(result.name) for result in results)
    lines = [f"{'step':<{width}}  {'status':<9}  {'seconds':>7}  result"]
    for result in results:
        seconds = f"{result.seconds:7.1f}" if result.status != NOT_RUN else " " * 7
        lines.append(f"{result.name:<{width}}  {result.status:<9}  {seconds}  {_what(result)}")
    return "\n".join(lines)


def summary_markdown(summary: dict, out: Path) -> str:
    """summary.md: the table, then the fused-call tables and the bench table when present."""
    from ..bench.fused_calls import format_table as fused_table

    results = [StepResult(**step) for step in summary["steps"]]
    lines = [f"# gpubackprop selftest, {summary['started']}", "",
             f"{summary['seconds']:.1f} s of a {summary['budget_s']:.0f} s budget; "
             f"exit status {summary['exit_status']}.", "",
             "| step | status | seconds | result | log |", "|---|---|---:|---|---|"]
    for result in results:
        seconds = f"{result.seconds:.1f}" if result.status != NOT_RUN else ""
        what = _what(result).replace("|", "\\|").replace("\n", " ")
        log = f"[{result.log}]({result.log})" if result.log else ""
        lines.append(f"| {result.name} | {result.status} | {seconds} | {what} | {log} |")
    for result in results:
        if result.status == NOT_RUN or not result.name.startswith("fused-calls") or \
                "rows" not in result.facts:
            continue
        lines += ["", f"## {result.name}", "", fused_table(result.facts["rows"],
                                                           result.facts["backend"])]
    bench = out / BENCH_OUTPUTS[1]
    if any(r.name == "bench" and r.status != NOT_RUN for r in results) and bench.is_file():
        lines += ["", "## bench", "", bench.read_text(encoding="utf-8")]
    return "\n".join(lines).rstrip("\n") + "\n"


def selftest_main(out, data_dir=None, steps=None, budget: float = DEFAULT_BUDGET_S) -> int:
    """``gpubackprop selftest``: plan, run, summarise; the exit status.

    Raises
    ------
    InputError
        For an unknown step name or a budget that is not positive.
    """
    if not math.isfinite(budget) or budget <= 0:
        raise InputError(f"--budget must be a positive number of seconds, got {budget:g}")
    out = Path(out).resolve()
    data_dir = None if data_dir is None else Path(data_dir).resolve()
    if data_dir is not None and not data_dir.is_dir():
        raise InputError(f"--data-dir {data_dir} is not a folder")
    with tempfile.TemporaryDirectory(prefix="gpubackprop-selftest-") as cupy_cache:
        planned = plan(out, data_dir, Path(cupy_cache))
        names = [step.name for step in planned]
        if steps is not None:
            unknown = [name for name in steps if name not in names]
            if unknown:
                raise InputError(f"unknown step(s) {', '.join(unknown)}; the steps are: "
                                 f"{', '.join(names)}")
            steps = {ENVIRONMENT, *steps}
        return run_selftest(out, planned, steps, budget)["exit_status"]
