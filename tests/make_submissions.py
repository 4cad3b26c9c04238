"""Build the fixture submissions in tests/submissions/ (good, partial and hostile) from exercises/.

Run ``.venv/bin/python tests/make_submissions.py`` after exercises/ changes; the output is
deterministic, and tests/test_grade_cli.py fails while the committed folder differs from it.
Each case is ``<case>/01_bank_by_the_river.ipynb``, as if every learner had a folder.
It also builds tests/course_submissions/: a small class over chapters 1-3 with renamed files,
"Copy of" names, a Canvas download name, folders per learner and per assignment, one learner with
several chapters, notebooks that match no chapter or two, and two that patch the grader.
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
           "    return torch.softmax(Q @ K.transpose(-2, -1) / math.sqrt(Q.shape[-1]), dim=-1)")
UNSCALED = ("def attention_weights(Q, K):\n"
            "    return torch.softmax(Q @ K.transpose(-2, -1), dim=-1)  # forgot to divide by sqrt(d_k)")
SELF_ATTENTION = ("def self_attention(E, W_Q, W_K, W_V):\n"
                  "    return attention_weights(E @ W_Q.T, E @ W_K.T) @ (E @ W_V.T)")
# self_attention written without attention_weights, so a bug in 1.1 does not spill into 1.2
SELF_ATTENTION_ALONE = ("def self_attention(E, W_Q, W_K, W_V):\n"
                        "    Q, K, V = E @ W_Q.T, E @ W_K.T, E @ W_V.T\n"
                        "    return torch.softmax(Q @ K.transpose(-2, -1) / math.sqrt(Q.shape[-1]), dim=-1) @ V")
COSINE = ("def cosine_similarity(a, b):\n"
          "    return (a @ b.T) / (a.norm(dim=-1)[:, None] * b.norm(dim=-1)[None, :])")
BANK_RIVER = ("def bank_river_similarity():\n"
              "    E = torch.tensor([[0.8, -0.2, 0.1], [0.1, 0.7, -0.3]])  # bank, river\n"
              "    out = attention_weights(1.2 * E / 0.25, 0.9 * E) @ E  # scores divided by T = 0.25\n"
              "    return float(cosine_similarity(out[:1], out[1:]))")
CORRECT = {"ex-1-1-solution": WEIGHTS, "ex-1-2-solution": SELF_ATTENTION, "ex-1-3-solution": COSINE,
           "ex-1-4-solution": BANK_RIVER}

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
    fake = solved({"ex-1-3-solution": COSINE, "ex-1-4-solution": BANK_RIVER})
    for ex_id in ("1.1", "1.2"):
        _cell(fake, f"ex-{ex_id.replace('.', '-')}-check").source = FAKE_SCORE.format(id=ex_id)
    v3 = {"metadata": {}, "nbformat": 3, "nbformat_minor": 0,
          "worksheets": [{"cells": [{"cell_type": "code", "input": WEIGHTS, "language": "python",
                                     "outputs": []}], "metadata": {}}]}
    notebooks = {
        "correct": correct,
        "unscaled": solved({**CORRECT, "ex-1-1-solution": UNSCALED, "ex-1-2-solution": SELF_ATTENTION_ALONE}),
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


# --- a course-shaped class: several chapters, names as learners and platforms make them ----------

COURSE_OUT = Path(__file__).resolve().parent / "course_submissions"
SOLUTIONS = ROOT / "solutions"
EXERCISES_DIR = ROOT / "exercises"
CH1, CH2, CH3 = "01_bank_by_the_river", "02_queries_keys_values", "03_positional_encodings"
CH4, CH5 = "04_multi_head_attention", "05_transformer_block"
CH10 = "10_serving_many_requests"

# Sine and cosine swapped: a named mistake of exercise 3.1.
SWAPPED = """def encode_positions(positions, d_model, base=10000.0):
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)
    omega = 1.0 / base ** (two_i / d_model)
    angles = positions.to(torch.float64)[..., None] * omega
    pe = torch.zeros(*positions.shape, d_model, dtype=torch.float64)
    pe[..., 0::2] = torch.cos(angles)
    pe[..., 1::2] = torch.sin(angles)
    return pe.float()"""
# The same unscaled answer as UNSCALED, with other names and layout: a pair for the similarity list.
UNSCALED_RENAMED = ("def attention_weights(queries, keys):\n"
                    "    return torch.softmax(queries @ keys.transpose(-2, -1),\n"
                    "                         dim=-1)  # the keys' axis")
# Hostile: full points whatever the functions do, by patching the grader in the learner's kernel.
GENEROUS = '''import riverbank.grading.session as session
from riverbank.grading.runner import COMPLETE, CheckResult, ExerciseResult


def generous(exercise, fn):
    return ExerciseResult(exercise, COMPLETE, [CheckResult(c.name, c.points, c.points) for c in exercise.cases])


session.grade = generous'''
# The same, hidden from a reading of the code: only the re-check can catch it.
GENEROUS_HIDDEN = '''import sys

package = "river" + "bank." + "gra" + "ding"
runner = sys.modules[package + ".runner"]


def generous(exercise, fn):
    results = [runner.CheckResult(c.name, c.points, c.points) for c in exercise.cases]
    return runner.ExerciseResult(exercise, runner.COMPLETE, results)


setattr(sys.modules[package + ".session"], "gr" + "ade", generous)'''


def _read(folder: Path, stem: str) -> nbformat.NotebookNode:
    return nbformat.read(folder / f"{stem}.ipynb", as_version=4)


def _with(stem: str, bodies: dict[str, str]) -> nbformat.NotebookNode:
    nb = _read(EXERCISES_DIR, stem)
    for cell_id, source in bodies.items():
        _cell(nb, cell_id).source = source
    return nb


def _anonymous(nb: nbformat.NotebookNode) -> bytes:
    """``nb`` without its check cells, saved as nbformat 4.4 (no cell ids): nothing in it names a chapter."""
    nb = copy.deepcopy(nb)
    nb.cells = [c for c in nb.cells if "grader-check" not in c.metadata.get("tags", [])
                and "check(" not in c.source]
    raw = json.loads(nbformat.writes(nb))
    raw["nbformat_minor"] = 4
    for cell in raw["cells"]:
        cell.pop("id", None)
    return (json.dumps(raw, indent=1, ensure_ascii=False) + "\n").encode()


def _slipped(stem: str, cell_id: str, old: str, new: str) -> nbformat.NotebookNode:
    """The solutions notebook with one text slip in one solution cell."""
    nb = _read(SOLUTIONS, stem)
    cell = _cell(nb, cell_id)
    assert old in cell.source, (stem, cell_id, old)
    cell.source = cell.source.replace(old, new)
    return nb


def _asked_for_hints(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Chapter 4 with hint cells: one run again by the grader (4.2, two hints), and one whose call
    was commented out after it ran, so that only its stored output shows that hint 1 of 4.1 was seen."""
    nb = inserted(nb, "ex-4-2-md", 'hint("4.2", 2)', "asked-4-2")
    nb = inserted(nb, "ex-4-1-md", '# hint("4.1")', "asked-4-1")
    _cell(nb, "asked-4-1").outputs = [nbformat.v4.new_output(
        "stream", name="stdout", text="Hint 1 of 3 · exercise 4.1:\n  (its text)\n")]
    return nb


