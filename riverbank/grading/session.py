"""The in-notebook interface: ``check`` prints feedback for one exercise, ``score_table`` the totals.

When the instructor grader runs a submission it sets ``RIVERBANK_RESULTS`` to a file path; each
check then also appends its result there as one JSON line.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .exercises import EXERCISES, chapter_exercises
from .runner import NOT_ATTEMPTED, ExerciseResult, grade, render

RESULTS_ENV = "RIVERBANK_RESULTS"
_results: dict[str, ExerciseResult] = {}


def _record(result: ExerciseResult) -> None:
    _results[result.exercise.id] = result
    path = os.environ.get(RESULTS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(result.to_dict(), ensure_ascii=False) + "\n")


def check(exercise_id: str, fn: Any, record: bool = True) -> None:
    """Grade ``fn`` against exercise ``exercise_id`` and print the feedback. Never raises.

    ``record=False`` shows feedback without counting it, for demonstrations of the grader.
    """
    exercise = EXERCISES.get(exercise_id)
    if exercise is None:
        print(f"There is no exercise {exercise_id!r}. Known exercises: {', '.join(sorted(EXERCISES))}")
        return
    try:
        result = grade(exercise, fn)
    except Exception as error:  # a grader bug must not stop the learner's notebook
        print(f"Exercise {exercise_id}: the grader itself failed ({type(error).__name__}: {error}). "
              "Please report this; your work is unaffected.")
        return
    if record:
        _record(result)
    print(render(result))


def score_table(chapter: int) -> None:
    """Print every exercise of ``chapter`` with its status and points, and the total."""
    rows = []
    for ex in chapter_exercises(chapter):
        result = _results.get(ex.id)
        status = result.status if result else "not checked"
        earned = result.earned if result else 0.0
        rows.append((ex.id, ex.level, ex.function_name, status, f"{earned:g}/{ex.points:g}"))
    total = sum(_results[ex.id].earned for ex in chapter_exercises(chapter) if ex.id in _results)
    possible = sum(ex.points for ex in chapter_exercises(chapter))
    rows.append(("", "", "Total", "", f"{total:g}/{possible:g}"))
    head = ("Exercise", "Level", "Function", "Status", "Points")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    print(line(head))
    print("  ".join("-" * w for w in widths))
    for r in rows[:-1]:
        print(line(r))
    print("  ".join("-" * w for w in widths))
    print(line(rows[-1]))


__all__ = ["check", "score_table", "NOT_ATTEMPTED", "RESULTS_ENV"]
