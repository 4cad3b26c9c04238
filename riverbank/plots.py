"""Figure helpers shared by the chapters, so that every figure has the same size, grid and labels."""

from __future__ import annotations

import matplotlib.pyplot as plt


def labelled_axes(title: str, xlabel: str, ylabel: str, *, size: tuple[float, float] = (6.4, 3.6)):
    """A new figure with one set of axes, titled and labelled, with a light grid.

    Returns ``(fig, ax)``. Callers draw on ``ax`` and end the cell with ``plt.show()``.
    """
    fig, ax = plt.subplots(figsize=size, dpi=100, layout="constrained")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def layer_ticks(ax, layers) -> None:
    """Put one x tick on each layer number: layers are whole numbers, never 2.5."""
    layers = list(layers)
    ax.set_xticks(layers)
    ax.set_xlim(min(layers) - 0.3, max(layers) + 0.3)
