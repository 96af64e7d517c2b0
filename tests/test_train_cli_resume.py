"""gpubackprop train: the --out folder, --resume, and resumed runs matching uninterrupted ones."""

import json

import numpy as np
import pytest

from gpubackprop.training.callbacks import ModelCheckpoint
from gpubackprop.training.checkpoint import load_checkpoint
from gpubackprop.cli.main import main
from gpubackprop.cli.pipeline import TrainConfig, run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def history_without_times(history):
    data = history.to_dict()
    data.pop("epoch_time")
    return data


@pytest.mark.parametrize("schedule, model", [("cosine", "mlp"), ("step", "mlp"),
                                             ("cosine", "lstm"), ("step", "gru")])
def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path, monkeypatch, schedule,
                                                              model):
    """Also for the gated recurrent models: their checkpoints (layers, learnt weights, Adam
    state) restore a run that trains on exactly as the uninterrupted one."""
    config = TrainConfig.for_dataset("digits", model=model, epochs=4, schedule=schedule,
                                     device="cpu", seed=5, hidden=[16])
    whole = run(config, verbose=0, out=tmp_path / "whole")

    # Interrupt the same run (as Ctrl-C would) once the checkpoint of epoch 2 is saved.
    save_epoch = ModelCheckpoint.on_epoch_end

    def interrupt_after_two(self, trainer, epoch, logs):
        save_epoch(self, trainer, epoch, logs)
        if epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(ModelCheckpoint, "on_epoch_end", interrupt_after_two)
    with pytest.raises(KeyboardInterrupt):
        run(config, verbose=0, out=tmp_path / "part")
    monkeypatch.undo()
    checkpoint = load_checkpoint(tmp_path / "part", device="cpu")
    assert checkpoint.history.epochs == 2
    resumed = run(TrainConfig.resuming(checkpoint, "digits"), verbose=0,
                  out=tmp_path / "part", checkpoint=checkpoint)

    assert resumed.history.epochs == 4
    assert history_without_times(resumed.history) == history_without_times(whole.history)
    assert len(set(whole.history.lr)) > 1  # the schedule did change the rate
    for name, W in whole.model.state_arrays().items():
        np.testing.assert_array_equal(resumed.model.state_arrays()[name], W)
    assert resumed.test_accuracy == whole.test_accuracy


def test_cli_writes_every_file_of_the_out_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "digits", "--epochs", "2", "--device", "cpu", "--out", str(out),
                 "--schedule", "step", "--patience", "5"]) == 0
    printed = capsys.readouterr().out
    assert "epoch 2/2" in printed and "val acc" in printed and "test accuracy" in printed
    names = {path.name for path in out.iterdir()}
    assert {"history.json", "checkpoint.json", "loss.png", "accuracy.png", "weights.png",
            "activations.png"} <= names
    assert len([name for name in names if name.endswith(".npz")]) == 1
    assert not [name for name in names if name.startswith(".")]
    for name in ("loss.png", "accuracy.png", "weights.png", "activations.png"):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
    summary = json.loads((out / "history.json").read_text())
    assert 0 <= summary["test_accuracy"] <= 1
    assert len(summary["history"]["val_accuracy"]) == 2
    assert summary["config"]["schedule"] == "step" and summary["config"]["patience"] == 5


@pytest.fixture
def two_epochs(tmp_path):
    """A folder with the checkpoint of a 2-epoch digits run (no pictures, for speed)."""
    out = tmp_path / "run"
    run(TrainConfig.for_dataset("digits", epochs=2, device="cpu", hidden=[16]), verbose=0,
        out=out)
    return out


def test_cli_resume_continues_epoch_numbering(two_epochs, capsys):
    out = two_epochs
    assert main(["train", "digits", "--epochs", "3", "--resume", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "epoch 3/3" in printed and "epoch 1/" not in printed
    summary = json.loads((out / "history.json").read_text())
    assert len(summary["history"]["epoch_loss"]) == 3


@pytest.mark.parametrize("arguments, message", [
    (["--epochs", "2"], "has trained 2 of its 2 epochs already; pass --epochs N with N > 2"),
    (["--epochs", "3", "--hidden", "8"], "--hidden cannot change when resuming"),
    (["--epochs", "3", "--lr", "0.1"], "--lr cannot change when resuming"),
])
def test_cli_resume_errors_are_one_line(two_epochs, capsys, arguments, message):
    assert main(["train", "digits", "--resume", str(two_epochs), *arguments]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


def test_cli_resume_from_a_missing_checkpoint(tmp_path, capsys):
    assert main(["train", "digits", "--resume", str(tmp_path)]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def test_cli_resume_refuses_other_datasets_and_bare_checkpoints(two_epochs, tmp_path, capsys):
    from gpubackprop.training.checkpoint import save_checkpoint
    from gpubackprop.nn.model import mlp

    assert main(["train", "iris", "--resume", str(two_epochs), "--epochs", "3"]) == 2
    assert "trained on digits, not iris" in capsys.readouterr().err
    save_checkpoint(tmp_path / "bare", mlp(64, [4], 10, device="cpu"))
    assert main(["train", "digits", "--resume", str(tmp_path / "bare")]) == 2
    assert "holds no training configuration" in capsys.readouterr().err


def test_full_batch_run_checkpoints_its_final_state_not_every_iteration(tmp_path):
    result = run(TrainConfig.for_dataset("iris", epochs=200, device="numpy"), verbose=0,
                 out=tmp_path)
    (saver,) = [c for c in result.trainer.callbacks if isinstance(c, ModelCheckpoint)]
    assert saver.saved_epochs == [200]
    assert load_checkpoint(tmp_path, device="numpy").history.epochs == 200


def test_cli_checkpoint_every_sets_the_cadence(tmp_path, monkeypatch, capsys):
    saves = []
    save = ModelCheckpoint._save
    monkeypatch.setattr(ModelCheckpoint, "_save",
                        lambda self, trainer: (saves.append(trainer.history.epochs),
                                               save(self, trainer)))
    assert main(["train", "iris", "--epochs", "9", "--device", "numpy", "--quiet",
                 "--out", str(tmp_path), "--checkpoint-every", "4"]) == 0
    assert saves == [4, 8, 9]
    assert main(["train", "iris", "--out", str(tmp_path), "--checkpoint-every", "4x"]) == 2
    error = capsys.readouterr().err
    assert "checkpoint cadence must be N (epochs) or Ns (seconds)" in error
    assert error.count("\n") == 1
