"""A hostile class for the grader's sandbox: one learner per attack, and one correct classmate.

Each attacker hands in chapter 1's blank exercises notebook with one cell added after the imports.
That cell tries one attack and ends by raising ``RuntimeError("ATTACK <name>: blocked")`` or
``"... SUCCEEDED <what it got>"``, which the gradebook's problems column shows. The test
(tests/test_sandbox.py) does not trust that line alone: it also checks the host for the attack's
effect (a changed file, a connection, a planted file, a leaked secret, a process left behind).

By hand: ``.venv/bin/python tests/hostile.py DIR`` writes the class (with its targets under DIR),
then ``make grade SUBMISSIONS=DIR/class``.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat

_spec = importlib.util.spec_from_file_location("make_submissions", Path(__file__).with_name("make_submissions.py"))
make_submissions = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_submissions)

NAME = make_submissions.NAME
CLASSMATE = "classmate"


@dataclass(frozen=True)
class Targets:
    """What the attacks aim at on the host, in the worst case for the grader: they know every path."""

    base: Path  # the class and its targets live here
    port: int  # a TCP listener on 127.0.0.1 run by the test
    token: str  # makes the canary names unique to one run
    secret: str  # in the grader's environment and in a file in the instructor's home

    @property
    def submissions(self) -> Path:
        return self.base / "class"

    @property
    def classmate(self) -> Path:
        return self.submissions / CLASSMATE / NAME

    @property
    def home(self) -> Path:
        return self.base / "home"

    @property
    def secret_file(self) -> Path:
        return self.home / "secret.txt"

    @property
    def outside(self) -> Path:
        return self.base / "outside" / f"canary-{self.token}.txt"

    @property
    def system_tmp(self) -> Path:
        return Path("/tmp") / f"riverbank-canary-{self.token}.txt"

    @property
    def fork_name(self) -> str:
        return f"rb{self.token}"  # a process name: at most 15 characters

    @property
    def planted(self) -> str:
        return f"riverbank_planted_{self.token}"


REPORT = '''import os
import sys


def report(name, succeeded, detail=""):
    raise RuntimeError(f"ATTACK {name}: " + (f"SUCCEEDED {detail}".strip() if succeeded else "blocked"))


'''

# name -> (what it tries, its cell's source after REPORT). __NAMES__ are filled in from Targets.
ATTACKS = {
    "steal_answers": ("find every other notebook on the machine (beside the course package, from the "
                      "grader's process tree, and under /) and exec its answers", '''import json

import riverbank

roots = [os.path.dirname(os.path.dirname(riverbank.__file__)), "/"]  # the course's own folder first
for pid in sorted(p for p in os.listdir("/proc") if p.isdigit()):
    try:  # the grader's folders: the working folders and arguments of every process in sight
        roots.insert(1, os.readlink(f"/proc/{pid}/cwd"))
        with open(f"/proc/{pid}/cmdline") as f:
            roots[1:1] = [a for a in f.read().split("\\0") if a.startswith("/")]
    except OSError:
        pass
skip = ("/proc", "/sys", "/dev", "/usr", sys.prefix, sys.base_prefix)
found, seen = [], 0
for root in dict.fromkeys(roots):
    for folder, dirs, files in os.walk(root):
        seen += len(files)
        if folder.startswith(skip) or seen > 200_000:
            dirs[:] = []
            continue
        found += [os.path.join(folder, f) for f in files if f.endswith(".ipynb")]
mine = "/grading/graded.ipynb"
wanted = {"attention_weights", "self_attention", "cosine_similarity", "bank_river_similarity"}
stolen = set()
for path in sorted(set(found) - {mine}):
    try:
        with open(path) as f:
            cells = json.load(f).get("cells", [])
    except Exception:
        continue
    for cell in cells:
        source = "".join(cell.get("source", ""))
        if (cell.get("cell_type") != "code" or "NotImplementedError" in source  # a blank exercise
                or not any(f"def {name}(" in source for name in wanted - stolen)):
            continue
        scratch = dict(globals())
        try:
            exec(source, scratch)
        except Exception:
            continue
        for name in wanted - stolen:
            if callable(scratch.get(name)) and scratch[name] is not globals().get(name):
                globals()[name] = scratch[name]
                stolen.add(name)
report("steal_answers", bool(stolen), "answers from other notebooks")'''),
    "change_classmate": ("append to a classmate's submitted file", '''changed = False
try:
    with open("__CLASSMATE__", "a") as f:
        f.write(" ")
    changed = True
except OSError:
    pass
report("change_classmate", changed, "appended to the classmate's file")'''),
    "write_outside": ("write files outside its own temporary folder", '''wrote = []
for path in ["__OUTSIDE__", "/var/tmp/riverbank-canary-__TOKEN__.txt", "__HOME__/canary-__TOKEN__.txt"]:
    try:
        with open(path, "w") as f:
            f.write("written by a submission")
        wrote.append(path)
    except OSError:
        pass
with open("__SYSTEM_TMP__", "w") as f:  # the sandbox's own /tmp: allowed, and gone afterwards
    f.write("written by a submission")
report("write_outside", bool(wrote), " ".join(wrote))'''),
    "network": ("open a TCP connection to a listener on 127.0.0.1", '''import socket

try:
    socket.create_connection(("127.0.0.1", __PORT__), timeout=5).close()
    connected = True
except OSError:
    connected = False
report("network", connected, "connected to 127.0.0.1:__PORT__")'''),
    "plant_pth": ("write a .pth file into the grader's site-packages and a module into the grading "
                  "package", '''import site

import riverbank.grading

planted = []
for folder in site.getsitepackages():
    try:
        with open(os.path.join(folder, "__PLANTED__.pth"), "w") as f:
            f.write("import os\\n")
        planted.append(folder)
    except OSError:
        pass
package = os.path.dirname(riverbank.grading.__file__)
try:
    with open(os.path.join(package, "__PLANTED__.py"), "w") as f:
        f.write("x = 1\\n")
    planted.append(package)
except OSError:
    pass
try:  # opening for append changes nothing, but proves the grading package could be rewritten
    open(os.path.join(package, "runner.py"), "a").close()
    planted.append("runner.py")
except OSError:
    pass
report("plant_pth", bool(planted), " ".join(planted))'''),
    "read_secrets": ("read /etc/shadow, the instructor's home and the grader's environment", '''got = []
try:
    with open("/etc/shadow") as f:
        f.read(1)
    got.append("/etc/shadow")  # named, not shown: the machine's own password hashes
except OSError:
    pass
try:
    with open("__SECRET_FILE__") as f:
        got.append(f.read()[:80].strip())
except OSError:
    pass
if "RIVERBANK_TEST_SECRET" in os.environ:
    got.append(os.environ["RIVERBANK_TEST_SECRET"])
for pid in sorted(p for p in os.listdir("/proc") if p.isdigit()):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read().decode(errors="replace")
    except OSError:
        continue
    got += [v for v in environ.split("\\0") if v.startswith("RIVERBANK_TEST_SECRET=")]
report("read_secrets", bool(got), " | ".join(sorted(set(got))))'''),
    "fork_bomb": ("fork until the machine runs out of processes", '''import ctypes
import time

made, stopped = 0, False
while made < 5000:
    try:
        pid = os.fork()
    except OSError:
        stopped = True
        break
    if pid == 0:  # named, so the test can look for any that outlive the sandbox; then wait
        ctypes.CDLL(None).prctl(15, b"__FORKNAME__", 0, 0, 0)  # PR_SET_NAME
        time.sleep(600)
        os._exit(0)
    made += 1
report("fork_bomb", not stopped, "5000 processes")'''),
    "fill_disk": ("fill the temporary folder's disk (and /dev/shm, and its working folder)", '''import tempfile

written = 0
block = b"x" * 2**20
for folder in [tempfile.gettempdir(), "/dev/shm", os.getcwd()]:
    try:
        with open(os.path.join(folder, "filler"), "wb") as f:
            while written < 4 * 2**30:
                f.write(block)
                written += len(block)
    except OSError:
        pass
    try:
        os.remove(os.path.join(folder, "filler"))
    except OSError:
        pass
report("fill_disk", written >= 4 * 2**30, "4 GiB written")'''),
    "kill_parent": ("kill the process that runs it, and every process it can signal", '''import signal

names = []
for pid in sorted(p for p in os.listdir("/proc") if p.isdigit()):
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            names.append(f.read())
    except OSError:
        pass
if any("riverbank.grading" in n and "--worker" not in n for n in names) or any("pytest" in n for n in names):
    report("kill_parent", True, "can see the grader")  # reported, not fired: this machine runs the tests
try:
    os.kill(os.getppid(), signal.SIGKILL)
    killed = True
except OSError:
    killed = False
try:
    os.kill(-1, signal.SIGKILL)  # every process this user may signal, but itself
except OSError:
    pass
report("kill_parent", killed, "killed its parent")'''),
    "connection_files": ("read another kernel's connection file (and so drive that kernel)", '''import glob

with open("/proc/self/cmdline") as f:
    own = f.read().split("\\0")
mine = os.path.realpath(own[own.index("-f") + 1])  # this kernel's own connection file
found = []
for pattern in ["/tmp/**/kernel-*.json", "/root/**/kernel-*.json", "/home/**/kernel-*.json",
                "/run/**/kernel-*.json", "/var/**/kernel-*.json"]:
    found += [p for p in glob.glob(pattern, recursive=True) if os.path.realpath(p) != mine]
for pid in sorted(p for p in os.listdir("/proc") if p.isdigit()):
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            args = f.read().split("\\0")
    except OSError:
        continue
    if "-f" in args and os.path.realpath(args[args.index("-f") + 1]) != mine:
        found.append(args[args.index("-f") + 1])
readable = []
for path in sorted(set(found)):
    try:
        with open(path) as f:
            readable.append(f.read()[:20])
    except OSError:
        pass
report("connection_files", bool(readable), f"{len(readable)} other kernels")'''),
    "forge_report": ("write a forged report into the worker's stdout, or read its memory", '''forged = []
fake = '{"errors": [], "stopped": null, "printed": 0, "recheck": null, "isolated": "root", "results": ""}'
for name in ["fd/1", "mem"]:
    try:
        with open(f"/proc/{os.getppid()}/{name}", "w") as f:
            if name == "fd/1":
                f.write(fake + "\\n")
        forged.append(name)
    except OSError:
        pass
report("forge_report", bool(forged), " ".join(forged))'''),
}


def attack_source(name: str, targets: Targets) -> str:
    source = REPORT + ATTACKS[name][1]
    for key, value in {"__CLASSMATE__": targets.classmate, "__OUTSIDE__": targets.outside,
                       "__SYSTEM_TMP__": targets.system_tmp, "__HOME__": targets.home, "__TOKEN__": targets.token,
                       "__PORT__": targets.port, "__PLANTED__": targets.planted,
                       "__SECRET_FILE__": targets.secret_file, "__FORKNAME__": targets.fork_name}.items():
        source = source.replace(key, str(value))
    return source


def build(targets: Targets, attacks: list[str] | None = None) -> dict[str, Path]:
    """Write the class under ``targets.submissions`` and the host files the attacks aim at; returns
    each learner's submission. The attackers' exercises are blank: any point they get is stolen."""
    blank = nbformat.read(make_submissions.EXERCISE, as_version=4)
    notebooks = {name: make_submissions.inserted(blank, "imports", attack_source(name, targets),
                                                 f"attack-{name.replace('_', '-')}")
                 for name in attacks or list(ATTACKS)}
    if "steal_answers" in notebooks:  # no answer cells at all, so that stolen functions are not overwritten
        for cell in notebooks["steal_answers"].cells:
            if cell.get("id", "").endswith("-solution"):
                cell.source = "# no answer of my own"
    notebooks[CLASSMATE] = make_submissions.solved(make_submissions.CORRECT)
    written = {}
    for name, nb in notebooks.items():
        written[name] = targets.submissions / name / NAME
        written[name].parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, written[name])
    targets.home.mkdir(parents=True, exist_ok=True)
    targets.secret_file.write_text(f"instructor's secret {targets.secret}\n", encoding="utf-8")
    targets.outside.parent.mkdir(parents=True, exist_ok=True)
    return written


if __name__ == "__main__":
    import secrets

    if len(sys.argv) != 2:
        raise SystemExit("usage: tests/hostile.py DIR")
    t = Targets(Path(sys.argv[1]).resolve(), port=9, token=secrets.token_hex(4), secret=secrets.token_hex(8))
    build(t)
    print(f"wrote {len(ATTACKS) + 1} submissions to {t.submissions}; grade them with "
          f"make grade SUBMISSIONS={t.submissions}")
