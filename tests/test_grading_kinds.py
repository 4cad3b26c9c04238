"""The grader beyond one function of tensors: classes handed in (adapt), checks judged by a bar
(judge), experiments answered with a number or a choice, hints, and where feedback points."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from riverbank.grading import grade, render
from riverbank.grading import hints as hints_module
from riverbank.grading.runner import COMPLETE, FAILED, NOT_ATTEMPTED, PARTIAL
from riverbank.grading.spec import BUILD, EXPERIMENT, Case, Exercise, Mistake, WrongKind
from riverbank.grading.submission import Row, _charge_hints, hints_in_outputs, read_hints


# --- a class handed in: adapt ------------------------------------------------------------------------

class Scale(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        return x * self.w


def _run_module(cls, config, state, x):
    m = cls(**config).to(x.dtype)
    m.load_state_dict(state)
    return m(x)


def _adapt(obj):
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise WrongKind(f"expected a subclass of torch.nn.Module, got {type(obj).__name__}")
    return lambda config, state, x: _run_module(obj, config, state, x)


def _inputs(seed):
    g = torch.Generator().manual_seed(seed)
    return ({"d": 4}, {"w": torch.randn(4, generator=g)}, torch.randn(3, 4, generator=g))


def _shifted(config, state, x):
    return x * state["w"] + 1.0


MODULE = Exercise(
    "0.1", "scale", "Scale", ("config", "state", "x"), "Scale(d)(x)",
    reference=lambda config, state, x: _run_module(Scale, config, state, x),
    cases=(Case("a", lambda: _inputs(1), 2), Case("b", lambda: _inputs(2), 2, "random")),
    mistakes=(Mistake("adds a bias of 1", _shifted, hint=1, section="chapter 0, section “Scaling”"),),
    level=BUILD, hints=("multiply by the weight",), adapt=_adapt)


def test_a_right_class_gets_full_marks_and_the_float64_truth_uses_promoted_state_dicts():
    result = grade(MODULE, Scale)
    assert result.status == COMPLETE, render(result)


def test_a_function_where_a_class_is_asked_for_is_told_so():
    result = grade(MODULE, lambda config, state, x: x)
    assert result.status == FAILED and "expected a subclass of torch.nn.Module" in render(result)


def test_not_implemented_in_the_learners_init_or_forward_is_not_attempted():
    class Stub(nn.Module):
        def __init__(self, d):
            super().__init__()
            raise NotImplementedError

    class StubForward(Scale):
        def forward(self, x):
            raise NotImplementedError

    assert grade(MODULE, Stub).status == NOT_ATTEMPTED
    assert grade(MODULE, StubForward).status == NOT_ATTEMPTED


def test_a_module_without_forward_is_told_so():
    class NoForward(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(d))

        def foward(self, x):  # misspelt
            return x * self.w

    result = grade(MODULE, NoForward)
    assert result.earned == 0 and "has no forward method" in render(result)


def test_a_named_mistake_points_to_its_hint_and_section():
    class Biased(Scale):
        def forward(self, x):
            return x * self.w + 1.0

    text = render(grade(MODULE, Biased))
    assert "Likely mistake: adds a bias of 1." in text
    assert 'Explained in hint("0.1", 1) and in chapter 0, section “Scaling”.' in text


def test_a_wrong_answer_without_a_named_mistake_is_offered_a_hint():
    class Off(Scale):
        def forward(self, x):
            return x * self.w * 2

    text = render(grade(MODULE, Off))
    assert 'Stuck? hint("0.1") shows a hint' in text and "Likely mistake" not in text


def test_a_mistake_pointing_to_a_hint_that_does_not_exist_is_refused():
    with pytest.raises(ValueError, match="points to hint 2"):
        Exercise("0.9", "t", "f", ("x",), "f(x)", lambda x: x, (Case("c", lambda: (1,)),),
                 mistakes=(Mistake("m", lambda x: x, hint=2),), hints=("one",))


# --- a check judged by a bar --------------------------------------------------------------------------

JUDGED = Exercise(
    "0.2", "accuracy", "train", ("seed",), "train(seed) -> accuracy",
    reference=lambda seed: 1.0,
    cases=(Case("trained", lambda: (0,), 3),),
    judge=lambda value, seed: None if isinstance(value, float) and value >= 0.95 else
    f"held-out exact match {value:.1%}; the bar is 95.0%" if isinstance(value, float) else "return a float",
    level=BUILD, hints=("train longer",))


def test_judge_passes_above_the_bar_and_explains_below_it():
    assert grade(JUDGED, lambda seed: 0.97).status == COMPLETE
    result = grade(JUDGED, lambda seed: 0.5)
    assert result.earned == 0 and "held-out exact match 50.0%; the bar is 95.0%" in render(result)
    assert "return a float" in render(grade(JUDGED, lambda seed: "high"))
    assert grade(JUDGED, lambda seed: None).earned == 0  # a judge that cannot read it is still feedback


# --- experiments: a number or a choice -------------------------------------------------------------------

NUMBER = Exercise(
    "0.3", "measure", "measure", (), "measure() -> float", reference=lambda: 0.25,
    cases=(Case("your answer", lambda: (), 2, "experiment"),),
    mistakes=(Mistake("you measured the square, not the root", lambda: 0.0625, hint=1),),
    level=EXPERIMENT, hints=("take the root",), answer_tol=lambda truth: 0.01)

CHOICE = Exercise(
    "0.4", "choose", "choose", (), "choose() -> 'a' | 'b' | 'c'", reference=lambda: "b",
    cases=(Case("your answer", lambda: (), 1, "experiment"),),
    mistakes=(Mistake("'a' holds only without the mask", lambda: "a"),),
    level=EXPERIMENT, hints=("look at the last row",))


def test_a_number_passes_within_its_tolerance_and_a_tensor_scalar_is_read_as_a_number():
    assert grade(NUMBER, lambda: 0.255).status == COMPLETE
    assert grade(NUMBER, lambda: torch.tensor(0.245)).status == COMPLETE
    result = grade(NUMBER, lambda: 0.3)
    assert result.earned == 0 and "not within 0.01 of the measured value" in render(result)
    assert not result.mistakes


def test_a_wrong_number_that_a_known_mistake_gives_is_named():
    result = grade(NUMBER, lambda: 0.0626)
    assert result.mistakes == ["you measured the square, not the root"], render(result)


@pytest.mark.parametrize("answer,why", [(None, "returned None"), ("0.25", "expected a number"),
                                        (float("nan"), "not a finite number"), (True, "got the bool")])
def test_an_answer_of_the_wrong_kind_is_explained(answer, why):
    result = grade(NUMBER, lambda: answer)
    assert result.earned == 0 and why in render(result)


def test_a_choice_ignores_case_and_spaces_and_names_a_known_wrong_one():
    assert grade(CHOICE, lambda: " B ").status == COMPLETE
    result = grade(CHOICE, lambda: "a")
    assert result.mistakes == ["'a' holds only without the mask"] and "is not the right one" in render(result)
    assert "expected your choice as a string" in render(grade(CHOICE, lambda: 2))


# --- hints ----------------------------------------------------------------------------------------------

@pytest.fixture
def course(monkeypatch):
    monkeypatch.setitem(hints_module.EXERCISES, MODULE.id, MODULE)
    three = Exercise("0.5", "t", "f", ("x",), "f(x)", lambda x: x, (Case("c", lambda: (1,)),),
                     hints=("the idea", "the formula", "the shape"))
    monkeypatch.setitem(hints_module.EXERCISES, three.id, three)
    monkeypatch.setattr(hints_module, "_shown", {})
    return three


def test_hint_shows_the_next_one_each_time_and_records_it(course, capsys, tmp_path, monkeypatch):
    results = tmp_path / "results.jsonl"
    monkeypatch.setenv("RIVERBANK_RESULTS", str(results))
    hints_module.hint("0.5")
    first = capsys.readouterr().out
    assert "Hint 1 of 3 · exercise 0.5:\n  the idea" in first and "the formula" not in first
    hints_module.hint("0.5")
    second = capsys.readouterr().out
    assert "Hint 2 of 3" in second and "the idea" not in second
    hints_module.hint("0.5", 3)
    third = capsys.readouterr().out
    assert all(h in third for h in ("the idea", "the formula", "the shape"))
    levels = [json.loads(line)["level"] for line in results.read_text().splitlines()]
    assert levels == [1, 2, 3]
    assert read_hints(results, ["0.5"]) == {"0.5": 3}
    assert read_hints(results, ["1.1"]) == {}


@pytest.mark.parametrize("args,said", [(("9.9",), "There is no exercise"), (("0.5", 4), "ask for 1 to 3"),
                                       (("0.5", "two"), "must be a whole number")])
def test_hint_explains_a_wrong_request(course, capsys, args, said):
    hints_module.hint(*args)
    assert said in capsys.readouterr().out


def test_the_grader_reads_hints_from_stored_outputs_and_charges_a_cost(course):
    import nbformat

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell('hint("0.5")')
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="Hint 2 of 3 · exercise 0.5:\n  x\n")]
    nb.cells = [cell]
    assert hints_in_outputs(nbformat.writes(nb).encode(), ["0.5"]) == {"0.5": 2}
    assert hints_in_outputs(b"not json", ["0.5"]) == {} and hints_in_outputs(b'{"cells": 3}', ["0.5"]) == {}
    row = Row("a.ipynb", exercises=["0.5"], earned={"0.5": 1.0}, feedback={"0.5": "Exercise 0.5: 1/1"},
              hint_cost=0.25)
    _charge_hints(row, {"0.5": 2})
    assert row.earned == {"0.5": 0.5} and row.hints == {"0.5": 2}
    assert "Hints seen: 2 (−0.5 points at 0.25 per hint)" in row.feedback["0.5"]
    free = Row("b.ipynb", exercises=["0.5"], earned={"0.5": 1.0}, feedback={"0.5": ""})
    _charge_hints(free, {"0.5": 3})
    assert free.earned == {"0.5": 1.0} and "Hints seen: 3" in free.feedback["0.5"]


def test_integer_outputs_say_how_many_entries_differ():
    tokens = Exercise("0.6", "t", "f", ("x",), "f(x)", lambda x: x + 1,
                      (Case("c", lambda: (torch.arange(6),)),), hints=("add one",))
    text = render(grade(tokens, lambda x: torch.cat([x[:2] + 1, x[2:] + 2])))
    assert "values differ: 4 of 6 entries are not the expected ones" in text


def test_a_check_that_cannot_compute_its_answer_does_not_blame_the_learner():
    def reference(x):
        raise MemoryError("no room for the model")

    broken = Exercise("0.7", "t", "f", ("x",), "f(x)", reference, (Case("c", lambda: (torch.ones(2),)),),
                      hints=("h",))
    text = render(grade(broken, lambda x: x))
    assert "could not compute its expected answer (MemoryError: no room for the model)" in text
    assert "not your code's fault" in text and "your output could not be compared" not in text
