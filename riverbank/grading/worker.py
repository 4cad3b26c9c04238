"""Running one notebook: a worker subprocess starts a fresh kernel under limits and reports back.

The parent starts ``python -m riverbank.grading --worker JOB``, inside a bubblewrap sandbox of its
own unless grading without isolation (``isolation`` module). The worker sets the memory limit on
itself (the kernel inherits it), runs the notebook in an empty folder with a time limit per cell
and per notebook, and prints one JSON line: the cells that failed, where it stopped, how much it
printed, what the checks recorded, and a re-check of the learner's functions made by a fresh copy
of the grading package.
"""

from __future__ import annotations

import json
import math
import os
import resource
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat

from ..polling import slice_waits
from . import isolation
from .session import RESULTS_ENV

GRADING_DIR = Path(__file__).resolve().parent
ATTEMPT_ENV = "RIVERBANK_GRADE_ATTEMPT"  # 2 when a notebook is graded again after a kernel stall
MAX_RESULTS = 10_000_000  # bytes of the checks' results file sent back; the kernel writes that file
PR_SET_DUMPABLE = 4


@dataclass
class Limits:
    cell_timeout: float = 60.0
    notebook_timeout: float = 300.0
    memory_gb: float = 4.0


# Run in the learner's kernel after their notebook: grade their functions again with a copy of the
# grading package loaded afresh from its files (so a patched riverbank.grading in that kernel does
# not apply), and write the points to a file whose name the kernel could not know in advance.
_RECHECK = '''def __riverbank_recheck(expressions, out):
    import importlib.util, json, sys
    name = "riverbank._grading_recheck"
    spec = importlib.util.spec_from_file_location(name, {init!r}, submodule_search_locations=[{pkg!r}])
    fresh = importlib.util.module_from_spec(spec)
    sys.modules[name] = fresh
    spec.loader.exec_module(fresh)
    exercises = sys.modules[name + ".exercises"].EXERCISES
    found = {{}}
    for ex_id, expression in expressions.items():
        try:  # what the official check cell passes to check(), e.g. attend
            fn = eval(expression, globals())
        except Exception:
            continue
        found[ex_id] = fresh.grade(exercises[ex_id], fn).earned
    with open(out, "w") as f:
        json.dump(found, f)
__riverbank_recheck({expressions!r}, {out!r})
del __riverbank_recheck'''


def _kernel_manager(prefix: list[str]):
    """A KernelManager that starts the kernel through ``prefix`` (the sandbox's ``confine`` launcher)."""
    from jupyter_client.manager import AsyncKernelManager  # nbclient's default; a sync one blocks its loop

    class Confined(AsyncKernelManager):
        def format_kernel_cmd(self, extra_arguments=None):
            return prefix + super().format_kernel_cmd(extra_arguments)

    return Confined


def run_notebook(path: Path, workdir: Path, limits: Limits, recheck: dict[str, str] | None = None,
                 kernel_prefix: list[str] | None = None) -> dict:
    """Execute the notebook at ``path`` in a fresh kernel; say which cells failed and where it stopped.

    ``recheck`` maps exercise ids to what their official check cells pass to ``check`` (a
    function's name, or an expression), to grade again once the notebook has run to its end.
    ``kernel_prefix``: a command that starts the kernel's command (in the sandbox). Runs in the
    worker subprocess.
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    class Client(NotebookClient):
        printed = 0

        async def async_start_new_kernel_client(self):
            kc = await super().async_start_new_kernel_client()
            slice_waits(kc)  # a missed wake-up costs a second, not the cell's whole time limit
            return kc

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
    extra = {"kernel_manager_class": _kernel_manager(kernel_prefix)} if kernel_prefix else {}
    client = Client(nb, kernel_name="python3", allow_errors=True, interrupt_on_timeout=False,
                    shutdown_kernel="immediate", resources={"metadata": {"path": str(workdir)}}, **extra)
    report: dict = {"errors": [], "stopped": None, "printed": 0, "recheck": None}
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
                    if kernel_stalled(client):
                        # Not the learner's doing: the kernel is idle, and the cell's end never came.
                        report["stalled"] = index
                        report["stopped"] = [index, f"the kernel stopped answering (it sat idle for "
                                                    f"{client.timeout} s; not your code)"]
                        break
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
            if report["stopped"] is None and recheck:
                report["recheck"] = _recheck(client, nb, workdir.parent, recheck, deadline - time.monotonic(), limits)
    except Exception as error:  # noqa: BLE001 - the kernel could not start, or died while stopping
        if report["stopped"] is None:
            report["stopped"] = [index, f"the kernel failed: {type(error).__name__}: {error}"]
    report["printed"] = client.printed
    return report


def kernel_stalled(client, seconds: float = 5.0) -> bool:
    """After a cell timed out: is the kernel idle rather than running the learner's code?

    A kernel still running the cell cannot answer a request on its shell channel (it handles them
    one at a time); an idle one answers at once. So the cell's end was lost, not slow: a stall."""
    from jupyter_core.utils import run_sync

    async def answers() -> bool:
        kc = client.kc
        msg_id = kc.kernel_info()
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = await kc.get_shell_msg(timeout=left)
            except Exception:  # noqa: BLE001 - queue.Empty: no answer in time
                return False
            if msg.get("parent_header", {}).get("msg_id") == msg_id:
                return True
        return False

    try:
        return bool(run_sync(answers)())
    except Exception:  # noqa: BLE001 - the kernel is gone: not a stall this can tell
        return False


