"""Checkpoints as untrusted input: every field, dtype and shape checked before use.

Each edit below is written consistently (array index and sha256 updated), as an
attacker would, so the loader's own checks are what stops it.
"""

import json

import numpy as np
import pytest

from checkpoint_edits import edit_arrays, edit_metadata, read, write
from gpubackprop import DataFileError, InputError, OutOfMemoryError, OutputError
from gpubackprop.nn.layers import LAYER_TYPES, Activation, Linear, ReLU
from gpubackprop.nn.model import Sequential, mlp, planned_activations, planned_shapes
from gpubackprop.nn.gated_recurrent import GRU, LSTM
from gpubackprop.nn.recurrent import RNN, TimeDistributed
from gpubackprop.training.checkpoint import load_checkpoint, save_checkpoint
from gpubackprop.training.trainer import Trainer


@pytest.fixture
def saved(tmp_path):
    """A folder with the checkpoint of a 5-7-3 MLP after two Adam epochs."""
    rng = np.random.default_rng(1)
    model = mlp(5, [7], 3, device="numpy", seed=3)
    trainer = Trainer(model, optimizer="adam", lr=0.01, batch_size=16, verbose=0)
    trainer.fit(rng.normal(size=(64, 5)), rng.integers(0, 3, size=64), epochs=2)
    save_checkpoint(tmp_path / "ck", model, trainer.optimizer, trainer.history)
    return tmp_path / "ck"


def load(folder):
    return load_checkpoint(folder, device="numpy")


@pytest.mark.parametrize("dtype", ["int8", "complex64", "float16", "<U3", "bool", "int64"])
def test_weights_of_another_dtype_are_refused_not_cast(saved, dtype):
    edit_arrays(saved, lambda a: a.update({"model/0.W": a["model/0.W"].astype(dtype)}))
    with pytest.raises(DataFileError, match=r"model/0\.W is listed as .*needs float32 \(5, 7\)"):
        load(saved)


def test_object_arrays_are_refused_without_unpickling(saved):
    """An object array is a pickle inside the .npy: never loaded."""
    metadata, arrays = read(saved)
    arrays["model/0.b"] = np.array([1, "x"], dtype=object)
    write(saved, metadata, arrays, update_index=False)
    with pytest.raises(DataFileError, match=r"model/0\.b is object \(2,\) in the file"):
        load(saved)


@pytest.mark.parametrize("name, shape", [("optimizer/0.W.m", (2, 3)),
                                         ("optimizer/1.b.v", (4,)),
                                         ("optimizer/0.W.v", (7, 5))])
def test_optimizer_state_of_the_wrong_shape_is_refused(saved, name, shape):
    """What made --resume segfault in the compiled step: caught before anything runs."""
    edit_arrays(saved, lambda a: a.update({name: np.zeros(shape, np.float32)}))
    with pytest.raises(DataFileError, match=rf"{name} is listed as .*architecture needs"):
        load(saved)


def test_optimizer_state_of_another_dtype_is_refused(saved):
    edit_arrays(saved, lambda a: a.update({"optimizer/0.W.m": a["optimizer/0.W.m"]
                                           .astype(np.float64)}))
    with pytest.raises(DataFileError, match=r"optimizer/0\.W\.m .*needs float32"):
        load(saved)


def test_header_that_lies_about_the_index_is_refused(saved):
    """The JSON index says float32 (5, 7); the .npy header inside says otherwise."""
    metadata, arrays = read(saved)
    arrays["model/0.W"] = np.zeros((50, 70), np.float32)
    write(saved, metadata, arrays, update_index=False)
    with pytest.raises(DataFileError, match=r"model/0\.W is float32 \(50, 70\) in the file"):
        load(saved)


@pytest.mark.parametrize("value", [-1, 2**60])
def test_step_count_out_of_range_is_refused(saved, value):
    edit_arrays(saved, lambda a: a.update({"optimizer/step_count": np.asarray(value)}))
    with pytest.raises(DataFileError, match="step count must be in"):
        load(saved)


