"""Invariants of the repository: one source of truth, exercises in sync, notebooks ready for Colab and nbval."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import nbformat
import pytest
import yaml

from riverbank.authoring import exercise_from_solution, sources, strip_solutions

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
NOTEBOOKS = sorted(p for folder in ("chapters", "solutions", "exercises") for p in (ROOT / folder).glob("*.ipynb"))
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]


def test_there_are_notebooks_to_check():
    assert {"chapters", "solutions", "exercises"} <= {p.parent.name for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=rel)
def test_first_code_cell_is_the_guarded_colab_setup_naming_the_configured_repository(path):
    setup = code_cells(read(path))[0].source
    assert 'if "google.colab" in sys.modules:' in setup
    tree = ast.parse(setup)
    # Everything that installs must sit inside the guard, so the cell does nothing outside Colab.
    assert all(isinstance(node, (ast.Import, ast.ImportFrom, ast.If)) for node in tree.body)
    assigned = {t.id: node.value.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                for t in node.targets if isinstance(t, ast.Name) and isinstance(node.value, ast.Constant)}
    assert assigned.get("REPOSITORY") == CONFIG["repository"]["url"]
    assert assigned.get("BRANCH") == CONFIG["repository"]["branch"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=rel)
def test_notebook_is_committed_executed_in_order_without_errors(path):
    cells = code_cells(read(path))
    counts = [c.execution_count for c in cells]
    assert None not in counts, "commit notebooks with their outputs: run `make execute`"
    assert counts == list(range(1, len(counts) + 1)), "re-run the notebook top to bottom in a fresh kernel"
    errors = [o for c in cells for o in c.outputs if o.output_type == "error"]
    assert not errors, f"stored error output: {errors[0].ename}"
    assert not any("execution" in c.metadata for c in cells), "per-cell timing metadata: use `make execute`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=rel)
def test_notebook_reads_no_repository_relative_path(path):
    # Data ships inside the package; a path into the repository breaks in Colab.
    pattern = re.compile(r"""["'](\.\./|\./)?(chapters|solutions|exercises|riverbank|tests)/""")
    offenders = [c.source for c in code_cells(read(path)) if pattern.search(c.source)]
    assert not offenders


@pytest.mark.parametrize("path", NOTEBOOKS, ids=rel)
def test_notebook_is_in_the_table_of_contents(path):
    assert rel(path.with_suffix("")) in (ROOT / "_toc.yml").read_text()


@pytest.mark.parametrize("path", SOLUTIONS, ids=rel)
def test_exercises_are_generated_from_solutions(path):
    exercise = ROOT / "exercises" / path.name
    assert exercise.exists(), "run `make exercises`"
    assert sources(read(exercise)) == sources(exercise_from_solution(read(path))), "exercises/ is stale: run `make exercises`"


def test_no_exercise_without_a_solution():
    assert {p.name for p in (ROOT / "exercises").glob("*.ipynb")} == {p.name for p in SOLUTIONS}


@pytest.mark.parametrize("path", SOLUTIONS, ids=rel)
def test_solutions_have_solution_regions_and_exercises_none(path):
    assert "### BEGIN SOLUTION" in "".join(c.source for c in read(path).cells)
    exercise_text = "".join(c.source for c in read(ROOT / "exercises" / path.name).cells)
    assert "SOLUTION" not in exercise_text and "raise NotImplementedError" in exercise_text


def test_strip_solutions_keeps_indentation_and_code_outside_regions():
    source = (
        "def f(x):\n"
        '    """Doc."""\n'
        "    ### BEGIN SOLUTION\n"
        "    y = x + 1\n"
        "    return y\n"
        "    ### END SOLUTION\n"
        "\n"
        "### BEGIN SOLUTION\n"
        "z = 3\n"
        "### END SOLUTION\n"
        "print('kept')"
    )
    assert strip_solutions(source) == (
        'def f(x):\n    """Doc."""\n    raise NotImplementedError\n\nraise NotImplementedError\nprint(\'kept\')'
    )


def test_strip_solutions_rejects_unbalanced_markers():
    with pytest.raises(ValueError, match="unbalanced"):
        strip_solutions("### BEGIN SOLUTION\nx = 1\n")


