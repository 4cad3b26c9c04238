"""Grading a class: renamed, copied, prefixed and nested submissions over several chapters, one row per learner.

One grading run (twice, to show it is deterministic) over tests/course_submissions/, built by
tests/make_submissions.py; then the parts (matching, learners, tamper evidence, similarity, the
Canvas file) without a kernel.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from filelock import FileLock

from riverbank.grading import integrity, matching
from riverbank.grading.exercises import EXERCISES, chapter_exercises

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_submissions", ROOT / "tests" / "make_submissions.py")
make_submissions = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_submissions)
EXPECTED = make_submissions.COURSE_EXPECTED
FLAGS = ["--jobs", "2", "--cell-timeout", "60", "--timeout", "120", "--memory", "4", "--no-progress"]
OUTPUTS = ["gradebook.csv", "course.csv", "canvas.csv", "similar.csv", "summary.md"]


def snapshot(folder: Path) -> dict[str, list]:
    return {p.relative_to(folder).as_posix(): [p.read_bytes().hex(), p.stat().st_mtime_ns]
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _grade(base: Path) -> dict:
    submissions = base / "class"
    make_submissions.write(submissions, make_submissions.course_submissions())
    before = snapshot(submissions)
    runs = []
    for out in ("first", "second"):
        run = subprocess.run([sys.executable, "-m", "riverbank.grading", str(submissions), "--out", out, *FLAGS],
                             cwd=base, capture_output=True, text=True, timeout=900)
        runs.append({"returncode": run.returncode, "stdout": run.stdout, "stderr": run.stderr[-3000:]})
    return {"base": str(base), "runs": runs, "before": before}


@pytest.fixture(scope="session")
def graded(tmp_path_factory) -> dict:
    """Two grading runs over the class, shared by the pytest-xdist workers."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return _grade(tmp_path_factory.mktemp("course"))
    shared = tmp_path_factory.getbasetemp().parent
    with FileLock(str(shared / "grade-course.lock")):
        done = shared / "grade-course.json"
        if not done.exists():
            (shared / "grade-course").mkdir()
            done.write_text(json.dumps(_grade(shared / "grade-course")))
        return json.loads(done.read_text())


def _read(graded, name: str, out: str = "first") -> list[dict]:
    with open(Path(graded["base"]) / out / name, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="session")
def course(graded) -> dict[str, dict]:
    return {row["learner"]: row for row in _read(graded, "course.csv")}


def test_both_runs_exit_zero(graded):
    for run in graded["runs"]:
        assert run["returncode"] == 0, run["stderr"]


def test_regrading_writes_the_same_files(graded):
    base = Path(graded["base"])
    for name in OUTPUTS:  # compared line by line, so that a failure shows the rows that differ
        first, second = ((base / run / name).read_text(encoding="utf-8").splitlines() for run in ("first", "second"))
        assert first == second, name
        assert (base / "first" / name).read_bytes() == (base / "second" / name).read_bytes(), name
    assert snapshot(base / "first" / "feedback").keys() == snapshot(base / "second" / "feedback").keys()
    for path in (base / "first" / "feedback").rglob("*.txt"):
        assert path.read_bytes() == (base / "second" / path.relative_to(base / "first")).read_bytes(), path


def test_submissions_are_byte_identical_with_unchanged_mtimes(graded):
    assert snapshot(Path(graded["base"]) / "class") == graded["before"]


# The chapters the class handed in, and their exercises, as the grader defines them.
CHAPTERS = {n: [ex.id for ex in chapter_exercises(n)] for n in (1, 2, 3, 4, 5, 10)}
MAX = sum(EXERCISES[ex].points for ids in CHAPTERS.values() for ex in ids)


def test_course_gradebook_has_a_row_per_learner_and_a_column_per_exercise_and_chapter(graded, course):
    header = (Path(graded["base"]) / "first" / "course.csv").read_text().splitlines()[0]
    columns = [c for n, ids in CHAPTERS.items() for c in [*ids, f"chapter {n}"]]
    assert header == ",".join(["learner", *columns, "total", "max", "hints", "problems"])
    assert list(course) == sorted(EXPECTED)


@pytest.mark.parametrize("learner", EXPECTED)
def test_course_row(course, learner):
    points, problems, hints = EXPECTED[learner]
    row = course[learner]
    total = 0
    for number, ids in CHAPTERS.items():
        if any(points.get(ex) is not None for ex in ids):
            assert [row[ex] for ex in ids] == [str(points[ex]) for ex in ids], number
            subtotal = sum(points[ex] for ex in ids)
            assert row[f"chapter {number}"] == str(subtotal)
            total += subtotal
        else:  # nothing counted for this chapter: blank, and said so
            assert [row[ex] for ex in ids] + [row[f"chapter {number}"]] == [""] * (len(ids) + 1)
    assert (row["total"], row["max"], row["hints"]) == (str(total), f"{MAX:g}", hints)
    assert ("tampering suspected" in row["problems"]) == (learner in ("mallory", "trudy"))
    if not problems:
        assert all(p.startswith("nothing submitted for") for p in row["problems"].split("; ") if p)
    for text in problems:
        assert text in row["problems"], row["problems"]


def test_each_submission_says_how_it_was_matched_and_whose_it_is(graded):
    rows = {r["submission"]: r for r in _read(graded, "gradebook.csv")}
    assert {name: (r["learner"], r["notebook"], r["matched_by"]) for name, r in rows.items()} == {
        "01_bank_by_the_river/ada_lovelace.ipynb": ("ada_lovelace", "01_bank_by_the_river", "content"),
        "03_positional_encodings/edsger.ipynb": ("edsger", "03_positional_encodings", "folder name"),
        "ada_lovelace/Copy of 02_queries_keys_values.ipynb": ("ada_lovelace", "02_queries_keys_values", "content"),
        "alan/everything.ipynb": ("alan", "", ""),
        "grace/01_bank_by_the_river.ipynb": ("grace", "01_bank_by_the_river", "content"),
        "grace/Copy of 01_bank_by_the_river.ipynb": ("grace", "01_bank_by_the_river", "content"),
        "grace/positional homework (1).ipynb": ("grace", "03_positional_encodings", "content"),
        "hopper_12345_67890_01_bank_by_the_river.ipynb": ("hopper", "01_bank_by_the_river", "content"),
        "lamport/10_serving_many_requests.ipynb": ("lamport", "10_serving_many_requests", "content"),
        "mallory/01_bank_by_the_river.ipynb": ("mallory", "01_bank_by_the_river", "content"),
        "misc/notes.ipynb": ("misc", "", ""),
        "noether/04_multi_head_attention.ipynb": ("noether", "04_multi_head_attention", "content"),
        "noether/05_transformer_block.ipynb": ("noether", "05_transformer_block", "content"),
        "trudy/03_positional_encodings.ipynb": ("trudy", "03_positional_encodings", "content"),
        "victor/01_bank_by_the_river.ipynb": ("victor", "01_bank_by_the_river", "content"),
    }
    # the untouched copy of grace's chapter 1 is graded too, and shown beside the one that counts
    assert rows["grace/01_bank_by_the_river.ipynb"]["total"] == "0"


def test_tampering_is_flagged_by_reading_the_code_and_by_the_recheck(graded):
    rows = {r["submission"]: r for r in _read(graded, "gradebook.csv")}
    mallory = rows["mallory/01_bank_by_the_river.ipynb"]["problems"]
    assert 'cell 4 ("def generous(exercise, fn):") uses riverbank.grading.session, riverbank.grading.runner' in mallory
    assert ("the recorded scores disagree with a re-check of the learner's functions "
            "(1.1 recorded 10, re-check gives 0; 1.2 recorded 10, re-check gives 0; "
            "1.3 recorded 7, re-check gives 0; 1.4 recorded 4, re-check gives 0)") in mallory
    trudy = rows["trudy/03_positional_encodings.ipynb"]["problems"]
    assert "uses riverbank" not in trudy and "disagree with a re-check" in trudy  # hidden from a reading
    clean = [r for r in rows.values() if r["learner"] not in ("mallory", "trudy")]
    assert not [r["submission"] for r in clean if "tampering" in r["problems"]]


def test_canvas_file_has_the_import_columns_points_possible_and_a_row_per_learner(graded):
    with open(Path(graded["base"]) / "first" / "canvas.csv", newline="", encoding="utf-8") as f:
        table = list(csv.reader(f))
    assert table[0] == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section",
                        "Riverbank chapter 1: the bank by the river",
                        "Riverbank chapter 2: queries, keys and values",
                        "Riverbank chapter 3: positional encodings",
                        "Riverbank chapter 4: multi-head attention",
                        "Riverbank chapter 5: the Transformer block",
                        "Riverbank chapter 10: serving many requests"]
    assert not any(re.search(r"\(\d+\)$", name) for name in table[0])  # Canvas would read "(n)" as an id
    possible = [f"{sum(EXERCISES[ex].points for ex in ids):g}" for ids in CHAPTERS.values()]
    assert table[1] == ["Points Possible", "", "", "", "", *possible]
    rows = {r[0]: r for r in table[2:]}
    assert list(rows) == sorted(EXPECTED)
    assert rows["hopper"] == ["hopper", "12345", "", "", "", "18", "", "", "", "", ""]  # Canvas's id from the file name
    assert rows["ada_lovelace"] == ["ada_lovelace", "", "", "ada_lovelace", "", possible[0], possible[1], "", "", "", ""]
    assert rows["grace"][5:] == [possible[0], "", "0", "", "", ""]
    assert rows["lamport"][5:] == ["", "", "", "", "", "28"]  # Part III: chapter 10 only


def test_similar_pairs_name_the_same_unscaled_answer_and_mark_copies_of_the_book(graded):
    pairs = {(r["chapter"], r["learner_a"], r["learner_b"]): r for r in _read(graded, "similar.csv")}
    hopper_victor = pairs[("01_bank_by_the_river", "hopper", "victor")]
    assert (hopper_victor["exercises"], hopper_victor["like_published_solution"]) == ("1.1 1.2 1.3 1.4", "no")
    assert pairs[("01_bank_by_the_river", "ada_lovelace", "grace")]["like_published_solution"] == "yes"
    assert not [key for key in pairs if "hopper" in key and "ada_lovelace" in key]


def test_summary_shows_score_spread_and_named_mistakes_per_exercise(graded):
    summary = (Path(graded["base"]) / "first" / "summary.md").read_text()
    assert "11 learners, 15 submissions (2 not matched to a chapter)" in summary
    # ada, grace (her better copy) and mallory have 10; hopper and victor 1 with the same named mistake
    assert ("| 1.1 attention_weights | warm-up | 10 | 6.4 | 10: 3, 1: 2 | 0 "
            "| the scores are not divided by √d_k (2) |") in summary
    assert "## Chapter 3: positional encodings\n\n3 of 11 learners submitted it." in summary
    assert "| 10.2 paged_window_attention | build | 11 | 4.0 | 4: 1 | 0 | kv head h // (n_heads/n_kv_heads)" in summary
    assert "sine and cosine are swapped" in summary
    # a class handed in, graded by loading weights into it; its named mistake and the hints it used
    assert "| 4.2 CausalSelfAttention | build | 14 | 8.0 | 8: 1 | 1 | kv heads tiled" in summary
    assert "| 5.4 train_reversal_lm | build | 10 | 10.0 | 10: 1 | 0 |" in summary
    assert "- mallory/01_bank_by_the_river.ipynb (mallory)" in summary
    assert "- 01_bank_by_the_river: hopper and victor (1.1 1.2 1.3 1.4, 1.00)" in summary
    assert "- alan/everything.ipynb: ambiguous" in summary


def test_progress_lines_count_submissions_done_and_left(graded):
    lines = [s for s in graded["runs"][0]["stdout"].splitlines() if s.startswith("[")]
    assert [s.split("]")[0] for s in lines] == [f"[{i}/15" for i in range(1, 16)]


def test_committed_course_fixtures_match_their_builder():
    folder = ROOT / "tests" / "course_submissions"
    committed = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    assert committed == make_submissions.course_submissions(), "run `.venv/bin/python tests/make_submissions.py`"


# --- matching and learners (no kernel) ------------------------------------------------------------

@pytest.fixture(scope="module")
def chapters():
    return matching.chapters_from({p.stem: nbformat.read(p, as_version=4)
                                   for p in sorted((ROOT / "solutions").glob("*.ipynb"))})


def test_every_exercise_notebook_is_recognised_by_content_whatever_its_name(chapters):
    for stem in chapters:
        nb = nbformat.read(ROOT / "exercises" / f"{stem}.ipynb", as_version=4)
        assert matching.match(nb, "ada/untitled.ipynb", chapters) == matching.Match(stem, "content")


