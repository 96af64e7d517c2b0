"""Pictures of training: curves, first-layer weights, hidden activations.

Every picture is a PNG drawn with matplotlib's Agg backend and written
atomically (:func:`~gpubackprop.fileio.atomic_path`).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..fileio import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curve(values: Sequence[float], path, title: str, xlabel: str, ylabel: str,
               log_y: bool = False) -> None:
    """Save one curve (values against 1..len) as a PNG.

    Parameters
    ----------
    values : sequence of float, length I
    path : str or Path
        Destination ``.png``; written atomically.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    ax.plot(range(1, len(values) + 1), values, linewidth=1.5)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if log_y:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    _save(plt, fig, path)


def _save(plt, fig, path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def plot_history(history, loss_path, accuracy_path, title: str,
                 test_accuracy: float | None = None) -> None:
    """Loss and accuracy per epoch, training and validation, as two PNGs.

    Parameters
    ----------
    history : History
        ``epoch_loss``, ``accuracy`` and (when present) ``val_loss``,
        ``val_accuracy`` are drawn against the epoch number.
    loss_path, accuracy_path : str or Path
    title : str
        Prefix of both titles (e.g. the dataset name).
    test_accuracy : float, optional
        Drawn as a dashed horizontal line on the accuracy plot.
    """
    plt = _pyplot()
    epochs = np.arange(1, history.epochs + 1)
    for path, train, val, ylabel in ((loss_path, history.epoch_loss, history.val_loss, "loss"),
                                     (accuracy_path, history.accuracy, history.val_accuracy,
                                      "accuracy")):
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
        ax.plot(epochs, train, marker="o", markersize=3, label="training")
        if len(val) == len(epochs):
            ax.plot(epochs, val, marker="o", markersize=3, label="validation")
        if ylabel == "accuracy" and test_accuracy is not None:
            ax.axhline(test_accuracy, color="grey", linestyle="--", linewidth=1,
                       label=f"test {test_accuracy:.4f}")
        if ylabel == "loss":
            ax.set_yscale("log")
            _plain_log_labels(ax.yaxis)
        ax.set(title=f"{title}: {ylabel} per epoch", xlabel="epoch", ylabel=ylabel)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        _save(plt, fig, path)


def _plain_log_labels(axis) -> None:
    """Label a log axis as 0.02, 0.05, 0.1, ... instead of 2 x 10^-2 (also 0.03 on short axes)."""
    from matplotlib.ticker import FuncFormatter

    def label(value, _position):
        if value <= 0:
            return ""
        low, high = axis.get_view_interval()
        shown = (1, 2, 3, 5) if high < 30 * low else (1, 2, 5)
        mantissa = round(value / 10 ** math.floor(math.log10(value)), 6)
        return f"{value:g}" if mantissa in shown else ""

    axis.set_major_formatter(FuncFormatter(label))
    axis.set_minor_formatter(FuncFormatter(label))


def plot_weights(W: np.ndarray, image_shape: tuple, path, title: str,
                 n_tiles: int = 64) -> None:
    """The first layer's incoming weights of each hidden unit, as image tiles.

    Parameters
    ----------
    W : ndarray, shape (H * W_img, units)
        First-layer weights; column ``j`` is what unit ``j`` looks for.
    image_shape : tuple (H, W_img)
    path : str or Path
    n_tiles : int
        Units shown (the first ``n_tiles``), in a square-ish grid.

    Each tile has its own symmetric colour scale: red positive, blue negative.
    Drawn as one image (see :func:`weight_mosaic`), which is fast.
    """
    plt = _pyplot()
    mosaic = weight_mosaic(W, image_shape, n_tiles)
    height, width = mosaic.shape
    fig, ax = plt.subplots(figsize=(7.0, 7.0 * height / width + 0.6), dpi=100)
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="white")
    ax.imshow(mosaic, cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    n = min(n_tiles, np.shape(W)[1])
    ax.set_title(f"{title}: first-layer weights of units 0-{n - 1}, row by row\n"
                 "(each tile scaled to its largest |weight|; red +, blue -)", fontsize=10)
    _save(plt, fig, path)


def weight_mosaic(W: np.ndarray, image_shape: tuple, n_tiles: int = 64) -> np.ndarray:
    """The first ``n_tiles`` columns of ``W`` as image tiles in one array.

    Parameters
    ----------
    W : ndarray, shape (H * W_img, units)
    image_shape : tuple (H, W_img)
    n_tiles : int

    Returns
    -------
    ndarray, shape (rows * (H + 1) - 1, cols * (W_img + 1) - 1)
        Tiles in a square-ish grid, each divided by its largest absolute
        weight (so in [-1, 1]), separated by NaN lines.
    """
    W = np.asarray(W, dtype=np.float64)
    n = min(n_tiles, W.shape[1])
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    h, w = image_shape
    mosaic = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), np.nan)
    for k in range(n):
        tile = W[:, k].reshape(image_shape)
        r, c = divmod(k, cols)
        mosaic[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = \
            tile / (np.abs(tile).max() or 1.0)
    return mosaic


def activations_figure(images: np.ndarray, labels: np.ndarray, layer_outputs: list,
                     image_shape: tuple, title: str, class_names=()):
    """A figure of sample images beside their hidden-layer activations and output probabilities.

    Parameters
    ----------
    images : ndarray, shape (S, H * W_img)
        The samples, one row each.
    labels : ndarray, shape (S,)
        True classes.
    layer_outputs : list of ndarray
        From :meth:`Sequential.layer_outputs`: one ``(S, width)`` array per
        layer; all but the last are drawn as heat strips (one row per
        sample, units in their fixed order, so strips compare across samples);
        the last (logits) as softmax probabilities.
    image_shape : tuple (H, W_img)
    class_names : sequence of str, optional

    Returns
    -------
    matplotlib Figure
        One colour bar per hidden layer says what its colours mean.
    """
    plt = _pyplot()
    hidden, logits = layer_outputs[:-1], np.asarray(layer_outputs[-1], dtype=np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    n_samples = len(images)
    names = [str(name) for name in class_names] or [str(c) for c in range(probs.shape[1])]
    widths = [1] + [4] * len(hidden) + [2]
    # One row per sample, then a thin row that holds the hidden layers' colour bars.
    fig, grid = plt.subplots(n_samples + 1, len(widths), figsize=(2 + 4 * len(hidden) + 2.5,
                                                                  1.1 * n_samples + 1.5),
                             dpi=150, squeeze=False,
                             gridspec_kw={"width_ratios": widths,
                                          "height_ratios": [1] * n_samples + [0.3]})
    axes, bar_row = grid[:-1], grid[-1]
    scales = [_activation_scale(H) for H in hidden]
    for i in range(n_samples):
        row = axes[i]
        row[0].imshow(images[i].reshape(image_shape), cmap="gray_r", interpolation="nearest")
        row[0].set_axis_off()
        row[0].set_title(f"true: {names[labels[i]]}", fontsize=8, pad=2)
        for j, (H, (low, top, cmap)) in enumerate(zip(hidden, scales), start=1):
            row[j].imshow(H[i:i + 1], aspect="auto", cmap=cmap, vmin=low, vmax=top,
                          interpolation="nearest")
            row[j].set_yticks([])
            row[j].tick_params(labelsize=6)
            if i == 0:
                row[j].set_title(f"hidden layer {j}: {H.shape[1]} units", fontsize=8)
            if i < n_samples - 1:
                row[j].set_xticks([])
        bars = row[-1].bar(range(probs.shape[1]), probs[i], color="lightgrey")
        bars[int(probs[i].argmax())].set_color("tab:blue" if probs[i].argmax() == labels[i]
                                               else "tab:red")
        row[-1].set_ylim(0, 1)
        row[-1].set_xticks(range(probs.shape[1]))
        row[-1].set_xticklabels([name[:4] for name in names] if i == n_samples - 1 else [],
                                fontsize=6, rotation=90 if len(names[0]) > 1 else 0)
        row[-1].tick_params(labelsize=6)
        if i == 0:
            row[-1].set_title("output probabilities", fontsize=8)
    axes[-1][1].set_xlabel("unit", fontsize=7)
    for ax in bar_row:
        ax.set_axis_off()
    for j, (low, top, cmap) in enumerate(scales, start=1):
        mappable = plt.cm.ScalarMappable(norm=plt.Normalize(low, top), cmap=cmap)
        bar_row[j].set_axis_on()
        bar = fig.colorbar(mappable, cax=bar_row[j], orientation="horizontal")
        bar.set_label(f"colour: activation of a unit in layer {j} ({low:.2f} to {top:.2f})",
                      fontsize=7)
        bar.ax.tick_params(labelsize=6)
    fig.suptitle(f"{title}: hidden activations of {n_samples} test samples "
                 "(one row per sample, one column per unit)")
    return fig


def plot_activations(images: np.ndarray, labels: np.ndarray, layer_outputs: list,
                     image_shape: tuple, path, title: str, class_names=()) -> None:
    """Save :func:`activations_figure` as a PNG at ``path`` (written atomically)."""
    plt = _pyplot()
    fig = activations_figure(images, labels, layer_outputs, image_shape, title, class_names)
    _save(plt, fig, path)


def _activation_scale(H: np.ndarray) -> tuple:
    """Colour scale of one layer's activations (S, width): (low, high, colour map).

    Non-negative outputs (ReLU, sigmoid) run from 0 to their maximum; outputs
    with negative values (tanh) on a symmetric diverging scale.
    """
    top = max(float(np.abs(H).max()), 1e-12)
    return (-top, top, "RdBu_r") if float(H.min()) < 0 else (0.0, top, "magma")
