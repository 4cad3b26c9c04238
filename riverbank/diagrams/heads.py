"""Chapter 4's diagram: how multi-head attention cuts the features into heads and joins them again.

:func:`split_and_merge` draws the route of one sentence's queries (or keys, or values) through a
multi-head layer, with the shape at every stage (the batch axis is left out)::

    (n × d_model) -view-> (n × h × d_head) -transpose-> (h × n × d_head)
        -attention in each head-> (h × n × d_head) -transpose, reshape-> (n × d_model) -W_O-> (n × d_model)

It does the split and the merge itself, with ``view``, ``transpose`` and ``reshape`` on the tensor it
is given, so the numbers drawn in each box are where those operations really put them, and it
returns the shape of every stage for the chapter to print and check.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, Patch, Rectangle
from torch import Tensor

__all__ = ["split_and_merge"]

# Mid-tone fills with dark text: readable on the site's light and dark pages (white figure).
HEAD_COLOURS = ["#8fbce6", "#f2b46d", "#9fd39a", "#e79fb6", "#c9b27c", "#a9c6c4"]
MIXED = "#c3b4de"  # W_O's output: every feature mixes all heads
TEXT = "#1a1a1a"
EDGE = "#4d4d4d"
GAP = 0.6  # between the blocks of one stage


def _cells(ax, x0: float, y0: float, values, colours) -> None:
    """A grid of unit cells whose top-left corner is (x0, y0): values[r][c] (or None) on colours[r][c]."""
    for r, (row, fills) in enumerate(zip(values, colours)):
        for c, (value, fill) in enumerate(zip(row, fills)):
            ax.add_patch(Rectangle((x0 + c, y0 - r - 1), 1, 1, facecolor=fill, edgecolor=EDGE,
                                   linewidth=1))
            if value is not None:
                ax.text(x0 + c + 0.5, y0 - r - 0.5, str(value), ha="center", va="center",
                        fontsize=10, color=TEXT)


def _blocks(ax, x0: float, y0: float, blocks, colours, captions) -> float:
    """Blocks side by side, each a list of rows; returns the x where the last one ends."""
    x = x0
    for values, fills, caption in zip(blocks, colours, captions):
        _cells(ax, x, y0, values, fills)
        ax.text(x + len(values[0]) / 2, y0 - len(values) - 0.35, caption, ha="center", va="top",
                fontsize=10, color=TEXT)
        x += len(values[0]) + GAP
    return x - GAP


def _title(ax, x: float, y: float, title: str, shape: str) -> None:
    ax.text(x, y + 1.25, title, ha="left", va="bottom", fontsize=11, fontweight="bold", color=TEXT)
    ax.text(x, y + 0.3, shape, ha="left", va="bottom", fontsize=10.5, color=TEXT)


def _arrow(ax, start, end, label: str, style: str = "arc3", label_at=None) -> None:
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14, color=EDGE,
                                 linewidth=1.4, connectionstyle=style))
    x, y = label_at if label_at else ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.35)
    ax.text(x, y, label, ha="center", va="bottom", fontsize=9.5, color=TEXT, linespacing=1.3)


def split_and_merge(labels: Tensor, n_heads: int):
    """Draw the head split and the concatenation of one sentence.

    Args:
        labels: (n, d_model) integers to follow through the split, such as 10·word + feature.
        n_heads: h; must divide d_model.

    Returns:
        ``(fig, shapes)``: the figure, and a dict from each stage's name to the shape drawn for it:
        ``"input"``, ``"view"``, ``"transpose"``, ``"attention per head"``, ``"concatenate"`` and
        ``"W_O"``.
    """
    n, d_model = labels.shape
    d_head = d_model // n_heads
    viewed = labels.view(n, n_heads, d_head)         # (n, h, d_head)
    per_head = viewed.transpose(0, 1)                # (h, n, d_head)
    merged = per_head.transpose(0, 1).reshape(n, d_model)  # (n, d_model): the concatenation
    assert (merged == labels).all()
    shapes = {"input": tuple(labels.shape), "view": tuple(viewed.shape),
              "transpose": tuple(per_head.shape), "attention per head": tuple(per_head.shape),
              "concatenate": tuple(merged.shape), "W_O": tuple(merged.shape)}

    fig, ax = plt.subplots(figsize=(10, 5.0), dpi=100, facecolor="white")
    ax.set_facecolor("white")
    by_feature = [[HEAD_COLOURS[f // d_head] for f in range(d_model)]] * n
    top, low = 0.0, -7.4  # the two rows of the diagram

    # Row 1: the input, its view, its transpose.
    _title(ax, 0, top, "Q, K or V of one sentence", f"(n × d_model) = {shapes['input']}")
    _cells(ax, 0, top, labels.tolist(), by_feature)
    for t in range(n):
        ax.text(-0.2, top - t - 0.5, f"word {t}", ha="right", va="center", fontsize=10, color=TEXT)
    x_view = d_model + 2.6
    _arrow(ax, (d_model + 0.2, top - n / 2), (x_view - 0.2, top - n / 2), "view")
    _title(ax, x_view, top, "split into heads", f"(n × h × d_head) = {shapes['view']}")
    heads_colours = [[HEAD_COLOURS[h]] * d_head for h in range(n_heads)]
    end = _blocks(ax, x_view, top, viewed.tolist(), [heads_colours] * n,
                  [f"word {t}" for t in range(n)])
    x_heads = end + 2.6
    _arrow(ax, (end + 0.2, top - n / 2), (x_heads - 0.2, top - n / 2), "transpose")
    _title(ax, x_heads, top, "one matrix per head", f"(h × n × d_head) = {shapes['transpose']}")
    head_blocks = [[[HEAD_COLOURS[h]] * d_head] * n for h in range(n_heads)]
    end = _blocks(ax, x_heads, top, per_head.tolist(), head_blocks,
                  [f"head {h}" for h in range(n_heads)])

    # Row 2: attention in each head, the concatenation, W_O.
    blank = [[None] * d_head] * n
    _title(ax, 0, low, "attention in each head", f"(h × n × d_head) = {shapes['attention per head']}")
    end_attend = _blocks(ax, 0, low, [blank] * n_heads, head_blocks,
                         [f"head {h}" for h in range(n_heads)])
    # from the per-head matrices down and left to the attention: an elbow of three segments
    x_from, x_to, y_mid = (x_heads + end) / 2, end_attend / 2, top - n - 1.75
    ax.plot([x_from, x_from, x_to], [top - n - 1.0, y_mid, y_mid], color=EDGE, linewidth=1.4)
    _arrow(ax, (x_to, y_mid), (x_to, low + 2.0), "")
    ax.text((x_from + x_to) / 2, y_mid + 0.2,
            r"attention in every head at once: $\mathrm{softmax}(q\,k^{\top} / \sqrt{d_{head}})\,v$",
            ha="center", va="bottom", fontsize=10.5, color=TEXT)
    x_cat = end_attend + 2.6
    _arrow(ax, (end_attend + 0.2, low - n / 2), (x_cat - 0.2, low - n / 2),
           "transpose,\nreshape")
    _title(ax, x_cat, low, "concatenated", f"(n × d_model) = {shapes['concatenate']}")
    _cells(ax, x_cat, low, [[None] * d_model] * n, by_feature)
    for h in range(n_heads):
        ax.text(x_cat + (h + 0.5) * d_head, low - n - 0.35, f"head {h}", ha="center", va="top",
                fontsize=10, color=TEXT)
    x_out = x_cat + d_model + 2.6
    _arrow(ax, (x_cat + d_model + 0.2, low - n / 2), (x_out - 0.2, low - n / 2), "× W_O")
    _title(ax, x_out, low, "output", f"(n × d_model) = {shapes['W_O']}")
    _cells(ax, x_out, low, [[None] * d_model] * n, [[MIXED] * d_model] * n)
    ax.text(x_out + d_model / 2, low - n - 0.35, "every feature reads all heads", ha="center",
            va="top", fontsize=10, color=TEXT)

    handles = [Patch(facecolor=HEAD_COLOURS[h], edgecolor=EDGE, label=f"head {h}'s features")
               for h in range(n_heads)] + [Patch(facecolor=MIXED, edgecolor=EDGE, label="mixed by W_O")]
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, -0.02), ncol=n_heads + 1,
              frameon=False, fontsize=10, labelcolor=TEXT)
    ax.set_xlim(-1.6, max(x_heads + n_heads * (d_head + GAP), x_out + d_model) + 0.2)
    ax.set_ylim(low - n - 1.9, top + 2.1)
    ax.set_aspect("equal")
    ax.axis("off")
    fig.tight_layout()
    return fig, shapes
