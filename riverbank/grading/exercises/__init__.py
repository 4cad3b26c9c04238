"""Every graded exercise in the course, by id ("1.1" is chapter 1's first exercise)."""

from __future__ import annotations

from ..spec import Exercise
from . import ch01, ch02, ch03, ch04, ch05, ch06, ch07, ch08, ch09, ch10

EXERCISES: dict[str, Exercise] = {ex.id: ex for module in (ch01, ch02, ch03, ch04, ch05, ch06, ch07, ch08, ch09, ch10) for ex in module.EXERCISES}


def chapter_exercises(chapter: int) -> list[Exercise]:
    return [ex for ex in EXERCISES.values() if ex.id.split(".")[0] == str(chapter)]
