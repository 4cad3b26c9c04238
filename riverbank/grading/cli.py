"""The instructor's grader: run every submitted notebook in a fresh, limited kernel and write a gradebook.

Usage: ``python -m riverbank.grading SUBMISSIONS --out GRADEBOOK`` (or ``make grade SUBMISSIONS=DIR``).

This module parses the arguments and runs the class; the jobs live in modules named for them:
notebooks.py (reading a submission, putting back the official checks), matching.py (which chapter
and which learner), worker.py (running one notebook in a limited kernel), submission.py (grading
one submission), integrity.py (tampering and similarity evidence) and gradebook.py (the files
written). Only this parent process writes the gradebook.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import re
import sys
import time
from pathlib import Path

import nbformat
from tqdm import tqdm

from . import isolation
from .gradebook import feedback_text, write_course_outputs, write_outputs  # noqa: F401 - used by tests
from .matching import by_file_name, chapters_from
from .notebooks import CHECK_TAG, checked_exercises, load_notebook, submissions_in, with_official_checks  # noqa: F401
from .runner import _points
from .submission import Row, grade_submission, read_results  # noqa: F401
from .worker import Limits, worker_main

REPO_ROOT = Path(__file__).resolve().parents[2]


def find_solution(name: str, solutions: dict):
    """The solutions entry whose stem the submission's file name contains (the longest such), or None."""
    stem = by_file_name(name, solutions)
    return solutions[stem] if stem else None


def _count(n: int) -> str:
    return f"{n} submission{'' if n == 1 else 's'}"


