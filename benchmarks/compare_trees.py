"""Interleaved epoch times of two source trees of gpubackprop, in one run.

Each tree gets a worker process (``PYTHONPATH`` set to the tree) that builds the
same model from the same seed and trains one epoch each time the driver asks;
the driver alternates the trees round by round (which goes first alternates
too), so both see the same machine conditions. Prints each round and the median
of the per-round ratios ``B / A``.

Usage::

    python benchmarks/compare_trees.py OLD_TREE NEW_TREE [--rounds 8] [--hidden 512]

The trees may be git worktrees of two commits; MNIST comes from ``GPUBACKPROP_DATA``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

WORKER = r"""
import json, sys, time
import numpy as np
import gpubackprop
try:
    from gpubackprop import Trainer
except ImportError:
    from gpubackprop.train import Trainer
data = np.load(sys.argv[1])
X, y = data["X"], data["y"]
hidden = [int(w) for w in sys.argv[2].split(",")]
model = gpubackprop.mlp(X.shape[1], hidden, 10, activation="relu", device=sys.argv[3],
                        dtype="float32", seed=0)
trainer = Trainer(model, loss="cross_entropy", optimizer="adam", lr=1e-3, batch_size=128,
                  verbose=0, seed=0)
print(json.dumps({"ready": repr(model)}), flush=True)
for line in sys.stdin:
    started = time.perf_counter()
    trainer.fit(X, y, epochs=1)
    print(json.dumps({"seconds": time.perf_counter() - started,
                      "loss": trainer.history.epoch_loss[-1]}), flush=True)
"""


def _mnist(path: Path) -> None:
    from gpubackprop.data.datasets import load_dataset

    data = load_dataset("mnist")
    import numpy as np

    np.savez(path, X=np.ascontiguousarray(data.X_train, dtype=np.float32), y=data.y_train)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tree_a", type=Path)
    parser.add_argument("tree_b", type=Path)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--hidden", default="512", help="hidden widths, comma-separated")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "mnist.npz"
        _mnist(data)
        workers = []
        for tree in (args.tree_a, args.tree_b):
            env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
            worker = subprocess.Popen([sys.executable, "-c", WORKER, str(data), args.hidden,
                                       args.device], env=env, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
            print(f"{tree}: {json.loads(worker.stdout.readline())['ready']}", flush=True)
            workers.append(worker)

        def epoch(worker) -> float:
            worker.stdin.write("epoch\n")
            worker.stdin.flush()
            return json.loads(worker.stdout.readline())["seconds"]

        for worker in workers:  # one untimed warm-up epoch each (compiles, page faults)
            epoch(worker)
        ratios = []
        for round_ in range(args.rounds):
            order = (0, 1) if round_ % 2 == 0 else (1, 0)
            times = {index: epoch(workers[index]) for index in order}
            ratios.append(times[1] / times[0])
            print(f"round {round_ + 1}: A {times[0]:.3f} s  B {times[1]:.3f} s  "
                  f"B/A {ratios[-1]:.3f}", flush=True)
        for worker in workers:
            worker.stdin.close()
            worker.wait(timeout=60)
    print(f"median B/A over {len(ratios)} rounds: {statistics.median(ratios):.3f} "
          f"(range {min(ratios):.3f} to {max(ratios):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
