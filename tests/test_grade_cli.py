"""The instructor CLI: one run over good, partial and hostile submissions, checked row by row; plus its parts."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from filelock import FileLock

from riverbank.grading import cli, isolation
from riverbank.grading.exercises import EXERCISES

ROOT = Path(__file__).resolve().parents[1]
NAME = "01_bank_by_the_river.ipynb"
_spec = importlib.util.spec_from_file_location("make_submissions", ROOT / "tests" / "make_submissions.py")
make_submissions = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_submissions)

# case -> (points for 1.1, 1.2, 1.3, 1.4; text each expected problem contains; [] means no problems at all)
FULL = tuple(int(EXERCISES[ex].points) for ex in ("1.1", "1.2", "1.3", "1.4"))
EXPECTED = {
    "correct": (FULL, []),
    # 1.4 measures with the learner's own attention_weights, so the unscaled 1.1 spills into it
    "unscaled": ((1, 10, 7, 0), []),
    "untouched": ((0, 0, 0, 0), []),
    # 1.4 measures with attention_weights, which fake_check never wrote
    "fake_check": ((0, 0, 7, 0), ["the check cell ex-1-1-check was edited; the official one was run instead",
                                  "the check cell ex-1-2-check was edited; the official one was run instead"]),
    "deleted_check": (FULL, ["the check cell ex-1-2-check was missing; the official one was inserted"]),
    "deleted_solution": ((0, 0, 7, 0), ["1.1 not checked: attention_weights is not defined"]),
    "sys_exit": (FULL, ['("sys.exit("stopping here")") raised SystemExit: stopping here']),
    "os_exit": ((10, 0, 0, 0), ['("os._exit(1)"): the kernel died while running it',
                                "1.2, 1.3, 1.4 not checked: the notebook stopped before the check ran"]),
    "kill9": ((0, 0, 0, 0), ["the kernel died while running it",
                             "1.1, 1.2, 1.3, 1.4 not checked: the notebook stopped before the check ran"]),
    "infinite_loop": ((10, 10, 0, 0), ['("while True:"): did not finish before its time limit of 15 s',
                                       "1.3, 1.4 not checked: the notebook stopped before the check ran"]),
    "memory_bomb": (FULL, ["raised MemoryError"]),
    "huge_print": (FULL, ["the notebook printed 20,0"]),
    # writes fake results lines through RIVERBANK_RESULTS: the official checks win, and it is flagged
    "tamper": ((10, 0, 0, 0), ['tampering suspected: cell 4 ("def parent_of(pid):") uses RIVERBANK_RESULTS']),
    "not_json": ((0, 0, 0, 0), ["not a notebook: the file is not valid JSON"]),
    "nbformat3": ((0, 0, 0, 0), ["unsupported notebook format 3 (expected 4)"]),
    "no_cells": ((0, 0, 0, 0), ['not a notebook: the file has no "cells" list']),
}
MAX = str(sum(FULL))
FLAGS = ["--jobs", "2", "--cell-timeout", "15", "--timeout", "120", "--memory", "2"]


def snapshot(folder: Path) -> dict[str, list]:
    return {p.relative_to(folder).as_posix(): [p.read_bytes().hex(), p.stat().st_mtime_ns]
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _grade_fixtures(base: Path) -> dict:
    submissions, tmp = base / "submissions", base / "tmp"
    make_submissions.write(submissions)
    tmp.mkdir()
    before = snapshot(submissions)
    # PWD is where the hostile submission guesses the gradebook lives; TMPDIR keeps its
    # "../../gradebook.csv" inside this test's folder.
    env = dict(os.environ, PWD=str(base), TMPDIR=str(tmp))
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "riverbank.grading", str(submissions), "--out", "gradebook", *FLAGS],
                         cwd=base, env=env, capture_output=True, text=True, timeout=600)
    return {"base": str(base), "seconds": time.monotonic() - start, "returncode": run.returncode,
            "stdout": run.stdout, "stderr": run.stderr, "before": before}


@pytest.fixture(scope="session")
def graded(tmp_path_factory) -> dict:
    """One grading run over every fixture, shared by the pytest-xdist workers."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return _grade_fixtures(tmp_path_factory.mktemp("grade"))
    shared = tmp_path_factory.getbasetemp().parent
    with FileLock(str(shared / "grade-cli.lock")):
        done = shared / "grade-cli.json"
        if not done.exists():
            (shared / "grade-cli").mkdir()
            done.write_text(json.dumps(_grade_fixtures(shared / "grade-cli")))
        return json.loads(done.read_text())


