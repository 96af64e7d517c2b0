"""Fuzzing checkpoints: whatever is done to a real checkpoint, loading it either works
or raises gpubackprop's own error, and resuming from it never crashes the process.

Hypothesis mutates the JSON (any field replaced by any JSON value, or removed)
and the arrays (other dtypes, shapes, values, missing or extra arrays, raw
bytes), mostly keeping the index and sha256 consistent so the deeper checks
are reached. Checkpoints that load are then trained for a step: in this
process on NumPy, and in a subprocess on the compiled (Numba) step, whose
exit code must be 0 or 2 with a one-line error. The example counts keep the
whole file well under a minute.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from extras import require

require("hypothesis", "dev")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import checkpoint_edits as edits  # noqa: E402
from gpubackprop.errors import GpubackpropError
from gpubackprop.nn.model import mlp
from gpubackprop.training.checkpoint import load_checkpoint, save_checkpoint
from gpubackprop.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
#: Loadable mutants run through the compiled step in the subprocess, at most.
MAX_COMPILED_RUNS = 12

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) |
    st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12) |
    st.sampled_from([0, -1, 1, 2**31, 2**63, 1e308, "float32", "int8", "Linear", "adam",
                     "checkpoint-0123456789abcdef.npz", "../checkpoint.json"]),
    lambda children: st.lists(children, max_size=3) |
    st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6)

dtypes = st.sampled_from(["float32", "float64", "float16", "int8", "int64", "uint8",
                          "complex64", "bool", "<U2", ">f4"])
shapes = st.lists(st.integers(0, 9), min_size=0, max_size=3).map(tuple)


def paths(value, prefix=()):
    """Every path into a JSON value (dict keys, list indices), the root excluded."""
    found = []
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = list(enumerate(value))[:4]  # the first few entries of long histories
    else:
        return found
    for key, child in items:
        found.append(prefix + (key,))
        found.extend(paths(child, prefix + (key,)))
    return found


@st.composite
def json_mutations(draw, metadata):
    path = draw(st.sampled_from(paths(metadata)))
    action = draw(st.sampled_from(["replace", "replace", "delete", "nudge"]))
    value = draw(json_values) if action == "replace" else draw(st.integers(-3, 3))
    return path, action, value


def apply_json(metadata, mutation):
    path, action, value = mutation
    parent = metadata
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if action == "delete":
        del parent[key]
    elif action == "nudge" and isinstance(parent[key], (int, float)) \
            and not isinstance(parent[key], bool):
        parent[key] = parent[key] * 1000 if value == 3 else parent[key] + value
    else:
        parent[key] = value


@st.composite
def array_mutations(draw, names):
    name = draw(st.sampled_from(sorted(names)))
    action = draw(st.sampled_from(["dtype", "shape", "values", "drop", "add", "object",
                                   "bytes"]))
    detail = {"dtype": dtypes, "shape": shapes,
              "values": st.sampled_from([np.nan, np.inf, -1e38, 0.0, 2**62]),
              "drop": st.none(), "add": shapes, "object": st.none(),
              "bytes": st.tuples(st.integers(0, 4096), st.binary(min_size=1, max_size=8))}
    return name, action, draw(detail[action]), draw(st.booleans()), draw(st.booleans())


def apply_arrays(folder, mutation):
    name, action, detail, update_index, rehash = mutation
    metadata, arrays = edits.read(folder)
    if action == "bytes":
        raw = bytearray((folder / metadata["arrays_file"]).read_bytes())
        offset = detail[0] % len(raw)
        raw[offset:offset + len(detail[1])] = detail[1]
        edits.write(folder, metadata, raw=bytes(raw), rehash=rehash)
        return
    value = arrays[name]
    if action == "dtype":
        arrays[name] = value.astype(detail)
    elif action == "shape":
        arrays[name] = np.resize(value, detail).astype(value.dtype)
    elif action == "values":
        with np.errstate(invalid="ignore"):
            arrays[name] = np.full_like(value, detail)
    elif action == "drop":
        del arrays[name]
    elif action == "add":
        arrays["model/9.W"] = np.zeros(detail, np.float32)
    elif action == "object":
        arrays[name] = np.array([1, "x"], dtype=object)
    edits.write(folder, metadata, arrays, update_index=update_index, rehash=rehash)


def base_checkpoint(folder: Path) -> None:
    """A 6-5-4-3 ReLU MLP after a few Adam steps: the compiled step's kind of model."""
    rng = np.random.default_rng(0)
    model = mlp(6, [5, 4], 3, device="numpy", seed=1)
    trainer = Trainer(model, optimizer="adam", lr=0.01, batch_size=8, verbose=0)
    trainer.fit(rng.normal(size=(32, 6)), rng.integers(0, 3, size=32), epochs=2)
    save_checkpoint(folder, model, trainer.optimizer, trainer.history, extra={"note": "x"})


