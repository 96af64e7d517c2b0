"""Pictures of training: loss and accuracy curves (PNG, written atomically)."""

from __future__ import annotations

from typing import Sequence

from .fileio import atomic_path


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
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
