"""Memory before allocating: sizes beyond the machine are refused with the estimate."""

import numpy as np
import pytest

import gpubackprop.memory as memory
from gpubackprop import OutOfMemoryError
from gpubackprop.cli.main import main
from gpubackprop.nn.model import mlp
from gpubackprop.training.trainer import Trainer


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpubackprop: error: "), err
    return lines[0]


@pytest.mark.parametrize("hidden", [["100000000"], ["50000", "50000", "50000"], ["2000000000"]])
def test_huge_hidden_is_refused_naming_the_estimate(capsys, hidden):
    code = main(["train", "digits", "--hidden", *hidden, "--device", "numpy", "--quiet"])
    line = one_line_error(capsys.readouterr().err)
    assert code == 2
    assert "needs about" in line and "GiB (parameters and gradients" in line
    assert "reduce --hidden or --batch-size" in line


def test_the_estimate_fails_in_proportion_to_what_is_available(capsys, monkeypatch):
    """Just above the estimate passes, just below it is refused: the figure is used."""
    seen = []
    real = memory.check_fits

    def record(estimate, available, where="memory"):
        seen.append(estimate.total)
        return real(estimate, available, where)

    monkeypatch.setattr("gpubackprop.cli.pipeline.check_fits", record)
    args = ["train", "iris", "--epochs", "2", "--hidden", "64", "--device", "numpy", "--quiet"]
    assert main(args) == 0
    needed = seen[0]
    monkeypatch.setattr(memory, "available_host_memory", lambda: needed - 1)
    monkeypatch.setattr("gpubackprop.backends.base.available_host_memory", lambda: needed - 1)
    capsys.readouterr()
    assert main(args) == 2
    assert "reduce --hidden" in one_line_error(capsys.readouterr().err)


def test_huge_batch_size_is_the_full_batch(capsys):
    """The compiled step used to allocate buffers for the batch size, not the data."""
    code = main(["train", "digits", "--epochs", "1", "--hidden", "8", "--batch-size",
                 "1000000000", "--quiet"])
    assert code == 0, capsys.readouterr().err


def test_trainer_checks_the_data_before_moving_it(monkeypatch):
    model = mlp(5, [4], 3, device="numpy")
    trainer = Trainer(model, batch_size=32, verbose=0)
    X = np.broadcast_to(np.float32(0), (10**11, 5))  # 2 TB, taking no memory as a view
    y = np.broadcast_to(np.int64(0), (10**11,))
    with pytest.raises(OutOfMemoryError, match=r"data [\d.]+ GiB.*reduce the batch size, the "
                                               r"layer widths or the data"):
        trainer.fit(X, y)


def test_model_checks_its_parameters_before_building():
    with pytest.raises(OutOfMemoryError, match="parameters and gradients .*reduce the layer"):
        mlp(10**6, [10**6], 10, device="numpy")


def test_a_memory_error_inside_training_is_one_line(monkeypatch, capsys):
    def out_of_memory(self, *args):
        raise MemoryError("Unable to allocate 3.2 GiB")

    monkeypatch.setattr(Trainer, "_fit", out_of_memory)
    code = main(["train", "iris", "--epochs", "2", "--device", "numpy", "--quiet"])
    line = one_line_error(capsys.readouterr().err)
    assert code == 2 and "ran out of memory" in line and "3.2 GiB" in line


def test_a_memory_error_anywhere_in_the_cli_is_one_line(monkeypatch, capsys):
    import gpubackprop.cli.pipeline as pipeline

    def out_of_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(pipeline, "load_dataset", out_of_memory)
    code = main(["train", "iris", "--epochs", "2", "--device", "numpy", "--quiet"])
    assert code == 2 and "out of memory" in one_line_error(capsys.readouterr().err)


def test_available_memory_takes_the_smallest_limit(monkeypatch):
    monkeypatch.setattr(memory, "_meminfo_available", lambda: 64 << 30)
    monkeypatch.setattr(memory, "_address_space_available", lambda: None)
    limits = {"/sys/fs/cgroup/memory.max": 8 << 30, "/sys/fs/cgroup/memory.current": 3 << 30}
    monkeypatch.setattr(memory, "_read_int", lambda path: limits.get(str(path)))
    assert memory.available_host_memory() == 5 << 30
    limits["/sys/fs/cgroup/memory.max"] = None  # "max": no cgroup limit
    assert memory.available_host_memory() == 64 << 30


@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("layer_type", ["LSTM", "GRU"])
def test_the_estimate_counts_what_gated_recurrent_layers_keep(backend_name, layer_type,
                                                               return_sequences):
    import gpubackprop
    from gpubackprop.nn.layers import Linear
    from gpubackprop.nn.model import Sequential, planned_activations
    from gpubackprop.nn.recurrent import TimeDistributed

    N, T, D, H, classes = 16, 12, 5, 24, 3
    layers = [getattr(gpubackprop, layer_type)(H, return_sequences=return_sequences),
              TimeDistributed(Linear(classes)) if return_sequences else Linear(classes)]
    model = Sequential(layers, n_inputs=D, device=backend_name, dtype="float32", seed=0)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, T, D)).astype(np.float32)
    y = rng.integers(0, classes, (N, T) if return_sequences else N)
    Trainer(model, loss="cross_entropy", batch_size=N, verbose=0).fit(X, y, epochs=1)
    held = sum(int(array.nbytes) for layer in model.layers for array in layer.training_buffers())
    widths, kept_per_step = planned_activations(layers, D)
    estimate = memory.training_estimate(4, widths, N, steps=T, kept_per_step=kept_per_step)
    activations = estimate.parts[f"activations of a batch of {N}"]
    assert held / 1.5 <= activations <= held * 1.5, (activations, held)
