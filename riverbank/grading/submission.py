"""Grading one submission: match it, put back the official checks, run it, read the scores it recorded."""

from __future__ import annotations

import re
import shutil
import tempfile
import time
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from .exercises import EXERCISES
from .hints import SHOWN
from .isolation import Isolation
from .integrity import grader_access, solution_cells, _first_line
from .matching import Chapter, Match, learner_of, match
from .notebooks import (CHECK_CALL, CHECK_TAG, check_expressions, load_notebook, official_check_ids,
                        with_official_checks)
from .worker import Limits, run_worker

_UNDEFINED = re.compile(r"name '(\w+)' is not defined")
_MAX_FEEDBACK = 20_000  # characters kept per exercise: results lines come from the learner's kernel
_MAX_RESULTS = 10_000_000  # bytes of the results file read, for the same reason
_SHOWN_ERRORS = 5  # cells with errors named per submission; more are counted
TAMPERING = "tampering suspected"


@dataclass
class Row:
    """One submission's line in the gradebook and its feedback file."""

    name: str
    notebook: str = ""  # the solutions notebook it was graded against, e.g. 01_bank_by_the_river
    exercises: list[str] = field(default_factory=list)
    earned: dict[str, float] = field(default_factory=dict)
    feedback: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    learner: str = ""
    canvas_id: str = ""
    matched_by: str = ""  # content, file name, folder name, --notebook; "" when unmatched
    mistakes: dict[str, list[str]] = field(default_factory=dict)  # named mistakes per exercise
    answers: dict[str, str] = field(default_factory=dict)  # the learner's solution cells per exercise
    hints: dict[str, int] = field(default_factory=dict)  # hints seen per exercise (the highest shown)
    hint_cost: float = 0.0  # points taken off per hint seen (the instructor's --hint-cost)

    @property
    def total(self) -> float:
        return sum(self.earned.values())

    @property
    def possible(self) -> float:
        return sum(EXERCISES[ex_id].points for ex_id in self.exercises)

    @property
    def tampering(self) -> bool:
        return any(p.startswith(TAMPERING) for p in self.problems)


