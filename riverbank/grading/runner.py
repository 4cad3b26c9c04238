"""Grading one learner function against an exercise: per-check results, named mistakes, points."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from . import compare
from .sandbox import call_safely, signature_problem
from .spec import Case, Exercise

NOT_ATTEMPTED, COMPLETE, PARTIAL, FAILED = "not attempted", "complete", "partial", "failed"


@dataclass
class CheckResult:
    name: str
    points: float
    earned: float
    details: list[str] = field(default_factory=list)
    mistake: str | None = None
    mistake_from_error: bool = False  # named from an error message, not matched by value

    @property
    def passed(self) -> bool:
        return self.earned == self.points


@dataclass
class ExerciseResult:
    exercise: Exercise
    status: str
    checks: list[CheckResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def earned(self) -> float:
        return sum(c.earned for c in self.checks)

    @property
    def points(self) -> float:
        return self.exercise.points

    @property
    def mistakes(self) -> list[str]:
        """Named mistakes, most frequent first."""
        named = [c.mistake for c in self.checks if c.mistake]
        from_values = {c.mistake for c in self.checks if c.mistake and not c.mistake_from_error}
        # A variant reproducing the learner's numbers is stronger evidence than an error message.
        return sorted(set(named), key=lambda m: (m not in from_values, -named.count(m), named.index(m)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.exercise.id,
            "title": self.exercise.title,
            "status": self.status,
            "earned": self.earned,
            "points": self.points,
            "mistakes": self.mistakes,
            "feedback": render(self),
        }


def _changed_inputs(a: tuple, b: tuple) -> list[int]:
    """Indices of tensor arguments that differ between two argument tuples."""
    changed = []
    for i, (x, y) in enumerate(zip(a, b)):
        if isinstance(x, torch.Tensor) and not (x.shape == y.shape and torch.equal(x, y)):
            changed.append(i)
    return changed


def _clone(args: tuple) -> tuple:
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def _named_mistake(exercise: Exercise, args: tuple, value: Any, expected: torch.Tensor) -> str | None:
    """The first known mistake whose output matches the learner's, if the two differ from the reference."""
    for mistake in exercise.mistakes:
        try:
            wrong = mistake.function(*_clone(args))
        except Exception:  # a variant may not apply to these shapes
            continue
        if not isinstance(wrong, torch.Tensor) or compare.close(wrong, expected, exercise.rtol, exercise.atol):
            continue  # this variant is indistinguishable from the reference here
        if (isinstance(value, torch.Tensor) and value.shape == wrong.shape and value.dtype == wrong.dtype
                and value.device == wrong.device):
            if torch.allclose(value.detach(), wrong, rtol=exercise.rtol, atol=exercise.atol, equal_nan=True):
                return mistake.message
    return None


def run_case(exercise: Exercise, fn: Callable, case: Case) -> tuple[CheckResult, bool]:
    """Grade one case. Returns the result and whether the learner raised NotImplementedError."""
    args = case.make_inputs()
    pristine = _clone(args)
    expected = exercise.reference(*_clone(args))
    result = CheckResult(case.name, case.points, 0.0)
    outcome = call_safely(fn, args, exercise.time_limit)
    if outcome.printed_chars > 500:
        result.details.append(f"note: your function printed {outcome.printed_chars:,} characters; "
                              "remove debugging prints before submitting")
    if outcome.timed_out:
        result.details.append(f"your function did not return within {exercise.time_limit:g} s "
                              "(an infinite loop, or a loop over every entry?)")
        return result, False
    if outcome.error is not None:
        if isinstance(outcome.error, NotImplementedError):
            own = outcome.error_function in (None, getattr(fn, "__name__", None))
            if own:
                return result, True
            # e.g. attend() is written but calls attention_weights(), which is still a stub
            result.details.append(f"your function calls {outcome.error_function}(), which is not written yet "
                                  "(it raises NotImplementedError)")
            return result, False
        name = type(outcome.error).__name__
        message = str(outcome.error).strip().splitlines()[0][:200] if str(outcome.error).strip() else ""
        result.details.append(f"your function raised {name}" + (f": {message}" if message else ""))
        if outcome.error_line:
            result.details.append(f"  at {outcome.error_line}")
        result.mistake = next((hint for text, hint in exercise.error_hints if text in str(outcome.error)), None)
        result.mistake_from_error = result.mistake is not None
        return result, False
    changed = _changed_inputs(args, pristine)
    if changed:
        names = ", ".join(exercise.arg_names[i] for i in changed)
        result.details.append(f"your function changed its input {names} in place; "
                              "work on new tensors and leave the inputs as they were")
        return result, False
    value = outcome.value
    why = compare.problem(value, expected)
    if why is None and compare.close(value, expected, exercise.rtol, exercise.atol):
        result.earned = case.points
        return result, False
    result.mistake = _named_mistake(exercise, pristine, value, expected)
    if why is not None:
        result.details.append(why)
    elif expected.dtype == torch.bool:  # a mask: count wrong entries, show a row that differs
        result.details += compare.mask_difference(value, expected)
    else:
        result.details.append(f"values differ: max |yours − expected| = {compare.max_error(value, expected):.4g}")
        # Show a row that differs: with a mask, row 0 is often right while later rows are not.
        row = compare.first_differing_row(value, expected, exercise.rtol, exercise.atol) if value.dim() > 1 else 0
        label = f"row {row}" if value.dim() > 1 else "first"
        result.details.append(f"  yours, {label}:    {compare.fmt_row(value, row=row)}")
        result.details.append(f"  expected, {label}: {compare.fmt_row(expected, row=row)}")
    return result, False