def train_one_step(checkpoint):
    """One epoch of 1 batch on NumPy with the loaded model and optimizer."""
    rng = np.random.default_rng(2)
    model = checkpoint.model
    trainer = Trainer(model, optimizer=checkpoint.optimizer or "sgd", batch_size=4, verbose=0)
    trainer.fit(rng.normal(size=(4, model.n_inputs)), rng.integers(0, model.n_outputs, 4),
                epochs=1)


#: Loads each checkpoint folder given on the command line on the Numba backend and trains
#: one step; prints one JSON line per folder. A crash kills the process: the test sees it.
COMPILED_RUNNER = textwrap.dedent("""
    import json, sys
    import numpy as np
    from gpubackprop.errors import GpubackpropError
    from gpubackprop.training.checkpoint import load_checkpoint
    from gpubackprop.training.trainer import Trainer
    for folder in sys.argv[1:]:
        try:
            checkpoint = load_checkpoint(folder, device="numba")
            model = checkpoint.model
            trainer = Trainer(model, optimizer=checkpoint.optimizer or "sgd", batch_size=4,
                              verbose=0)
            rng = np.random.default_rng(2)
            trainer.fit(rng.normal(size=(8, model.n_inputs)),
                        rng.integers(0, model.n_outputs, 8), epochs=1)
            result = "ok"
        except GpubackpropError as exc:
            result = "error: " + str(exc).splitlines()[0]
        print(json.dumps({"folder": folder, "result": result}), flush=True)
""")


def run_compiled(folders):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", COMPILED_RUNNER, *map(str, folders)],
                          capture_output=True, text=True, env=env, timeout=300)


def check_loads_or_refuses(folder, loadable):
    try:
        checkpoint = load_checkpoint(folder, device="numpy")
    except GpubackpropError:
        return
    try:
        train_one_step(checkpoint)
    except GpubackpropError:
        return
    loadable.append(folder)


