"""The grader's OS sandbox, proven by a hostile class (tests/hostile.py): every attack fails and
the classmate graded beside the attackers keeps full marks; without the sandbox the same attacks
succeed, so these tests can fail. Also: what --sandbox auto, required and off do without one."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import os
import secrets
import site
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import psutil
import pytest
from filelock import FileLock

from riverbank.grading import isolation
from riverbank.grading.exercises import EXERCISES

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("hostile", ROOT / "tests" / "hostile.py")
hostile = sys.modules["hostile"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up there
_spec.loader.exec_module(hostile)

FULL = sum(EXERCISES[ex].points for ex in ("1.1", "1.2", "1.3", "1.4"))
FLAGS = ["--jobs", "2", "--cell-timeout", "30", "--timeout", "120", "--memory", "2", "--no-progress"]
# Attacks that are safe to let succeed on this machine: the control run, without the sandbox.
CONTROL = ["steal_answers", "change_classmate", "write_outside", "network", "read_secrets"]

if not sys.platform.startswith("linux"):
    pytest.skip("the sandbox is Linux's (bubblewrap)", allow_module_level=True)


def test_bubblewrap_runs_here():
    # Not a skip: on Linux a missing sandbox is a finding, and .ci/run installs bubblewrap.
    assert isolation.probe() is None, f"{isolation.probe()} (Debian/Ubuntu: apt-get install bubblewrap)"


class Listener:
    """A TCP server on 127.0.0.1 that counts the connections it accepts."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port, self.accepted = self.sock.getsockname()[1], 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()


def _digest(paths) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(paths) if p.is_file()}


def _snapshot(folder: Path) -> dict[str, list]:
    return {str(p): [p.read_bytes().hex(), p.stat().st_mtime_ns] for p in sorted(folder.rglob("*")) if p.is_file()}


def _site_dirs() -> list[Path]:
    return [Path(p) for p in site.getsitepackages()] + [ROOT / "riverbank" / "grading"]


def _planted(targets) -> list[str]:
    found = [d / f"{targets.planted}{ext}" for d in _site_dirs() for ext in (".pth", ".py")]
    return [str(p) for p in found if p.exists()]


def _left_behind(targets) -> list[str]:
    """The fork bomb's children (named by it) still alive, killed if found. They sleep 600 s, so
    only the end of their sandbox ends them within the test."""
    left = []
    for p in psutil.process_iter(["name", "uids"]):
        if p.info["name"] == targets.fork_name:
            left.append(f"{p.info['name']} (uid {p.info['uids'].real})")
            try:
                p.kill()
            except psutil.Error:
                pass
    return left


def _grade(targets, out: str, sandbox: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "riverbank.grading", str(targets.submissions), "--out", out,
                           "--sandbox", sandbox, *FLAGS], cwd=targets.base, env=env, capture_output=True,
                          text=True, timeout=900)


def _run_class(base: Path, attacks: list[str] | None, sandbox: str, twice: bool) -> dict:
    listener = Listener()
    targets = hostile.Targets(base, listener.port, secrets.token_hex(4), secrets.token_hex(8))
    hostile.build(targets, attacks)
    package = _digest((ROOT / "riverbank").rglob("*.py"))
    before = _snapshot(targets.submissions)
    env = dict(os.environ, HOME=str(targets.home), RIVERBANK_TEST_SECRET=targets.secret, PWD=str(base))
    start = time.monotonic()
    runs = [_grade(targets, "gradebook", sandbox, env)]
    seconds = time.monotonic() - start
    if twice:
        runs.append(_grade(targets, "gradebook-again", sandbox, env))
    time.sleep(1)
    result = {
        "base": str(base), "seconds": seconds, "returncodes": [r.returncode for r in runs],
        "stdout": runs[0].stdout, "stderr": runs[0].stderr[-4000:], "accepted": listener.accepted,
        "secret": targets.secret, "submissions_changed": _snapshot(targets.submissions) != before,
        "package_changed": _digest((ROOT / "riverbank").rglob("*.py")) != package,
        "planted": _planted(targets), "left_running": _left_behind(targets),
        "outside": [str(p) for p in (targets.outside, targets.system_tmp, targets.home / f"canary-{targets.token}.txt",
                                     Path(f"/var/tmp/riverbank-canary-{targets.token}.txt")) if p.exists()],
    }
    for path in result["planted"] + result["outside"]:  # a failed run must not leave them behind
        Path(path).unlink()
    return result


