"""Which chapter a submission is, and whose it is.

A submission is matched to a solutions notebook by what it contains first (the exercise ids its
check calls name, and cell ids only that notebook has), then by its file name, then by the names of
the folders it sits in. The learner comes from the folders and the file name (see ``learner_of``),
or from ``--learner-pattern``.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import nbformat

from .notebooks import CHECK_CALL, CHECK_TAG, checked_exercises

# A folder named like an assignment rather than a learner: "ch1", "Chapter 2", "week-3", "hw4", "03".
# (A bare number of three or more digits is more likely a student number, so it names a learner.)
_ASSIGNMENT_FOLDER = re.compile(
    r"^(?:(?:ch|chapter|week|assignment|homework|hw|lab|module|unit|part|exercises?)[\s_-]*\d+\b.*"
    r"|\d{1,2}(?:[\s_-].*)?)$", re.IGNORECASE)
_CHAPTER_WORD = re.compile(r"^(?:ch|chapter)[\s_-]*(\d+)$", re.IGNORECASE)
# Canvas's "download submissions": <name>_[LATE_]<user id>_<submission id>_<the learner's file name>
CANVAS_NAME = re.compile(r"^(?P<learner>[^_\s]+?)_(?:late_)?(?P<canvas_id>\d+)_\d+_(?P<rest>.*)$", re.IGNORECASE)
# Moodle's download: a folder "<Full Name>_<id>_assignsubmission_file_" per learner
MOODLE_FOLDER = re.compile(r"^(?P<learner>.+?)_\d+_assignsubmission_\w*$")
_COPY = re.compile(r"^(?:copy of\s+)+|\s*\(\d+\)$|\s*-\s*copy(?:\s*\(\d+\))?$|-checkpoint$", re.IGNORECASE)
_SEPARATORS = " _-.()[]"


@dataclass
class Chapter:
    """A solutions notebook and what identifies it."""

    stem: str
    notebook: nbformat.NotebookNode
    exercises: list[str] = field(default_factory=list)
    cell_ids: set[str] = field(default_factory=set)  # ids no other solutions notebook has

    @property
    def number(self) -> int | None:
        digits = re.match(r"\d+", self.stem)
        return int(digits.group()) if digits else None


def chapters_from(solutions: dict[str, nbformat.NotebookNode]) -> dict[str, Chapter]:
    """A Chapter per solutions notebook, by stem, each with the cell ids that are its own."""
    counts = Counter(cell.get("id") for nb in solutions.values() for cell in nb.cells)
    return {stem: Chapter(stem, nb, checked_exercises(nb),
                          {c.get("id") for c in nb.cells if c.get("id") and counts[c.get("id")] == 1})
            for stem, nb in solutions.items()}


@dataclass
class Match:
    stem: str | None  # the solutions notebook, or None
    how: str  # "content", "file name", "folder name", "--notebook", or "" when unmatched
    problem: str | None = None  # said in the gradebook when unmatched or ambiguous


def content_evidence(nb: nbformat.NotebookNode, chapters: dict[str, Chapter]) -> dict[str, int]:
    """Per chapter, how much of the notebook is its own: 100 per exercise id checked, 1 per cell id."""
    ids = {cell.get("id") for cell in nb.cells}
    called = {m.group(1) for cell in nb.cells if cell.get("cell_type") == "code"
              for m in CHECK_CALL.finditer(cell.get("source", ""))}
    evidence = {stem: 100 * len(called & set(ch.exercises)) + len(ids & ch.cell_ids) for stem, ch in chapters.items()}
    return {stem: n for stem, n in sorted(evidence.items(), key=lambda kv: (-kv[1], kv[0])) if n > 0}


def by_file_name(name: str, stems) -> str | None:
    """The stem the file name contains (the longest such), or None."""
    matches = [stem for stem in stems if stem.lower() in PurePosixPath(name).name.lower()]
    return max(matches, key=len) if matches else None


def by_folder_name(relpath: str, chapters: dict[str, Chapter]) -> str | None:
    """The chapter a folder names: its stem inside the folder's name, or "ch3"/"chapter 3"/"03_..."."""
    for folder in reversed(PurePosixPath(relpath).parts[:-1]):
        stem = by_file_name(folder, chapters)
        if stem:
            return stem
        word = _CHAPTER_WORD.match(folder) or re.match(r"^(\d+)(?:[\s_-].*)?$", folder)
        if word:
            numbered = [s for s, ch in chapters.items() if ch.number == int(word.group(1))]
            if len(numbered) == 1:
                return numbered[0]
    return None


def match(nb: nbformat.NotebookNode | None, relpath: str, chapters: dict[str, Chapter]) -> Match:
    """Which chapter ``nb`` (found at ``relpath``) is: by content, then file name, then folder name."""
    evidence = content_evidence(nb, chapters) if nb is not None else {}
    by_name = by_file_name(relpath, chapters) or by_folder_name(relpath, chapters)
    how_name = "file name" if by_file_name(relpath, chapters) else "folder name"
    if evidence:
        ranked = list(evidence.items())
        if len(ranked) == 1 or ranked[0][1] >= 2 * ranked[1][1]:
            return Match(ranked[0][0], "content")
        tied = [stem for stem, n in ranked if 2 * n > ranked[0][1]]
        if by_name in tied:
            others = ", ".join(s for s in tied if s != by_name)
            return Match(by_name, how_name, f"it also holds cells of {others}; graded as {by_name} (from its "
                                            f"{how_name})")
        return Match(None, "", f"ambiguous: it holds cells of {' and '.join(tied)} in similar measure; "
                               "split it, or pass --notebook")
    if by_name:
        return Match(by_name, how_name)
    return Match(None, "", "unmatched: no chapter's check cells or cell ids are in it, and no file or folder "
                           f"name says which chapter it is ({', '.join(chapters)}); pass --notebook to force one")


def _clean(text: str) -> str:
    previous = None
    while previous != text:
        previous, text = text, _COPY.sub("", text.strip())
    return text.strip(_SEPARATORS)


@dataclass
class Learner:
    id: str
    canvas_id: str = ""  # Canvas's user id, when the file name is a Canvas download's
    problem: str | None = None


def learner_of(relpath: str, chapters: dict[str, Chapter], pattern: re.Pattern | None = None) -> Learner:
    """The learner a submission belongs to.

    With ``pattern``: its group ``learner`` (or its first group, or the whole match) searched in the
    path relative to the submissions folder. Otherwise, the default rule:
      1. the nearest folder that does not name an assignment (a chapter's stem, "ch3", "week 2",
         "hw4", "03_…"); a Moodle folder "Full Name_123_assignsubmission_file_" gives "Full Name";
      2. else the file name: a Canvas download "name_[late_]<user id>_<submission id>_<file>"
         gives "name" (and the Canvas user id); otherwise what is left of the file name after
         "Copy of ", " (1)", " - Copy" and any chapter's stem are removed;
      3. else the file name itself, with a problem saying no learner was found.
    """
    path = PurePosixPath(relpath)
    if pattern is not None:
        found = pattern.search(relpath)
        if found:
            groups = found.groupdict()
            value = groups.get("learner") or (found.group(1) if found.re.groups else found.group(0))
            if value and value.strip():
                return Learner(value.strip())
        fallback = learner_of(relpath, chapters)
        return Learner(fallback.id, fallback.canvas_id,
                       f"--learner-pattern does not match {relpath!r}; learner taken from the default rule")
    for folder in reversed(path.parts[:-1]):
        moodle = MOODLE_FOLDER.match(folder)
        if moodle:
            return Learner(moodle.group("learner").strip())
        if by_file_name(folder, chapters) or _ASSIGNMENT_FOLDER.match(folder):
            continue
        return Learner(_clean(folder) or folder)
    stem = path.stem
    canvas = CANVAS_NAME.match(stem)
    if canvas:
        return Learner(canvas.group("learner"), canvas.group("canvas_id"))
    rest = _clean(stem)
    for chapter in sorted(chapters, key=len, reverse=True):
        rest = re.sub(re.escape(chapter), " ", rest, flags=re.IGNORECASE)
    rest = _clean(rest)
    if rest:
        return Learner(rest)
    return Learner(stem, problem="no learner in the file or folder names; the row is named after the file "
                                 "(sort submissions into a folder per learner, or pass --learner-pattern)")


__all__ = ["Chapter", "Match", "Learner", "chapters_from", "match", "learner_of", "content_evidence",
           "by_file_name", "by_folder_name", "CHECK_TAG"]