def _pattern(text: str) -> re.Pattern:
    try:
        return re.compile(text)
    except re.error as error:
        raise argparse.ArgumentTypeError(f"not a regular expression: {error}") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m riverbank.grading",
        description="Grade every submitted notebook (*.ipynb, recursively) under SUBMISSIONS, whatever the "
                    "chapter; write OUT/gradebook.csv (a row per submission), OUT/course.csv (a row per "
                    "learner), OUT/canvas.csv, OUT/similar.csv, OUT/summary.md and OUT/feedback/<name>.txt.")
    p.add_argument("submissions", help="a folder of submitted notebooks (or one notebook)")
    p.add_argument("--out", default="gradebook", help="output folder (default: gradebook)")
    p.add_argument("--jobs", type=int, default=2, help="notebooks graded in parallel (default: 2)")
    p.add_argument("--cell-timeout", type=float, default=60, help="seconds per cell (default: 60)")
    p.add_argument("--timeout", type=float, default=300, help="seconds per notebook (default: 300)")
    p.add_argument("--memory", type=float, default=4, help="GB of memory per kernel (default: 4)")
    p.add_argument("--solutions", default=str(REPO_ROOT / "solutions"),
                   help="folder of solution notebooks holding the official check cells "
                        "(default: the repository's solutions/)")
    p.add_argument("--notebook", help="grade every submission against this solutions notebook, "
                                      "e.g. 01_bank_by_the_river, whatever it contains or is called")
    p.add_argument("--learner-pattern", type=_pattern, metavar="REGEX",
                   help="a regular expression searched in each submission's path relative to SUBMISSIONS; "
                        "its group 'learner' (or its first group) is the learner, e.g. "
                        r"'^(?P<learner>[^/]+)/' or '(?P<learner>\w+)_hw'")
    p.add_argument("--hint-cost", type=float, default=0.0, metavar="POINTS",
                   help="points taken off an exercise per hint its learner saw (default: 0, hints are free)")
    p.add_argument("--sandbox", choices=isolation.MODES, default="auto",
                   help="run each submission's kernel in an OS sandbox (bubblewrap): 'auto' (the default) "
                        "uses one where it can and warns loudly where it cannot, 'required' refuses to grade "
                        "without one, 'off' grades without isolation")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (the line per submission stays)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker_main(argv[1])
    ap = parser()
    args = ap.parse_args(argv)

    folder, solutions_dir = Path(args.submissions), Path(args.solutions)
    if not folder.exists():
        ap.error(f"no such folder: {folder}")
    if not solutions_dir.is_dir():
        ap.error(f"no solutions folder at {solutions_dir}; pass --solutions DIR")
    if args.jobs < 1 or args.cell_timeout <= 0 or args.timeout <= 0 or args.memory <= 0:
        ap.error("--jobs, --cell-timeout, --timeout and --memory must be positive")
    if not 0 <= args.hint_cost < float("inf"):
        ap.error("--hint-cost must be zero or more")
    # Read once, before any submission runs: a submission's kernel could rewrite these files.
    chapters = chapters_from({p.stem: nbformat.read(p, as_version=4) for p in sorted(solutions_dir.glob("*.ipynb"))})
    forced = None
    if args.notebook:
        forced = Path(args.notebook).stem
        if forced not in chapters:
            ap.error(f"no notebook {args.notebook!r} in {solutions_dir}; there are: {', '.join(chapters)}")
    found = submissions_in(folder)
    if not found:
        ap.error(f"no .ipynb files under {folder}")
    limits = Limits(args.cell_timeout, args.timeout, args.memory)
    out = Path(args.out)
    try:
        isolated = isolation.choose(args.sandbox)
    except isolation.SandboxUnavailable as why:
        print(f"error: --sandbox required, but no sandbox can run here: {why}", file=sys.stderr)
        print("Nothing was graded. Install bubblewrap (apt-get install bubblewrap), or pass --sandbox off "
              "to grade with your own rights (see the README's threat model).", file=sys.stderr)
        return 2
    if not isolated.sandboxed:
        banner = "!" * 78
        print(f"{banner}\nWARNING: submissions will be {isolation.UNISOLATED}: {isolated.why_not}.\n"
              "Each learner's code runs with your rights: it can read and change other submissions,\n"
              "the gradebook and your files, and reach the network. Every row says so in the\n"
              f"gradebook's problems column and in summary.md.\n{banner}", file=sys.stderr, flush=True)

    start = time.monotonic()
    where = "each in its own sandbox" if isolated.sandboxed else isolation.UNISOLATED
    print(f"grading {_count(len(found))} from {folder} ({args.jobs} at a time, {where})", flush=True)
    rows = []
    # Threads only wait: each submission runs in a subprocess of its own, so a crash there costs
    # one row, never this process.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs)
    futures = {pool.submit(grade_submission, path, name, chapters, limits, forced, args.learner_pattern,
                           args.hint_cost, isolated): name
               for name, path in found.items()}
    bar = tqdm(total=len(found), unit="notebook", file=sys.stderr, disable=args.no_progress, dynamic_ncols=True)
    try:
        for future in concurrent.futures.as_completed(futures):
            try:
                row = future.result()
            except Exception as error:  # noqa: BLE001 - a grader bug costs one row, not the run
                row = Row(futures[future], problems=[f"the grader failed: {type(error).__name__}: {error}"])
            rows.append(row)
            score = f"{_points(row.total)}/{_points(row.possible)}" if row.notebook else "-"
            more = f" (+{len(row.problems) - 1} more)" if len(row.problems) > 1 else ""
            note = f"  [{row.problems[0][:90]}{more}]" if row.problems else ""
            bar.write(f"[{len(rows)}/{len(found)}] {row.name}: {score} in {row.seconds:.1f} s{note}", file=sys.stdout)
            sys.stdout.flush()
            bar.update(1)
    except KeyboardInterrupt:
        # Ctrl-C reaches the workers too (same process group); queued submissions must not start.
        bar.close()
        pool.shutdown(wait=False, cancel_futures=True)
        print("interrupted: no gradebook written", file=sys.stderr)
        return 130
    bar.close()
    pool.shutdown()
    rows.sort(key=lambda r: r.name)
    gradebook = write_outputs(rows, out)
    written = write_course_outputs(rows, chapters, out)
    print(f"graded {_count(len(rows))} in {time.monotonic() - start:.1f} s; wrote {gradebook}, "
          f"{', '.join(str(p) for p in written.values())} and {out / 'feedback'}/", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