def fuzz(tmp_path, strategy, apply):
    """Run hypothesis over mutants of the base checkpoint, then the compiled step."""
    base = tmp_path / "base"
    base_checkpoint(base)
    metadata, arrays = edits.read(base)
    loadable, counter = [], iter(range(10**6))

    @settings(max_examples=120, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(mutation=strategy(metadata if strategy is json_mutations else set(arrays)))
    def mutated(mutation):
        folder = tmp_path / f"m{next(counter)}"
        shutil.copytree(base, folder)
        apply(folder, mutation)
        check_loads_or_refuses(folder, loadable)

    mutated()
    assert loadable, "no mutant loaded at all: the fuzzing reached nothing past the checks"
    rng = np.random.default_rng(0)
    chosen = [loadable[i] for i in sorted(rng.permutation(len(loadable))[:MAX_COMPILED_RUNS])]
    result = run_compiled([base, *chosen])
    assert result.returncode == 0, (f"the compiled step crashed (exit {result.returncode}) "
                                    f"on a checkpoint that loaded:\n{result.stdout[-2000:]}"
                                    f"\n{result.stderr[-2000:]}")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == len(chosen) + 1 and lines[0]["result"] == "ok"


def apply_json_mutation(folder, mutation):
    metadata, _ = edits.read(folder)
    apply_json(metadata, mutation)
    (folder / "checkpoint.json").write_text(json.dumps(metadata))


def test_fuzzed_json_loads_or_raises_our_error(tmp_path):
    fuzz(tmp_path, json_mutations, apply_json_mutation)


def test_fuzzed_arrays_load_or_raise_our_error(tmp_path):
    fuzz(tmp_path, array_mutations, apply_arrays)


# ------------------------------------------------ the crash cases, through the CLI
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A checkpoint of 'gpubackprop train digits' on the default CPU backend."""
    from gpubackprop.cli.main import main

    out = tmp_path_factory.mktemp("digits") / "run"
    assert main(["train", "digits", "--epochs", "1", "--hidden", "16", "--out", str(out),
                 "--quiet"]) == 0
    return out


def _set(arrays, name, value):
    arrays[name] = value


CRASH_CASES = {
    # The segfault of the issue: optimizer state of the wrong shape.
    "optimizer state shape": lambda a: _set(a, "optimizer/0.W.m", np.zeros((2, 3), np.float32)),
    "optimizer state dtype": lambda a: _set(a, "optimizer/0.W.v",
                                            a["optimizer/0.W.v"].astype(np.float64)),
    "optimizer state int8": lambda a: _set(a, "optimizer/1.W.m",
                                           a["optimizer/1.W.m"].astype(np.int8)),
    "weights transposed": lambda a: _set(a, "model/0.W", np.ascontiguousarray(a["model/0.W"].T)),
    "bias too short": lambda a: _set(a, "model/1.b", a["model/1.b"][:3]),
    "negative step count": lambda a: _set(a, "optimizer/step_count", np.asarray(-7)),
    "complex weights": lambda a: _set(a, "model/1.W", a["model/1.W"].astype(np.complex64)),
}

METADATA_CASES = {
    "shuffling state": lambda m: m["extra"].update(trainer_rng={"bit_generator": "PCG64",
                                                                "state": "x"}),
    "config seed": lambda m: m["extra"]["config"].update(seed=-5),
    "config batch size": lambda m: m["extra"]["config"].update(batch_size=10**9),
    "config hidden": lambda m: m["extra"]["config"].update(hidden="many"),
    "history lengths": lambda m: m["history"]["lr"].append(1.0),
    "units": lambda m: m["model"]["layers"][0].update(units=10**9),
}

#: Resumes each folder given through the CLI in this one process, printing exit code and
#: stderr per folder as JSON; a crash kills it and the test sees which folder it was on.
CLI_RUNNER = textwrap.dedent("""
    import contextlib, io, json, sys
    from gpubackprop.cli.main import main
    for folder in sys.argv[1:]:
        print(json.dumps({"start": folder}), flush=True)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["train", "digits", "--epochs", "2", "--resume", folder, "--quiet"])
        print(json.dumps({"folder": folder, "code": code, "stderr": err.getvalue()}),
              flush=True)
""")


def test_resuming_hostile_checkpoints_never_crashes(digits_run, tmp_path):
    folders = {}
    for name, change in CRASH_CASES.items():
        folders[name] = tmp_path / name.replace(" ", "-")
        shutil.copytree(digits_run, folders[name])
        edits.edit_arrays(folders[name], change)
    for name, change in METADATA_CASES.items():
        folders[name] = tmp_path / name.replace(" ", "-")
        shutil.copytree(digits_run, folders[name])
        edits.edit_metadata(folders[name], change)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", CLI_RUNNER, *map(str, folders.values())],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, (f"the process crashed (exit {result.returncode}):\n"
                                    f"{result.stdout[-1500:]}\n{result.stderr[-1500:]}")
    reports = {Path(r["folder"]).name: r for r in map(json.loads, result.stdout.splitlines())
               if "code" in r}
    for name, folder in folders.items():
        report = reports[folder.name]
        assert report["code"] in (0, 2), (name, report)
        if report["code"] == 2:
            lines = report["stderr"].strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("gpubackprop: error: "), \
                (name, report["stderr"])
    # A batch size past the data is the full batch; every other case is refused.
    assert reports["config-batch-size"]["code"] == 0
    assert all(reports[f.name]["code"] == 2 for n, f in folders.items()
               if n != "config batch size")
