"""Chapter 2's diagrams: the path from embeddings to attention's output, and what the masks hide.

:func:`flow` draws one sentence's route, every tensor as a grid with one cell per entry::

    X (n × d_model) -W_Q, W_K, W_V-> Q (n × d_k), K (m × d_k), V (m × d_v)
        -> S = Q Kᵀ / √d_k (n × m) -softmax over each row-> A (n × m) -A V-> output (n × d_v)

:func:`masks` draws the causal mask, the padding mask broadcast over the queries, and the two
combined, for one padded sentence. Both take the chapter's own tensors and return the shapes (or
masks) they drew, for the chapter to print and check.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, Patch, Rectangle
from torch import Tensor

__all__ = ["flow", "masks"]

# Mid-tone fills with dark text: readable on the site's light and dark pages (white figure).
FILLS = {"X": "#b9c6d6", "Q": "#8fbce6", "K": "#f2b46d", "V": "#9fd39a", "S": "#c3b4de",
         "A": "#c3b4de", "output": "#a9c6c4"}
KEEP, HIDDEN = "#8fbce6", "#e6e6e6"
TEXT = "#1a1a1a"
EDGE = "#4d4d4d"
CELL = 0.6


def _grid(ax, x0: float, y_mid: float, rows: int, cols: int, fill: str, title: str, shape: str,
          values=None) -> tuple[float, float, float]:
    """A rows × cols grid whose left edge is x0, centred on y_mid; returns (left, right, top)."""
    top = y_mid + rows * CELL / 2
    for r in range(rows):
        for c in range(cols):
            ax.add_patch(Rectangle((x0 + c * CELL, top - (r + 1) * CELL), CELL, CELL, facecolor=fill,
                                   edgecolor=EDGE, linewidth=1))
            if values is not None:
                ax.text(x0 + (c + 0.5) * CELL, top - (r + 0.5) * CELL, values[r][c], ha="center",
                        va="center", fontsize=8, color=TEXT)
    ax.text(x0, top + 0.55, title, ha="left", va="bottom", fontsize=11, fontweight="bold", color=TEXT)
    ax.text(x0, top + 0.12, shape, ha="left", va="bottom", fontsize=10, color=TEXT)
    return x0, x0 + cols * CELL, top


def _arrow(ax, start, end, label: str = "", label_at=None, ha: str = "center") -> None:
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14, color=EDGE,
                                 linewidth=1.3))
    if label:
        x, y = label_at if label_at else ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.12)
        ax.text(x, y, label, ha=ha, va="bottom", fontsize=9.5, color=TEXT)


def flow(tokens: list[str], X: Tensor, Q: Tensor, K: Tensor, V: Tensor, scores: Tensor,
         weights: Tensor, output: Tensor):
    """Draw self-attention of one sentence from its embeddings to its output.

    Args:
        tokens: the n words, which label the rows of X.
        X: (n, d_model) embeddings. Q: (n, d_k), K: (m, d_k), V: (m, d_v) (m = n here).
        scores: (n, m) = Q Kᵀ / √d_k. weights: (n, m), their softmax over each row, written in
            the cells with 2 decimals. output: (n, d_v) = weights V.

    Returns:
        ``(fig, shapes)``: the figure, and a dict from each tensor's name to the shape drawn for it.
    """
    shapes = {name: tuple(t.shape) for name, t in
              [("X", X), ("Q", Q), ("K", K), ("V", V), ("scores", scores), ("weights", weights),
               ("output", output)]}
    (n, d_model), (_, d_k), (m, d_v) = shapes["X"], shapes["Q"], shapes["V"]
    assert shapes["K"] == (m, d_k) and shapes["scores"] == shapes["weights"] == (n, m)
    assert shapes["output"] == (n, d_v) and len(tokens) == n

    fig, ax = plt.subplots(figsize=(11, 5.2), dpi=100, facecolor="white")
    ax.set_facecolor("white")
    gap = 2.9  # rows of the Q, K, V column, centre to centre
    left, right, _ = _grid(ax, 0, 0, n, d_model, FILLS["X"], "X: embeddings",
                           f"(n × d_model) = {shapes['X']}")
    for t, word in enumerate(tokens):
        ax.text(-0.12, (n / 2 - t - 0.5) * CELL, word, ha="right", va="center", fontsize=10, color=TEXT)
    x_qkv = right + 3.2
    ends = {}
    for name, y, d, w in [("Q", gap, d_k, "W_Q"), ("K", 0, d_k, "W_K"), ("V", -gap, d_v, "W_V")]:
        rows = n if name == "Q" else m
        dim = "d_k" if name != "V" else "d_v"
        _, r_edge, _ = _grid(ax, x_qkv, y, rows, d, FILLS[name], {"Q": "Q: queries", "K": "K: keys",
                             "V": "V: values"}[name], f"({'n' if name == 'Q' else 'm'} × {dim}) = {shapes[name]}")
        ends[name] = (r_edge, y)
        _arrow(ax, (right + 0.1, 0), (x_qkv - 0.1, y), f"× {w}", label_at=(right + 1.1, y * 0.62 + 0.1))
    ax.text((right + x_qkv) / 2, -gap - 1.3, "W_Q, W_K: (d_model × d_k)\nW_V: (d_model × d_v)",
            ha="center", va="top", fontsize=9.5, color=TEXT)
    x_s, y_s = ends["Q"][0] + 2.6, gap / 2
    s_left, s_right, _ = _grid(ax, x_s, y_s, n, m, FILLS["S"], "S = Q Kᵀ / √d_k", f"(n × m) = {shapes['scores']}")
    for name in ("Q", "K"):
        _arrow(ax, (ends[name][0] + 0.1, ends[name][1]), (s_left - 0.1, y_s))
    x_a = s_right + 2.4
    a_left, a_right, _ = _grid(ax, x_a, y_s, n, m, FILLS["A"], "A: weights", f"(n × m) = {shapes['weights']}",
                               values=[[f"{w:.2f}".lstrip("0") for w in row] for row in weights.tolist()])
    _arrow(ax, (s_right + 0.1, y_s), (a_left - 0.1, y_s), "softmax", label_at=((s_right + a_left) / 2, y_s + 0.12))
    ax.text((s_right + a_left) / 2, y_s - 0.12, "each row\nsums to 1", ha="center", va="top", fontsize=9,
            color=TEXT)
    x_o, y_o = a_right + 2.4, -gap / 2
    o_left, _, _ = _grid(ax, x_o, y_o, n, d_v, FILLS["output"], "output = A V", f"(n × d_v) = {shapes['output']}")
    _arrow(ax, (a_right + 0.1, y_s), (o_left - 0.1, y_o))
    _arrow(ax, (ends["V"][0] + 0.1, ends["V"][1]), (o_left - 0.1, y_o - 0.2))
    ax.text((ends["V"][0] + o_left) / 2, ends["V"][1] - 0.3,
            "each output row: the values blended by one row of A", ha="center", va="top", fontsize=9.5,
            color=TEXT)
    ax.set_xlim(-1.4, x_o + d_v * CELL + 0.3)
    ax.set_ylim(-gap - 2.3, gap + n * CELL / 2 + 1.3)
    ax.set_aspect("equal")
    ax.axis("off")
    fig.tight_layout()
    return fig, shapes


def _mask_panel(ax, mask: Tensor, tokens: list[str], title: str, note: str) -> None:
    rows, cols = mask.shape
    for r in range(rows):
        for c in range(cols):
            keep = bool(mask[r, c])
            ax.add_patch(Rectangle((c, rows - r - 1), 1, 1, facecolor=KEEP if keep else HIDDEN,
                                   edgecolor=EDGE, linewidth=1))
            ax.text(c + 0.5, rows - r - 0.5, "T" if keep else "F", ha="center", va="center",
                    fontsize=10, color=TEXT if keep else "#5a5a5a")
    ax.set_xticks([c + 0.5 for c in range(cols)], tokens[:cols], rotation=45, ha="right", color=TEXT)
    ax.set_yticks([rows - r - 0.5 for r in range(rows)], tokens[:rows], color=TEXT)
    ax.set_xlabel("key (attended to)", color=TEXT)
    ax.set_ylabel("query (attending)", color=TEXT)
    ax.set_title(f"{title}\n{note}", color=TEXT, fontsize=10.5, linespacing=1.4)
    ax.set_xlim(0, cols)
    ax.set_ylim(0, rows)
    ax.set_aspect("equal")
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)


def masks(tokens: list[str], causal: Tensor, padding: Tensor):
    """Draw what each mask hides from the queries of one padded sentence (True = keep).

    Args:
        tokens: the sentence's tokens, padding included, one per position (length n).
        causal: (n, n) bool, True where key j <= query i.
        padding: (n,) bool, True at the real tokens.

    Returns:
        ``(fig, drawn)``: the figure, and the three (n, n) masks drawn: ``"causal"``,
        ``"padding"`` (the padding mask broadcast over the queries) and ``"both"``.
    """
    n = len(tokens)
    assert causal.shape == (n, n) and padding.shape == (n,)
    drawn = {"causal": causal, "padding": padding[None, :].expand(n, n), "both": causal & padding[None, :]}
    fig, axes = plt.subplots(1, 3, figsize=(11, 4.8), dpi=100, facecolor="white")
    titles = {"causal": "causal mask", "padding": "padding mask, broadcast over the queries",
              "both": "both: causal & padding"}
    notes = {"causal": "hides later tokens (not generated yet)", "padding": "hides the padding (not text)",
             "both": "hides what either mask hides"}
    for ax, name in zip(axes, drawn):
        ax.set_facecolor("white")
        _mask_panel(ax, drawn[name], tokens, titles[name], notes[name])
    fig.legend(handles=[Patch(facecolor=KEEP, edgecolor=EDGE, label="True: the query may attend to the key"),
                        Patch(facecolor=HIDDEN, edgecolor=EDGE, label="False: score set to −∞, weight 0")],
               loc="lower center", ncol=2, frameon=False, fontsize=10, labelcolor=TEXT)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig, drawn
