"""Pictures: the weight mosaic's layout, layer outputs, and the PNG files."""

import numpy as np

from gpubackprop.nn.model import mlp
from gpubackprop.cli.plots import plot_activations, plot_history, plot_weights, weight_mosaic
from gpubackprop.training.trainer import History

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_weight_mosaic_places_each_unit_as_a_normalised_tile():
    W = np.arange(12.0).reshape(4, 3) - 5  # 3 units of 2x2 pixels
    mosaic = weight_mosaic(W, (2, 2), n_tiles=3)
    assert mosaic.shape == (5, 5)  # 2x2 grid of 2x2 tiles with one-pixel gaps
    np.testing.assert_allclose(mosaic[:2, :2], W[:, 0].reshape(2, 2) / 5)
    np.testing.assert_allclose(mosaic[:2, 3:], W[:, 1].reshape(2, 2) / 5)
    np.testing.assert_allclose(mosaic[3:, :2], W[:, 2].reshape(2, 2) / 6)
    assert np.isnan(mosaic[2]).all() and np.isnan(mosaic[:, 2]).all()
    assert np.isnan(mosaic[3:, 3:]).all()  # the unused fourth cell


def test_layer_outputs_are_each_layer_in_turn():
    model = mlp(4, [5, 3], 2, device="cpu", seed=0)
    X = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    outputs = model.layer_outputs(X)
    assert [H.shape for H in outputs] == [(6, 5), (6, 3), (6, 2)]
    assert (outputs[0] >= 0).all()  # ReLU
    np.testing.assert_array_equal(outputs[-1], model.forward(X, train=False))


def test_pictures_are_written_as_png(tmp_path):
    history = History(epoch_loss=[0.5, 0.2, 0.1], accuracy=[0.8, 0.9, 0.95],
                      val_loss=[0.6, 0.3, 0.2], val_accuracy=[0.75, 0.85, 0.9])
    plot_history(history, tmp_path / "loss.png", tmp_path / "accuracy.png", "toy",
                 test_accuracy=0.88)
    model = mlp(16, [6], 3, device="cpu", seed=0)
    plot_weights(model.state_arrays()["0.W"], (4, 4), tmp_path / "weights.png", "toy")
    X = np.random.default_rng(0).random((3, 16)).astype(np.float32)
    plot_activations(X, np.array([0, 1, 2]), model.layer_outputs(X), (4, 4),
                     tmp_path / "activations.png", "toy", class_names=("a", "b", "c"))
    for name in ("loss", "accuracy", "weights", "activations"):
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == PNG_SIGNATURE
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        ["accuracy.png", "activations.png", "loss.png", "weights.png"]


def test_activation_strips_have_a_labelled_colour_bar_per_hidden_layer():
    import matplotlib.pyplot as plt

    from gpubackprop.cli.plots import activations_figure

    model = mlp(16, [6, 5], 3, activation="tanh", device="cpu", seed=0)
    X = np.random.default_rng(0).random((3, 16)).astype(np.float32)
    fig = activations_figure(X, np.array([0, 1, 2]), model.layer_outputs(X), (4, 4), "toy")
    bars = [ax.get_xlabel() for ax in fig.axes if ax.get_xlabel().startswith("colour:")]
    plt.close(fig)
    assert len(bars) == 2
    assert all("activation of a unit in layer" in label for label in bars)


def test_the_train_plot_uses_a_log_loss_axis(tmp_path, monkeypatch):
    from gpubackprop.cli import plots
    from gpubackprop.cli.main import main

    scales = []
    monkeypatch.setattr(plots, "_save",
                        lambda plt, fig, path: scales.append(fig.axes[0].get_yscale()))
    assert main(["train", "iris", "--epochs", "20", "--device", "numpy",
                 "--plot", str(tmp_path / "iris.png")]) == 0
    assert scales == ["log"]
