"""Grading one learner function against an exercise: per-check results, named mistakes, points."""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from . import compare
from .sandbox import call_safely, signature_problem
from .spec import Case, Exercise, Mistake, WrongKind
from .tolerance import Expected, clone, expected, is_answer, promote, same_output, tolerance, within

NOT_ATTEMPTED, COMPLETE, PARTIAL, FAILED = "not attempted", "complete", "partial", "failed"


@dataclass
class CheckResult:
    name: str
    points: float
    earned: float
    details: list[str] = field(default_factory=list)
    mistake: str | None = None  # named from an error message (error_hints, or a shape hint)
    mistake_from_error: bool = False
    # For a failing check: each known mistake (by message) that differs from the reference here,
    # and whether it reproduces the learner's output.
    evidence: dict[str, bool] = field(default_factory=dict, repr=False)
    nan: bool = False  # the output has NaN or inf where the answer is finite
    inputs: tuple | None = field(default=None, repr=False)  # a passing check's, kept to rule mistakes out

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
        """Named mistakes, the best evidence first (the rule: ``spec`` module docstring).

        A known mistake is named if it reproduces the learner's output on every failing check where
        it differs from the reference; the one reproducing the most checks comes first. Hints drawn
        from error messages follow, most frequent first.
        """
        reproduced: dict[str, int] = {}
        refuted: set[str] = set()
        for check in self.checks:
            for message, hit in check.evidence.items():
                if hit:
                    reproduced[message] = reproduced.get(message, 0) + 1
                else:
                    refuted.add(message)
        order = list(dict.fromkeys(m.message for m in self.exercise.mistakes))
        named = sorted((m for m in reproduced if m not in refuted),
                       key=lambda m: (-reproduced[m], order.index(m) if m in order else len(order)))
        hinted = [c.mistake for c in self.checks if c.mistake and not c.passed]
        if not named and self.exercise.nan_hint and self.checks and all(c.nan for c in self.checks):
            hinted.append(self.exercise.nan_hint)
        hints = sorted(set(hinted) - set(named), key=lambda m: (-hinted.count(m), hinted.index(m)))
        return named + hints

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


def _is_right(value: Any, exp: Expected) -> bool:
    return compare.problem(value, exp.value) is None and within(value, exp)


def _match_tolerance(mistake: Mistake, args: tuple, wrong: torch.Tensor, exp: Expected) -> float:
    """How close a learner's output must be to a mistake's to be that mistake: the larger of the
    check's tolerance and one derived, by the same rule, from the mistake's own float32 error."""
    if not wrong.is_floating_point():
        return 0.0
    try:
        wrong64 = mistake.function(*promote(clone(args)))
    except Exception:  # noqa: BLE001 - a variant that only runs in float32
        return exp.tol
    if not isinstance(wrong64, torch.Tensor) or wrong64.shape != wrong.shape:
        return exp.tol
    wrong64 = wrong64.detach().to("cpu", torch.float64)
    finite = torch.isfinite(wrong64) & torch.isfinite(wrong.detach().cpu())
    error = float((wrong.detach().cpu().double() - wrong64)[finite].abs().max()) if finite.any() else 0.0
    return max(exp.tol, tolerance(wrong, wrong64, error))


def _evidence(exercise: Exercise, args: tuple, value: Any, exp: Expected) -> dict[str, bool]:
    """For each known mistake that differs from the reference on these inputs: does it reproduce
    ``value``? (Left out when it cannot tell: both outputs without a finite entry.)

    Where some mistake reproduces the learner's NaN and inf entries too, only such exact matches
    count. Where none does, the learner's NaNs are a problem of their own: a mistake that agrees
    on the finite entries is then not ruled out, but not shown either (near one-hot rows agree
    with almost anything).
    """
    outcomes: list[tuple[str, bool | None, bool | None]] = []
    for mistake in exercise.mistakes:
        try:
            wrong = mistake.function(*clone(args))
        except Exception:  # noqa: BLE001 - a variant may not apply to these shapes
            continue
        if not isinstance(wrong, torch.Tensor) or _is_right(wrong, exp):
            continue  # indistinguishable from the reference here: no evidence either way
        # Most mistakes are far off: only a near match needs the mistake's own float32 error.
        if same_output(value, wrong, 1e3 * exp.tol + 1e-3) is False:
            outcomes.append((mistake.message, False, False))
            continue
        tol = _match_tolerance(mistake, args, wrong, exp)
        outcomes.append((mistake.message, same_output(value, wrong, tol, strict=True),
                         same_output(value, wrong, tol)))
    strict = any(exact for _, exact, _ in outcomes)
    # Several functions may share a message: it is reproduced if one of them is, left open if one
    # of them cannot be told apart, and refuted only if every one of them is.
    hits: dict[str, list[bool | None]] = {}
    for message, exact, lenient in outcomes:
        hits.setdefault(message, []).append(exact if strict else (None if lenient else lenient))
    evidence: dict[str, bool] = {}
    for message, found in hits.items():
        if any(h is True for h in found):
            evidence[message] = True
        elif all(h is False for h in found):
            evidence[message] = False
    return evidence