def test_non_finite_weights_are_refused(saved):
    def poison(arrays):
        arrays["model/1.W"] = arrays["model/1.W"].copy()
        arrays["model/1.W"][0, 0] = np.nan

    edit_arrays(saved, poison)
    with pytest.raises(DataFileError, match=r"model/1\.W holds 1 NaN or infinite"):
        load(saved)


def test_declared_sizes_are_checked_against_memory_before_building(saved, monkeypatch):
    """A few edited bytes (and arrays to match) must not ask for 74 GiB."""
    import gpubackprop.nn.model as model_module

    def widen(metadata):
        metadata["model"]["layers"][0]["units"] = 5_000_000_000 // 5
        for name in ("model/0.W", "optimizer/0.W.m", "optimizer/0.W.v"):
            metadata["arrays"][name]["shape"] = [5, 1_000_000_000]
        for name in ("model/0.b", "optimizer/0.b.m", "optimizer/0.b.v"):
            metadata["arrays"][name]["shape"] = [1_000_000_000]
        for name in ("model/1.W", "optimizer/1.W.m", "optimizer/1.W.v"):
            metadata["arrays"][name]["shape"] = [1_000_000_000, 3]

    def never_build(*args, **kwargs):
        raise AssertionError("the model was built before the memory check")

    edit_metadata(saved, widen)
    monkeypatch.setattr(model_module.Sequential, "__init__", never_build)
    with pytest.raises(OutOfMemoryError, match=r"needs about \d+\.\d GiB .*reduce the layer "
                                               r"widths in the checkpoint"):
        load(saved)


@pytest.mark.parametrize("field, value, message", [
    (("model", "dtype"), "int8", "model.dtype must be one of"),
    (("model", "seed"), -3, "model.seed must be an integer"),
    (("model", "layers"), [], "1 to 1000 layers"),
    (("model", "layers", 0, "type"), "Conv2D", "layer 0 must be an object whose type"),
    (("model", "layers", 0, "units"), 7.0, "layer 0 .* invalid configuration"),
    (("model", "layers", 0, "activation"), "RELU", "layer 0 .* 'activation' is 'RELU'"),
    (("model", "layers", 0, "bias"), True, "layer 0 .* invalid configuration"),
    (("optimizer", "name"), "lbfgs", "optimizer name must be one of"),
    (("optimizer", "lr"), -1.0, "invalid configuration"),
    (("optimizer", "lr"), "0.01", "'lr' must be a finite number"),
    (("optimizer", "beta1"), 1.0, "beta1 must be in"),
    (("optimizer", "eps"), 0, "eps must be a positive number"),
    (("history", "loss"), ["x"], "history.loss must be a list of numbers"),
    (("history", "lr"), [0.1], "history lists disagree"),
    (("history", "when"), [], "unknown fields"),
    (("arrays_file",), "../../elsewhere/checkpoint-0123456789abcdef.npz",
     "arrays_file must name a file"),
    (("arrays_file",), "/etc/passwd", "arrays_file must name a file"),
    (("arrays_sha256",), "00", "arrays_sha256 must be 64"),
    (("extra",), [1], "extra must be a JSON object"),
])
def test_every_metadata_field_is_checked(saved, field, value, message):
    def change(metadata):
        target = metadata
        for key in field[:-1]:
            target = target[key]
        target[field[-1]] = value

    edit_metadata(saved, change)
    with pytest.raises(DataFileError, match=message):
        load(saved)


def test_deeply_nested_json_is_a_data_file_error(saved):
    """json.loads raises RecursionError on it, not a JSONDecodeError."""
    (saved / "checkpoint.json").write_text("[" * 100_000)
    with pytest.raises(DataFileError, match="not readable JSON .*RecursionError"):
        load(saved)


def test_archive_with_a_member_that_expands_past_its_shape_is_refused(saved):
    """The .npy header says (5, 7) but the member carries more bytes."""
    import io
    import zipfile

    metadata, arrays = read(saved)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, value in arrays.items():
            member = io.BytesIO()
            np.save(member, value)
            extra = b"\0" * (1 << 20) if name == "model/0.b" else b""
            archive.writestr(name + ".npy", member.getvalue() + extra)
    write(saved, metadata, raw=buffer.getvalue())
    with pytest.raises(DataFileError, match=r"model/0\.b holds more bytes than its shape"):
        load(saved)