@pytest.fixture(scope="session")
def rows(graded) -> dict[str, dict]:
    with open(Path(graded["base"]) / "gradebook" / "gradebook.csv", newline="", encoding="utf-8") as f:
        return {row["submission"]: row for row in csv.DictReader(f)}


def feedback(graded, case: str) -> str:
    return (Path(graded["base"]) / "gradebook" / "feedback" / case / "01_bank_by_the_river.txt").read_text()


def test_run_completes_in_time_and_exits_zero_despite_bad_submissions(graded):
    assert graded["returncode"] == 0, graded["stderr"][-3000:]
    assert graded["seconds"] < 180, f"grading took {graded['seconds']:.0f} s"


def test_progress_has_one_line_per_submission_and_the_total_time(graded):
    lines = graded["stdout"].splitlines()
    n = len(EXPECTED) + 1
    for case in EXPECTED:
        assert sum(f"] {case}/{NAME}: " in line for line in lines) == 1, case
    assert sum(line.startswith("[") for line in lines) == n
    assert f"graded {n} submissions in" in lines[-1]


def test_gradebook_has_a_column_per_exercise_and_rows_sorted_by_name(graded, rows):
    header = (Path(graded["base"]) / "gradebook" / "gradebook.csv").read_text().splitlines()[0]
    # only the graded notebook's exercises, however many chapters the course has
    assert header == "submission,learner,notebook,matched_by,1.1,1.2,1.3,1.4,total,max,hints,problems"
    assert {ex_id for ex_id in EXERCISES if ex_id.startswith("1.")} == {"1.1", "1.2", "1.3", "1.4"}
    assert list(rows) == sorted([f"{case}/{NAME}" for case in EXPECTED] + ["misc/homework.ipynb"])


@pytest.mark.parametrize("case", EXPECTED)
def test_row(rows, case):
    points, problems = EXPECTED[case]
    row = rows[f"{case}/{NAME}"]
    assert (row["learner"], row["notebook"]) == (case, "01_bank_by_the_river")
    # by content where it has any; a file that is not a notebook is matched by its name
    assert row["matched_by"] == ("file name" if case in ("not_json", "nbformat3", "no_cells") else "content")
    assert (row["1.1"], row["1.2"], row["1.3"], row["1.4"]) == tuple(map(str, points))
    assert (row["total"], row["max"]) == (str(sum(points)), MAX)
    if not problems:
        assert row["problems"] == ""
    for text in problems:
        assert text in row["problems"], row["problems"]


def test_a_notebook_named_like_no_chapter_is_recognised_by_its_content(rows):
    row = rows["misc/homework.ipynb"]
    assert (row["learner"], row["notebook"], row["matched_by"]) == ("misc", "01_bank_by_the_river", "content")
    assert (row["1.1"], row["total"], row["max"], row["problems"]) == ("10", MAX, MAX, "")


def test_feedback_files_name_the_mistakes(graded):
    assert "Exercise 1.1 · attention_weights: 1/10 points" in feedback(graded, "unscaled")
    assert "Likely mistake: the scores are not divided by √d_k." in feedback(graded, "unscaled")
    assert feedback(graded, "untouched").count("not attempted: replace `raise NotImplementedError`") == 4
    assert "not checked: attention_weights is not defined" in feedback(graded, "deleted_solution")
    assert "Exercise 1.1 · attention_weights: 0/10 points" in feedback(graded, "fake_check")
    assert "Exercise 1.3 · cosine_similarity: 0/7 points\n  not checked: the notebook stopped" in feedback(
        graded, "infinite_loop")
    assert "not a notebook: the file is not valid JSON" in feedback(graded, "not_json")
    for case in EXPECTED:
        assert feedback(graded, case).startswith(f"Submission: {case}/{NAME}\nLearner: {case}\n")
    assert "Graded against: solutions/01_bank_by_the_river.ipynb (matched by content)" in feedback(graded, "correct")


def test_a_hostile_submission_cannot_touch_the_gradebook_or_another_row(graded, rows):
    base = Path(graded["base"])
    assert "FAKE" not in (base / "gradebook" / "gradebook.csv").read_text()
    assert "FAKE" not in feedback(graded, "correct") and f"Total: {MAX}/{MAX} points" in feedback(graded, "correct")
    # Its fake results line (1000 points for 1.2) came before the official check, whose line wins.
    assert rows[f"tamper/{NAME}"]["1.2"] == "0"
    if isolation.probe() is None:
        # In the sandbox its writes landed in the sandbox's own /tmp, which is gone: nothing is left
        # in the host's temporary folder, not even the graded copies (tests/test_sandbox.py has more).
        assert sorted((base / "tmp").iterdir()) == []
    else:
        # Its writes to "../../gradebook.csv" landed in the temporary folder; the kernels' folders are gone.
        assert (base / "tmp" / "gradebook.csv").read_text().startswith("submission,")
        assert not list((base / "tmp").glob("riverbank-grade-*"))


def test_submissions_are_byte_identical_with_unchanged_mtimes(graded):
    assert snapshot(Path(graded["base"]) / "submissions") == graded["before"]


def test_committed_fixtures_match_their_builder():
    committed = {p.relative_to(ROOT / "tests" / "submissions").as_posix(): p.read_bytes()
                 for p in sorted((ROOT / "tests" / "submissions").rglob("*")) if p.is_file()}
    assert committed == make_submissions.submissions(), "run `.venv/bin/python tests/make_submissions.py`"


# --- usage errors (in-process: argparse exits with 2) ---------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["missing-folder"], "no such folder"),
    (["."], "no .ipynb files under"),
    ([".", "--notebook", "99_nothing"], "no notebook '99_nothing'"),
    ([".", "--jobs", "0"], "must be positive"),
])
def test_usage_errors_exit_2_with_a_message(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args + ["--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --- re-inserting the official check cells (no kernel) --------------------------------------------

def _nb(*cells) -> nbformat.NotebookNode:
    """cells: (id, source) for code cells, or (id, source, "check") for a grader-check cell."""
    nb = nbformat.v4.new_notebook()
    for cell_id, source, *kind in cells:
        cell = nbformat.v4.new_code_cell(source)
        cell.id = cell_id
        if kind:
            cell.metadata["tags"] = [cli.CHECK_TAG]
        nb.cells.append(cell)
    return nb


SOLUTION = _nb(("intro", "import x"), ("sol-1", "def f(): return 1"), ("chk-1", 'check("1.1", f)', "check"),
               ("sol-2", "def g(): return 2"), ("chk-2", 'check("1.2", g)', "check"),
               ("table", "score_table(chapter=1)", "check"))


def _layout(nb):
    return [(c.id, c.source) for c in nb.cells]


def test_reinsertion_keeps_an_untouched_notebook_as_it_is():
    graded, notes = cli.with_official_checks(SOLUTION, SOLUTION)
    assert _layout(graded) == _layout(SOLUTION) and notes == []


def test_reinsertion_replaces_an_edited_check_cell_by_id():
    submission = _nb(("intro", "import x"), ("sol-1", "def f(): return 1"), ("chk-1", 'print("10/10")'),
                     ("sol-2", "def g(): return 2"), ("chk-2", 'check("1.2", g)'), ("table", "score_table(chapter=1)"))
    graded, notes = cli.with_official_checks(submission, SOLUTION)
    assert _layout(graded) == _layout(SOLUTION)
    assert notes == ["the check cell chk-1 was edited; the official one was run instead"]
    assert submission.cells[2].source == 'print("10/10")'  # the submission itself is untouched


def test_reinsertion_turns_a_check_cell_made_markdown_back_into_code():
    submission = _nb(("sol-1", "def f(): return 1"), ("chk-1", 'check("1.1", f)'))
    submission.cells[1] = nbformat.v4.new_markdown_cell('check("1.1", f)')
    submission.cells[1].id = "chk-1"
    graded, notes = cli.with_official_checks(submission, SOLUTION)
    assert graded.cells[1].cell_type == "code" and notes[0].startswith("the check cell chk-1 was edited")


def test_reinsertion_puts_a_missing_check_cell_after_the_cell_before_it_in_solutions():
    submission = _nb(("intro", "import x"), ("sol-1", "def f(): return 1"), ("mine", "print(f())"),
                     ("sol-2", "def g(): return 2"), ("table", "score_table(chapter=1)"))
    graded, notes = cli.with_official_checks(submission, SOLUTION)
    assert [c.id for c in graded.cells] == ["intro", "sol-1", "chk-1", "mine", "sol-2", "chk-2", "table"]
    assert notes == ["the check cell chk-1 was missing; the official one was inserted",
                     "the check cell chk-2 was missing; the official one was inserted"]


def test_reinsertion_walks_back_past_deleted_cells_and_otherwise_appends():
    submission = _nb(("intro", "import x"), ("sol-2", "def g(): return 2"))
    graded, _ = cli.with_official_checks(submission, SOLUTION)
    # chk-1's predecessor sol-1 is gone too, so it goes after intro; chk-2 and table follow sol-2.
    assert [c.id for c in graded.cells] == ["intro", "chk-1", "sol-2", "chk-2", "table"]
    strangers = _nb(("a", "1"), ("b", "2"))
    graded, _ = cli.with_official_checks(strangers, SOLUTION)
    assert [c.id for c in graded.cells] == ["a", "b", "chk-1", "chk-2", "table"]


def test_reinsertion_on_the_real_exercise_notebook_changes_nothing():
    solution = nbformat.read(ROOT / "solutions" / NAME, as_version=4)
    exercise = nbformat.read(ROOT / "exercises" / NAME, as_version=4)
    graded, notes = cli.with_official_checks(exercise, solution)
    assert notes == [] and [c.source for c in graded.cells] == [c.source for c in exercise.cells]
    assert cli.checked_exercises(solution) == ["1.1", "1.2", "1.3", "1.4"]


# --- reading submissions and results (no kernel) --------------------------------------------------

@pytest.mark.parametrize("data, message", [
    (b"\xff\xfe not text", "not a notebook: the file is not UTF-8 text"),
    (b"{", "not a notebook: the file is not valid JSON"),
    (b"[1, 2]", "not a notebook: the file holds a JSON list"),
    (b'{"nbformat": 3, "worksheets": []}', "unsupported notebook format 3"),
    (b'{"cells": []}', "unsupported notebook format None"),
    (b'{"nbformat": 4, "nbformat_minor": 5, "metadata": {}}', 'no "cells" list'),
    (b'{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [{"source": "x"}]}', "not a valid notebook"),
])
def test_load_notebook_says_what_is_wrong(data, message):
    nb, problem = cli.load_notebook(data)
    assert nb is None and message in problem


def test_load_notebook_clears_outputs_and_gives_old_notebooks_cell_ids():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1", outputs=[
        nbformat.v4.new_output("stream", name="stdout", text="x" * 100)], execution_count=3)])
    raw = json.loads(nbformat.writes(nb))
    raw["nbformat_minor"] = 4
    del raw["cells"][0]["id"]
    loaded, problem = cli.load_notebook(json.dumps(raw).encode())
    assert problem is None and loaded.nbformat_minor == 5 and loaded.cells[0].id == "cell-0"
    assert loaded.cells[0].outputs == [] and loaded.cells[0].execution_count is None
    nbformat.validate(loaded)