def test_requirements_pin_every_dependency_exactly_and_torch_to_the_cpu_build():
    lines = [l for l in (ROOT / "requirements.txt").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][^\s]*", l) for l in lines), lines
    assert "torch==2.13.0" in lines


def test_merge_streams_joins_only_consecutive_chunks_of_the_same_stream():
    from riverbank.authoring import merge_streams

    out = [nbformat.v4.new_output("stream", name="stdout", text="a"),
           nbformat.v4.new_output("stream", name="stdout", text="b\n"),
           nbformat.v4.new_output("stream", name="stderr", text="warn\n"),
           nbformat.v4.new_output("execute_result", data={"text/plain": "1"}, execution_count=1),
           nbformat.v4.new_output("stream", name="stdout", text="c\n")]
    merged = merge_streams(out)
    assert [(o.output_type, o.get("text")) for o in merged] == [
        ("stream", "ab\n"), ("stream", "warn\n"), ("execute_result", None), ("stream", "c\n")]


@pytest.mark.parametrize("path", SOLUTIONS, ids=rel)
def test_exercise_generation_is_deterministic(path):
    first = nbformat.writes(exercise_from_solution(read(path)))
    assert first == nbformat.writes(exercise_from_solution(read(path)))


@pytest.mark.parametrize("path", SOLUTIONS, ids=rel)
def test_exercise_headings_state_the_points_the_grader_gives(path):
    from riverbank.grading.exercises import EXERCISES

    headings = [m for c in read(path).cells if c.cell_type == "markdown"
                for m in re.findall(r"^## Exercise (\d+\.\d+):.*\((?:warm-up|build|experiment), (\d+) points\)", c.source, re.M)]
    assert headings, "each exercise heading ends with its level and points, e.g. (build, 10 points)"
    for exercise_id, points in headings:
        assert EXERCISES[exercise_id].points == int(points), exercise_id


# A code box on the website holds 77 monospace characters at a 1280 px window (measured in
# headless Chromium); a longer line scrolls sideways. Output wraps (_ext/static/site.css); code does not.
CODE_WIDTH = 77


CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@pytest.mark.parametrize("path", [*NOTEBOOKS, *sorted((ROOT / "quizzes").glob("*.ipynb"))],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_cell_holds_a_control_character(path):
    """A notebook written from a Python string can carry an escape by mistake: "\\alpha" written as
    "\alpha" is a bell character followed by "lpha", and MathJax shows "Math input error"."""
    found = [(cell.get("id"), repr(m.group()), cell.source[max(0, m.start() - 30):m.start()])
             for cell in read(path).cells for m in CONTROL.finditer(cell.source)]
    assert not found, f"control characters (cell id, character, text before it): {found}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_code_lines_fit_the_websites_code_box(path):
    long = [(cell.get("id"), len(line), line.strip()[:50]) for cell in read(path).cells
            if cell.cell_type == "code" for line in cell.source.splitlines() if len(line) > CODE_WIDTH]
    assert not long, f"lines over {CODE_WIDTH} characters (cell id, length, start): {long}"


def test_the_class_editions_toc_is_the_books_without_solutions(tmp_path):
    from riverbank.authoring import class_edition, without_solutions

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    written = class_edition(ROOT, tmp_path)
    kept = yaml.safe_load(written[0].read_text())
    assert kept == without_solutions(toc)
    flat = json.dumps(kept)
    assert "solutions/" not in flat and '"Solutions"' not in flat
    solutions = len(list((ROOT / "solutions").glob("*.ipynb")))
    assert solutions == 10 and json.dumps(toc).count('"file"') - flat.count('"file"') == solutions  # every one
    config = yaml.safe_load(written[1].read_text())
    assert config["sphinx"]["config"]["riverbank_edition"] == "class"
    assert config["sphinx"]["local_extensions"] == {"riverbank_site": str(ROOT / "_ext")}
    original = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert {k: v for k, v in config.items() if k not in ("sphinx", "exclude_patterns")} == {
        k: v for k, v in original.items() if k not in ("sphinx", "exclude_patterns")}
    # a part whose every entry is a solution goes; a part with one left keeps it
    assert without_solutions({"parts": [{"caption": "S", "chapters": [{"file": "solutions/a"}]},
                                        {"caption": "E", "chapters": [{"file": "solutions/b"}, {"file": "e"}]}]}) == {
        "parts": [{"caption": "E", "chapters": [{"file": "e"}]}]}