# Errors that mean two shapes did not fit together.
SHAPE_ERRORS = ("must match the size of tensor", "cannot be multiplied", "is invalid for input of size",
                "The expanded size of the tensor", "Expected size for first two dimensions",
                "Sizes of tensors must match", "shape mismatch")
_REDUCTION = re.compile(r"(?:(?<!self)\.|torch\.)(mean|sum|var|std|amax|amin|max|min|norm|logsumexp|prod)\(\s*[^)\s]")
# What puts a reduced axis back: x.mean(-1)[..., None], .unsqueeze(-1), .view(...), .reshape(...)
_AXIS_RESTORED = re.compile(r"\[[^\]]*None[^\]]*\]|\.(unsqueeze|view|reshape|expand|expand_as|view_as)\(|keepdim")


def _function_lines(fn: Callable) -> list[tuple[int, str]]:
    """(line number, code) of the learner's function, or [] when its source cannot be read."""
    try:
        lines, first = inspect.getsourcelines(getattr(fn, "__wrapped__", fn))
    except (OSError, TypeError):
        return []
    return [(first + i, line.strip()) for i, line in enumerate(lines)]


def _drops_axis(code: str) -> str | None:
    """The reduction on this line that drops its axis and never gets it back, if any."""
    call = _REDUCTION.search(code)
    if call is None or code.startswith(("#", "def ")) or _AXIS_RESTORED.search(code[call.end():]):
        return None
    return call.group(1)


def shape_hint(fn: Callable, error: BaseException, line: int | None, source: str | None) -> str | None:
    """The usual cause of a shape error in the learner's own code, or None when it is not one.

    A reduction without keepdim (on the failing line first, then on the lines before it), or a
    mask whose orientation does not fit the scores. Short enough for an 80-column feedback line.
    """
    if not any(text in str(error) for text in SHAPE_ERRORS):
        return None
    lines = _function_lines(fn)
    failing = [(n, c) for n, c in lines if n == line] or ([(line, source)] if line and source else [])
    earlier = [(n, c) for n, c in lines if line is None or n < line]
    for number, code in failing + earlier:
        reduction = _drops_axis(code)
        if reduction:
            return f"line {number}: .{reduction}() drops its axis; add keepdim=True to broadcast"
    if source and re.search(r"mask", source, re.IGNORECASE):
        return "mask shape: it must broadcast to the scores (..., queries, keys)"
    return None


def _error_hint(exercise: Exercise, fn: Callable, outcome) -> str | None:
    text, source = str(outcome.error), outcome.error_source or ""
    for needle, hint, *pattern in exercise.error_hints:
        if needle in text and (not pattern or re.search(pattern[0], source)):
            return hint
    return shape_hint(fn, outcome.error, outcome.error_lineno, outcome.error_source)


def _rule_out_from_passing_checks(result: ExerciseResult) -> None:
    """A mistake that would have failed a check the learner passed is not what the learner did:
    record it as not reproduced there (the rule: ``spec`` module docstring). Several functions may
    share a message: it is ruled out only if none of them is right on that check."""
    suspects = {m for c in result.checks if not c.passed for m, hit in c.evidence.items() if hit}
    for check in result.checks:
        if not (check.passed and check.inputs is not None and suspects):
            continue
        exp = expected(result.exercise, check.inputs)
        wrong_here: dict[str, bool] = {}
        for mistake in result.exercise.mistakes:
            if mistake.message not in suspects:
                continue
            try:
                wrong = mistake.function(*clone(check.inputs))
                if is_answer(exp.value):
                    wrong = _as_answer(wrong)
                    fails = _answer_problem(wrong, exp.value) is None and not _same_answer(wrong, exp.value, exp.tol)
                else:
                    fails = isinstance(wrong, torch.Tensor) and not _is_right(wrong, exp)
            except Exception:  # noqa: BLE001 - a variant may not apply to these shapes
                fails = False
            wrong_here[mistake.message] = wrong_here.get(mistake.message, True) and fails
        for message, fails in wrong_here.items():
            if fails:
                check.evidence[message] = False


# --- experiments: answers that are a number or a choice -------------------------------------------

