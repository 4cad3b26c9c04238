"""Chapter 1's diagram: one word's attention output drawn as the weighted sum of the value vectors."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
from matplotlib.colors import Normalize
from matplotlib.patches import FancyArrowPatch, Rectangle

# Dark text and lines on a white figure, which reads the same in the site's light and dark modes.
_TEXT = "#1a1a1a"
_LINE = "#4a4a4a"
_CELL_W, _CELL_H, _ROW_GAP = 1.0, 0.8, 1.5


def _fill(value: float, norm: Normalize):
    """A mid-tone fill: blue for negative numbers, red for positive ones, pale near zero."""
    # Only the middle 60 % of coolwarm, so that no fill is dark enough to hide dark text.
    return plt.get_cmap("coolwarm")(0.2 + 0.6 * norm(value))


def _vector(ax, x: float, y: float, numbers: Sequence[float], norm: Normalize, decimals: int) -> None:
    """Draw one vector as a row of cells, each with its number, its left edge at x, centred on y."""
    for k, number in enumerate(numbers):
        ax.add_patch(Rectangle((x + k * _CELL_W, y - _CELL_H / 2), _CELL_W, _CELL_H,
                               facecolor=_fill(number, norm), edgecolor=_LINE, linewidth=1))
        ax.text(x + (k + 0.5) * _CELL_W, y, f"{number:.{decimals}f}", ha="center", va="center",
                color=_TEXT, fontsize=9)


def _arrow(ax, start, end, width: float) -> None:
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=10 + 1.5 * width,
                                 linewidth=width, color=_LINE, shrinkA=0, shrinkB=0))


def weighted_sum(words: Sequence[str], weights: Sequence[float], values: Sequence[Sequence[float]],
                 query: str, *, decimals: int = 4, value_decimals: int | None = None,
                 max_arrow_width: float = 10.0):
    """Draw ``query``'s attention output as ``sum_j weights[j] * values[j]``.

    Each row is one word: its value vector, an arrow as wide as its weight (the widest is
    ``max_arrow_width`` points at weight 1), and the scaled vector ``weights[j] * values[j]``.
    The scaled rows then add up to the output on the right.

    Args:
        words: the ``n`` words of the sentence, in order.
        weights: the query's ``n`` attention weights, one per word (they sum to 1).
        values: the ``n`` value vectors, each of length ``d``: shape ``(n, d)``.
        query: the word whose output this is, for the labels.
        decimals: how many decimals the weights, the weighted values and the output print.
        value_decimals: how many decimals the value vectors print; ``decimals`` if None.
        max_arrow_width: an arrow's line width in points at weight 1.

    Returns:
        The matplotlib figure. Callers end the cell with ``plt.show()``.
    """
    weights = [float(w) for w in weights]
    values = [[float(v) for v in row] for row in values]
    n, d = len(values), len(values[0])
    if len(words) != n or len(weights) != n or any(len(row) != d for row in values):
        raise ValueError(f"need one word and one weight per value row: got {len(words)} words, "
                         f"{len(weights)} weights and {n} value rows")
    scaled = [[w * v for v in row] for w, row in zip(weights, values)]
    output = [sum(column) for column in zip(*scaled)]
    biggest = max(abs(x) for row in values + scaled + [output] for x in row) or 1.0
    norm = Normalize(-biggest, biggest)

    x_values, x_scaled = 0.0, d + 2.2
    x_output = x_scaled + d + 2.2
    rows_y = [(n - 1 - i) * _ROW_GAP for i in range(n)]
    output_y = sum(rows_y) / n

    top = rows_y[0] + _CELL_H / 2 + 0.35
    left, right = x_values - 1.6, x_output + d * _CELL_W + 0.3
    bottom = min(rows_y[-1] - _CELL_H / 2, output_y - _CELL_H / 2 - 0.7) - 0.1
    inch = 0.6   # per unit of the drawing, so that cells and text keep their size for any n and d
    fig, ax = plt.subplots(figsize=(inch * (right - left), inch * (top + 0.5 - bottom) + 0.4),
                           dpi=100, layout="constrained", facecolor="white")
    ax.set_facecolor("white")
    for word, weight, row, part, y in zip(words, weights, values, scaled, rows_y):
        ax.text(x_values - 0.15, y, f"V[{word}]", ha="right", va="center", color=_TEXT, fontsize=10)
        _vector(ax, x_values, y, row, norm, decimals if value_decimals is None else value_decimals)
        _arrow(ax, (x_values + d * _CELL_W + 0.15, y), (x_scaled - 0.15, y),
               max(0.5, max_arrow_width * weight))
        ax.text((x_values + d * _CELL_W + x_scaled) / 2, y + 0.3, f"× {weight:.{decimals}f}",
                ha="center", va="bottom", color=_TEXT, fontsize=10)
        _vector(ax, x_scaled, y, part, norm, decimals)
        _arrow(ax, (x_scaled + d * _CELL_W + 0.15, y), (x_output - 0.15, output_y), 1.2)
    # The "+" sits between the converging arrows, above the middle one when n is odd.
    plus_y = output_y + (_ROW_GAP / 2 if n % 2 else 0.0)
    ax.text((x_scaled + d * _CELL_W + x_output) / 2 - 0.3, plus_y, "+", ha="center", va="center",
            color=_TEXT, fontsize=16, fontweight="bold")
    _vector(ax, x_output, output_y, output, norm, decimals)
    ax.text(x_output + d * _CELL_W / 2, output_y - _CELL_H / 2 - 0.15, f"output of {query}",
            ha="center", va="top", color=_TEXT, fontsize=10)

    for x, label in [(x_values, "value vectors"), (x_scaled, "weighted values")]:
        ax.text(x + d * _CELL_W / 2, top, label, ha="center", va="bottom", color=_TEXT, fontsize=10)
    ax.set_title(f'The output of "{query}" is a weighted sum of the value vectors',
                 color=_TEXT, fontsize=11)
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top + 0.5)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig
