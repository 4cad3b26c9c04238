"""Every chapter's exercises as the course promises them: three levels, 4–6 exercises, hints for each,
headings that agree with the grader, and named mistakes that point to real hints and sections."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from riverbank.grading.exercises import EXERCISES, chapter_exercises
from riverbank.grading.notebooks import CHECK_TAG, checked_exercises
from riverbank.grading.spec import BUILD, EXPERIMENT, LEVELS, WARM_UP

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
CHAPTERS = {int(p.name[:2]): p for p in sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))}
HEADING = re.compile(r"^## Exercise (\d+\.\d+): (.+) \((warm-up|build|experiment), (\d+(?:\.\d+)?) points?\)$", re.M)
SECTION = re.compile(r"^chapter (\d+), section “([^”]+)”$")


def _chapter(path: Path) -> int:
    return int(path.name[:2])


def _plain(text: str) -> str:
    """A heading as a reader sees it, roughly: math and markup dropped (``$\\sqrt{d_k}$`` → ``√d_k``)."""
    text = text.replace("\\sqrt", "√")
    return re.sub(r"[*`${}\\]", "", text).replace("_", "").strip()


def _headings(nb) -> set[str]:
    """Every markdown heading's text, as a reader sees it."""
    found = set()
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                m = re.match(r"^#{1,6}\s+(.+?)\s*$", line)
                if m:
                    found.add(_plain(m.group(1)))
    return found


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_a_chapter_has_four_to_six_exercises_in_all_three_levels(path):
    exercises = chapter_exercises(_chapter(path))
    levels = {ex.level for ex in exercises}
    assert 4 <= len(exercises) <= 6, [ex.id for ex in exercises]
    assert levels == set(LEVELS), f"missing {set(LEVELS) - levels}"
    assert [ex.id for ex in exercises] == [f"{_chapter(path)}.{i}" for i in range(1, len(exercises) + 1)]


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_each_heading_gives_the_graders_level_and_points_and_every_exercise_is_checked(path):
    nb = nbformat.read(path, as_version=4)
    headings = {m.group(1): m for cell in nb.cells if cell.cell_type == "markdown"
                for m in HEADING.finditer(cell.source)}
    exercises = chapter_exercises(_chapter(path))
    assert sorted(headings) == sorted(ex.id for ex in exercises)
    for ex in exercises:
        m = headings[ex.id]
        assert (m.group(3), float(m.group(4))) == (ex.level, ex.points), (ex.id, m.group(0))
    assert checked_exercises(nb) == [ex.id for ex in exercises]


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_cells_follow_the_id_convention_the_grader_and_demo_rely_on(path):
    nb = nbformat.read(path, as_version=4)
    ids = [c.get("id") for c in nb.cells]
    for name in ("setup", "imports", "score-table"):
        assert name in ids, name
    for ex in chapter_exercises(_chapter(path)):
        stem = "ex-" + ex.id.replace(".", "-")
        for suffix in ("md", "solution", "check"):
            assert f"{stem}-{suffix}" in ids, f"{stem}-{suffix}"
        check = next(c for c in nb.cells if c.get("id") == f"{stem}-check")
        assert CHECK_TAG in check.metadata.get("tags", []) and f'check("{ex.id}"' in check.source
    assert "hint" in next(c for c in nb.cells if c.get("id") == "imports").source


@pytest.mark.parametrize("ex_id", sorted(EXERCISES))
def test_every_exercise_has_hints_and_every_named_mistake_says_where_it_is_explained(ex_id):
    ex = EXERCISES[ex_id]
    assert 1 <= len(ex.hints) <= 3 and all(h.strip() for h in ex.hints)
    for mistake in ex.mistakes:
        assert mistake.hint or mistake.section, mistake.message
        if mistake.section:  # any chapter's section: a 4.x mistake may be explained in chapter 7
            m = SECTION.match(mistake.section)
            assert m, f"write sections as 'chapter N, section “Heading”': {mistake.section!r}"
            chapter = CHAPTERS[int(m.group(1))]
            assert _plain(m.group(2)) in _headings(nbformat.read(chapter, as_version=4)), \
                f"no heading “{m.group(2)}” in {chapter.name}"


@pytest.mark.parametrize("ex_id", sorted(EXERCISES))
def test_a_hint_never_contains_the_code(ex_id):
    """A hint gives the idea, the formula or the shape of the code: never a fenced block, a
    function definition, a return statement, an import or a lambda."""
    for text in EXERCISES[ex_id].hints:
        assert not re.search(r"```|\bdef \w+\(|^\s*return\b|^\s*(import|from) \w|\blambda\b", text, re.M), text
