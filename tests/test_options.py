"""Every training option, given bad values, is one line on stderr and exit 2 naming it;
the API's arguments raise one-line InputErrors; canonical names are what is stored."""

import json
import subprocess
import sys

import numpy as np
import pytest

from gpubackprop import Trainer
from gpubackprop.cli.main import main
from gpubackprop.cli.options import OPTIONS, check_option
from gpubackprop.cli.pipeline import TrainConfig
from gpubackprop.errors import InputError
from gpubackprop.nn.layers import Linear
from gpubackprop.nn.model import Sequential, mlp

NUMBER = ["-1", "0", "nan", "inf", "-inf", "1e400", "abc", "", "0x10"]
INTEGER = ["-1", "0", "nan", "inf", "2147483648", str(10 ** 30), "1.5", "1e3", "abc", "", "0x10"]
NAME = ["bogus", "", "nan", "0", "-1"]
BAD_VALUES = {
    "--lr": NUMBER + ["1e-50", "1e39"],  # 0 and inf in float32
    "--clip-norm": NUMBER + ["1e-50", "1e39"],
    "--epochs": INTEGER,
    "--batch-size": INTEGER + ["half"],
    "--hidden": INTEGER,
    "--bptt-steps": INTEGER,
    "--patience": INTEGER,
    "--log-every": INTEGER,
    "--seed": ["-1", "nan", "inf", str(2 ** 32), str(10 ** 30), "1.5", "abc", ""],
    "--dtype": NAME + ["float", "float16", "int32", "half", "complex128"],
    "--device": NAME + ["tpu"],
    "--activation": NAME + ["swish"],
    "--loss": NAME + ["hinge"],
    "--optimizer": NAME + ["adagrad"],
    "--weight-decay": ["-1", "nan", "inf", "-inf", "1e400", "abc", "", "0x10"],  # 0 is none
    "--schedule": NAME + ["linear"],
    "--model": NAME + ["cnn"],
    "--distributed": NAME + ["gloo", "horovod"],
    "--seq-length": INTEGER,
    "--temperature": NUMBER,
    "--sample-length": INTEGER + ["100001"],
    "--prime": ["", "x" * 10_001],
}
CASES = [(flag, value) for flag, values in BAD_VALUES.items() for value in values]


def test_every_command_line_option_is_covered():
    flags = {f"--{name.replace('_', '-')}" for name in OPTIONS}
    settable = flags - {"--output-activation", "--reduction", "--standardize",
                        "--validation-size"}  # preset-only: no flag
    assert set(BAD_VALUES) == settable