def test_a_few_pasted_cells_of_another_chapter_do_not_make_a_notebook_ambiguous(chapters):
    nb = nbformat.read(ROOT / "exercises" / "02_queries_keys_values.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell('check("1.1", attention_weights)'))
    assert matching.match(nb, "x.ipynb", chapters).stem == "02_queries_keys_values"


def test_an_ambiguous_notebook_named_for_one_chapter_is_graded_as_that_one_and_says_so(chapters):
    nb = nbformat.reads(make_submissions.course_submissions()["alan/everything.ipynb"].decode(), as_version=4)
    found = matching.match(nb, "alan/02_queries_keys_values.ipynb", chapters)
    assert (found.stem, found.how) == ("02_queries_keys_values", "file name")
    assert "also holds cells of 01_bank_by_the_river" in found.problem


@pytest.mark.parametrize("path, stem, how", [
    ("ch2/anything.ipynb", "02_queries_keys_values", "folder name"),
    ("Chapter 3/ada.ipynb", "03_positional_encodings", "folder name"),
    ("03_positional_encodings (1)/ada.ipynb", "03_positional_encodings", "folder name"),
    ("ada/Copy of 01_bank_by_the_river (2).ipynb", "01_bank_by_the_river", "file name"),
    ("ada/notes.ipynb", None, ""),
])
def test_without_content_the_file_then_the_folder_name_decides(chapters, path, stem, how):
    found = matching.match(None, path, chapters)
    assert (found.stem, found.how) == (stem, how)


@pytest.mark.parametrize("path, learner, canvas_id", [
    ("ada/01_bank_by_the_river.ipynb", "ada", ""),
    ("ada/Copy of homework (1).ipynb", "ada", ""),
    ("ada/01_bank_by_the_river/submission.ipynb", "ada", ""),  # per learner, then per assignment
    ("01_bank_by_the_river/ada.ipynb", "ada", ""),
    ("week 2/Copy of ada-01_bank_by_the_river.ipynb", "ada", ""),
    ("ada-01_bank_by_the_river (1).ipynb", "ada", ""),
    ("lovelaceada_4411_90210_01_bank_by_the_river.ipynb", "lovelaceada", "4411"),
    ("lovelaceada_LATE_4411_90210_homework.ipynb", "lovelaceada", "4411"),
    ("Ada Lovelace_123456_assignsubmission_file_/01_bank_by_the_river.ipynb", "Ada Lovelace", ""),
    ("20231234/01_bank_by_the_river.ipynb", "20231234", ""),  # a student number, not an assignment
])
def test_learner_by_the_default_rule(chapters, path, learner, canvas_id):
    found = matching.learner_of(path, chapters)
    assert (found.id, found.canvas_id, found.problem) == (learner, canvas_id, None)


def test_a_file_named_only_for_its_chapter_at_the_top_has_no_learner_and_says_so(chapters):
    found = matching.learner_of("Copy of 01_bank_by_the_river.ipynb", chapters)
    assert found.id == "Copy of 01_bank_by_the_river" and "no learner in the file or folder names" in found.problem


def test_learner_pattern_takes_its_group_and_falls_back_with_a_problem(chapters):
    pattern = re.compile(r"(?P<learner>[a-z]+)_hw\d")
    assert matching.learner_of("week1/ada_hw1.ipynb", chapters, pattern) == matching.Learner("ada")
    assert matching.learner_of("x/bob.ipynb", chapters, re.compile(r"^(\w+)/")) == matching.Learner("x")
    missed = matching.learner_of("carol/notes.ipynb", chapters, pattern)
    assert missed.id == "carol" and "--learner-pattern does not match 'carol/notes.ipynb'" in missed.problem


# --- tamper evidence and similarity (no kernel) -----------------------------------------------------

@pytest.mark.parametrize("source, found", [
    ("from riverbank.grading import check, score_table", []),
    ("import riverbank.grading.session as s\ns._results.clear()", ["riverbank.grading.session"]),
    ("from riverbank.grading.exercises import EXERCISES", ["riverbank.grading.exercises"]),
    ("from riverbank.grading import check, runner", ["riverbank.grading.runner"]),
    ("import riverbank.grading as g", ["riverbank.grading (the whole module)"]),
    ("import importlib\nimportlib.import_module('riverbank.grading.session')", ["riverbank.grading.session"]),
    ("import os\nopen(os.environ['RIVERBANK_RESULTS'], 'a')", ["RIVERBANK_RESULTS"]),
    ("%time riverbank.grading.runner.grade = None", ["riverbank.grading.runner"]),  # not Python: text still read
])
def test_grader_access_names_what_reaches_past_check_and_score_table(source, found):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    lines = integrity.grader_access(nb.cells, set())
    assert lines == ([f'cell 1 ("{integrity._first_line(source)}") uses {", ".join(found)}'] if found else [])


def test_no_course_notebook_is_flagged_for_tampering():
    for folder in ("exercises", "solutions"):
        for path in sorted((ROOT / folder).glob("*.ipynb")):
            assert integrity.grader_access(nbformat.read(path, as_version=4).cells, set()) == [], path


def test_normalising_ignores_names_comments_layout_and_strings():
    a = "def f(Q, K):\n    # scores\n    return torch.softmax(Q @ K.T, dim=-1)"
    b = 'def g(queries, keys):\n    """Doc."""\n    return torch.softmax(queries @ keys.T,\n        dim=-1)'
    c = "def f(Q, K):\n    return torch.softmax(Q @ K.T / math.sqrt(Q.shape[-1]), dim=-1)"
    tokens = integrity.normalised_tokens
    # the docstring is one more token ("S"), so b is near-identical, not identical
    assert integrity.similarity(tokens(a), tokens(b)) >= integrity.SIMILAR
    assert integrity.similarity(tokens(a), tokens(c)) < integrity.SIMILAR
    assert tokens(a) == tokens(a.replace("Q", "X").replace("# scores", "# other words"))


def test_untouched_exercises_are_not_work_to_compare():
    nb = nbformat.read(ROOT / "exercises" / "01_bank_by_the_river.ipynb", as_version=4)
    functions = {ex: EXERCISES[ex].function_name for ex in ("1.1", "1.2", "1.3")}
    assert integrity.solution_cells(nb, functions) == {}
    solved = nbformat.read(ROOT / "solutions" / "01_bank_by_the_river.ipynb", as_version=4)
    assert sorted(integrity.solution_cells(solved, functions)) == ["1.1", "1.2", "1.3"]


# --- the course gradebook from rows (no kernel) -------------------------------------------------------

def test_course_rows_count_the_best_file_per_chapter_first_by_name_among_equals(chapters):
    from riverbank.grading.gradebook import course_rows
    from riverbank.grading.submission import Row

    def row(name, learner, stem, points):
        exercises = chapters[stem].exercises
        return Row(name, stem, list(exercises), dict(zip(exercises, points)), learner=learner)

    ch1, ch3 = chapters["01_bank_by_the_river"], chapters["03_positional_encodings"]
    rows = [row("b/ch1 again.ipynb", "b", ch1.stem, [10, 0, 0]), row("b/ch1.ipynb", "b", ch1.stem, [0, 10, 0]),
            row("b/worse.ipynb", "b", ch1.stem, [3, 0, 0]), row("A/x.ipynb", "A", ch3.stem, [1, 1])]
    learners = course_rows(rows, [ch1, ch3])
    assert [e.learner for e in learners] == ["A", "b"]  # sorted without regard to case
    b = learners[1]
    assert b.counted[ch1.stem].name == "b/ch1 again.ipynb" and b.total == 10 and ch3.stem not in b.counted
    assert b.problems == ["3 submissions for 01_bank_by_the_river (b/ch1 again.ipynb, b/ch1.ipynb, b/worse.ipynb); "
                          "the best, b/ch1 again.ipynb, counts", "nothing submitted for 03_positional_encodings"]


def test_the_recheck_grades_what_the_official_check_cell_passes_to_check():
    from riverbank.grading.notebooks import CHECK_TAG, check_expressions

    cells = [nbformat.v4.new_code_cell(source) for source in (
        'check("1.1", attention_weights)', 'check("1.2", wrap(attend), record=True)\nscore_table(chapter=1)',
        'check("9.9", nothing)', "attend = 1")]
    for cell in cells[:3]:
        cell.metadata["tags"] = [CHECK_TAG]
    nb = nbformat.v4.new_notebook(cells=cells)
    # unknown exercise ids and cells that are not official checks are ignored
    assert check_expressions(nb) == {"1.1": "attention_weights", "1.2": "wrap(attend)"}
