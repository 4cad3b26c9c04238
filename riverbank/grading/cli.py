"""The instructor's grader: run every submitted notebook in a fresh, limited kernel and write a gradebook.

Usage: ``python -m riverbank.grading SUBMISSIONS --out GRADEBOOK`` (or ``make grade SUBMISSIONS=DIR``).

Each submission is parsed here, gets the official check cells from solutions/, and is run by a
worker subprocess (this module again, with ``--worker``) that starts a kernel under a memory
limit, in an empty temporary folder, with a time limit per cell and per notebook. The kernel's
``check`` calls append their results to a file named by ``RIVERBANK_RESULTS``; the score is read
from that file, never from printed output. Only this parent process writes the gradebook.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import csv
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from .exercises import EXERCISES
from .runner import _points
from .session import RESULTS_ENV

CHECK_TAG = "grader-check"
REPO_ROOT = Path(__file__).resolve().parents[2]
_CHECK_CALL = re.compile(r"""\bcheck\(\s*["']([^"']+)["']""")
_UNDEFINED = re.compile(r"name '(\w+)' is not defined")
_MAX_FEEDBACK = 20_000  # characters kept per exercise: results lines come from the learner's kernel
_MAX_RESULTS = 10_000_000  # bytes of the results file read, for the same reason
_SHOWN_ERRORS = 5  # cells with errors named per submission; more are counted


@dataclass
class Limits:
    cell_timeout: float = 60.0
    notebook_timeout: float = 300.0
    memory_gb: float = 4.0


@dataclass
class Row:
    """One submission's line in the gradebook and its feedback file."""

    name: str
    notebook: str = ""  # the solutions notebook it was graded against, e.g. 01_bank_by_the_river
    exercises: list[str] = field(default_factory=list)
    earned: dict[str, float] = field(default_factory=dict)
    feedback: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> float:
        return sum(self.earned.values())

    @property
    def possible(self) -> float:
        return sum(EXERCISES[ex_id].points for ex_id in self.exercises)


# --- reading submissions ------------------------------------------------------------------------

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


def checked_exercises(solution: nbformat.NotebookNode) -> list[str]:
    """Exercise ids the official check cells grade, in notebook order."""
    found = [m.group(1) for cell in solution.cells if CHECK_TAG in cell.metadata.get("tags", [])
             for m in _CHECK_CALL.finditer(cell.source)]
    return [ex_id for ex_id in dict.fromkeys(found) if ex_id in EXERCISES]


def find_solution(name: str, solutions: dict):
    """The solutions entry whose stem the submission's file name contains (the longest such), or None."""
    matches = [stem for stem in solutions if stem in Path(name).name]
    return solutions[max(matches, key=len)] if matches else None


# --- running one notebook (the worker subprocess) ------------------------------------------------

def _first_line(source: str) -> str:
    """The cell's first line that says what it does (not an import or a comment), shortened."""
    lines = [s.strip() for s in source.splitlines() if s.strip()]
    line = next((s for s in lines if not s.startswith(("import ", "from ", "#"))), lines[0] if lines else "")
    return line if len(line) <= 40 else line[:39] + "…"


def run_notebook(path: Path, workdir: Path, limits: Limits) -> dict:
    """Execute the notebook at ``path`` in a fresh kernel; say which cells failed and where it stopped.

    Runs in the worker subprocess. The memory limit is set on this process, so the kernel it
    starts inherits it.
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    class Client(NotebookClient):
        printed = 0

        def output(self, outs, msg, display_id, cell_index):
            # Only errors are kept: the graded copy is never saved, and a cell printing gigabytes
            # must not fill this process's memory.
            if msg["msg_type"] == "stream":
                self.printed += len(msg["content"].get("text", ""))
            if msg["msg_type"] != "error":
                return None
            return super().output(outs, msg, display_id, cell_index)

    limit = int(limits.memory_gb * 2**30)
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard),) * 2)

    nb = nbformat.read(path, as_version=4)
    client = Client(nb, kernel_name="python3", allow_errors=True, interrupt_on_timeout=False,
                    shutdown_kernel="immediate", resources={"metadata": {"path": str(workdir)}})
    report: dict = {"errors": [], "stopped": None, "printed": 0}
    index = 0
    try:
        # The kernel's own stdout and stderr (os.write(1, ...)) go nowhere: this process's stdout
        # carries the report to the parent.
        with client.setup_kernel(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
            deadline = time.monotonic() + limits.notebook_timeout
            for index, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                left = deadline - time.monotonic()
                if left < 1:
                    report["stopped"] = [index, f"not run: the notebook used up its {limits.notebook_timeout:g} s; "
                                                "the rest of the notebook did not run either"]
                    break
                client.timeout = max(1, math.ceil(min(limits.cell_timeout, left)))
                try:
                    client.execute_cell(cell, index)
                except CellTimeoutError:
                    limit = (f"its time limit of {limits.cell_timeout:g} s" if client.timeout >= limits.cell_timeout
                             else f"the notebook's time limit of {limits.notebook_timeout:g} s ran out")
                    report["stopped"] = [index, f"did not finish before {limit} (an infinite loop?); "
                                                "the rest of the notebook did not run"]
                    break
                except DeadKernelError:
                    report["stopped"] = [index, "the kernel died while running it (os._exit, a signal, a crash, "
                                                "or the memory limit); the rest of the notebook did not run"]
                    break
                report["errors"] += [[index, o.get("ename", "Error"), o.get("evalue", "")]
                                     for o in cell.outputs if o.output_type == "error"]
    except Exception as error:  # noqa: BLE001 - the kernel could not start, or died while stopping
        if report["stopped"] is None:
            report["stopped"] = [index, f"the kernel failed: {type(error).__name__}: {error}"]
    report["printed"] = client.printed
    return report


def _worker(job_json: str) -> int:
    job = json.loads(job_json)
    report = run_notebook(Path(job["notebook"]), Path(job["workdir"]), Limits(**job["limits"]))
    print(json.dumps(report), flush=True)
    return 0


# --- grading one submission (the parent) ---------------------------------------------------------

def _kill_tree(proc: subprocess.Popen) -> None:
    """Kill the worker and the kernel it started (which runs in a session of its own)."""
    import psutil

    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        family = []
    proc.kill()
    for p in family:
        try:
            p.kill()
        except psutil.Error:
            pass


def read_results(path: Path, exercises: list[str]) -> dict[str, dict]:
    """The last well-formed results line per exercise id (only ``exercises``)."""
    try:
        with open(path, "rb") as f:
            text = f.read(_MAX_RESULTS).decode("utf-8", "replace")
    except OSError:
        return {}
    latest = {}
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or record.get("id") not in exercises:
            continue
        earned = record.get("earned")
        if isinstance(earned, (int, float)) and math.isfinite(earned):
            latest[record["id"]] = record
    return latest


def _run_worker(notebook: Path, tmp: Path, results: Path, limits: Limits) -> tuple[dict | None, str]:
    """Run the worker subprocess; its report, or None and why there is none."""
    workdir = tmp / "cwd"
    workdir.mkdir()
    # IPython's profile, the kernel's connection file and temporary files live in this
    # submission's folder, which is deleted afterwards: a startup file one submission writes
    # cannot run in the next, and no kernel finds another's connection file in a shared place.
    # PWD would tell the kernel where the grader runs (and so where gradebooks are).
    env = dict(os.environ, **{RESULTS_ENV: str(results), "PWD": str(workdir), "IPYTHONDIR": str(tmp / "ipython"),
                              "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"), "TMPDIR": str(tmp),
                              "JUPYTER_PLATFORM_DIRS": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1"})
    job = {"notebook": str(notebook), "workdir": str(workdir), "limits": vars(limits)}
    cmd = [sys.executable, "-m", "riverbank.grading", "--worker", json.dumps(job)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp)
    # A backstop only: the worker enforces the limits itself, and kernel start-up is not counted.
    backstop = limits.notebook_timeout + 90
    try:
        out, err = proc.communicate(timeout=backstop)
    except subprocess.TimeoutExpired:
        _kill_tree(proc)
        proc.communicate()
        return None, f"grading did not finish within {backstop:g} s and was stopped"
    try:
        return json.loads(out.decode("utf-8").strip().splitlines()[-1]), ""
    except (ValueError, IndexError):
        if proc.returncode < 0:
            return None, f"the grading subprocess was killed by signal {-proc.returncode}"
        last = next((s for s in reversed(err.decode("utf-8", "replace").splitlines()) if s.strip()), "")
        return None, f"the grading subprocess failed (exit code {proc.returncode}){': ' + last[:200] if last else ''}"


def _not_checked_reason(ex_id: str, cells: list, report: dict | None, why_none: str) -> str:
    at = next((i for i, c in enumerate(cells) if CHECK_TAG in c.metadata.get("tags", [])
               and ex_id in _CHECK_CALL.findall(c.source)), None)
    if report is None:
        return why_none
    error = next((e for e in report["errors"] if e[0] == at), None)
    if error is not None:
        undefined = _UNDEFINED.search(error[2]) if error[1] == "NameError" else None
        if undefined:
            return f"{undefined.group(1)} is not defined (was the cell defining it deleted, or did it fail?)"
        return f"its check cell raised {error[1]}: {error[2].strip()[:200]}"
    if report["stopped"] is not None and (at is None or report["stopped"][0] <= at):
        return "the notebook stopped before the check ran"
    return "its check ran but recorded no result"


def _zero(ex_id: str, why: str) -> str:
    ex = EXERCISES[ex_id]
    return f"Exercise {ex_id} · {ex.function_name}: 0/{ex.points:g} points\n  {why}"


def grade_submission(path: Path, name: str, solution: tuple[str, nbformat.NotebookNode] | None,
                     limits: Limits) -> Row:
    """Grade one submitted notebook against ``solution`` (its stem and notebook).

    Never raises for anything the submission does, and never writes to it.
    """
    start = time.monotonic()
    row = Row(name)
    if solution is None:
        row.problems.append(f"no exercise notebook named like {Path(name).name!r} in solutions/ "
                            "(name it like 01_bank_by_the_river.ipynb, or pass --notebook)")
        return row
    row.notebook, official = solution
    row.exercises = checked_exercises(official)
    row.earned = {ex_id: 0.0 for ex_id in row.exercises}
    row.feedback = {ex_id: _zero(ex_id, "not graded: the notebook could not be run (see Problems)")
                    for ex_id in row.exercises}
    try:
        submission, problem = load_notebook(path.read_bytes())
    except OSError as error:
        submission, problem = None, f"cannot read the file: {error.strerror or error}"
    if submission is None:
        row.problems.append(problem)
    else:
        graded, notes = with_official_checks(submission, official)
        row.problems += notes
        _run_and_score(row, graded, limits)
    row.seconds = time.monotonic() - start
    return row


def _run_and_score(row: Row, graded: nbformat.NotebookNode, limits: Limits) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="riverbank-grade-"))
    try:
        nbformat.write(graded, tmp / "graded.ipynb")
        report, why_none = _run_worker(tmp / "graded.ipynb", tmp, tmp / "results.jsonl", limits)
        records = read_results(tmp / "results.jsonl", row.exercises)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _add_run_problems(row, graded.cells, report, why_none)
    unchecked: dict[str, list[str]] = {}
    for ex_id in row.exercises:
        record = records.get(ex_id)
        if record is None:
            reason = _not_checked_reason(ex_id, graded.cells, report, why_none)
            unchecked.setdefault(reason, []).append(ex_id)
            row.feedback[ex_id] = _zero(ex_id, f"not checked: {reason}")
            continue
        row.earned[ex_id] = min(max(float(record["earned"]), 0.0), EXERCISES[ex_id].points)
        text = record.get("feedback")
        row.feedback[ex_id] = text[:_MAX_FEEDBACK] if isinstance(text, str) else ""
    row.problems += [f"{', '.join(ids)} not checked: {reason}" for reason, ids in unchecked.items()]


def _add_run_problems(row: Row, cells: list, report: dict | None, why_none: str) -> None:
    if report is None:
        row.problems.append(why_none)
        return

    def where(i: int) -> str:
        return f'cell {i + 1} ("{_first_line(cells[i].source)}")'

    if report["stopped"] is not None:
        i, message = report["stopped"]
        row.problems.append(f"{where(i)}: {message}")
    check_cells = {i for i, c in enumerate(cells) if CHECK_TAG in c.metadata.get("tags", [])}
    # Errors in the official check cells are reported per exercise instead.
    errors = [e for e in report["errors"] if e[0] not in check_cells]
    for i, ename, evalue in errors[:_SHOWN_ERRORS]:
        message = evalue.strip().splitlines()[0][:200] if evalue.strip() else ""
        row.problems.append(f"{where(i)} raised {ename}" + (f": {message}" if message else ""))
    if len(errors) > _SHOWN_ERRORS:
        row.problems.append(f"{len(errors) - _SHOWN_ERRORS} more cells raised errors")
    if report["printed"] > 1_000_000:
        row.problems.append(f"the notebook printed {report['printed']:,} characters (not kept)")


# --- the whole run -------------------------------------------------------------------------------

def _count(n: int) -> str:
    return f"{n} submission{'' if n == 1 else 's'}"


def _exercise_order(ex_id: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in ex_id.split("."))


def feedback_text(row: Row) -> str:
    lines = [f"Submission: {row.name}"]
    if row.notebook:
        lines += [f"Graded against: solutions/{row.notebook}.ipynb",
                  f"Total: {_points(row.total)}/{_points(row.possible)} points"]
    if row.problems:
        lines += ["", "Problems:"] + [f"  - {p}" for p in row.problems]
    for ex_id in row.exercises:
        lines += ["", row.feedback[ex_id]]
    return "\n".join(lines) + "\n"


def write_outputs(rows: list[Row], out: Path) -> Path:
    """Write the gradebook and one feedback file per submission; returns the gradebook's path."""
    # A column per exercise of the notebooks graded here, not of the whole course.
    ids = sorted({ex_id for row in rows for ex_id in row.exercises}, key=_exercise_order)
    targets = {out / "feedback" / Path(row.name).with_suffix(".txt"): row for row in rows}
    (out / "feedback").mkdir(parents=True, exist_ok=True)
    # feedback/ matches this gradebook: no file left from an earlier run, or planted by a submission.
    for stale in (out / "feedback").rglob("*.txt"):
        if stale not in targets:
            stale.unlink()
    for target, row in targets.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(feedback_text(row), encoding="utf-8")
    gradebook = out / "gradebook.csv"
    partial = out / ".gradebook.csv.partial"
    with open(partial, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["submission", "notebook", *ids, "total", "max", "problems"])
        for row in rows:
            scores = [_points(row.earned[i]) if i in row.earned else "" for i in ids]
            writer.writerow([row.name, row.notebook, *scores, _points(row.total),
                             _points(row.possible) if row.notebook else "", "; ".join(row.problems)])
    os.replace(partial, gradebook)  # whole or not at all
    return gradebook


def submissions_in(folder: Path) -> dict[str, Path]:
    """Every notebook under ``folder`` by its path relative to it, skipping Jupyter's checkpoints."""
    if folder.is_file():
        return {folder.name: folder}
    found = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*.ipynb")
             if ".ipynb_checkpoints" not in p.parts and p.is_file()}
    return dict(sorted(found.items()))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return _worker(argv[1])
    parser = argparse.ArgumentParser(
        prog="python -m riverbank.grading",
        description="Grade every submitted notebook (*.ipynb, recursively) under SUBMISSIONS; "
                    "write OUT/gradebook.csv and OUT/feedback/<name>.txt.")
    parser.add_argument("submissions", help="a folder of submitted notebooks (or one notebook)")
    parser.add_argument("--out", default="gradebook", help="output folder (default: gradebook)")
    parser.add_argument("--jobs", type=int, default=2, help="notebooks graded in parallel (default: 2)")
    parser.add_argument("--cell-timeout", type=float, default=60, help="seconds per cell (default: 60)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per notebook (default: 300)")
    parser.add_argument("--memory", type=float, default=4, help="GB of memory per kernel (default: 4)")
    parser.add_argument("--solutions", default=str(REPO_ROOT / "solutions"),
                        help="folder of solution notebooks holding the official check cells "
                             "(default: the repository's solutions/)")
    parser.add_argument("--notebook", help="grade every submission against this solutions notebook, "
                                           "e.g. 01_bank_by_the_river, whatever its file name")
    args = parser.parse_args(argv)

    folder, solutions_dir = Path(args.submissions), Path(args.solutions)
    if not folder.exists():
        parser.error(f"no such folder: {folder}")
    if not solutions_dir.is_dir():
        parser.error(f"no solutions folder at {solutions_dir}; pass --solutions DIR")
    if args.jobs < 1 or args.cell_timeout <= 0 or args.timeout <= 0 or args.memory <= 0:
        parser.error("--jobs, --cell-timeout, --timeout and --memory must be positive")
    # Read once, before any submission runs: a submission's kernel could rewrite these files.
    solutions = {p.stem: (p.stem, nbformat.read(p, as_version=4)) for p in sorted(solutions_dir.glob("*.ipynb"))}
    forced = None
    if args.notebook:
        forced = solutions.get(Path(args.notebook).stem)
        if forced is None:
            parser.error(f"no notebook {args.notebook!r} in {solutions_dir}; there are: {', '.join(solutions)}")
    found = submissions_in(folder)
    if not found:
        parser.error(f"no .ipynb files under {folder}")
    limits = Limits(args.cell_timeout, args.timeout, args.memory)

    start = time.monotonic()
    print(f"grading {_count(len(found))} from {folder} ({args.jobs} at a time)", flush=True)
    rows = []
    # Threads only wait: each submission runs in a subprocess of its own, so a crash there costs
    # one row, never this process.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs)
    futures = {pool.submit(grade_submission, path, name, forced or find_solution(name, solutions), limits): name
               for name, path in found.items()}
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
            print(f"[{len(rows)}/{len(found)}] {row.name}: {score} in {row.seconds:.1f} s{note}", flush=True)
    except KeyboardInterrupt:
        # Ctrl-C reaches the workers too (same process group); queued submissions must not start.
        pool.shutdown(wait=False, cancel_futures=True)
        print("interrupted: no gradebook written", file=sys.stderr)
        return 130
    pool.shutdown()
    rows.sort(key=lambda r: r.name)
    gradebook = write_outputs(rows, Path(args.out))
    print(f"graded {_count(len(rows))} in {time.monotonic() - start:.1f} s; "
          f"wrote {gradebook} and {Path(args.out) / 'feedback'}/", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
