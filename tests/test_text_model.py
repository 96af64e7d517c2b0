"""The character-level text model: reading text, windows, bits per character, sampling, CLI."""

import json
import math

import numpy as np
import pytest

from gpubackprop.cli.main import main
from gpubackprop.cli.pipeline import TrainConfig, recurrent_layer
from gpubackprop.cli.text_task import build_text_model, load_text, run_text, sample_from_checkpoint
from gpubackprop.data.text import Vocabulary, read_text, split_tail, windows
from gpubackprop.errors import DataFileError, InputError
from gpubackprop.nn.sampling import sample_sequence, temperature_probabilities

TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom, "
        "it was the age of foolishness, it was the epoch of belief, it was the epoch of "
        "incredulity, it was the season of Light, it was the season of Darkness.\n") * 3


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "tale.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def small_config(**options):
    defaults = dict(hidden=[16], epochs=2, seq_length=16, sample_length=40, device="numpy",
                    dtype="float64", batch_size=8)
    return TrainConfig.for_dataset("text", **{**defaults, **options})


# ------------------------------------------------------------------- reading
@pytest.mark.parametrize("content, message", [
    (b"caf\xc3 latte" * 5, r"not UTF-8 text: byte 0xc3 at offset 3"),
    (b"plain text\x00 with a NUL, long enough", r"NUL character at offset 10"),
    (b"too short", r"has 9 characters; the text model needs at least 20"),
    ("".join(chr(0x100 + i) for i in range(300)).encode(), r"300 distinct characters"),
])
def test_bad_text_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(DataFileError, match=message) as info:
        read_text(path)
    assert "\n" not in str(info.value)


def test_size_cap_missing_file_and_folder(tmp_path):
    path = tmp_path / "big.txt"
    path.write_text("x" * 101)
    with pytest.raises(DataFileError, match="larger than 100 bytes"):
        read_text(path, max_bytes=100)
    assert len(read_text(path, max_bytes=101)) == 101
    with pytest.raises(DataFileError, match="does not exist"):
        read_text(tmp_path / "missing.txt")
    with pytest.raises(DataFileError, match="not a regular file"):
        read_text(tmp_path)


def test_line_ends_become_newlines(tmp_path):
    path = tmp_path / "dos.txt"
    path.write_bytes(b"\xef\xbb\xbfone line\r\nanother\rthird line here")  # with a BOM
    assert read_text(path) == "one line\nanother\nthird line here"


def test_vocabulary_round_trip_and_unknown_characters():
    vocabulary = Vocabulary.of(TEXT)
    assert vocabulary.characters == "".join(sorted(set(TEXT)))
    assert vocabulary.decode(vocabulary.encode(TEXT)) == TEXT
    with pytest.raises(InputError, match=r"--prime has the character 'Z' at position 4"):
        vocabulary.encode("It wZs", "--prime")


@pytest.mark.parametrize("n, length", [(2, 5), (17, 4), (33, 4), (100, 7)])
def test_windows_predict_every_character_after_the_first_once(n, length):
    ids = np.arange(n) * 3
    inputs, targets, mask = windows(ids, length)
    assert inputs.shape == targets.shape == mask.shape and inputs.shape[1] == length
    assert mask.sum() == n - 1
    np.testing.assert_array_equal(inputs[mask], ids[:-1])
    np.testing.assert_array_equal(targets[mask], ids[1:])


def test_tail_is_the_last_tenth():
    train, tail = split_tail(np.arange(95))
    assert len(tail) == 10 and tail[0] == 85 and len(train) == 85
    with pytest.raises(InputError):
        split_tail(np.arange(10))  # a tail of 1 character


# --------------------------------------------------------- bits per character
def independent_bpc(model, text: str, vocabulary: Vocabulary, length: int) -> float:
    """-mean log2 p(next character) over the tail, windows of ``length`` from a zero state,
    computed from the model's outputs with NumPy alone."""
    tail = text[-math.ceil(0.1 * len(text)):]
    total, count = 0.0, 0
    for start in range(0, len(tail) - 1, length):
        chunk = tail[start:start + length + 1]
        X = np.eye(len(vocabulary))[vocabulary.encode(chunk[:-1])][None]
        logits = model.backend.to_numpy(model.forward(model.backend.asarray(X), train=False))[0]
        log_p = logits - logits.max(axis=1, keepdims=True)
        log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
        targets = vocabulary.encode(chunk[1:])
        total -= log_p[np.arange(len(targets)), targets].sum() / np.log(2)
        count += len(targets)
    return total / count


def test_held_out_bits_per_character_are_computed_right(text_file):
    config = small_config(epochs=3)
    result = run_text(config, text_file, verbose=0)
    expected = independent_bpc(result.model, TEXT, result.vocabulary, config.seq_length)
    assert result.held_out_bpc == pytest.approx(expected, rel=1e-10)
    assert result.n_tail_targets == math.ceil(0.1 * len(TEXT)) - 1
    # The last epoch's held-out figure is the same measurement.
    assert result.history.val_loss[-1] / math.log(2) == pytest.approx(expected, rel=1e-10)
    # Training lowers it from the untrained model's.
    untrained = build_text_model(config, len(result.vocabulary))
    assert expected < independent_bpc(untrained, TEXT, result.vocabulary, config.seq_length)


def test_training_prints_bpc_every_epoch(text_file, capsys):
    run_text(small_config(epochs=2), text_file)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"]
    assert all("train bpc" in line and "held-out bpc" in line for line in lines)