def test_huge_arrays_file_is_refused_before_hashing(saved, monkeypatch):
    import gpubackprop.training.checkpoint as checkpoint

    metadata, arrays = read(saved)
    path = saved / metadata["arrays_file"]
    path.write_bytes(path.read_bytes() + b"\0" * (1 << 20))

    def no_hashing(path):
        raise AssertionError("a file too large for its architecture was hashed")

    monkeypatch.setattr(checkpoint, "_sha256", no_hashing)
    with pytest.raises(DataFileError, match="more than the .* its architecture can fill"):
        load(saved)


def test_parameter_shapes_match_what_build_allocates():
    """Layer.parameter_shapes (used before allocating) agrees with build, every layer type."""
    layers = [RNN(4, return_sequences=True, h0="learn"), TimeDistributed(Linear(3, "tanh")),
              LSTM(3, return_sequences=True, h0="learn"), GRU(4, return_sequences=True),
              RNN(5), Linear(6, "relu"), ReLU(), Activation("tanh"), Linear(2)]
    # Sigmoid and Tanh are Activation with a fixed name: no parameters either.
    assert {type(layer).__name__ for layer in layers} | {"Sigmoid", "Tanh"} >= set(LAYER_TYPES)
    shapes, (widths, _) = planned_shapes(layers, 7), planned_activations(layers, 7)
    model = Sequential(layers, n_inputs=7, device="numpy")
    assert shapes == {name: W.shape for name, W in model.parameters().items()}
    assert widths[-1] == model.n_outputs


# ------------------------------------------------------- what a checkpoint path names
@pytest.mark.parametrize("name", ["model.npz", "model.json", "weights.pt"])
def test_a_file_name_is_refused_as_a_checkpoint_path(saved, tmp_path, name):
    model = load(saved).model
    with pytest.raises(InputError, match=rf"names a folder .*{name} is named like a"):
        save_checkpoint(tmp_path / name, model)
    assert not (tmp_path / name).exists()


def test_an_existing_file_is_not_overwritten(saved, tmp_path):
    model = load(saved).model
    target = tmp_path / "notes"
    target.write_text("mine")
    with pytest.raises(OutputError, match="it is a file; a checkpoint path names a folder"):
        save_checkpoint(target, model)
    assert target.read_text() == "mine"


def test_a_folder_name_with_a_dot_is_a_folder(saved, tmp_path):
    model = load(saved).model
    path = save_checkpoint(tmp_path / "runs" / "lr0.01", model)
    assert path == tmp_path / "runs" / "lr0.01" / "checkpoint.json"
    assert load(tmp_path / "runs" / "lr0.01").model.config() == model.config()


def test_loading_a_file_other_than_checkpoint_json_is_refused(saved):
    metadata, _ = read(saved)
    with pytest.raises(DataFileError, match="is a file, not a checkpoint"):
        load(saved / metadata["arrays_file"])


def test_no_save_deletes_the_arrays_the_current_json_refers_to(saved, monkeypatch):
    """Another writer commits its checkpoint.json right after ours: the clean-up after our
    save must keep the arrays that JSON refers to (it used to keep only its own)."""
    import gpubackprop.training.checkpoint as checkpoint

    theirs = (saved / "checkpoint.json").read_text()
    real_write_json = checkpoint.write_json

    def commit_then_lose_the_race(path, data):
        real_write_json(path, data)
        path.write_text(theirs)  # the other writer's commit lands after ours

    model = load(saved).model
    model.layers[0].params["W"][...] += 1
    monkeypatch.setattr(checkpoint, "write_json", commit_then_lose_the_race)
    save_checkpoint(saved, model)
    assert [p.name for p in saved.glob("checkpoint-*.npz")] == [json.loads(theirs)["arrays_file"]]
    load(saved)