def _recheck(client, nb, folder: Path, expressions: dict[str, str], left: float, limits: Limits) -> dict | None:
    """Grade the learner's functions again in their kernel with a fresh grading package; None if that failed."""
    out = folder.resolve() / f"recheck-{secrets.token_hex(16)}.json"
    cell = nbformat.v4.new_code_cell(_RECHECK.format(init=str(GRADING_DIR / "__init__.py"), pkg=str(GRADING_DIR),
                                                     expressions=expressions, out=str(out)))
    nb.cells.append(cell)  # nbclient stores the cell back by its index; this copy is never saved
    client.timeout = max(1, math.ceil(min(max(left, 0) + 30, limits.cell_timeout * max(len(expressions), 1))))
    try:
        client.execute_cell(cell, len(nb.cells) - 1)
        found = json.loads(out.read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - no re-check is not evidence of anything
        return None
    return {k: float(v) for k, v in found.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def _read_bounded(path: str | None) -> str:
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            return f.read(MAX_RESULTS).decode("utf-8", "replace")
    except OSError:
        return ""


def _prepare_sandbox(user: list[int] | None, attempt: int = 1) -> tuple[Path, list[str]]:
    """Inside the sandbox: the kernel's folders (its user's own), its environment and launcher.

    Returns the kernel's working folder and the command prefix that starts it confined."""
    import ctypes

    # Not dumpable: a kernel running as this same user cannot read this process's memory or open
    # its file descriptors (the report's pipe) through /proc.
    ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    home = Path("/tmp/kernel")
    folders = {name: home / name for name in ("cwd", "ipython", "runtime", "home")}
    home.mkdir(mode=0o700)
    for folder in folders.values():
        folder.mkdir(mode=0o700)
    if user is not None:
        for folder in [home, *folders.values()]:
            os.chown(folder, *user)
    # The connection file is written by this process into the runtime folder, then handed over.
    os.environ.update({RESULTS_ENV: str(home / "results.jsonl"), "PWD": str(folders["cwd"]),
                       ATTEMPT_ENV: str(attempt),
                       "IPYTHONDIR": str(folders["ipython"]), "JUPYTER_RUNTIME_DIR": str(folders["runtime"]),
                       "HOME": str(folders["home"]), "JUPYTER_PLATFORM_DIRS": "1",
                       "PYDEVD_DISABLE_FILE_VALIDATION": "1"})
    # Run as a file, not with -m: importing the package first would import PyTorch (1.5 s) once
    # more before every kernel. confine.py uses the standard library alone.
    prefix = [sys.executable, "-I", "-S", str(GRADING_DIR / "confine.py")]
    if user is not None:
        prefix += ["--user", f"{user[0]}:{user[1]}"]
    return folders["cwd"], prefix + ["--"]


def worker_main(job_json: str) -> int:
    job = json.loads(job_json)
    sandbox = job.get("sandbox")
    if sandbox is not None:
        if os.environ.get(isolation.IN_SANDBOX_ENV) is None:
            print(json.dumps({"refused": "a sandboxed job outside the sandbox"}), flush=True)
            return 1
        workdir, prefix = _prepare_sandbox(sandbox.get("user"), int(job.get("attempt", 1)))
        notebook = Path(isolation.NOTEBOOK)
    else:
        workdir, prefix, notebook = Path(job["workdir"]), None, Path(job["notebook"])
    report = run_notebook(notebook, workdir, Limits(**job["limits"]), job.get("recheck"), prefix)
    report["results"] = _read_bounded(os.environ.get(RESULTS_ENV))
    report["isolated"] = os.environ.get(isolation.IN_SANDBOX_ENV)
    print(json.dumps(report), flush=True)
    return 0


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


def run_worker(notebook: Path, tmp: Path, limits: Limits, recheck: dict[str, str] | None = None,
               sandboxed: bool = True, attempt: int = 1) -> tuple[dict | None, str]:
    """Run the worker subprocess on ``notebook`` (in ``tmp``, a new folder of this submission's
    alone), in a sandbox when ``sandboxed``; its report, or None and why there is none.
    ``attempt`` 2 is the run again after a kernel stall (the kernel sees it as ATTEMPT_ENV)."""
    job = {"limits": vars(limits), "recheck": recheck, "attempt": attempt}
    if sandboxed:
        job["sandbox"] = {"user": isolation.kernel_user()}
        worker = [sys.executable, "-I", "-m", "riverbank.grading", "--worker", json.dumps(job)]
        cmd = isolation.bwrap_command(notebook, os.geteuid() == 0) + ["--"] + worker
        env = isolation.sandbox_env()
    else:
        workdir = tmp / "cwd"
        workdir.mkdir()
        # IPython's profile, the kernel's connection file and temporary files live in this
        # submission's folder, which is deleted afterwards: a startup file one submission writes
        # cannot run in the next, and no kernel finds another's connection file in a shared place.
        # PWD would tell the kernel where the grader runs (and so where gradebooks are).
        env = dict(os.environ, **{RESULTS_ENV: str(tmp / "results.jsonl"), "PWD": str(workdir),
                                  ATTEMPT_ENV: str(attempt),
                                  "IPYTHONDIR": str(tmp / "ipython"), "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
                                  "TMPDIR": str(tmp), "JUPYTER_PLATFORM_DIRS": "1",
                                  "PYDEVD_DISABLE_FILE_VALIDATION": "1"})
        job.update(notebook=str(notebook), workdir=str(workdir))
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
        report = json.loads(out.decode("utf-8").strip().splitlines()[-1])
        if not isinstance(report, dict) or "errors" not in report:
            raise ValueError(report)
        return report, ""
    except (ValueError, IndexError):
        if proc.returncode < 0:
            return None, f"the grading subprocess was killed by signal {-proc.returncode}"
        last = next((s for s in reversed(err.decode("utf-8", "replace").splitlines()) if s.strip()), "")
        return None, f"the grading subprocess failed (exit code {proc.returncode}){': ' + last[:200] if last else ''}"
