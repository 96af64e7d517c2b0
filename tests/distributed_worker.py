"""One rank of a distributed test run: ``mpiexec -n K python distributed_worker.py SCENARIO``.

Scenarios (the second argument is a JSON object, the third an output folder):

``train``
    Train each case of ``{"cases": [...]}`` with ``distributed="auto"``;
    rank 0 writes ``case<i>.npz`` (the weights and the loss history) and
    ``case<i>.json`` (the step's compiler and the rank count).
``mismatch``
    Rank ``{"rank": r}`` trains on other data: the start-up check must stop every rank;
    each prints ``rank <k> stopped: <message>`` (or ``rank <k> trained``).
``raise`` / ``kill``
    Rank ``{"rank": r}`` raises, or kills itself with SIGKILL, in epoch 2.

:func:`train_case` is also the single-process reference the tests compare with.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpubackprop import Trainer, mlp  # noqa: E402
from gpubackprop.errors import GpubackpropError  # noqa: E402
from gpubackprop.nn.losses import MeanSquaredError  # noqa: E402
from gpubackprop.training.trainer import Callback  # noqa: E402

#: A case's settings where it gives none: 42 rows in batches of 10, so the last batch
#: has 2 rows (with 3 ranks, one rank's block of it is empty).
DEFAULTS = dict(backend="numpy", dtype="float64", optimizer="adam", loss="cross_entropy",
                reduction="mean",
                output_activation="identity", hidden=[7], rows=42, features=5, classes=3,
                batch_size=10, epochs=2, clip_norm=None, weight_decay=None, data_seed=1)


def case_data(case: dict):
    """``(X, y)`` of a case: Gaussian rows and labels (one-hot targets for MSE)."""
    rng = np.random.default_rng(case["data_seed"])
    X = rng.normal(size=(case["rows"], case["features"]))
    labels = rng.integers(0, case["classes"], case["rows"])
    return X, (np.eye(case["classes"])[labels] if case["loss"] != "cross_entropy" else labels)


def build_backend(name: str):
    """A backend by name; "cupy-emulated" builds the emulated CuPy backend for this process."""
    if name != "cupy-emulated":
        return name
    from cuda_emulation import emulated_backend

    return emulated_backend(Path(tempfile.mkdtemp(prefix="gbp-kernels-")))


def train_case(case: dict, backend, distributed=None, callbacks=()) -> Trainer:
    """Train one case (its settings over :data:`DEFAULTS`) and return the trainer."""
    case = {**DEFAULTS, **case}
    X, y = case_data(case)
    model = mlp(case["features"], case["hidden"], case["classes"], device=backend,
                dtype=case["dtype"], seed=3, output_activation=case["output_activation"])
    loss = case["loss"] if case["loss"] == "cross_entropy" else \
        MeanSquaredError(case["reduction"])
    trainer = Trainer(model, loss=loss, optimizer=case["optimizer"], batch_size=case["batch_size"],
                      seed=4, verbose=0, clip_norm=case["clip_norm"],
                      weight_decay=case["weight_decay"], distributed=distributed,
                      callbacks=callbacks)
    trainer.fit(X, y, epochs=case["epochs"])
    return trainer


class AtEpoch(Callback):
    """Calls ``action()`` at the start of epoch ``epoch``."""

    def __init__(self, epoch: int, action):
        self.epoch, self.action = epoch, action

    def on_epoch_begin(self, trainer, epoch: int) -> None:
        if epoch == self.epoch:
            self.action()


def fail():
    raise RuntimeError("injected failure")


def main(scenario: str, options: dict, out: Path) -> int:
    if scenario == "train":
        for i, case in enumerate(options["cases"]):
            backend = build_backend({**DEFAULTS, **case}["backend"])
            trainer = train_case(case, backend, distributed="auto")
            if trainer.rank == 0:
                np.savez(out / f"case{i}.npz", loss=np.array(trainer.history.loss),
                         **trainer.model.state_arrays())
                (out / f"case{i}.json").write_text(json.dumps(
                    {"compiler": trainer.step.compiler, "ranks": trainer.communicator.size}))
        return 0
    from gpubackprop.distributed import MPICommunicator

    rank = MPICommunicator().rank
    chosen = rank == options["rank"]
    if scenario == "mismatch":
        try:
            train_case({"data_seed": 2 if chosen else 1}, "numpy", distributed="mpi")
        except GpubackpropError as exc:
            # Status 0: a rank ending in failure would make mpiexec end the others
            # before they report.
            print(f"rank {rank} stopped: {exc}", flush=True)
            return 0
        print(f"rank {rank} trained", flush=True)
        return 0
    action = fail if scenario == "raise" else lambda: os.kill(os.getpid(), signal.SIGKILL)
    train_case({"epochs": 3}, "numpy", distributed="mpi",
               callbacks=[AtEpoch(2, action)] if chosen else [])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3])))
