"""Writing what grading found: the per-submission table, feedback files, the course gradebook,
a Canvas import file, similar submissions and a class summary.

Every file here is a function of the rows alone (no times, no dates, sorted), so grading the same
folder twice writes the same bytes.
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .exercises import EXERCISES
from .integrity import similar_pairs, solution_cells
from .isolation import UNISOLATED
from .matching import Chapter
from .runner import _points
from .submission import Row

# Canvas's gradebook import: these five columns, then one column per assignment. A name without
# "(id)" makes a new assignment; the "Points Possible" row under the header gives each one's maximum.
CANVAS_COLUMNS = ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]


def _exercise_order(ex_id: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in ex_id.split("."))


def _write_csv(path: Path, rows: list[list]) -> None:
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    os.replace(partial, path)  # whole or not at all


def feedback_text(row: Row) -> str:
    lines = [f"Submission: {row.name}"]
    if row.learner:
        lines.append(f"Learner: {row.learner}")
    if row.notebook:
        lines += [f"Graded against: solutions/{row.notebook}.ipynb (matched by {row.matched_by})",
                  f"Total: {_points(row.total)}/{_points(row.possible)} points"]
    if row.problems:
        lines += ["", "Problems:"] + [f"  - {p}" for p in row.problems]
    for ex_id in row.exercises:
        lines += ["", row.feedback[ex_id]]
    return "\n".join(lines) + "\n"


def hints_cell(hints: dict[str, int]) -> str:
    """Hints seen, as "2.4:2 6.1:1" (exercise: how many), in exercise order."""
    return " ".join(f"{ex}:{n}" for ex, n in sorted(hints.items(), key=lambda kv: _exercise_order(kv[0])))


def write_outputs(rows: list[Row], out: Path) -> Path:
    """Write the per-submission gradebook and one feedback file per submission; returns the gradebook's path."""
    # A column per exercise of the notebooks graded here, not of the whole course.
    ids = sorted({ex_id for row in rows for ex_id in row.exercises}, key=_exercise_order)
    targets = {out / "feedback" / Path(row.name).with_suffix(".txt"): row for row in rows}
    (out / "feedback").mkdir(parents=True, exist_ok=True)
    # feedback/ matches this gradebook: no file left from an earlier run, or planted by a submission.
    for stale in (out / "feedback").rglob("*.txt"):
        if stale not in targets:
            stale.unlink()
    for target, row in targets.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(feedback_text(row), encoding="utf-8")
    table = [["submission", "learner", "notebook", "matched_by", *ids, "total", "max", "hints", "problems"]]
    for row in rows:
        scores = [_points(row.earned[i]) if i in row.earned else "" for i in ids]
        table.append([row.name, row.learner, row.notebook, row.matched_by, *scores, _points(row.total),
                      _points(row.possible) if row.notebook else "", hints_cell(row.hints), "; ".join(row.problems)])
    _write_csv(out / "gradebook.csv", table)
    return out / "gradebook.csv"


# --- the course gradebook: one row per learner ------------------------------------------------------

@dataclass
class LearnerRow:
    learner: str
    canvas_id: str = ""
    counted: dict[str, Row] = field(default_factory=dict)  # chapter stem -> the submission counted
    problems: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(row.total for row in self.counted.values())


def course_rows(rows: list[Row], chapters: list[Chapter]) -> list[LearnerRow]:
    """One row per learner: per chapter the best submission, and every problem, prefixed by its file."""
    by_learner: dict[str, list[Row]] = {}
    for row in rows:
        by_learner.setdefault(row.learner or row.name, []).append(row)
    learners = []
    for learner in sorted(by_learner, key=lambda s: (s.casefold(), s)):
        mine = sorted(by_learner[learner], key=lambda r: r.name)
        entry = LearnerRow(learner, next((r.canvas_id for r in mine if r.canvas_id), ""))
        for row in mine:
            entry.problems += [f"{row.name}: {p}" for p in row.problems]
        for chapter in chapters:
            graded = [r for r in mine if r.notebook == chapter.stem]
            if not graded:
                entry.problems.append(f"nothing submitted for {chapter.stem}")
                continue
            best = max(graded, key=lambda r: r.total)  # the first by name among equals
            entry.counted[chapter.stem] = best
            if len(graded) > 1:
                entry.problems.append(f"{len(graded)} submissions for {chapter.stem} "
                                      f"({', '.join(r.name for r in graded)}); the best, {best.name}, counts")
        learners.append(entry)
    return learners