def grade(exercise: Exercise, fn: Any) -> ExerciseResult:
    """Run every check of ``exercise`` on the learner's ``fn``. Never raises on bad learner code."""
    if not callable(fn):
        result = ExerciseResult(exercise, FAILED)
        result.notes.append(f"expected a function named {exercise.function_name}, got {compare.describe(fn)}")
        result.checks = [CheckResult(c.name, c.points, 0.0) for c in exercise.cases]
        return result
    wrong_signature = signature_problem(fn, exercise.arg_names)
    if wrong_signature:
        result = ExerciseResult(exercise, FAILED)
        result.notes.append(f"{wrong_signature}; it should be {exercise.signature}")
        result.checks = [CheckResult(c.name, c.points, 0.0) for c in exercise.cases]
        return result
    result = ExerciseResult(exercise, COMPLETE)
    for case in exercise.cases:
        if any("did not return within" in d for c in result.checks for d in c.details):
            # One time-out is enough evidence; waiting out every check would stall the notebook.
            result.checks.append(CheckResult(case.name, case.points, 0.0, ["skipped: an earlier check timed out"]))
            continue
        try:
            check, not_implemented = run_case(exercise, fn, case)
        except Exception as error:  # an output so odd that comparing it failed: still feedback
            check, not_implemented = CheckResult(case.name, case.points, 0.0, [
                f"your output could not be compared with the expected one ({type(error).__name__}: "
                f"{str(error)[:120]})"]), False
        if not_implemented:
            return ExerciseResult(exercise, NOT_ATTEMPTED,
                                  [CheckResult(c.name, c.points, 0.0) for c in exercise.cases])
        result.checks.append(check)
    if result.earned < result.points:
        result.status = PARTIAL if result.earned > 0 else FAILED
    return result


def _points(x: float) -> str:
    return f"{x:g}"


def render(result: ExerciseResult) -> str:
    """Readable plain-text feedback: a header, then ✓/✗ per check with points and what went wrong."""
    ex = result.exercise
    header = f"Exercise {ex.id} · {ex.function_name}: {_points(result.earned)}/{_points(result.points)} points"
    lines = [header]
    if result.status == NOT_ATTEMPTED:
        lines.append("  not attempted: replace `raise NotImplementedError` with your code,")
        lines.append("  then run this cell again")
        return "\n".join(lines)
    lines += [f"  {note}" for note in result.notes]
    if result.notes:
        return "\n".join(lines)
    width = max(len(c.name) for c in result.checks)
    shown: set[str] = set()
    for c in result.checks:
        mark = "✓" if c.passed else "✗"
        lines.append(f"  {mark} {c.name.ljust(width)}  {_points(c.earned)}/{_points(c.points)}")
        # A problem that repeats (None returned, the same error on other shapes) is said once;
        # differing values are shown per check, since each case tells something different.
        key = re.sub(r"\d+", "#", "\n".join(c.details))
        if c.details and key in shown and not c.details[0].startswith("values differ"):
            lines.append("      (the same problem as above)")
            continue
        shown.add(key)
        lines += [f"      {d}" for d in c.details]
    for i, mistake in enumerate(result.mistakes):
        lines.append(f"  {'Likely mistake' if i == 0 else 'Also consistent with'}: {mistake}.")
    if result.status == COMPLETE:
        lines.append("  All checks pass.")
    return "\n".join(lines)