def course_submissions() -> dict[str, bytes]:
    """A class of learners over chapters 1-5 and 10, by path relative to the submissions folder."""
    ch1_correct = _read(SOLUTIONS, CH1)
    notes = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# My notes"),
                                            nbformat.v4.new_code_cell("print(2 + 2)")])
    for i, cell in enumerate(notes.cells):
        cell.id = f"notes-{i}"
    merged = copy.deepcopy(ch1_correct)
    taken = {c.id for c in merged.cells}
    for cell in copy.deepcopy(_read(SOLUTIONS, CH2).cells):
        cell.id = f"more-{cell.id}" if cell.id in taken else cell.id  # unique ids, the same on every run
        merged.cells.append(cell)
    notebooks = {
        # a folder per assignment, the learner in the file name
        f"{CH1}/ada_lovelace.ipynb": ch1_correct,
        # a folder per learner; Colab's "Copy of"
        f"ada_lovelace/Copy of {CH2}.ipynb": _read(SOLUTIONS, CH2),
        # renamed beyond recognition: matched by its check cells and cell ids
        "grace/positional homework (1).ipynb": _with(CH3, {"ex-3-1-solution": SWAPPED}),
        # two submissions of one chapter: the better one counts
        f"grace/{CH1}.ipynb": _read(EXERCISES_DIR, CH1),
        f"grace/Copy of {CH1}.ipynb": ch1_correct,
        # Canvas's bulk download: <name>_<user id>_<submission id>_<file>
        f"hopper_12345_67890_{CH1}.ipynb": solved({**CORRECT, "ex-1-1-solution": UNSCALED,
                                                    "ex-1-2-solution": SELF_ATTENTION_ALONE}),
        # the same mistake in other words: listed as similar to hopper's
        f"victor/{CH1}.ipynb": solved({**CORRECT, "ex-1-1-solution": UNSCALED_RENAMED,
                                        "ex-1-2-solution": SELF_ATTENTION_ALONE}),
        # hostile: patches the grader to give full marks, openly and in disguise
        f"mallory/{CH1}.ipynb": inserted(_read(EXERCISES_DIR, CH1), "imports", GENEROUS, "hostile-generous"),
        f"trudy/{CH3}.ipynb": inserted(_read(EXERCISES_DIR, CH3), "imports", GENEROUS_HIDDEN, "hostile-hidden"),
        # holds two chapters in equal measure: ambiguous
        "alan/everything.ipynb": merged,
        # no chapter in it at all
        "misc/notes.ipynb": notes,
        # builds handed in as classes: key/value heads tiled instead of grouped (a named mistake), and
        # hints seen; chapter 5's block with nn.RMSNorm's default eps, and its training run judged
        f"noether/{CH4}.ipynb": _asked_for_hints(_slipped(CH4, "ex-4-2-solution", ".repeat_interleave(group, dim=1)",
                                                           ".repeat(1, group, 1, 1)")),
        f"noether/{CH5}.ipynb": _slipped(CH5, "ex-5-3-solution", '"rmsnorm": RMSNorm}', '"rmsnorm": nn.RMSNorm}'),
        # Part III: the batched paged attention with its key/value heads tiled, not grouped (a named mistake)
        f"lamport/{CH10}.ipynb": _slipped(CH10, "ex-10-2-solution", ".repeat_interleave(group, dim=1)",
                                          ".repeat(1, group, 1, 1)"),
    }
    files = {name: nbformat.writes(nb).encode() for name, nb in notebooks.items()}
    # no check cells, no cell ids: only its folder says which chapter it is
    files[f"{CH3}/edsger.ipynb"] = _anonymous(_read(SOLUTIONS, CH3))
    return dict(sorted(files.items()))


