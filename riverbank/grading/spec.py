"""How an exercise is described: the function asked for, its reference, its checks and known mistakes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class Case:
    """One check: inputs to call the learner's function with, and the points it is worth.

    ``make_inputs`` returns a fresh tuple of positional arguments each time it is called, so a
    learner's function that mutates its inputs cannot affect the reference or later checks.
    ``kind`` is "fixed", "random" or "edge"; it only groups checks in the feedback.
    """

    name: str
    make_inputs: Callable[[], tuple]
    points: float = 1.0
    kind: str = "fixed"


@dataclass(frozen=True)
class Mistake:
    """A known wrong variant of the reference, and the sentence that names it for the learner."""

    message: str
    function: Callable[..., Any]


@dataclass(frozen=True)
class Exercise:
    """A graded exercise.

    ``signature`` is shown to the learner, e.g. ``attention_weights(Q: (n, d_k), K: (m, d_k)) -> (n, m)``.
    Outputs are compared with ``torch.allclose(yours, expected, rtol, atol)``; the default
    tolerances allow float32 rounding differences between equivalent formulas (a sum taken in a
    different order) but not a real error, which is orders of magnitude larger.
    """

    id: str
    title: str
    function_name: str
    arg_names: tuple[str, ...]
    signature: str
    reference: Callable[..., Any]
    cases: tuple[Case, ...]
    mistakes: tuple[Mistake, ...] = ()
    rtol: float = 1e-4
    atol: float = 1e-5
    time_limit: float = 5.0
    # (text found in an error message, what it probably means): turns a crash into a named mistake
    error_hints: tuple[tuple[str, str], ...] = field(default=())

    @property
    def points(self) -> float:
        return sum(case.points for case in self.cases)
