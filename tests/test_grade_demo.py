"""``make grade-demo``'s class: built for every chapter, with a slip and a hint where promised."""

from __future__ import annotations

from pathlib import Path

import nbformat

from riverbank.grading.demo import build, slippable
from riverbank.grading.notebooks import checked_exercises

ROOT = Path(__file__).resolve().parents[1]


def test_the_demo_class_is_built_for_every_chapter_with_one_slip_and_one_hint_per_wrong_learner(tmp_path):
    n = build(tmp_path, 4, ROOT / "solutions", ROOT / "exercises")
    chapters = sorted(p.stem for p in (ROOT / "solutions").glob("*.ipynb"))
    assert n == 4 * len(chapters)
    for stem in chapters:
        solution = nbformat.read(ROOT / "solutions" / f"{stem}.ipynb", as_version=4)
        assert slippable(solution), f"{stem}: no exercise the demo can slip"
        built = [nbformat.read(p, as_version=4) for p in tmp_path.rglob("*.ipynb") if stem in str(p)]
        assert len(built) == 4
        wrong = [nb for nb in built if any(c.get("id", "").endswith("-asked-hint") for c in nb.cells)]
        assert len(wrong) == 1, stem
        assert checked_exercises(wrong[0]) == checked_exercises(solution)
