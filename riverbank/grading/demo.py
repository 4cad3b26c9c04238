"""A class to grade at scale: ``python -m riverbank.grading.demo --learners 40 --out DIR``.

Builds DIR/class with one notebook per learner per chapter in solutions/ (a learner is correct,
blank or wrong on a chapter in a fixed pattern; files are named as platforms name them), grades
it with ``python -m riverbank.grading``, and prints the time, the peak memory of the grader and
its kernels together, and the load average. Used by ``make grade-demo``; not part of the tests.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import psutil

from .exercises import EXERCISES
from .notebooks import checked_exercises
from .spec import EXPERIMENT

REPO_ROOT = Path(__file__).resolve().parents[2]
# The last axis reversed: a slip with an output of the right shape and dtype, in any exercise.
_SLIP = '''

_{fn}_right = {fn}


def {fn}(*args):
    return _{fn}_right(*args).flip(-1)'''


def slippable(solution: nbformat.NotebookNode) -> list[str]:
    """The notebook's exercises whose answer is a function returning a tensor (not a class handed
    in, a judged training run or an experiment's answer): the slip above applies to those."""
    found = []
    for ex_id in checked_exercises(solution):
        ex = EXERCISES[ex_id]
        cell = next((c for c in solution.cells if c.get("id") == f"ex-{ex_id.replace('.', '-')}-solution"), None)
        defines = cell is not None and re.search(rf"^def {re.escape(ex.function_name)}\(", cell.source, re.M)
        if defines and ex.judge is None and ex.level != EXPERIMENT:
            found.append(ex_id)
    return found


def _wrong(solution: nbformat.NotebookNode, learner: int) -> nbformat.NotebookNode:
    """The solution with one exercise slipped, and the learner asking for that exercise's first hint."""
    nb = copy.deepcopy(solution)
    exercises = slippable(solution)
    if not exercises:
        return nb
    ex_id = exercises[learner % len(exercises)]
    stem = f"ex-{ex_id.replace('.', '-')}"
    at = next((i for i, c in enumerate(nb.cells) if c.get("id") == f"{stem}-solution"), None)
    if at is None:
        raise SystemExit(f"{ex_id}: no cell with id {stem}-solution in the solutions notebook "
                         "(cells are ex-N-M-md, ex-N-M-solution, ex-N-M-check)")
    nb.cells[at].source += _SLIP.format(fn=EXERCISES[ex_id].function_name)
    ask = nbformat.v4.new_code_cell(f'hint("{ex_id}")')
    ask.id = f"{stem}-asked-hint"
    nb.cells.insert(at, ask)
    return nb


def build(out: Path, learners: int, solutions: Path, exercises: Path) -> int:
    """Write the class under ``out``; returns the number of notebooks."""
    count = 0
    for path in sorted(solutions.glob("*.ipynb")):
        solution = nbformat.read(path, as_version=4)
        blank = exercises / path.name
        if not checked_exercises(solution) or not blank.exists():
            continue
        stem = path.stem
        for i in range(learners):
            kind = (i + len(stem)) % 4  # 0, 1: correct; 2: blank; 3: one exercise wrong, one hint seen
            nb = (solution if kind < 2 else nbformat.read(blank, as_version=4) if kind == 2 else _wrong(solution, i))
            name = f"learner{i:02d}"
            layout = i % 3
            target = (out / name / f"Copy of {stem}.ipynb" if layout == 0
                      else out / f"{name}_{1000 + i}_{50000 + i * 7}_{stem}.ipynb" if layout == 1
                      else out / stem / f"{name}.ipynb")
            target.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, target)
            count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m riverbank.grading.demo", description=__doc__.splitlines()[0])
    p.add_argument("--learners", type=int, default=40)
    p.add_argument("--out", default="grade-demo")
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args(argv)
    out = Path(args.out)
    if (out / "class").exists():
        p.error(f"{out / 'class'} exists; remove it or pass another --out")
    n = build(out / "class", args.learners, REPO_ROOT / "solutions", REPO_ROOT / "exercises")
    print(f"built {n} notebooks for {args.learners} learners in {out / 'class'}", flush=True)
    load_before = os.getloadavg()
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "riverbank.grading", str(out / "class"), "--out",
                             str(out / "gradebook"), "--jobs", str(args.jobs)])
    grader, peak, peak_one = psutil.Process(proc.pid), 0, 0
    while proc.poll() is None:
        try:
            family = [grader, *grader.children(recursive=True)]
            sizes = []
            for q in family:
                try:
                    sizes.append(q.memory_info().rss)
                except psutil.Error:
                    pass
            peak, peak_one = max(peak, sum(sizes)), max(peak_one, max(sizes, default=0))
        except psutil.Error:
            pass
        time.sleep(0.2)
    seconds = time.monotonic() - start
    load_after = os.getloadavg()
    print(f"grade-demo: {n} notebooks ({args.learners} learners) graded in {seconds:.0f} s "
          f"({seconds / max(n, 1):.1f} s per notebook, --jobs {args.jobs}); peak memory of the grader and "
          f"its kernels together {peak / 2**20:.0f} MiB (largest single process {peak_one / 2**20:.0f} MiB); "
          f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; {os.cpu_count()} CPUs", flush=True)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
