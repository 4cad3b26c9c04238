"""Chapter 3's diagram: one (sin, cos) pair of a sinusoidal encoding as a point on the unit circle,
turned by the angle k·ω when the position moves k steps on."""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib.pyplot as plt
from matplotlib.patches import Circle, FancyArrowPatch

# Dark text and lines and mid-tone markers, on the white figure the site shows in both its modes.
_TEXT = "#1a1a1a"
_LINE = "#4a4a4a"
_START, _END, _STEP = "#2b7bba", "#e07b39", "#8c8c8c"


@dataclass(frozen=True)
class PairTurn:
    """The numbers the diagram shows: pair ``pair`` of PE(pos) and of PE(pos + k).

    ``points[j]`` is the pair at position ``pos + j`` for j = 0 … k, as (sin, cos): the even
    dimension first, as in the encoding. ``angle`` is k·ω in radians.
    """

    omega: float
    pos: int
    k: int
    points: tuple[tuple[float, float], ...]

    @property
    def angle(self) -> float:
        return self.k * self.omega

    @property
    def start(self) -> tuple[float, float]:
        return self.points[0]

    @property
    def end(self) -> tuple[float, float]:
        return self.points[-1]


def pair_turn(omega: float, pos: int, k: int) -> PairTurn:
    """The (sin, cos) points of one pair, of frequency ``omega``, at positions pos, pos + 1, …, pos + k.

    Computed in float64 with ``math``, one number at a time. ``k`` is a whole number ≥ 1.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    points = tuple((math.sin(p * omega), math.cos(p * omega)) for p in range(pos, pos + k + 1))
    return PairTurn(omega=float(omega), pos=int(pos), k=int(k), points=points)


def _panel(ax, turn: PairTurn, order: str) -> None:
    """One circle. ``order`` is "sin, cos" (x = sine, y = cosine) or "cos, sin" (x = cosine)."""
    sine_first = order == "sin, cos"

    def xy(point):
        s, c = point
        return (s, c) if sine_first else (c, s)

    def polar(p):  # the angle of position p's point, measured counter-clockwise from the x axis
        theta = p * turn.omega
        return math.pi / 2 - theta if sine_first else theta

    ax.add_patch(Circle((0, 0), 1, fill=False, edgecolor=_LINE, linewidth=1))
    ax.axhline(0, color=_STEP, linewidth=0.6)
    ax.axvline(0, color=_STEP, linewidth=0.6)
    last = len(turn.points) - 1
    for j, point in enumerate(turn.points):
        x, y = xy(point)
        colour = _START if j == 0 else _END if j == last else _STEP
        if j in (0, last):
            ax.plot([0, x], [0, y], color=colour, linewidth=1.5)
        ax.plot(x, y, "o", color=colour, markersize=9 if j in (0, last) else 6, zorder=3)
        ax.annotate(f"pos {turn.pos + j}", (x, y), xytext=(1.2 * x, 1.2 * y), ha="center",
                    va="center", color=_TEXT, fontsize=9)

    # The turn itself: an arc from the start to the end, with an arrowhead at the end.
    radius, n = 0.32, 60
    a0, a1 = polar(turn.pos), polar(turn.pos + turn.k)
    arc = [(radius * math.cos(a0 + (a1 - a0) * t / n), radius * math.sin(a0 + (a1 - a0) * t / n))
           for t in range(n + 1)]
    ax.plot([p[0] for p in arc[:-3]], [p[1] for p in arc[:-3]], color=_TEXT, linewidth=1.2)
    ax.add_patch(FancyArrowPatch(arc[-4], arc[-1], arrowstyle="-|>", mutation_scale=12,
                                 color=_TEXT, shrinkA=0, shrinkB=0))
    middle = (a0 + a1) / 2
    ax.text(0.5 * math.cos(middle), 0.5 * math.sin(middle), "k·ω", ha="center", va="center",
            color=_TEXT, fontsize=10)

    first, second = ("sin(pos·ω)", "cos(pos·ω)") if sine_first else ("cos(pos·ω)", "sin(pos·ω)")
    ax.set_xlabel(f"x = {first}", color=_TEXT)
    ax.set_ylabel(f"y = {second}", color=_TEXT)
    turning = "clockwise" if sine_first else "counter-clockwise"
    block = "R(k·ω)ᵀ" if sine_first else "R(k·ω)"
    ax.set_title(f"the pair listed as ({order})\nturns {turning} by k·ω = {turn.angle:.2f} rad;\n"
                 f"its 2 × 2 block is {block}",
                 color=_TEXT, fontsize=10)
    ax.set_xlim(-1.45, 1.45)
    ax.set_ylim(-1.45, 1.45)
    ax.set_aspect("equal")
    ax.set_facecolor("white")
    ax.tick_params(colors=_TEXT)
    for spine in ax.spines.values():
        spine.set_color(_LINE)


def draw_pair_turn(omega: float = 1.0, pos: int = 1, k: int = 2, *, pair: int = 0):
    """Draw one pair of the sinusoidal encoding on the unit circle, at positions pos to pos + k.

    Left: the pair in the encoding's order, (sin, cos), where moving k positions on turns the
    point clockwise by k·ω, so the block that does it is the transpose of the usual rotation
    matrix R(θ) = [[cos θ, −sin θ], [sin θ, cos θ]]. Right: the same points listed as (cos, sin),
    where the same move is R(k·ω), counter-clockwise. Grey dots mark the positions in between.

    Args:
        omega: the pair's frequency ω, in radians per position.
        pos: the starting position.
        k: how many positions on (≥ 1).
        pair: the pair's index i, for the title only.

    Returns:
        ``(fig, turn)``: the matplotlib figure and the :class:`PairTurn` whose numbers it shows.
        Callers end the cell with ``plt.show()``.
    """
    turn = pair_turn(omega, pos, k)
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 4.9), dpi=100, layout="constrained",
                             facecolor="white")
    for ax, order in zip(axes, ("sin, cos", "cos, sin")):
        _panel(ax, turn, order)
    fig.suptitle(f"Pair {pair} (ω = {omega:.4g} rad per position) from position {pos} to {pos + k}",
                 color=_TEXT)
    return fig, turn