# ----------------------------------------------------------------- sampling
def test_temperature_probabilities():
    logits = np.array([1.0, 3.0, 2.0, -1.0])
    for temperature in (0.5, 1.0, 2.0):
        expected = np.exp(logits / temperature) / np.exp(logits / temperature).sum()
        np.testing.assert_allclose(temperature_probabilities(logits, temperature), expected)
    np.testing.assert_array_equal(temperature_probabilities(logits, 1e-300), [0, 1, 0, 0])
    assert np.ptp(temperature_probabilities(logits, 1e6)) < 1e-5
    with pytest.raises(InputError, match="temperature must be a positive number"):
        temperature_probabilities(logits, 0.0)


def test_sampling_seed_and_temperature(text_file):
    config = small_config(epochs=2)
    data = load_text(text_file, config.seq_length, config.dtype)
    model = build_text_model(config, len(data.vocabulary))
    prime = data.vocabulary.encode("It was")
    draw = lambda temperature, seed: sample_sequence(model, prime, 30, temperature, seed, 16)
    assert np.array_equal(draw(1.0, 5), draw(1.0, 5))
    assert not np.array_equal(draw(1.0, 5), draw(1.0, 6))
    # Towards temperature 0 the draw is the likeliest next character (greedy decoding).
    ids, eye = list(prime), np.eye(len(data.vocabulary))
    for _ in range(30):
        logits = model.forward(model.backend.asarray(eye[ids[-16:]][None]), train=False)
        ids.append(int(np.argmax(model.backend.to_numpy(logits)[0, -1])))
    np.testing.assert_array_equal(draw(1e-8, 1), ids[len(prime):])
    np.testing.assert_array_equal(draw(1e-8, 2), ids[len(prime):])


# ----------------------------------------------------------------- the CLI
def test_train_text_then_sample_from_the_saved_run(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "text", str(text_file), "--epochs", "2", "--hidden", "8",
                 "--seq-length", "16", "--device", "numpy", "--sample-length", "25",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "held-out bpc" in printed and "sample (temperature 0.7, seed 0):" in printed
    summary = json.loads((out / "history.json").read_text())
    sample = (out / "sample.txt").read_text(encoding="utf-8")
    assert len(sample) == 25 and summary["sample"] == sample
    assert summary["held_out_bpc"] == pytest.approx(summary["val_bpc"][-1])
    # The checkpoint's vocabulary and settings draw the same sample again.
    again, config = sample_from_checkpoint(out, device="numpy")
    assert again == sample and config.temperature == 0.7
    assert main(["sample", str(out), "--seed", "3", "--prime", "it was", "--device",
                 "numpy"]) == 0
    first = capsys.readouterr().out
    assert main(["sample", str(out), "--seed", "3", "--prime", "it was", "--device",
                 "numpy"]) == 0
    assert capsys.readouterr().out == first and len(first) == 26  # 25 characters and "\n"


@pytest.mark.parametrize("arguments, message", [
    (["--temperature", "0"], "--temperature: must be a positive number, got 0.0"),
    (["--temperature", "-1"], "--temperature: must be a positive number"),
    (["--prime", "It wZs"], "--prime has the character 'Z' at position 4"),
    (["--model", "mlp"], "unknown text model 'mlp'; valid names: rnn, lstm, gru"),
    (["--loss", "mse"], "its loss is cross_entropy"),
    (["--patience", "2"], "--patience is not used by text runs"),
])
def test_bad_text_options_are_one_line_errors(text_file, capsys, arguments, message):
    assert main(["train", "text", str(text_file), "--epochs", "1", "--hidden", "4",
                 "--device", "numpy", *arguments]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_train_text_needs_a_file_and_other_datasets_take_none(tmp_path, capsys):
    assert main(["train", "text"]) == 2
    assert "train text needs the FILE" in capsys.readouterr().err
    assert main(["train", "iris", str(tmp_path / "x.txt")]) == 2
    assert "FILE is read by 'train text' only" in capsys.readouterr().err
    assert main(["train", "iris", "--temperature", "0.5"]) == 2
    assert "--temperature apply to 'train text' only" in capsys.readouterr().err


def test_sample_refuses_a_run_without_a_vocabulary(text_file, tmp_path, capsys):
    out = tmp_path / "iris-run"
    assert main(["train", "iris", "--epochs", "2", "--out", str(out), "--quiet"]) == 0
    assert main(["sample", str(out)]) == 2
    assert "holds no text model" in capsys.readouterr().err


def test_a_tampered_vocabulary_is_refused(text_file, tmp_path):
    out = tmp_path / "run"
    run = run_text(small_config(epochs=1), text_file, verbose=0, out=out)
    metadata = json.loads((out / "checkpoint.json").read_text())
    metadata["extra"]["text"]["vocabulary"] = run.vocabulary.characters[:-1]
    (out / "checkpoint.json").write_text(json.dumps(metadata))
    with pytest.raises(DataFileError, match="no valid vocabulary"):
        sample_from_checkpoint(out, device="numpy")


@pytest.mark.parametrize("model, kind", [("rnn", "RNN"), ("lstm", "LSTM"), ("gru", "GRU")])
def test_every_recurrent_layer_trains_the_text_model(text_file, model, kind):
    layer = recurrent_layer(small_config(model=model), 8, return_sequences=True)
    assert type(layer).__name__ == kind and layer.return_sequences
    config = small_config(model=model, hidden=[8], epochs=3)
    result = run_text(config, text_file, verbose=0)
    assert type(result.model.layers[0]).__name__ == kind
    untrained = build_text_model(config, len(result.vocabulary))
    assert result.held_out_bpc < independent_bpc(untrained, TEXT, result.vocabulary,
                                                 config.seq_length)
    assert len(result.sample) == config.sample_length
