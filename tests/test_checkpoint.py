"""Checkpoints: bit-for-bit round trips, damage detection, atomic saves."""

import json

import numpy as np
import pytest

from gpubackprop import DataFileError, gpu_status
from gpubackprop.training.checkpoint import load_checkpoint, save_checkpoint
from gpubackprop.nn.model import mlp
from gpubackprop.training.trainer import Trainer

BACKENDS = ["numpy", "cpu", pytest.param("gpu", marks=pytest.mark.skipif(
    not gpu_status().usable, reason=f"no usable GPU: {gpu_status().reason}"))]


def trained(device="cpu", dtype="float32", epochs=2):
    """A small model and trainer after a few Adam epochs on random data.

    One hidden layer, as in the other tests that train on the fused CPU backend: its
    compiled step is one signature per dtype and depth, so a cold test run compiles
    each once."""
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(64, 5)), rng.integers(0, 3, size=64)
    model = mlp(5, [7], 3, device=device, dtype=dtype, seed=3)
    trainer = Trainer(model, optimizer="adam", lr=0.01, batch_size=16, verbose=0)
    trainer.fit(X, y, epochs=epochs)
    return model, trainer


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("device", BACKENDS)
def test_round_trip_is_bit_for_bit_on_the_cpu(tmp_path, device, dtype):
    model, trainer = trained(device, dtype)
    path = save_checkpoint(tmp_path, model, trainer.optimizer, trainer.history,
                           extra={"note": "hello"})
    loaded = load_checkpoint(path, device="cpu")
    assert loaded.model.config() == model.config()
    assert loaded.model.backend.device == "cpu"
    for name, W in model.state_arrays().items():
        restored = loaded.model.state_arrays()[name]
        assert restored.dtype == W.dtype
        np.testing.assert_array_equal(restored, W)
    saved_state = trainer.optimizer.state_arrays(model.backend)
    loaded_state = loaded.optimizer.state_arrays(loaded.model.backend)
    assert saved_state.keys() == loaded_state.keys()
    for key in saved_state:
        np.testing.assert_array_equal(loaded_state[key], saved_state[key])
    assert loaded.optimizer.config() == trainer.optimizer.config()
    assert loaded.history == trainer.history
    assert loaded.extra == {"note": "hello"}
    assert loaded.metadata["backend"] == model.backend.name


def test_folder_and_file_paths_name_the_same_checkpoint(tmp_path):
    model, _ = trained()
    assert save_checkpoint(tmp_path, model) == tmp_path / "checkpoint.json"
    loaded = load_checkpoint(tmp_path / "checkpoint.json", device="cpu")
    assert loaded.optimizer is None and loaded.history is None


def test_resave_replaces_the_array_file_and_leaves_no_stale_ones(tmp_path):
    model, trainer = trained()
    save_checkpoint(tmp_path, model, trainer.optimizer)
    trainer.fit(np.ones((4, 5)), np.zeros(4, dtype=int), epochs=1)
    save_checkpoint(tmp_path, model, trainer.optimizer)
    assert len(list(tmp_path.glob("checkpoint-*.npz"))) == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def arrays_file(folder):
    (path,) = folder.glob("checkpoint-*.npz")
    return path


def test_flipped_byte_fails_the_checksum(tmp_path):
    model, _ = trained()
    save_checkpoint(tmp_path, model)
    path = arrays_file(tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataFileError, match=r"corrupted: sha256 .* does not match") as info:
        load_checkpoint(tmp_path, device="cpu")
    assert path.name in str(info.value)


def test_truncated_arrays_fail_the_checksum(tmp_path):
    model, _ = trained()
    save_checkpoint(tmp_path, model)
    path = arrays_file(tmp_path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataFileError, match="corrupted"):
        load_checkpoint(tmp_path, device="cpu")


def edit_metadata(folder, change):
    path = folder / "checkpoint.json"
    metadata = json.loads(path.read_text())
    change(metadata)
    path.write_text(json.dumps(metadata))


