"""The grader against learner code it has never seen: correct variants get full marks, wrong ones
lose points and are named rightly, or not named at all (tests/second_opinion/)."""

from __future__ import annotations

import importlib

import pytest

from riverbank.grading import grade, render
from riverbank.grading.exercises import EXERCISES

MODULES = [importlib.import_module(f"second_opinion.ch{n:02d}") for n in range(1, 11)]
CORRECT = [(ex_id, fn) for m in MODULES for ex_id, fns in m.CORRECT.items() for fn in fns]
WRONG = [(ex_id, fn, named) for m in MODULES for ex_id, pairs in m.WRONG.items() for fn, named in pairs]


def _id(value):
    return getattr(value, "__name__", None) or str(value)[:40]


@pytest.mark.parametrize("exercise_id", sorted(EXERCISES))
def test_every_exercise_has_three_correct_and_five_wrong_variants(exercise_id):
    correct = [fn for ex_id, fn in CORRECT if ex_id == exercise_id]
    wrong = [fn for ex_id, fn, _ in WRONG if ex_id == exercise_id]
    assert len(correct) >= 3 and len(wrong) >= 5, (len(correct), len(wrong))


@pytest.mark.parametrize("exercise_id,fn", CORRECT, ids=_id)
def test_a_correct_variant_gets_full_marks(exercise_id, fn):
    ex = EXERCISES[exercise_id]
    result = grade(ex, fn)
    assert result.earned == ex.points, render(result)
    assert not result.mistakes, render(result)


@pytest.mark.parametrize("exercise_id,fn,named", WRONG, ids=_id)
def test_a_wrong_variant_loses_points_and_is_named_rightly(exercise_id, fn, named):
    ex = EXERCISES[exercise_id]
    result = grade(ex, fn)
    text = render(result)
    assert result.earned < ex.points, text
    if named is None:
        assert not result.mistakes, text
    else:
        assert result.mistakes and named in result.mistakes[0], text
