"""How long a fresh process takes to print: ``python -m gpubackprop.bench.startup``.

Each case runs a ``gpubackprop`` command in a new Python process with an
empty Numba cache (``NUMBA_CACHE_DIR`` pointing at a new temporary folder, as
on a fresh install) and records the seconds from the start to its first line
of output and to its exit, the load average before it ran, and how long a
compile it left running in the background (:mod:`gpubackprop.backends.numba.background`)
went on after its exit (the next run waits for it). The cases are
``train iris`` and one epoch of ``train mnist`` (the preset network) on the
default CPU path; ``--warm`` runs each a second time with the cache the first
run filled.

Output: a markdown table on stdout, and ``startup.json`` with ``--out DIR``.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..backends.numba.background import wait_for_background_compiles

#: The commands timed, by name: arguments of ``python -m gpubackprop``.
CASES = {
    "train iris": ["train", "iris"],
    "train mnist (1 epoch)": ["train", "mnist", "--epochs", "1", "--no-download"],
}


def time_command(argv, env=None, timeout: float = 900.0) -> dict:
    """Run ``argv`` and time its first line of output and its exit.

    Parameters
    ----------
    argv : list of str
        The command and its arguments.
    env : dict, optional
        The environment (default: this process's).

    Returns
    -------
    dict
        ``first_line_s`` (None when it printed nothing), ``total_s``,
        ``cpu_s`` (user and system time of the process, less sensitive to
        other load than the wall times), ``first_line`` (text), ``returncode``.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env=env, text=True)
    first_line = process.stdout.readline()
    first_line_s = time.perf_counter() - started if first_line else None
    try:
        process.stdout.read()
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    total_s = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"first_line_s": first_line_s, "total_s": total_s, "cpu_s": cpu_s,
            "first_line": first_line.strip(), "returncode": process.returncode}


def run_cases(cases=CASES, warm: bool = False, log=print) -> list:
    """Time each case with a cold Numba cache (and then warm); one row per run."""
    rows = []
    for name, args in cases.items():
        with tempfile.TemporaryDirectory(prefix="gpubackprop-numba-cache-") as cache:
            env = dict(os.environ, NUMBA_CACHE_DIR=cache)
            for cache_state in ("cold", "warm") if warm else ("cold",):
                load = os.getloadavg()[0]
                row = dict(case=name, cache=cache_state, load_average=load,
                           **time_command([sys.executable, "-m", "gpubackprop", *args], env))
                # A compile the run left running in the background ends before the next run.
                waited = time.perf_counter()
                wait_for_background_compiles()
                row["compile_after_exit_s"] = time.perf_counter() - waited
                rows.append(row)
                log(markdown_row(row))
    return rows


def markdown_row(row: dict) -> str:
    first = "—" if row["first_line_s"] is None else f"{row['first_line_s']:.2f}"
    return (f"| {row['case']} | {row['cache']} | {first} | {row['total_s']:.2f} "
            f"| {row['cpu_s']:.2f} | {row['compile_after_exit_s']:.2f} "
            f"| {row['load_average']:.2f} | {row['returncode']} | `{row['first_line'][:60]}` |")


HEADER = ("| command | Numba cache | first line (s) | exit (s) | CPU (s) "
          "| background compile after exit (s) | load average | exit code | first line |"
          "\n|---|---|---:|---:|---:|---:|---:|---:|---|")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpubackprop.bench.startup",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--warm", action="store_true", help="also time a second, warm run")
    parser.add_argument("--case", action="append", choices=tuple(CASES),
                        help="only these cases (default: all)")
    parser.add_argument("--out", type=Path, metavar="DIR", help="write startup.json here")
    args = parser.parse_args(argv)
    cases = {name: CASES[name] for name in (args.case or CASES)}
    print(HEADER, flush=True)
    rows = run_cases(cases, warm=args.warm, log=lambda line: print(line, flush=True))
    if args.out is not None:
        from ..fileio import write_json
        from ..machine import machine_info

        args.out.mkdir(parents=True, exist_ok=True)
        write_json(args.out / "startup.json", {"machine": machine_info(), "runs": rows})
        print(f"wrote {args.out / 'startup.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