def _as_answer(value: Any) -> Any:
    """A one-entry tensor or numpy scalar read as the Python number it holds; anything else as it is."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        try:
            return value.item()
        except (TypeError, ValueError):
            return value
    return value


def _answer_problem(value: Any, truth: Any) -> str | None:
    """Why ``value`` cannot be read as an answer of the kind of ``truth`` (None if it can)."""
    if value is None:
        return "your function returned None: did you forget `return`?"
    if isinstance(truth, str):
        return None if isinstance(value, str) else f"expected your choice as a string, got {compare.describe(value)}"
    if isinstance(value, bool) and not isinstance(truth, bool):
        return f"expected a number, got the bool {value}"
    if not isinstance(value, (int, float)):
        return f"expected a number, got {compare.describe(value)}"
    if not math.isfinite(value):
        return f"your answer is {value}, not a finite number"
    return None


def _same_answer(value: Any, truth: Any, tol: float) -> bool:
    if isinstance(truth, str):
        return isinstance(value, str) and value.strip().casefold() == truth.strip().casefold()
    if isinstance(truth, bool) or isinstance(value, bool):
        return type(value) is type(truth) and value == truth
    return abs(float(value) - float(truth)) <= tol


def _answer_check(exercise: Exercise, args: tuple, value: Any, exp: Expected, result: CheckResult,
                  case: Case) -> None:
    """Score an experiment's answer and collect evidence for the mistakes that give another one."""
    value = _as_answer(value)
    why = _answer_problem(value, exp.value)
    if why is None and _same_answer(value, exp.value, exp.tol):
        result.earned = case.points
        result.inputs = args
        return
    if why is not None:
        result.details.append(why)
        return
    if isinstance(exp.value, str):
        result.details.append(f"your answer {value.strip()!r} is not the right one")
    else:
        result.details.append(f"your answer {value:.6g} is not within {exp.tol:.2g} of the measured value")
    for mistake in exercise.mistakes:
        try:
            wrong = _as_answer(mistake.function(*clone(args)))
        except Exception:  # noqa: BLE001
            continue
        if _answer_problem(wrong, exp.value) is None and not _same_answer(wrong, exp.value, exp.tol):
            hit = _same_answer(value, wrong, exp.tol)
            result.evidence[mistake.message] = result.evidence.get(mistake.message, False) or hit


def _learner_names(obj: Any) -> set[str]:
    """Names of the functions the learner wrote that ``obj`` is made of: a function's own name, or
    the methods of a class (and of its bases defined outside libraries)."""
    names = {getattr(obj, "__name__", "")}
    if isinstance(obj, type):
        for cls in obj.__mro__:
            if cls.__module__.split(".")[0] in ("torch", "builtins", "typing", "abc", "riverbank"):
                continue
            for name, member in vars(cls).items():
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if callable(member):
                    names.add(getattr(member, "__name__", name))
    return names - {""}


class CheckFailed(Exception):
    """The check could not prepare its inputs or its expected answer: not the learner's doing."""


def run_case(exercise: Exercise, fn: Callable, case: Case, own: set[str] | None = None) -> tuple[CheckResult, bool]:
    """Grade one case. Returns the result and whether the learner raised NotImplementedError.

    ``own``: the names of the learner's functions (methods, for a class) a NotImplementedError
    from which means "not attempted" (default: ``fn``'s name)."""
    try:
        args = case.make_inputs()
        pristine = clone(args)
        exp = None if exercise.judge else expected(exercise, args)
    except Exception as error:  # noqa: BLE001 - out of memory, a missing file: the check's own failure
        raise CheckFailed(error) from error
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
            if 'missing the required "forward" function' in str(outcome.error):
                result.details.append("your module has no forward method: define forward(self, ...) "
                                      "inside the class (check its name and indentation)")
                return result, False
            names = own if own is not None else {getattr(fn, "__name__", None)}
            if outcome.error_function is None or outcome.error_function in names:
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
        result.mistake = _error_hint(exercise, fn, outcome)
        result.mistake_from_error = result.mistake is not None
        return result, False
    changed = _changed_inputs(args, pristine)
    if changed:
        names = ", ".join(exercise.arg_names[i] for i in changed)
        result.details.append(f"your function changed its input {names} in place; "
                              "work on new tensors and leave the inputs as they were")
        return result, False
    value = outcome.value
    if exercise.judge is not None:
        try:
            verdict = exercise.judge(value, *clone(pristine))
        except Exception as error:  # noqa: BLE001 - an output the judge cannot read
            verdict = f"your function returned {compare.describe(value)}, which could not be judged ({type(error).__name__})"
        if verdict is None:
            result.earned = case.points
        else:
            result.details += str(verdict).splitlines()
        return result, False
    if is_answer(exp.value):
        _answer_check(exercise, pristine, value, exp, result, case)
        return result, False
    why = compare.problem(value, exp.value)
    if why is None and within(value, exp):
        result.earned = case.points
        result.inputs = pristine
        return result, False
    result.evidence = _evidence(exercise, pristine, value, exp)
    result.nan = why is not None and "where the answer is finite" in why
    if why is not None:
        result.details.append(why)
    elif exp.exact and exp.value.dtype == torch.bool:  # a mask: count wrong entries, show a row that differs
        result.details += compare.mask_difference(value, exp.value)
    else:
        if exp.exact:  # integers (token ids, counts): how many differ says more than by how much
            wrong = int((value.detach().cpu() != exp.truth.cpu()).sum())
            result.details.append(f"values differ: {wrong} of {value.numel()} entries are not the expected ones")
        else:
            result.details.append(f"values differ: max |yours − expected| = {compare.max_error(value, exp.truth):.4g}")
        # Show a row that differs: with a mask, row 0 is often right while later rows are not.
        row = compare.first_differing_row(value, exp.truth, exp.tol) if value.dim() > 1 else 0
        label = f"row {row}" if value.dim() > 1 else "first"
        result.details.append(f"  yours, {label}:    {compare.fmt_row(value, row=row)}")
        result.details.append(f"  expected, {label}: {compare.fmt_row(exp.truth, row=row)}")
    return result, False


