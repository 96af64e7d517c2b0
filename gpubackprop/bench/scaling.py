"""Epoch time against rank count: data-parallel training on the CPU under ``mpiexec``.

``python -m gpubackprop.bench.scaling --ranks 1 2 --out DIR`` launches, for each
rank count K, ``mpiexec -n K`` of this module's worker, which trains the MNIST
preset's MLP (784-512-256-10, ReLU, Adam, global batch 128) for a few epochs
with ``distributed="mpi"`` and reports, from rank 0: the median epoch time,
the seconds per epoch spent waiting for the slowest rank (a barrier before
each all-reduce, added for the measurement) and in the all-reduce itself,
and their shares of the epoch. One
more run trains without ``distributed`` (the fused step, no all-reduce) as
the baseline. Each rank gets ``cores // K`` Numba threads, so K ranks never
ask for more threads than the machine has. The one-minute load average
before and after each run is recorded: on a shared machine it says how much
else was running.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ..distributed.base import Communicator

#: The measured network and batch: the MNIST preset's.
HIDDEN, BATCH = [512, 256], 128


class TimedCommunicator(Communicator):
    """``inner`` (an MPICommunicator), timing each ``allreduce_sum`` in two parts.

    A barrier first: :attr:`waited` adds the seconds spent there, waiting for
    the slowest rank to finish its gradients; :attr:`seconds` adds the
    all-reduce after it, the transfer and the sum.
    """

    def __init__(self, inner):
        self.inner, self.seconds, self.waited, self.calls = inner, 0.0, 0.0, 0
        self.name, self.rank, self.size = inner.name, inner.rank, inner.size
        self.local_rank = inner.local_rank

    def allreduce_sum(self, buffer) -> None:
        started = time.perf_counter()
        self.inner.comm.Barrier()
        reached = time.perf_counter()
        self.inner.allreduce_sum(buffer)
        self.waited += reached - started
        self.seconds += time.perf_counter() - reached
        self.calls += 1

    def allgather(self, value) -> list:
        return self.inner.allgather(value)

    def broadcast(self, value, root: int = 0):
        return self.inner.broadcast(value, root)

    def abort(self, code: int) -> None:
        self.inner.abort(code)

    def describe(self) -> str:
        return self.inner.describe()


def training_data(rows: int):
    """MNIST's training images (from $GPUBACKPROP_DATA) or, without them, random pixels."""
    from ..data.datasets import load_dataset
    from ..errors import GpubackpropError

    try:
        data = load_dataset("mnist", download=False)
        X, y, source = data.X_train, data.y_train, "MNIST"
    except GpubackpropError:
        rng = np.random.default_rng(0)
        X, y, source = rng.random((rows, 784)), rng.integers(0, 10, rows), "random pixels"
    return np.asarray(X[:rows], np.float32), np.asarray(y[:rows]), source


def worker(args) -> None:
    """One rank: train, time each epoch and the all-reduce; rank 0 prints a JSON line."""
    from .. import Trainer, mlp
    from ..backends import get_backend
    from ..distributed import communicator_for

    X, y, source = training_data(args.rows)
    backend = get_backend(args.device)
    timed = None if args.alone else TimedCommunicator(communicator_for(backend, "mpi"))
    model = mlp(784, HIDDEN, 10, device=backend, seed=0)
    trainer = Trainer(model, batch_size=BATCH, verbose=0, distributed=timed)
    trainer.fit(X, y, epochs=1)  # compiles the step; not timed
    clock = (lambda: (timed.seconds, timed.waited)) if timed else (lambda: (0.0, 0.0))
    epochs = []
    for _ in range(args.epochs):
        before = clock()
        trainer.fit(X, y, epochs=1)
        after = clock()
        epochs.append((trainer.history.epoch_time[-1], after[0] - before[0],
                       after[1] - before[1]))
    if trainer.rank == 0:
        times = [t for t, _, _ in epochs]
        median = statistics.median(times)
        comm = statistics.median([c for _, c, _ in epochs])
        wait = statistics.median([w for _, _, w in epochs])
        print(json.dumps({"ranks": 1 if timed is None else timed.size,
                          "distributed": timed is not None, "data": source, "rows": len(X),
                          "steps_per_epoch": -(-len(X) // BATCH),
                          "epoch_s": times, "median_epoch_s": median,
                          "allreduce_s_per_epoch": comm, "allreduce_share": comm / median,
                          "wait_s_per_epoch": wait, "wait_share": wait / median,
                          "gradient_values": trainer.step.plan.reduce.size if timed else None,
                          "step": trainer.step.describe(),
                          "numba_threads": int(os.environ.get("NUMBA_NUM_THREADS", "0"))}))


def launch(ranks: int, args, alone: bool = False) -> dict:
    """Run the worker under ``mpiexec -n ranks`` (or alone); its report plus load averages."""
    from ..distributed.communicator import find_mpiexec

    cores = os.cpu_count() or 1
    env = dict(os.environ, NUMBA_NUM_THREADS=str(max(1, cores // ranks)))
    command = [sys.executable, "-m", "gpubackprop.bench.scaling", "--worker",
               "--rows", str(args.rows), "--epochs", str(args.epochs), "--device", args.device]
    if alone:
        command.append("--alone")
    else:
        command = [find_mpiexec() or "mpiexec", "-n", str(ranks)] + command
    load_before = os.getloadavg()[0]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    report.update(load_before=load_before, load_after=os.getloadavg()[0])
    return report


def markdown(reports: list, machine: str) -> str:
    lines = [f"Epoch time against rank count ({machine}); MLP 784-{'-'.join(map(str, HIDDEN))}"
             f"-10, Adam, global batch {BATCH}.", "",
             "| ranks | step | median epoch (s) | all-reduce per epoch (s, share) | "
             "waiting for the slowest rank (s, share) | load avg before / after |",
             "|---|---|---|---|---|---|"]
    for r in reports:
        label = f"{r['ranks']}" + ("" if r["distributed"] else " (no --distributed)")
        step = r["step"].split(" with ")[0] + (", split" if "split:" in r["step"] else "")
        lines.append(f"| {label} | {step} | {r['median_epoch_s']:.2f} | "
                     f"{r['allreduce_s_per_epoch']:.3f} ({r['allreduce_share']:.0%}) | "
                     f"{r['wait_s_per_epoch']:.3f} ({r['wait_share']:.0%}) | "
                     f"{r['load_before']:.2f} / {r['load_after']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpubackprop.bench.scaling",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per run")
    parser.add_argument("--rows", type=int, default=60000, help="training rows (MNIST's 60000)")
    parser.add_argument("--device", default="numba", help="numba (fused) or numpy")
    parser.add_argument("--out", type=Path, help="write scaling.json and scaling.md here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--alone", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    from ..machine import machine_info

    reports = [launch(1, args, alone=True)] + [launch(k, args) for k in args.ranks]
    machine = machine_info()
    text = markdown(reports, f"{machine.get('cpu', '')} {os.cpu_count()} CPUs, "
                             f"{time.strftime('%Y-%m-%d')}")
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "scaling.json").write_text(json.dumps(
            {"machine": machine, "reports": reports}, indent=2, default=str))
        (args.out / "scaling.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