def _read(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(_MAX_RESULTS).decode("utf-8", "replace")
    except OSError:
        return ""


def _records(text: str):
    for line in text[:_MAX_RESULTS].splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            yield record


def parse_results(text: str, exercises: list[str]) -> dict[str, dict]:
    """The last well-formed results line per exercise id (only ``exercises``) in a results file's text."""
    latest = {}
    for record in _records(text):
        earned = record.get("earned")
        if record.get("id") in exercises and isinstance(earned, (int, float)) and math.isfinite(earned):
            latest[record["id"]] = record
    return latest


def parse_hints(text: str, exercises: list[str]) -> dict[str, int]:
    """The highest hint shown per exercise, from the ``hint`` lines of a results file's text."""
    seen: dict[str, int] = {}
    for record in _records(text):
        if record.get("hint") not in exercises:
            continue
        level = record.get("level")
        if isinstance(level, int) and not isinstance(level, bool) and 1 <= level <= len(EXERCISES[record["hint"]].hints):
            seen[record["hint"]] = max(seen.get(record["hint"], 0), level)
    return seen


def read_results(path: Path, exercises: list[str]) -> dict[str, dict]:
    """``parse_results`` of the file at ``path`` ({} if it cannot be read)."""
    return parse_results(_read(path), exercises)


def read_hints(path: Path, exercises: list[str]) -> dict[str, int]:
    """``parse_hints`` of the file at ``path``."""
    return parse_hints(_read(path), exercises)


def hints_in_outputs(data: bytes, exercises: list[str]) -> dict[str, int]:
    """Hints the submitted file's stored outputs show (run before it was handed in). Reads the
    raw file, since grading clears outputs; anything unreadable shows no hints."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    cells = raw.get("cells") if isinstance(raw, dict) else None
    seen: dict[str, int] = {}
    for cell in cells if isinstance(cells, list) else []:
        outputs = cell.get("outputs") if isinstance(cell, dict) else None
        for output in outputs if isinstance(outputs, list) else []:
            text = output.get("text", "") if isinstance(output, dict) else ""
            text = "".join(t for t in text if isinstance(t, str)) if isinstance(text, list) else str(text)
            for level, ex_id in SHOWN.findall(text[:_MAX_FEEDBACK]):
                if ex_id in exercises and int(level) <= len(EXERCISES[ex_id].hints):
                    seen[ex_id] = max(seen.get(ex_id, 0), int(level))
    return seen


def _charge_hints(row: Row, seen: dict[str, int]) -> None:
    """Record the hints seen, and take the instructor's cost per hint off each exercise's points."""
    row.hints = {ex_id: n for ex_id, n in sorted(seen.items()) if n}
    for ex_id, n in row.hints.items():
        cost = row.hint_cost * n
        if cost > 0:
            row.earned[ex_id] = max(row.earned[ex_id] - cost, 0.0)
        row.feedback[ex_id] = (row.feedback[ex_id].rstrip("\n") + f"\n  Hints seen: {n}"
                               + (f" (−{cost:g} points at {row.hint_cost:g} per hint)" if cost > 0 else ""))


def _zero(ex_id: str, why: str) -> str:
    ex = EXERCISES[ex_id]
    return f"Exercise {ex_id} · {ex.function_name}: 0/{ex.points:g} points\n  {why}"


def grade_submission(path: Path, name: str, chapters: dict[str, Chapter], limits: Limits,
                     forced: str | None = None, learner_pattern: re.Pattern | None = None,
                     hint_cost: float = 0.0, isolation: Isolation = Isolation(False, "--sandbox off")) -> Row:
    """Grade the submission at ``path`` (``name``: its path relative to the submissions folder).

    Never raises for anything the submission does, and never writes to it. ``hint_cost``: points
    taken off an exercise per hint its learner saw (in the graded run or in the stored outputs).
    ``isolation``: whether its kernel runs in the OS sandbox (``isolation`` module).
    """
    start = time.monotonic()
    row = Row(name, hint_cost=hint_cost)
    if isolation.problem:
        row.problems.append(isolation.problem)
    who = learner_of(name, chapters, learner_pattern)
    row.learner, row.canvas_id = who.id, who.canvas_id
    if who.problem:
        row.problems.append(who.problem)
    data = b""
    try:
        data = path.read_bytes()
        submission, problem = load_notebook(data)
    except OSError as error:
        submission, problem = None, f"cannot read the file: {error.strerror or error}"
    found = Match(forced, "--notebook") if forced else match(submission, name, chapters)
    if found.problem:
        row.problems.append(found.problem)
    if found.stem is None:
        if problem:
            row.problems.append(problem)
        row.seconds = time.monotonic() - start
        return row
    chapter = chapters[found.stem]
    row.notebook, row.matched_by = chapter.stem, found.how
    row.exercises = list(chapter.exercises)
    row.earned = {ex_id: 0.0 for ex_id in row.exercises}
    row.feedback = {ex_id: _zero(ex_id, "not graded: the notebook could not be run (see Problems)")
                    for ex_id in row.exercises}
    if submission is None:
        row.problems.append(problem)
    else:
        graded, notes = with_official_checks(submission, chapter.notebook)
        row.problems += notes
        functions = {ex_id: EXERCISES[ex_id].function_name for ex_id in row.exercises}
        row.answers = solution_cells(submission, functions)
        access = grader_access(submission.cells, official_check_ids(chapter.notebook))
        stored = hints_in_outputs(data, row.exercises)
        _run_and_score(row, graded, limits, check_expressions(chapter.notebook), stored, isolation.sandboxed)
        if access:
            row.problems.append(f"{TAMPERING}: " + "; ".join(access)
                                + " (only check, hint and score_table are meant for learners)")
    row.seconds = time.monotonic() - start
    return row


def _not_checked_reason(ex_id: str, cells: list, report: dict | None, why_none: str) -> str:
    at = next((i for i, c in enumerate(cells) if CHECK_TAG in c.metadata.get("tags", [])
               and ex_id in CHECK_CALL.findall(c.source)), None)
    if report is None:
        return why_none
    error = next((e for e in report["errors"] if e[0] == at), None)
    if error is not None:
        undefined = _UNDEFINED.search(error[2]) if error[1] == "NameError" else None
        if undefined:
            return f"{undefined.group(1)} is not defined (was the cell defining it deleted, or did it fail?)"
        return f"its check cell raised {error[1]}: {error[2].strip()[:200]}"
    if report["stopped"] is not None and (at is None or report["stopped"][0] <= at):
        return "the notebook stopped before the check ran"
    return "its check ran but recorded no result"


def _run_and_score(row: Row, graded: nbformat.NotebookNode, limits: Limits, expressions: dict[str, str],
                   stored_hints: dict[str, int] | None = None, sandboxed: bool = False) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="riverbank-grade-"))
    try:
        nbformat.write(graded, tmp / "graded.ipynb")
        report, why_none = run_worker(tmp / "graded.ipynb", tmp, limits, expressions, sandboxed)
        stalled = report.get("stalled") if report is not None else None
        if isinstance(stalled, int) and 0 <= stalled < len(graded.cells):
            # The kernel, not the learner, stopped: run the whole notebook once more, afresh.
            (tmp / "retry").mkdir()
            report, why_none = run_worker(tmp / "graded.ipynb", tmp / "retry", limits, expressions, sandboxed,
                                          attempt=2)
            again = report is not None and report.get("stalled") is not None
            row.problems.append(f'cell {stalled + 1} ("{_first_line(graded.cells[stalled].source)}"): the kernel '
                                "stopped answering (not the learner's code); graded again in a fresh kernel"
                                + (", where it stopped again: tell the course's maintainers" if again else ""))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if report is not None and sandboxed and not report.get("isolated"):
        report, why_none = None, "the sandbox did not start as expected"
    text = report.get("results") if report is not None else ""
    text = text if isinstance(text, str) else ""
    records, ran_hints = parse_results(text, row.exercises), parse_hints(text, row.exercises)
    _add_run_problems(row, graded.cells, report, why_none)
    unchecked: dict[str, list[str]] = {}
    for ex_id in row.exercises:
        record = records.get(ex_id)
        if record is None:
            reason = _not_checked_reason(ex_id, graded.cells, report, why_none)
            unchecked.setdefault(reason, []).append(ex_id)
            row.feedback[ex_id] = _zero(ex_id, f"not checked: {reason}")
            continue
        row.earned[ex_id] = min(max(float(record["earned"]), 0.0), EXERCISES[ex_id].points)
        text = record.get("feedback")
        row.feedback[ex_id] = text[:_MAX_FEEDBACK] if isinstance(text, str) else ""
        mistakes = record.get("mistakes")
        if isinstance(mistakes, list):
            row.mistakes[ex_id] = [m[:200] for m in mistakes[:5] if isinstance(m, str)]
    row.problems += [f"{', '.join(ids)} not checked: {reason}" for reason, ids in unchecked.items()]
    seen = dict(stored_hints or {})
    for ex_id, n in ran_hints.items():
        seen[ex_id] = max(seen.get(ex_id, 0), n)
    recorded = dict(row.earned)  # before any hint cost: what the re-check must reproduce
    _charge_hints(row, seen)
    recheck = (report or {}).get("recheck")
    if isinstance(recheck, dict):
        differ = [f"{ex_id} recorded {recorded[ex_id]:g}, re-check gives {recheck[ex_id]:g}"
                  for ex_id in row.exercises if ex_id in records and isinstance(recheck.get(ex_id), float)
                  and abs(recheck[ex_id] - recorded[ex_id]) > 1e-9]
        if differ:
            row.problems.append(f"{TAMPERING}: the recorded scores disagree with a re-check of the learner's "
                                f"functions ({'; '.join(differ)}); or a function was redefined after its check")


def _add_run_problems(row: Row, cells: list, report: dict | None, why_none: str) -> None:
    if report is None:
        row.problems.append(why_none)
        return

    def where(i: int) -> str:
        return f'cell {i + 1} ("{_first_line(cells[i].source)}")'

    if report["stopped"] is not None:
        i, message = report["stopped"]
        row.problems.append(f"{where(i)}: {message}")
    check_cells = {i for i, c in enumerate(cells) if CHECK_TAG in c.metadata.get("tags", [])}
    # Errors in the official check cells are reported per exercise instead.
    errors = [e for e in report["errors"] if e[0] not in check_cells]
    for i, ename, evalue in errors[:_SHOWN_ERRORS]:
        message = evalue.strip().splitlines()[0][:200] if evalue.strip() else ""
        row.problems.append(f"{where(i)} raised {ename}" + (f": {message}" if message else ""))
    if len(errors) > _SHOWN_ERRORS:
        row.problems.append(f"{len(errors) - _SHOWN_ERRORS} more cells raised errors")
    if report["printed"] > 1_000_000:
        row.problems.append(f"the notebook printed {report['printed']:,} characters (not kept)")