def grade(exercise: Exercise, fn: Any) -> ExerciseResult:
    """Run every check of ``exercise`` on the learner's ``fn``. Never raises on bad learner code.

    With ``exercise.adapt``, ``fn`` is what the learner handed in (a class, say), and the adapted
    function of each case's inputs is what is called."""
    own = None
    if exercise.adapt is not None:
        obj = fn
        try:
            fn = exercise.adapt(obj)
        except WrongKind as error:
            problem = str(error)
        except Exception as error:  # noqa: BLE001 - adapt inspects learner objects
            problem = f"{exercise.function_name} could not be used ({type(error).__name__}: {error})"
        else:
            problem = None
        if problem is not None:
            result = ExerciseResult(exercise, FAILED)
            result.notes.append(problem)
            result.checks = [CheckResult(c.name, c.points, 0.0) for c in exercise.cases]
            return result
        own = _learner_names(obj)
        try:
            fn.__wrapped__ = obj  # for the learner's source lines in shape hints
        except (AttributeError, TypeError):
            pass
        return _grade_cases(exercise, fn, own)
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
    return _grade_cases(exercise, fn, own)


def _grade_cases(exercise: Exercise, fn: Callable, own: set[str] | None) -> ExerciseResult:
    result = ExerciseResult(exercise, COMPLETE)
    for case in exercise.cases:
        if any("did not return within" in d for c in result.checks for d in c.details):
            # One time-out is enough evidence; waiting out every check would stall the notebook.
            result.checks.append(CheckResult(case.name, case.points, 0.0, ["skipped: an earlier check timed out"]))
            continue
        try:
            check, not_implemented = run_case(exercise, fn, case, own)
        except CheckFailed as failed:
            error = failed.__cause__
            check, not_implemented = CheckResult(case.name, case.points, 0.0, [
                f"this check could not compute its expected answer ({type(error).__name__}: {str(error)[:120]}); "
                "that is not your code's fault: tell your instructor"]), False
        except Exception as error:  # an output so odd that comparing it failed: still feedback
            check, not_implemented = CheckResult(case.name, case.points, 0.0, [
                f"your output could not be compared with the expected one ({type(error).__name__}: "
                f"{str(error)[:120]})"]), False
        if not_implemented:
            return ExerciseResult(exercise, NOT_ATTEMPTED,
                                  [CheckResult(c.name, c.points, 0.0) for c in exercise.cases])
        result.checks.append(check)
    if result.earned < result.points:
        _rule_out_from_passing_checks(result)
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
        pointer = where_explained(ex, mistake)
        if pointer:
            lines.append(f"    {pointer}")
    if result.status == COMPLETE:
        lines.append("  All checks pass.")
    elif ex.hints and not any(where_explained(ex, m) for m in result.mistakes):
        lines.append(f'  Stuck? hint("{ex.id}") shows a hint ({len(ex.hints)} in all); each call shows the next.')
    return "\n".join(lines)


def where_explained(ex: Exercise, message: str) -> str | None:
    """Where a named mistake is explained: a hint of the exercise and a section of its chapter."""
    found = next((m for m in ex.mistakes if m.message == message and (m.hint or m.section)), None)
    if found is None:
        return None
    parts = ([f'hint("{ex.id}", {found.hint})'] if found.hint else []) + ([found.section] if found.section else [])
    return "Explained in " + " and in ".join(parts) + "."