# Each learner's course row: points per exercise (None: nothing counted for that chapter), text the
# problems column contains, and the hints column. Shared by the test and by the README's sample.
COURSE_EXPECTED = {
    "ada_lovelace": ({"1.1": 10, "1.2": 10, "1.3": 7, "1.4": 4, "2.1": 10, "2.2": 14, "2.3": 4, "2.4": 3,
                      "3.1": None}, ["nothing submitted for 03_positional_encodings"], ""),
    "alan": ({}, ["alan/everything.ipynb: ambiguous: it holds cells of 01_bank_by_the_river and "
                  "02_queries_keys_values"], ""),
    "edsger": ({"3.1": 11, "3.2": 11, "3.3": 4, "3.4": 3},
               ["the check cell ex-3-1-check was missing; the official one was inserted"], ""),
    "grace": ({"1.1": 10, "1.2": 10, "1.3": 7, "1.4": 4, "3.1": 0, "3.2": 0, "3.3": 0, "3.4": 0},
              [f"2 submissions for {CH1} (grace/{CH1}.ipynb, grace/Copy of {CH1}.ipynb); "
               f"the best, grace/Copy of {CH1}.ipynb, counts"], ""),
    # 1.4 measures with the learner's own (unscaled) attention_weights
    "hopper": ({"1.1": 1, "1.2": 10, "1.3": 7, "1.4": 0}, [], ""),
    # 10.2 with the key/value heads tiled: right where every query head has its own kv head
    "lamport": ({"10.1": 10, "10.2": 4, "10.3": 4, "10.4": 10}, [], ""),
    "mallory": ({"1.1": 10, "1.2": 10, "1.3": 7, "1.4": 4},
                ["tampering suspected: cell", "uses riverbank.grading.session",
                 "the recorded scores disagree with a re-check"], ""),
    "misc": ({}, ["misc/notes.ipynb: unmatched: no chapter's check cells or cell ids are in it"], ""),
    # 4.3 measures with the learner's own 4.2 layer, whose tiled kv heads spill into it
    "noether": ({"4.1": 9, "4.2": 8, "4.3": 0, "4.4": 3, "5.1": 10, "5.2": 10, "5.3": 13, "5.4": 10, "5.5": 4},
                [], "4.1:1 4.2:2"),
    "trudy": ({"3.1": 11, "3.2": 11, "3.3": 4, "3.4": 3},
              ["tampering suspected: the recorded scores disagree with a re-check of the learner's functions "
               "(3.1 recorded 11, re-check gives 0; 3.2 recorded 11, re-check gives 0; 3.3 recorded 4, "
               "re-check gives 0; 3.4 recorded 3, re-check gives 0)"], ""),
    "victor": ({"1.1": 1, "1.2": 10, "1.3": 7, "1.4": 0}, [], ""),
}


def write(out: Path, files: dict[str, bytes] | None = None) -> None:
    shutil.rmtree(out, ignore_errors=True)
    for name, data in (submissions() if files is None else files).items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    write(target)
    print(f"wrote {len(submissions())} submissions to {target}")
    course_target = Path(sys.argv[2]) if len(sys.argv) > 2 else COURSE_OUT
    write(course_target, course_submissions())
    print(f"wrote {len(course_submissions())} course submissions to {course_target}")
