"""``hint("2.4")``: an exercise's hints, one more each time it is called.

Each exercise has up to three hints: the idea, then the formula, then the shape of the code (which
pieces, in which order, with which shapes), never the code itself. ``hint(id)`` shows the next one;
``hint(id, n)`` shows hints 1 to n. When the instructor's grader runs a notebook, every hint shown
is recorded with the results (``RIVERBANK_RESULTS``), and the gradebook lists how many hints each
exercise used; an instructor may set a cost per hint (``--hint-cost``).
"""

from __future__ import annotations

import json
import os
import re
import textwrap

from .exercises import EXERCISES
from .session import RESULTS_ENV
# The line that opens each hint shown; the grader also reads it from a submission's stored outputs.
HEADER = "Hint {k} of {n} · exercise {id}"
SHOWN = re.compile(r"Hint ([1-9]) of [1-9] · exercise (\d+\.\d+)")
_shown: dict[str, int] = {}


def _record(exercise_id: str, level: int) -> None:
    path = os.environ.get(RESULTS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"hint": exercise_id, "level": level}) + "\n")


def hint_text(exercise_id: str, k: int) -> str:
    ex = EXERCISES[exercise_id]
    body = textwrap.fill(ex.hints[k - 1], width=88, initial_indent="  ", subsequent_indent="  ")
    return HEADER.format(k=k, n=len(ex.hints), id=exercise_id) + ":\n" + body


def hint(exercise_id: str, n: int | None = None) -> None:
    """Print the next hint for ``exercise_id`` (or hints 1 to ``n``). Never raises."""
    ex = EXERCISES.get(str(exercise_id))
    if ex is None:
        print(f"There is no exercise {exercise_id!r}. Known exercises: {', '.join(sorted(EXERCISES))}")
        return
    if not ex.hints:
        print(f"Exercise {ex.id} has no hints.")
        return
    seen = _shown.get(ex.id, 0)
    if n is None:
        first, last = seen + 1, min(seen + 1, len(ex.hints))
        if seen >= len(ex.hints):
            first = 1  # all seen: show them all again
    else:
        try:
            last = int(n)
        except (TypeError, ValueError):
            print(f"hint({ex.id!r}, n): n must be a whole number from 1 to {len(ex.hints)}")
            return
        if not 1 <= last <= len(ex.hints):
            print(f"Exercise {ex.id} has {len(ex.hints)} hint{'s' if len(ex.hints) > 1 else ''}: "
                  f"ask for 1 to {len(ex.hints)}.")
            return
        first = 1
    _shown[ex.id] = max(seen, last)
    _record(ex.id, _shown[ex.id])
    print("\n\n".join(hint_text(ex.id, k) for k in range(first, last + 1)))
    if last == len(ex.hints) and n is None and seen >= len(ex.hints):
        print("\n(That was the last hint: the check's feedback and the chapter are the next places to look.)")
    elif last < len(ex.hints):
        print(f'\n(Run hint("{ex.id}") again for the next one.)')


__all__ = ["hint"]
