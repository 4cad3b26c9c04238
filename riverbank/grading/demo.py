"""A class to grade at scale: ``python -m riverbank.grading.demo --learners 40 --out DIR``.

Builds DIR/class with one notebook per learner per chapter in solutions/ (a learner is correct,
blank or wrong on a chapter in a fixed pattern; files are named as platforms name them), grades
it with ``python -m riverbank.grading``, and prints the time, the peak memory of the grader and
its kernels together, and the load average. ``--sandbox compare`` grades it with and without the
OS sandbox instead and prints the ratio. Used by ``make grade-demo`` and ``make grade-overhead``;
not part of the tests.
"""

from __future__ import annotations

import argparse
import copy
import csv
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


def grade(out: Path, gradebook: str, jobs: int, sandbox: str, quiet: bool = False) -> dict:
    """Grade ``out/class`` into ``out/GRADEBOOK``; the time, the return code and peak memory.
    ``quiet``: without the grader's line per notebook (the comparison's runs)."""
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "riverbank.grading", str(out / "class"), "--out",
                             str(out / gradebook), "--jobs", str(jobs), "--sandbox", sandbox, "--no-progress"],
                            stdout=subprocess.DEVNULL if quiet else None)
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
    return {"seconds": time.monotonic() - start, "returncode": proc.returncode, "peak": peak, "peak_one": peak_one}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m riverbank.grading.demo", description=__doc__.splitlines()[0])
    p.add_argument("--learners", type=int, default=40)
    p.add_argument("--out", default="grade-demo")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--sandbox", choices=("auto", "required", "off", "compare"), default="auto",
                   help="passed to the grader; 'compare' grades the class with and without the sandbox, "
                        "alternating, --rounds times each, and prints the overhead as a ratio")
    p.add_argument("--rounds", type=int, default=2, help="with --sandbox compare: runs of each (default: 2)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if (out / "class").exists():
        p.error(f"{out / 'class'} exists; remove it or pass another --out")
    n = build(out / "class", args.learners, REPO_ROOT / "solutions", REPO_ROOT / "exercises")
    print(f"built {n} notebooks for {args.learners} learners in {out / 'class'}", flush=True)
    load_before = os.getloadavg()
    if args.sandbox == "compare":
        return compare(out, n, args.jobs, args.rounds)
    run = grade(out, "gradebook", args.jobs, args.sandbox)
    seconds = run["seconds"]
    load_after = os.getloadavg()
    print(f"grade-demo: {n} notebooks ({args.learners} learners) graded in {seconds:.0f} s "
          f"({seconds / max(n, 1):.1f} s per notebook, --jobs {args.jobs}, --sandbox {args.sandbox}); peak memory "
          f"of the grader and its kernels together {run['peak'] / 2**20:.0f} MiB (largest single process "
          f"{run['peak_one'] / 2**20:.0f} MiB); load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; "
          f"{os.cpu_count()} CPUs", flush=True)
    return run["returncode"]


def _scores(gradebook: Path) -> list[dict]:
    """gradebook.csv without its problems column (which says whether a row was isolated)."""
    with open(gradebook / "gradebook.csv", newline="", encoding="utf-8") as f:
        return [{k: v for k, v in row.items() if k != "problems"} for row in csv.DictReader(f)]


def compare(out: Path, n: int, jobs: int, rounds: int) -> int:
    """The sandbox's cost: the same class graded with and without it, in alternating order
    (ABBA...), so that a machine getting busier or quieter weighs on both alike."""
    times: dict[str, list[float]] = {"required": [], "off": []}
    for i in range(rounds):
        for mode in (("required", "off") if i % 2 == 0 else ("off", "required")):
            run = grade(out, f"gradebook-{mode}-{i}", jobs, mode, quiet=True)
            if run["returncode"] != 0:
                print(f"grading with --sandbox {mode} failed (exit code {run['returncode']})", file=sys.stderr)
                return 1
            times[mode].append(run["seconds"])
            print(f"round {i + 1}, --sandbox {mode}: {run['seconds']:.1f} s ({run['seconds'] / n:.2f} s per notebook)",
                  flush=True)
    same = all(_scores(out / f"gradebook-required-{i}") == _scores(out / f"gradebook-off-{i}") for i in range(rounds))
    on, off = sum(times["required"]), sum(times["off"])
    print(f"sandbox overhead: {on / rounds / n:.2f} s per notebook with it, {off / rounds / n:.2f} s without; "
          f"ratio {on / off:.3f} over {rounds} rounds of {n} notebooks (--jobs {jobs}); per round "
          + ", ".join(f"{a / b:.3f}" for a, b in zip(times["required"], times["off"]))
          + f"; the same scores with and without: {'yes' if same else 'NO'}", flush=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