def test_unreadable_array_file_with_matching_checksum_is_a_data_file_error(tmp_path):
    import hashlib

    model, _ = trained()
    save_checkpoint(tmp_path, model)
    path = arrays_file(tmp_path)
    path.write_bytes(b"not a zip archive")

    def fix_sha(metadata):
        metadata["arrays_sha256"] = hashlib.sha256(b"not a zip archive").hexdigest()

    edit_metadata(tmp_path, fix_sha)
    with pytest.raises(DataFileError, match="cannot be read"):
        load_checkpoint(tmp_path, device="cpu")


def test_truncated_metadata_is_a_data_file_error(tmp_path):
    model, _ = trained()
    save_checkpoint(tmp_path, model)
    meta = tmp_path / "checkpoint.json"
    meta.write_text(meta.read_text()[:50])
    with pytest.raises(DataFileError, match=r"checkpoint\.json is not readable JSON"):
        load_checkpoint(tmp_path, device="cpu")


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(DataFileError, match="no checkpoint at .*checkpoint.json"):
        load_checkpoint(tmp_path, device="cpu")


def test_architecture_that_does_not_fit_the_arrays_is_a_data_file_error(tmp_path):
    model, _ = trained()
    save_checkpoint(tmp_path, model)

    def widen(metadata):
        metadata["model"]["layers"][0]["units"] = 8

    edit_metadata(tmp_path, widen)
    with pytest.raises(DataFileError, match=r"model/0\.W is listed as .*architecture needs "
                                            r"float32 \(5, 8\)"):
        load_checkpoint(tmp_path, device="cpu")


def test_missing_layer_is_a_data_file_error(tmp_path):
    model, _ = trained()
    save_checkpoint(tmp_path, model)
    edit_metadata(tmp_path, lambda metadata: metadata["model"]["layers"].pop())
    with pytest.raises(DataFileError, match=r"unexpected arrays \['model/1.W', 'model/1.b'\]"):
        load_checkpoint(tmp_path, device="cpu")


def test_array_index_mismatch_is_a_data_file_error(tmp_path):
    model, _ = trained()
    save_checkpoint(tmp_path, model)
    edit_metadata(tmp_path, lambda metadata: metadata["arrays"].pop("model/0.b"))
    with pytest.raises(DataFileError, match=r"missing arrays \['model/0.b'\]"):
        load_checkpoint(tmp_path, device="cpu")


def test_failed_save_leaves_the_old_checkpoint_whole(tmp_path, monkeypatch):
    model, trainer = trained()
    save_checkpoint(tmp_path, model, trainer.optimizer, trainer.history)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    trainer.fit(np.ones((4, 5)), np.zeros(4, dtype=int), epochs=1)

    def broken_savez(file, **arrays):
        file.write(b"half an archive")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, model, trainer.optimizer, trainer.history)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    monkeypatch.undo()
    loaded = load_checkpoint(tmp_path, device="cpu")
    assert loaded.history.epochs == 2


def test_failure_writing_the_metadata_keeps_the_old_checkpoint_loadable(tmp_path, monkeypatch):
    import gpubackprop.training.checkpoint as checkpoint_module

    model, trainer = trained()
    save_checkpoint(tmp_path, model, trainer.optimizer, trainer.history)
    old_weights = {k: v.copy() for k, v in model.state_arrays().items()}
    trainer.fit(np.ones((4, 5)), np.zeros(4, dtype=int), epochs=1)

    def broken_write_json(path, data):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module, "write_json", broken_write_json)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, model, trainer.optimizer, trainer.history)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    loaded = load_checkpoint(tmp_path, device="cpu")
    for name, W in old_weights.items():
        np.testing.assert_array_equal(loaded.model.state_arrays()[name], W)


def test_written_files_get_the_umask_mode_not_0600(tmp_path):
    import os

    from gpubackprop.fileio import write_json

    write_json(tmp_path / "a.json", {"x": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~mask
