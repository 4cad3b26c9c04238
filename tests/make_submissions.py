"""Build the fixture submissions in tests/submissions/ (good, partial and hostile) from exercises/.

Run ``.venv/bin/python tests/make_submissions.py`` after exercises/ changes; the output is
deterministic, and tests/test_grade_cli.py fails while the committed folder differs from it.
Each case is ``<case>/01_bank_by_the_river.ipynb``, as if every learner had a folder.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
EXERCISE = ROOT / "exercises" / "01_bank_by_the_river.ipynb"
NAME = "01_bank_by_the_river.ipynb"
OUT = Path(__file__).resolve().parent / "submissions"

WEIGHTS = ("def attention_weights(Q, K):\n"
           "    return torch.softmax(Q @ K.T / math.sqrt(Q.shape[-1]), dim=-1)")
UNSCALED = ("def attention_weights(Q, K):\n"
            "    return torch.softmax(Q @ K.T, dim=-1)  # forgot to divide by sqrt(d_k)")
ATTEND = "def attend(Q, K, V):\n    return attention_weights(Q, K) @ V"
# attend written without attention_weights, so a bug in 1.1 does not spill into 1.2
ATTEND_ALONE = "def attend(Q, K, V):\n    return torch.softmax(Q @ K.T / math.sqrt(Q.shape[-1]), dim=-1) @ V"
COSINE = ("def cosine_similarity(a, b):\n"
          "    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))")
CORRECT = {"ex-1-1-solution": WEIGHTS, "ex-1-2-solution": ATTEND, "ex-1-3-solution": COSINE}

FAKE_SCORE = 'print("Exercise {id}: 10/10 points\\n  All checks pass.")'
TAMPER = '''import os
from pathlib import Path


def parent_of(pid):
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


# The grader's output folder, from its command line: the kernel's parent is the worker, whose
# parent is the grader. (Aiming at this run's own --out keeps hand runs from clobbering others.)
grader = parent_of(os.getppid())
args = Path(f"/proc/{grader}/cmdline").read_bytes().decode().split("\\0")
out = Path(os.readlink(f"/proc/{grader}/cwd")) / (args[args.index("--out") + 1] if "--out" in args else "gradebook")
fake = "submission,notebook,1.1,1.2,1.3,total,max,problems\\nFAKE,x,10,8,9,27,27,\\n"
guesses = [Path("gradebook.csv"), Path("../gradebook.csv"), Path("../../gradebook.csv"),
           Path(os.environ.get("PWD", ".")) / "gradebook" / "gradebook.csv",
           out / "gradebook.csv", out / "feedback" / "correct" / "01_bank_by_the_river.txt"]
for path in guesses:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(fake)
    except OSError:
        pass
# Fake results lines in its own results file: overridden by the official checks that run later.
with open(os.environ["RIVERBANK_RESULTS"], "a") as f:
    f.write('{"id": "1.2", "earned": 1000, "points": 8, "feedback": "FAKE"}\\n')
    f.write("not json at all\\n")'''


def _cell(nb, cell_id):
    return next(c for c in nb.cells if c.get("id") == cell_id)


def solved(bodies: dict[str, str]) -> nbformat.NotebookNode:
    """The exercise notebook with the given solution cells' sources replaced."""
    nb = nbformat.read(EXERCISE, as_version=4)
    for cell_id, source in bodies.items():
        _cell(nb, cell_id).source = source
    return nb


def inserted(nb, after_id: str, source: str, new_id: str) -> nbformat.NotebookNode:
    nb = copy.deepcopy(nb)
    at = [c.get("id") for c in nb.cells].index(after_id) + 1
    cell = nbformat.v4.new_code_cell(source)
    cell.id = new_id  # fixed, so the files are the same on every run
    nb.cells.insert(at, cell)
    return nb


def deleted(nb, cell_id: str) -> nbformat.NotebookNode:
    nb = copy.deepcopy(nb)
    nb.cells = [c for c in nb.cells if c.get("id") != cell_id]
    return nb


def submissions() -> dict[str, bytes]:
    """Every fixture file, by its path relative to the submissions folder."""
    correct = solved(CORRECT)
    fake = solved({"ex-1-3-solution": COSINE})
    for ex_id in ("1.1", "1.2"):
        _cell(fake, f"ex-{ex_id.replace('.', '-')}-check").source = FAKE_SCORE.format(id=ex_id)
    v3 = {"metadata": {}, "nbformat": 3, "nbformat_minor": 0,
          "worksheets": [{"cells": [{"cell_type": "code", "input": WEIGHTS, "language": "python",
                                     "outputs": []}], "metadata": {}}]}
    notebooks = {
        "correct": correct,
        "unscaled": solved({**CORRECT, "ex-1-1-solution": UNSCALED, "ex-1-2-solution": ATTEND_ALONE}),
        "untouched": nbformat.read(EXERCISE, as_version=4),
        "fake_check": fake,
        "deleted_check": deleted(correct, "ex-1-2-check"),
        "deleted_solution": deleted(correct, "ex-1-1-solution"),
        "sys_exit": inserted(correct, "imports", 'import sys\nsys.exit("stopping here")', "hostile-exit"),
        "os_exit": inserted(correct, "ex-1-1-check", "import os\nos._exit(1)", "hostile-os-exit"),
        "kill9": inserted(correct, "imports", "import os\nimport signal\nos.kill(os.getpid(), signal.SIGKILL)",
                          "hostile-kill"),
        "infinite_loop": inserted(correct, "ex-1-2-check", "while True:\n    pass", "hostile-loop"),
        # Each 100 MB block is kept until the memory limit stops the list; then all of it is freed.
        "memory_bomb": inserted(correct, "imports", "hoard = [bytearray(10**8) for _ in range(10**6)]",
                                "hostile-memory"),
        "huge_print": inserted(correct, "imports", 'print("x" * 20_000_000)', "hostile-print"),
        "tamper": inserted(solved({"ex-1-1-solution": WEIGHTS}), "imports", TAMPER, "hostile-tamper"),
    }
    files = {f"{case}/{NAME}": nbformat.writes(nb).encode() for case, nb in notebooks.items()}
    files[f"not_json/{NAME}"] = nbformat.writes(correct).encode()[:700]  # an upload cut short
    files[f"nbformat3/{NAME}"] = (json.dumps(v3, indent=1) + "\n").encode()
    files[f"no_cells/{NAME}"] = b'{"metadata": {}, "nbformat": 4, "nbformat_minor": 5}\n'
    files["misc/homework.ipynb"] = nbformat.writes(correct).encode()  # a name no chapter has
    return dict(sorted(files.items()))


def write(out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    for name, data in submissions().items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    write(target)
    print(f"wrote {len(submissions())} submissions to {target}")