def test_read_results_keeps_the_last_well_formed_line_per_known_exercise(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join([
        json.dumps({"id": "1.1", "earned": 10}), "not json", json.dumps({"id": "1.1", "earned": 3}),
        json.dumps({"id": "1.2", "earned": "lots"}), json.dumps({"id": "9.9", "earned": 5}), "[]",
    ]))
    assert cli.read_results(path, ["1.1", "1.2"]) == {"1.1": {"id": "1.1", "earned": 3}}
    assert cli.read_results(tmp_path / "missing.jsonl", ["1.1"]) == {}


def test_outputs_replace_feedback_left_from_an_earlier_run(tmp_path):
    (tmp_path / "feedback" / "gone").mkdir(parents=True)
    (tmp_path / "feedback" / "gone" / "old.txt").write_text("from an earlier run")
    (tmp_path / "feedback" / "alice.txt").write_text("planted")
    row = cli.Row("alice.ipynb", problems=["not a notebook"])
    cli.write_outputs([row], tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.txt")) == ["feedback/alice.txt"]
    feedback_file = (tmp_path / "feedback" / "alice.txt").read_text()
    assert feedback_file == "Submission: alice.ipynb\n\nProblems:\n  - not a notebook\n"
    gradebook = (tmp_path / "gradebook.csv").read_text().splitlines()
    assert gradebook == ["submission,learner,notebook,matched_by,total,max,hints,problems",
                         "alice.ipynb,,,,0,,,not a notebook"]


def test_submission_names_map_to_solution_notebooks():
    solutions = {"01_bank_by_the_river": 1, "01_bank": 2}
    assert cli.find_solution("alice/01_bank_by_the_river.ipynb", solutions) == 1
    assert cli.find_solution("bob-01_bank_by_the_river (1).ipynb", solutions) == 1
    assert cli.find_solution("homework.ipynb", solutions) is None