def chapter_label(chapter: Chapter) -> str:
    return f"chapter {chapter.number}" if chapter.number is not None else chapter.stem


def write_course(learners: list[LearnerRow], chapters: list[Chapter], out: Path) -> Path:
    header = ["learner"]
    for chapter in chapters:
        header += [*chapter.exercises, chapter_label(chapter)]
    possible = sum(EXERCISES[ex].points for chapter in chapters for ex in chapter.exercises)
    table = [header + ["total", "max", "hints", "problems"]]
    for entry in learners:
        line = [entry.learner]
        for chapter in chapters:
            row = entry.counted.get(chapter.stem)
            line += [_points(row.earned[ex]) if row else "" for ex in chapter.exercises]
            line.append(_points(row.total) if row else "")
        hints = {ex: n for row in entry.counted.values() for ex, n in row.hints.items()}
        table.append(line + [_points(entry.total), _points(possible), hints_cell(hints), "; ".join(entry.problems)])
    _write_csv(out / "course.csv", table)
    return out / "course.csv"


def canvas_assignment(chapter: Chapter) -> str:
    """The assignment's name in Canvas: never ending in "(digits)", which Canvas reads as an assignment id."""
    title = chapter.notebook.cells[0].source.splitlines()[0] if chapter.notebook.cells else ""
    title = re.sub(r"^#+\s*(?:solutions|exercises)?\s*:?\s*", "", title, flags=re.IGNORECASE).strip()
    return f"Riverbank {chapter_label(chapter)}" + (f": {title}" if title else "")


def write_canvas(learners: list[LearnerRow], chapters: list[Chapter], out: Path) -> Path:
    """A file for Canvas's Gradebook > Import: a column per chapter (its subtotal), a row per learner."""
    table = [CANVAS_COLUMNS + [canvas_assignment(ch) for ch in chapters],
             ["Points Possible", "", "", "", ""]
             + [_points(sum(EXERCISES[ex].points for ex in ch.exercises)) for ch in chapters]]
    for entry in learners:
        scores = [_points(entry.counted[ch.stem].total) if ch.stem in entry.counted else "" for ch in chapters]
        # Canvas matches a row to a student by ID, else SIS User ID, else SIS Login ID.
        table.append([entry.learner, entry.canvas_id, "", "" if entry.canvas_id else entry.learner, ""] + scores)
    _write_csv(out / "canvas.csv", table)
    return out / "canvas.csv"


# --- similar work and the class summary -------------------------------------------------------------

def find_similar(learners: list[LearnerRow], chapters: list[Chapter]) -> list[dict]:
    pairs = []
    for chapter in chapters:
        works = {e.learner: e.counted[chapter.stem].answers for e in learners
                 if chapter.stem in e.counted and e.counted[chapter.stem].answers}
        functions = {ex: EXERCISES[ex].function_name for ex in chapter.exercises}
        for pair in similar_pairs(works, solution_cells(chapter.notebook, functions)):
            pairs.append({"chapter": chapter.stem, **pair})
    return pairs


def write_similar(pairs: list[dict], out: Path) -> Path:
    table = [["chapter", "learner_a", "learner_b", "exercises", "similarity", "like_published_solution"]]
    table += [[p["chapter"], p["learner_a"], p["learner_b"], " ".join(p["exercises"]), f"{p['similarity']:.2f}",
               "yes" if p["like_published"] else "no"] for p in pairs]
    _write_csv(out / "similar.csv", table)
    return out / "similar.csv"


