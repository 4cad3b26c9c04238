"""Evidence for the instructor, never a verdict: code that reaches into the grader, and near-identical work.

Tampering cannot be prevented from inside a notebook grader (the learner's kernel runs as the
grader's user and can patch anything it imports). What can be done is to flag it:
``grader_access`` names code that touches ``riverbank.grading`` beyond ``check``, ``hint`` and
``score_table``; the re-check (see worker.py) catches a recorded score that the learner's own
functions do not earn. ``similar_pairs`` lists learners whose solution cells are near-identical
once comments, whitespace, strings and names are normalised.
"""

from __future__ import annotations

import ast
import difflib
import io
import keyword
import re
import tokenize
from itertools import combinations

import nbformat

ALLOWED = {"check", "hint", "score_table"}
_ATTRIBUTE = re.compile(r"riverbank\s*\.\s*grading\s*\.\s*(\w+)")
_STRING_MODULE = re.compile(r"""["']riverbank\.grading\.(\w+)""")
_HOOKS = ("RIVERBANK_RESULTS", "_riverbank_recheck", "__riverbank_recheck")
SIMILAR = 0.9  # SequenceMatcher ratio over normalised tokens at or above which a pair is listed


def _first_line(source: str) -> str:
    """The cell's first line that says what it does (not an import or a comment), shortened."""
    lines = [s.strip() for s in source.splitlines() if s.strip()]
    line = next((s for s in lines if not s.startswith(("import ", "from ", "#"))), lines[0] if lines else "")
    return line if len(line) <= 40 else line[:39] + "…"


def _uses(source: str) -> list[str]:
    """What in ``source`` reaches into the grading package beyond check, hint and score_table."""
    found = []
    try:
        tree = ast.parse(source)
    except SyntaxError:  # IPython magics and the like: the text patterns below still apply
        tree = None
    for node in ast.walk(tree) if tree is not None else ():
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "riverbank.grading":
                found += [f"riverbank.grading.{a.name}" for a in node.names if a.name not in ALLOWED]
            elif node.module.startswith("riverbank.grading."):
                found.append(node.module)
            elif node.module == "riverbank" and any(a.name == "grading" for a in node.names):
                found.append("riverbank.grading (the whole module)")
        elif isinstance(node, ast.Import):
            found += [a.name if a.name != "riverbank.grading" else "riverbank.grading (the whole module)"
                      for a in node.names if a.name.startswith("riverbank.grading")]
    found += [f"riverbank.grading.{m}" for m in _ATTRIBUTE.findall(source) if m not in ALLOWED]
    found += [f"riverbank.grading.{m}" for m in _STRING_MODULE.findall(source)]
    found += [hook for hook in _HOOKS if hook in source]
    return list(dict.fromkeys(found))


def grader_access(cells: list, skip_ids: set[str]) -> list[str]:
    """One line per code cell (except ``skip_ids``, the official checks) that reaches into the grader."""
    lines = []
    for i, cell in enumerate(cells):
        if cell.get("cell_type") != "code" or cell.get("id") in skip_ids:
            continue
        uses = _uses(cell.get("source", ""))
        if uses:
            lines.append(f'cell {i + 1} ("{_first_line(cell.source)}") uses {", ".join(uses)}')
    return lines


# --- similar submissions ----------------------------------------------------------------------------

def normalised_tokens(source: str) -> list[str]:
    """Tokens of ``source`` without comments, layout or string contents; names renamed in order of appearance."""
    names: dict[str, str] = {}
    out = []
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        tokens = []
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
            tokenize.ENDMARKER}
    for tok in tokens:
        if tok.type in skip:
            continue
        if tok.type == tokenize.NAME and not keyword.iskeyword(tok.string):
            out.append(names.setdefault(tok.string, f"n{len(names)}"))
        elif tok.type == tokenize.STRING:
            out.append("S")
        else:
            out.append(tok.string)
    return out


def solution_cells(nb: nbformat.NotebookNode, exercise_functions: dict[str, str]) -> dict[str, str]:
    """Per exercise, the source of the learner's cells that answer it (by cell id, else by the def or class).

    Cells still raising NotImplementedError are left out: an untouched exercise is not work.
    """
    found: dict[str, str] = {}
    for ex_id, fn_name in exercise_functions.items():
        cell_id = f"ex-{ex_id.replace('.', '-')}-solution"
        by_id = [c.source for c in nb.cells if c.get("cell_type") == "code" and c.get("id") == cell_id]
        by_def = [c.source for c in nb.cells if c.get("cell_type") == "code"
                  and re.search(rf"^\s*(def|class)\s+{re.escape(fn_name)}\s*[(:]", c.source, re.MULTILINE)]
        source = "\n".join(by_id or by_def)
        if source.strip() and "NotImplementedError" not in source:
            found[ex_id] = source
    return found


def similarity(a: list[str], b: list[str]) -> float:
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def similar_pairs(works: dict[str, dict[str, str]], reference: dict[str, str],
                  threshold: float = SIMILAR) -> list[dict]:
    """Pairs of learners whose answers to the same exercises are near-identical.

    ``works`` maps learner -> exercise id -> source; ``reference`` holds the published solutions'
    sources. Each pair lists the exercises compared, the lowest similarity among them, and whether
    both also match the published solution (then it is likely copied from the book, not each other).
    """
    tokens = {who: {ex: normalised_tokens(src) for ex, src in answers.items()} for who, answers in works.items()}
    ref = {ex: normalised_tokens(src) for ex, src in reference.items()}
    pairs = []
    for a, b in combinations(sorted(tokens), 2):
        shared = sorted(set(tokens[a]) & set(tokens[b]))
        if not shared:
            continue
        scores = [similarity(tokens[a][ex], tokens[b][ex]) for ex in shared]
        if min(scores) < threshold:
            continue
        published = all(ex in ref and similarity(tokens[a][ex], ref[ex]) >= threshold
                        and similarity(tokens[b][ex], ref[ex]) >= threshold for ex in shared)
        pairs.append({"learner_a": a, "learner_b": b, "exercises": shared, "similarity": min(scores),
                      "like_published": published})
    return pairs
