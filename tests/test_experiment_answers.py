"""An experiment's answer is measured by the learner, never read off a page: the number (at 3 and 4
decimals) appears in no source or output of its chapter, solutions or exercises notebook."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from riverbank.grading.exercises import EXERCISES
from riverbank.grading.spec import EXPERIMENT

ROOT = Path(__file__).resolve().parents[1]
MEASURED = sorted(ex_id for ex_id, ex in EXERCISES.items() if ex.level == EXPERIMENT)


def _text(stem_number: str) -> str:
    paths = [p for folder in ("chapters", "solutions", "exercises")
             for p in (ROOT / folder).glob(f"{stem_number}_*.ipynb")]
    parts = []
    for path in paths:
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            parts.append("".join(cell.get("source", "")))
            for output in cell.get("outputs", []):
                parts.append("".join(output.get("text", "")))
                parts += ["".join(v) for k, v in output.get("data", {}).items() if k.startswith("text/")]
    return "\n".join(parts)


@pytest.mark.parametrize("ex_id", MEASURED)
def test_a_measured_answer_is_printed_nowhere(ex_id):
    ex = EXERCISES[ex_id]
    answer = ex.reference()
    if isinstance(answer, str) or float(answer).is_integer():
        pytest.skip(f"{ex_id}'s answer is a whole number or a choice: small numbers appear everywhere")
    text = _text(f"{int(ex_id.split('.')[0]):02d}")
    for decimals in (3, 4):
        printed = f"{float(answer):.{decimals}f}"
        assert printed not in text, f"{ex_id}'s answer {answer} is printed as {printed}"


def test_the_text_searched_holds_sources_and_outputs():
    text = _text("01")
    assert "## Exercise 1.4:" in text and "All checks pass." in text  # a heading, and a stored output
