"""Reading submitted notebooks: parse them safely, find them in a folder, put back the official checks."""

from __future__ import annotations

import ast
import copy
import json
import re
from pathlib import Path

import nbformat

from .exercises import EXERCISES

CHECK_TAG = "grader-check"
CHECK_CALL = re.compile(r"""\bcheck\(\s*["']([^"']+)["']""")


def load_notebook(data: bytes) -> tuple[nbformat.NotebookNode | None, str | None]:
    """The notebook in ``data`` with outputs cleared, or None and what is wrong with the file."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not a notebook: the file is not UTF-8 text"
    except ValueError as error:
        return None, f"not a notebook: the file is not valid JSON ({error})"
    if not isinstance(raw, dict):
        return None, f"not a notebook: the file holds a JSON {type(raw).__name__}, not a notebook"
    if raw.get("nbformat") != 4:
        return None, (f"unsupported notebook format {raw.get('nbformat')!r} (expected 4): "
                      "open it in a current Jupyter and save it again")
    if not isinstance(raw.get("cells"), list):
        return None, 'not a notebook: the file has no "cells" list'
    try:
        nb = nbformat.reader.reads(json.dumps(raw))
        # Outputs are not graded; clearing them first means odd outputs (Colab's, a huge print)
        # cannot make an otherwise good notebook invalid.
        for cell in nb.cells:
            if cell.get("cell_type") == "code":
                cell.outputs, cell.execution_count = [], None
        nbformat.validate(nb)
    except Exception as error:  # noqa: BLE001 - any failure here means "not a valid notebook"
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return None, f"not a valid notebook: {first[:200]}"
    if nb.nbformat_minor < 5:  # cell ids arrived in 4.5; the official check cells carry them
        nb.nbformat_minor = 5
        for i, cell in enumerate(nb.cells):
            cell.setdefault("id", f"cell-{i}")
    return nb, None


def with_official_checks(submission: nbformat.NotebookNode,
                         solution: nbformat.NotebookNode) -> tuple[nbformat.NotebookNode, list[str]]:
    """A copy of ``submission`` running the official ``grader-check`` cells of ``solution``.

    A check cell found by id is replaced by the official one; a missing one is inserted after the
    nearest cell that precedes it in ``solution`` and exists in the submission, or at the end.
    Returns the notebook and a note for every cell replaced with a different one or inserted.
    """
    nb = copy.deepcopy(submission)
    notes = []
    for k, official in enumerate(solution.cells):
        if CHECK_TAG not in official.metadata.get("tags", []):
            continue
        fresh = copy.deepcopy(official)
        fresh.outputs, fresh.execution_count = [], None
        ids = [cell.get("id") for cell in nb.cells]
        if official.id in ids:
            i = ids.index(official.id)
            if nb.cells[i].cell_type != "code" or nb.cells[i].source != official.source:
                notes.append(f"the check cell {official.id} was edited; the official one was run instead")
            nb.cells[i] = fresh
            continue
        before = [cell.get("id") for cell in reversed(solution.cells[:k]) if cell.get("id") in ids]
        at = ids.index(before[0]) + 1 if before else len(nb.cells)
        nb.cells.insert(at, fresh)
        notes.append(f"the check cell {official.id} was missing; the official one was inserted")
    return nb, notes


def official_check_ids(solution: nbformat.NotebookNode) -> set[str]:
    return {cell.id for cell in solution.cells if CHECK_TAG in cell.metadata.get("tags", [])}


def checked_exercises(solution: nbformat.NotebookNode) -> list[str]:
    """Exercise ids the official check cells grade, in notebook order."""
    found = [m.group(1) for cell in solution.cells if CHECK_TAG in cell.metadata.get("tags", [])
             for m in CHECK_CALL.finditer(cell.source)]
    return [ex_id for ex_id in dict.fromkeys(found) if ex_id in EXERCISES]


def submissions_in(folder: Path) -> dict[str, Path]:
    """Every notebook under ``folder`` by its path relative to it, skipping Jupyter's checkpoints."""
    if folder.is_file():
        return {folder.name: folder}
    found = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*.ipynb")
             if ".ipynb_checkpoints" not in p.parts and p.is_file()}
    return dict(sorted(found.items()))


def check_expressions(solution: nbformat.NotebookNode) -> dict[str, str]:
    """Per exercise id, the source of what the official check cell passes to ``check``.

    Usually the function's name (``attend``); sometimes an expression built from it
    (``triton_flash.with_step(attend_block)``). The re-check evaluates the same thing.
    """
    found: dict[str, str] = {}
    for cell in solution.cells:
        if CHECK_TAG not in cell.metadata.get("tags", []):
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "check"
                    and len(node.args) >= 2 and isinstance(node.args[0], ast.Constant)
                    and node.args[0].value in EXERCISES):
                found.setdefault(node.args[0].value, ast.get_source_segment(cell.source, node.args[1]))
    return found
