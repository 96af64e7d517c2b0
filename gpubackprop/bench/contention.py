"""The same epoch alone and beside a busy process: how the CPU paths share a machine.

For each path (the default fused CPU path, that path held to one thread,
and the NumPy reference backend) one round runs an epoch alone, then one
while a busy-loop process (a Python ``while True: pass`` this module starts
and stops) competes for a CPU. Rounds interleave the paths in a rotated
order. Reported: each path's median epoch alone and loaded, its slowdown
(loaded / alone, median of the rounds), and the default path's loaded
epoch over the one-thread path's loaded epoch (median of the rounds).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import time

from ..cpu_threads import OPT_OUT
from .runners import MODELS, Ours, OursReference, Unavailable

#: The architecture measured (the case of issue 19).
MODEL = "784-512-10"
#: Seconds the busy process runs before the timed epoch starts.
BUSY_LEAD_S = 0.3


@contextlib.contextmanager
def busy_process():
    """A CPU-bound Python process for the duration of the ``with`` block."""
    process = subprocess.Popen([sys.executable, "-c", "while True: pass"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(BUSY_LEAD_S)
        yield process
    finally:
        process.kill()
        process.wait()


@contextlib.contextmanager
def one_thread():
    """The fused path on one thread: its step split in one part, no thread chooser."""
    import numba

    previous, opted_out = numba.get_num_threads(), os.environ.get(OPT_OUT)
    numba.set_num_threads(1)
    os.environ[OPT_OUT] = "1"
    try:
        yield
    finally:
        numba.set_num_threads(previous)
        if opted_out is None:
            os.environ.pop(OPT_OUT, None)
        else:
            os.environ[OPT_OUT] = opted_out


def paths(data, batch_size, optimizer, seed):
    """(name, runner, context factory) of each path measured; unavailable ones left out."""
    spec = MODELS[MODEL]
    found, skipped = [], {}
    for name, make, context in (
            ("default", lambda: Ours(spec, data, batch_size, seed=seed, optimizer=optimizer),
             contextlib.nullcontext),
            ("one thread", lambda: Ours(spec, data, batch_size, seed=seed,
                                        optimizer=optimizer), one_thread),
            ("numpy", lambda: OursReference(spec, data, batch_size, seed=seed,
                                            optimizer=optimizer), contextlib.nullcontext)):
        try:
            runner = make()
        except Unavailable as exc:
            skipped[name] = str(exc)
            continue
        if name == "one thread" and runner.backend.name != "numba":
            skipped[name] = "the CPU backend is NumPy (no Numba): no threads to hold"
            continue
        found.append((name, runner, context))
    return found, skipped


def run_contention(data, rounds: int = 3, batch_size: int = 128, optimizer: str = "adam",
                   seed: int = 0, log=print) -> dict:
    """Measure every path alone and loaded; the ``contention`` section of the bench report."""
    found, skipped = paths(data, batch_size, optimizer, seed)
    for name, runner, context in found:  # untimed: compilation, allocators
        with context():
            runner.epoch()
    times = {name: {"alone": [], "loaded": []} for name, _, _ in found}
    for round_ in range(rounds):
        shift = round_ % len(found)
        for name, runner, context in found[shift:] + found[:shift]:
            with context():
                times[name]["alone"].append(runner.epoch())
                with busy_process():
                    times[name]["loaded"].append(runner.epoch())
        log(f"contention round {round_ + 1}/{rounds}: " + "  ".join(
            f"{name} {t['alone'][-1]:.2f}s / {t['loaded'][-1]:.2f}s loaded"
            for name, t in times.items()))
    return summarize(times, skipped, rounds)


def summarize(times: dict, skipped: dict, rounds: int) -> dict:
    """Medians and per-round ratios from ``times[path]["alone" | "loaded"]`` lists."""
    paths_ = {}
    for name, t in times.items():
        slowdowns = [b / a for a, b in zip(t["alone"], t["loaded"])]
        paths_[name] = {"alone_s": t["alone"], "loaded_s": t["loaded"],
                        "alone_median_s": statistics.median(t["alone"]),
                        "loaded_median_s": statistics.median(t["loaded"]),
                        "slowdown_median": statistics.median(slowdowns)}
    report = {"model": MODEL, "rounds": rounds, "paths": paths_, "skipped": skipped}
    if "default" in times and "one thread" in times:
        for load in ("alone", "loaded"):
            per_round = [a / b for a, b in zip(times["default"][load],
                                               times["one thread"][load])]
            report[f"default_over_one_thread_{load}"] = statistics.median(per_round)
    return report


def markdown(section: dict) -> str:
    """The contention table, as markdown."""
    lines = [f"Contention ({section['model']}, {section['rounds']} rounds): one epoch alone and "
             "beside one busy-loop process; medians.", "",
             "| path | alone (s) | beside a busy process (s) | slowdown |", "|---|---:|---:|---:|"]
    for name, p in section["paths"].items():
        lines.append(f"| {name} | {p['alone_median_s']:.3f} | {p['loaded_median_s']:.3f} "
                     f"| {p['slowdown_median']:.2f}x |")
    lines.append("")
    for load in ("alone", "loaded"):
        key = f"default_over_one_thread_{load}"
        if key in section:
            lines.append(f"- default path ÷ one thread, {load}: {section[key]:.2f}")
    for name, why in section["skipped"].items():
        lines.append(f"- skipped {name}: {why}")
    return "\n".join(lines) + "\n"