def summary_markdown(rows: list[Row], learners: list[LearnerRow], chapters: list[Chapter],
                     pairs: list[dict]) -> str:
    unmatched = [r for r in rows if not r.notebook]
    exposed = [r for r in rows if any(p.startswith(UNISOLATED) for p in r.problems)]
    lines = ["# Class summary", ""]
    if exposed:
        why = sorted({p for r in exposed for p in r.problems if p.startswith(UNISOLATED)})
        lines += [f"**Warning: {len(exposed)} of {len(rows)} submissions were {UNISOLATED}**: "
                  f"{'; '.join(why)}. Their code ran with the grader's own rights and could have read or "
                  "changed other submissions, the gradebook and your files. Install bubblewrap and grade "
                  "again, or see the README's threat model.", ""]
    lines += [
             f"{len(learners)} learners, {len(rows)} submissions ({len(unmatched)} not matched to a chapter). "
             "Scores count each learner's best submission per chapter.", ""]
    for chapter in chapters:
        counted = [e.counted[chapter.stem] for e in learners if chapter.stem in e.counted]
        heading = canvas_assignment(chapter).removeprefix("Riverbank ")
        lines += [f"## {heading[:1].upper()}{heading[1:]}", "",
                  f"{len(counted)} of {len(learners)} learners submitted it.", "",
                  "| Exercise | Level | Points | Mean | Scores (points: learners) | Learners who used hints "
                  "| Most frequent named mistakes |",
                  "|---|---|---|---|---|---|---|"]
        for ex_id in chapter.exercises:
            ex = EXERCISES[ex_id]
            scores = [r.earned[ex_id] for r in counted]
            spread = ", ".join(f"{_points(s)}: {n}" for s, n in sorted(Counter(scores).items(), reverse=True))
            mistakes = Counter(m for r in counted for m in r.mistakes.get(ex_id, []))
            named = "; ".join(f"{m} ({n})" for m, n in sorted(mistakes.items(), key=lambda kv: (-kv[1], kv[0]))[:3])
            mean = f"{sum(scores) / len(scores):.1f}" if scores else "–"
            hinted = sum(1 for r in counted if r.hints.get(ex_id))
            lines.append(f"| {ex_id} {ex.function_name} | {ex.level} | {_points(ex.points)} | {mean} | {spread or '–'} "
                         f"| {hinted} | {named.replace('|', '/') or '–'} |")
        lines.append("")
    flagged = [r for r in rows if r.tampering]
    lines += ["## Tampering suspected", "",
              "Code that reaches into the grader, or recorded scores a re-check does not reproduce. "
              "Look at these notebooks; this is not proof.", ""]
    lines += [f"- {r.name} ({r.learner})" for r in flagged] or ["None."]
    lines += ["", "## Similar submissions", "",
              "Pairs whose solution cells are near-identical once comments, layout and names are normalised "
              "(similar.csv has them all). Short exercises have few ways to be right, and pairs that also "
              "match the published solution are left out here.", ""]
    own = [p for p in pairs if not p["like_published"]]
    lines += [f"- {p['chapter']}: {p['learner_a']} and {p['learner_b']} ({' '.join(p['exercises'])}, "
              f"{p['similarity']:.2f})" for p in own] or ["None."]
    if unmatched:
        lines += ["", "## Not matched to a chapter", ""]
        lines += [f"- {r.name}: {'; '.join(r.problems)}" for r in unmatched]
    return "\n".join(lines) + "\n"


def write_course_outputs(rows: list[Row], chapters: dict[str, Chapter], out: Path) -> dict[str, Path]:
    """course.csv, canvas.csv, similar.csv and summary.md for the chapters of the notebooks graded."""
    graded = [chapters[stem] for stem in sorted({r.notebook for r in rows if r.notebook})]
    learners = course_rows(rows, graded)
    pairs = find_similar(learners, graded)
    (out / "summary.md").write_text(summary_markdown(rows, learners, graded, pairs), encoding="utf-8")
    return {"course": write_course(learners, graded, out), "canvas": write_canvas(learners, graded, out),
            "similar": write_similar(pairs, out), "summary": out / "summary.md"}