def _shared(tmp_path_factory, name: str, make) -> dict:
    """One run per test session, shared by the pytest-xdist workers."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return make(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent
    with FileLock(str(shared / f"{name}.lock")):
        done = shared / f"{name}.json"
        if not done.exists():
            (shared / name).mkdir()
            done.write_text(json.dumps(make(shared / name)))
        return json.loads(done.read_text())


@pytest.fixture(scope="session")
def sandboxed(tmp_path_factory) -> dict:
    if isolation.probe() is not None:
        pytest.fail(f"no sandbox here: {isolation.probe()}")
    return _shared(tmp_path_factory, "hostile-sandboxed", lambda base: _run_class(base, None, "required", True))


@pytest.fixture(scope="session")
def unsandboxed(tmp_path_factory) -> dict:
    return _shared(tmp_path_factory, "hostile-control", lambda base: _run_class(base, CONTROL, "off", False))


def _rows(result: dict, out: str = "gradebook") -> dict[str, dict]:
    with open(Path(result["base"]) / out / "gradebook.csv", newline="", encoding="utf-8") as f:
        return {row["learner"]: row for row in csv.DictReader(f)}


def test_the_hostile_class_is_graded_to_the_end(sandboxed):
    assert sandboxed["returncodes"] == [0, 0], sandboxed["stderr"]
    assert "each in its own sandbox" in sandboxed["stdout"]
    assert set(_rows(sandboxed)) == set(hostile.ATTACKS) | {hostile.CLASSMATE}


@pytest.mark.parametrize("attack", sorted(hostile.ATTACKS))
def test_every_attack_fails_and_gets_nothing(sandboxed, attack):
    row = _rows(sandboxed)[attack]
    if attack == "kill_parent" and os.geteuid() != 0:
        # Graded by a normal user, the kernel shares its worker's uid and can kill it: that costs
        # only its own row (README, threat model). As root the worker is out of its reach.
        assert "the grading subprocess failed" in row["problems"] or "ATTACK kill_parent: blocked" in row["problems"]
    else:
        assert f"ATTACK {attack}: blocked" in row["problems"], row["problems"]
    assert "SUCCEEDED" not in row["problems"]
    assert row["total"] == "0", f"{attack} scored {row['total']} with blank exercises"
    assert isolation.UNISOLATED not in row["problems"]


def test_the_classmate_graded_beside_the_attackers_keeps_full_marks(sandboxed):
    row = _rows(sandboxed)[hostile.CLASSMATE]
    assert (row["total"], row["max"], row["problems"]) == (f"{FULL:g}", f"{FULL:g}", "")


def test_no_submission_changed_and_nothing_was_written_outside(sandboxed):
    assert not sandboxed["submissions_changed"]
    assert sandboxed["outside"] == []


def test_no_connection_reached_the_hosts_loopback(sandboxed):
    assert sandboxed["accepted"] == 0


def test_nothing_was_planted_in_site_packages_or_the_grading_package(sandboxed):
    assert sandboxed["planted"] == []
    assert not sandboxed["package_changed"]


def test_no_secret_reached_the_gradebook(sandboxed):
    out = Path(sandboxed["base"]) / "gradebook"
    for path in out.rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            assert sandboxed["secret"] not in text, path
            assert "/etc/shadow" not in text.replace("read /etc/shadow", ""), path


def test_no_kernel_process_outlives_its_sandbox(sandboxed):
    assert sandboxed["left_running"] == []


def test_grading_the_hostile_class_twice_writes_the_same_bytes(sandboxed):
    base = Path(sandboxed["base"])
    first, again = base / "gradebook", base / "gradebook-again"
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for name in files:
        assert (first / name).read_bytes() == (again / name).read_bytes(), name


# --- the control: the same attacks without the sandbox succeed, so the tests above can fail ------

def test_without_the_sandbox_the_same_attacks_succeed(unsandboxed):
    assert unsandboxed["returncodes"] == [0], unsandboxed["stderr"]
    rows = _rows(unsandboxed)
    for attack in CONTROL:
        assert f"ATTACK {attack}: SUCCEEDED" in rows[attack]["problems"], (attack, rows[attack]["problems"])
        assert f"{isolation.UNISOLATED} (--sandbox off)" in rows[attack]["problems"]
    assert float(rows["steal_answers"]["total"]) > 0  # it found the solutions and scored with them
    assert unsandboxed["submissions_changed"]
    assert unsandboxed["accepted"] >= 1
    assert unsandboxed["outside"]
    assert unsandboxed["secret"] in rows["read_secrets"]["problems"]


# --- no sandbox: auto warns loudly, required refuses, off says so --------------------------------

@pytest.fixture
def no_bwrap(tmp_path) -> dict:
    """An environment in which bwrap cannot be found, and one correct submission to grade."""
    nb = hostile.make_submissions.solved(hostile.make_submissions.CORRECT)
    (tmp_path / "class" / "ada").mkdir(parents=True)
    nbformat.write(nb, tmp_path / "class" / "ada" / hostile.NAME)
    return {"base": tmp_path, "env": dict(os.environ, PATH=str(Path(sys.executable).parent))}


def _grade_here(no_bwrap, mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "riverbank.grading", "class", "--out", "gradebook",
                           "--sandbox", mode, *FLAGS], cwd=no_bwrap["base"], env=no_bwrap["env"],
                          capture_output=True, text=True, timeout=300)


def test_required_refuses_to_grade_without_a_sandbox(no_bwrap):
    run = _grade_here(no_bwrap, "required")
    assert run.returncode == 2
    assert "--sandbox required, but no sandbox can run here: bubblewrap (bwrap) is not installed" in run.stderr
    assert not (no_bwrap["base"] / "gradebook").exists()


def test_auto_grades_without_a_sandbox_and_says_so_everywhere(no_bwrap):
    run = _grade_here(no_bwrap, "auto")
    assert run.returncode == 0, run.stderr
    assert "WARNING: submissions will be graded without isolation: bubblewrap (bwrap) is not installed" in run.stderr
    row = _rows({"base": no_bwrap["base"]})["ada"]
    assert row["total"] == f"{FULL:g}"
    assert row["problems"].startswith("graded without isolation (bubblewrap (bwrap) is not installed")
    summary = (no_bwrap["base"] / "gradebook" / "summary.md").read_text()
    assert "**Warning: 1 of 1 submissions were graded without isolation**" in summary
    assert "graded without isolation" in (no_bwrap["base"] / "gradebook" / "feedback" / "ada" /
                                          "01_bank_by_the_river.txt").read_text()


def test_off_is_explicit_in_the_gradebook(no_bwrap):
    run = _grade_here(no_bwrap, "off")
    assert run.returncode == 0, run.stderr
    assert _rows({"base": no_bwrap["base"]})["ada"]["problems"] == "graded without isolation (--sandbox off)"


def test_the_sandbox_binds_only_the_environment_the_package_and_the_notebook(tmp_path):
    notebook = tmp_path / "n.ipynb"
    notebook.write_text("{}")
    cmd = isolation.bwrap_command(notebook, os.geteuid() == 0)
    binds = [cmd[i + 2] for i, a in enumerate(cmd) if a == "--ro-bind"]
    assert "--bind" not in cmd  # nothing of the host is writable
    assert str(ROOT) not in binds and str(ROOT / "solutions") not in binds
    assert str(ROOT / "riverbank") in binds and isolation.NOTEBOOK in binds
    assert not any(b in (str(Path.home()), "/", "/etc", "/home", "/root") for b in binds)
    for flag in ("--unshare-pid", "--unshare-net", "--unshare-ipc", "--die-with-parent", "--new-session"):
        assert flag in cmd
    env = isolation.sandbox_env()
    assert set(env) <= set(isolation._KEPT) | {"PATH", "HOME", "USER", "LOGNAME", "TMPDIR",
                                                "PYTHONDONTWRITEBYTECODE", "PYTHONNOUSERSITE"}