@pytest.mark.parametrize("flag, value", CASES, ids=[f"{f}={v!r}" for f, v in CASES])
def test_bad_option_value_is_one_line_exit_2_naming_it(flag, value, capsys):
    assert main(["train", "iris", flag, value, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gpubackprop: error: "), err
    assert "Traceback" not in err
    assert flag in err or flag.lstrip("-").replace("-", "_") in err, err


@pytest.mark.parametrize("args", [["--seed", "-1"], ["--dtype", "bogus"], ["--lr", "1e-50"],
                                  ["--batch-size", "0"], ["--unknown-flag"]])
def test_real_entry_point_one_line_exit_2(args):
    result = subprocess.run([sys.executable, "-m", "gpubackprop", "train", "iris", *args],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("given, stored", [("float32", "float32"), ("FP64", "float64"),
                                           ("double", "float64"), ("single", "float32"),
                                           (np.float64, "float64"), (np.dtype("f4"), "float32")])
def test_dtype_is_stored_by_its_canonical_name(given, stored):
    config = TrainConfig.for_dataset("iris", dtype=given)
    assert config.dtype == stored and config.to_dict()["dtype"] == stored


def test_aliases_and_full_batch_are_normalised():
    config = TrainConfig.for_dataset("digits", loss="ce", optimizer="ADAM", batch_size="full")
    assert (config.loss, config.optimizer, config.batch_size) == ("cross_entropy", "adam", None)
    with pytest.raises(InputError, match="batch_size must be a positive integer, got 0"):
        TrainConfig.for_dataset("digits", batch_size=0)


@pytest.mark.parametrize("field, value", [
    ("seed", -1), ("seed", 2 ** 32), ("seed", 1.0), ("seed", "3"), ("epochs", 0),
    ("epochs", True), ("lr", float("nan")), ("lr", "0.1"), ("lr", 1e-50), ("hidden", 4),
    ("hidden", [4, 0]), ("hidden", "4"), ("dtype", "float"), ("validation_size", -1),
    ("standardize", "yes"), ("clip_norm", float("inf")), ("device", 3),
])
def test_train_config_refuses_bad_fields_naming_them(field, value):
    with pytest.raises(InputError, match=field) as info:
        TrainConfig.for_dataset("iris", **{field: value})
    assert "\n" not in str(info.value)


def test_dtype_alias_resumes(tmp_path, capsys):
    """Issue 15: '--dtype float' was stored as "float" and the run then refused to resume."""
    out = tmp_path / "run"
    assert main(["train", "iris", "--dtype", "double", "--epochs", "1", "--out", str(out),
                 "--quiet"]) == 0
    saved = json.loads((out / "history.json").read_text())["config"]
    assert saved["dtype"] == "float64"
    assert main(["train", "iris", "--resume", str(out), "--dtype", "float64", "--epochs", "2",
                 "--quiet"]) == 0
    assert main(["train", "iris", "--resume", str(out), "--dtype", "fp64", "--epochs", "3",
                 "--quiet"]) == 0
    assert main(["train", "iris", "--resume", str(out), "--batch-size", "full", "--epochs",
                 "4", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["train", "iris", "--resume", str(out), "--dtype", "float32", "--epochs", "5",
                 "--quiet"]) == 2
    assert "--dtype cannot change when resuming" in capsys.readouterr().err


def test_check_option_is_idempotent():
    for name, value in [("dtype", "f8"), ("loss", "crossentropy"), ("batch_size", "full"),
                        ("hidden", [3, 4]), ("seed", 2 ** 32 - 1)]:
        once = check_option(name, value)
        assert check_option(name, once) == once


# ------------------------------------------------------------------------ the API
X = np.random.default_rng(0).normal(size=(12, 3)).astype(np.float32)
y = np.arange(12) % 2


def small_model(**options):
    return mlp(3, [4], 2, device="numpy", **options)


@pytest.mark.parametrize("build, match", [
    (lambda: small_model(seed=-1), "seed must be an integer from 0 to 4294967295"),
    (lambda: small_model(seed=2 ** 80), "seed must be an integer from 0"),
    (lambda: small_model(seed=1.5), r"seed .* got 1.5 \(float\)"),
    (lambda: small_model(seed="a"), r"seed .* got 'a' \(str\)"),
    (lambda: small_model(dtype="float"), "'float' is ambiguous"),
    (lambda: small_model(dtype="bogus"), "unknown dtype 'bogus'"),
    (lambda: small_model(dtype=np.int32), "unknown dtype"),
    (lambda: small_model(dtype=None), "unknown dtype None"),
    (lambda: mlp(3, 4, 2, device="numpy"), "hidden must be a sequence of layer widths"),
    (lambda: mlp(3, [4, -2], 2, device="numpy"), r"hidden\[1\] must be a positive integer"),
    (lambda: mlp(3, [2 ** 40], 2, device="numpy"), r"hidden\[0\] must be at most 2147483647"),
    (lambda: Sequential([Linear(2)], n_inputs=0), "n_inputs must be a positive integer"),
    (lambda: Sequential(3, n_inputs=2), "layers must be a list of Layer objects"),
    (lambda: Sequential(["Linear"], n_inputs=2), "layers must be a list of Layer objects"),
    (lambda: Sequential(Linear(2), n_inputs=2), "layers must be a list of Layer objects"),
    (lambda: Trainer("model"), "model must be a Sequential .* got str"),
    (lambda: Trainer(None), "model must be a Sequential .* got NoneType"),
    (lambda: Trainer(small_model(), seed=-3), "seed must be an integer from 0"),
    (lambda: Trainer(small_model(), seed=np.nan), "seed must be an integer"),
    (lambda: Trainer(small_model(), lr=1e-60), "learning rate 1e-60 is 0.0 in float32"),
    (lambda: Trainer(small_model(), lr="0.1"), "learning rate must be a positive number"),
    (lambda: Trainer(small_model(), lr=True), "learning rate must be a positive number"),
    (lambda: Trainer(small_model(), clip_norm=1e40), "clip norm 1e\\+40 is inf in float32"),
    (lambda: Trainer(small_model(), batch_size=0), "batch size must be a positive integer"),
    (lambda: Trainer(small_model(), batch_size=2 ** 40), "batch size must be at most"),
    (lambda: Trainer(small_model(), verbose="x"), "verbose must be an integer"),
])
def test_api_arguments_raise_one_line_input_errors(build, match):
    with pytest.raises(InputError, match=match) as info:
        build()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("validation_data, match", [
    ((X,), r"validation_data must be a pair \(X_val, y_val\) or a triple \(X_val, y_val, "
           r"mask_val\), got a tuple of 1 items"),
    ((X, y, y, y), "got a tuple of 4 items"),
    ((X, y, y), r"a mask selects time steps of sequence outputs \(N, T, K\)"),
    (X, "got a ndarray"),
    ("xy", "got a str"),
    ({"X": X, "y": y}, "got a dict"),
    ((X, None), "y_val is None"),
    ((X[:, :2], y), "X_val has 2 features per sample, the model expects 3"),
    ((X, y[:5]), "X has 12 samples but X_val's labels has 5 labels"),
    ((X.astype(str), y), "X_val must be numeric"),
])
def test_malformed_validation_data_is_an_input_error(validation_data, match):
    trainer = Trainer(small_model(), verbose=0)
    with pytest.raises(InputError, match=match):
        trainer.fit(X, y, validation_data=validation_data)


@pytest.mark.parametrize("epochs", [0, -1, 1.0, "2", None, 2 ** 40])
def test_fit_epochs_checked(epochs):
    with pytest.raises(InputError, match="epochs must be"):
        Trainer(small_model(), verbose=0).fit(X, y, epochs=epochs)
