"""The OS sandbox around each submission: bubblewrap (``bwrap``), with no Docker and no image.

``make grade`` runs code that learners wrote. Each submission's worker (the process that drives
its notebook) and the learner's kernel run inside one bubblewrap sandbox of their own:

- the system folders, the Python environment and the ``riverbank`` package are bound read-only,
  and nothing else of the host is there: no home folder, no submissions folder, no gradebook, no
  ``solutions/``, no ``/etc/shadow``;
- the notebook being graded is bound read-only; the only writable places are a private ``/tmp``
  and ``/dev/shm``, both small tmpfs mounts that vanish with the sandbox;
- new PID, network (loopback only), IPC and UTS namespaces: the kernel cannot see or signal the
  grader, reach the network, or talk to another submission's kernel;
- the environment is rebuilt from a short list, so the instructor's tokens and paths stay out.

Inside, the worker drops the kernel to a user of its own: when the grader runs as root, a random
unused uid with no capabilities (so it cannot touch the worker, which stays root, and the process
limit applies to it); otherwise the instructor's own uid in a new user namespace, with the worker
made non-dumpable so that the kernel cannot read or write its memory or file descriptors.

The worker reports to the grader on its stdout: what the kernel recorded comes back in that
report, never through a shared folder.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import riverbank

MODES = ("auto", "required", "off")
UNISOLATED = "graded without isolation"
IN_SANDBOX_ENV = "RIVERBANK_SANDBOX"  # set inside the sandbox: "root" or "user" (how the kernel is confined)
NOTEBOOK = "/grading/graded.ipynb"  # where the graded copy appears inside the sandbox
TMP_BYTES = 512 * 2**20  # the sandbox's /tmp
SHM_BYTES = 64 * 2**20  # its /dev/shm
_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/fonts")
# Passed through from the grader's environment: what decides the numbers and the threads.
_KEPT = ("LANG", "LC_ALL", "LC_CTYPE", "TZ", "ATEN_CPU_CAPABILITY", "OPENBLAS_CORETYPE", "PYTHONHASHSEED",
         "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TORCH_NUM_THREADS")


class SandboxUnavailable(RuntimeError):
    """``--sandbox required`` and no sandbox can run here."""


@dataclass(frozen=True)
class Isolation:
    """How submissions are run: in a sandbox (``sandboxed``) or not, and why not."""

    sandboxed: bool
    why_not: str = ""  # for the warning, when not sandboxed

    @property
    def problem(self) -> str | None:
        """The gradebook's problems entry for each submission graded this way, or None."""
        if self.sandboxed:
            return None
        return f"{UNISOLATED} ({self.why_not})"


def python_paths() -> list[Path]:
    """The folders the worker and the kernel import from: the environment and the course package."""
    found = []
    for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
              Path(riverbank.__file__).resolve().parent):
        p = Path(p).resolve()
        if p.exists() and p not in found and not any(p.is_relative_to(q) for q in found):
            found = [q for q in found if not q.is_relative_to(p)] + [p]
    return found


def bwrap_command(notebook: Path, privileged: bool) -> list[str]:
    """The bwrap command line that runs a command in a sandbox holding the notebook at ``NOTEBOOK``."""
    cmd = [shutil.which("bwrap") or "bwrap", "--die-with-parent", "--new-session",
           "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
           "--hostname", "riverbank"]
    if privileged:
        # Root: no user namespace; the worker keeps what it needs to start the kernel as another user.
        cmd += ["--cap-drop", "ALL"] + [a for cap in ("SETUID", "SETGID", "CHOWN", "KILL", "DAC_OVERRIDE", "FOWNER")
                                        for a in ("--cap-add", f"CAP_{cap}")]
    else:
        cmd += ["--unshare-user", "--disable-userns"]
    for path in _SYSTEM:
        if os.path.islink(path):
            cmd += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            cmd += ["--ro-bind", path, path]
    # The in-memory mounts come first, so that a bind below them (an environment under /tmp,
    # as in a clone there) is not hidden by them.
    cmd += ["--proc", "/proc", "--dev", "/dev",
            "--perms", "1777", "--size", str(SHM_BYTES), "--tmpfs", "/dev/shm",
            "--perms", "1777", "--size", str(TMP_BYTES), "--tmpfs", "/tmp"]
    made: set[str] = {"/proc", "/dev", "/dev/shm", "/tmp"}

    def parents(path: str) -> list[str]:
        # bwrap would make a bind's missing parent folders mode 700, which the kernel's user
        # could not enter; make them 755 first.
        out = []
        for parent in reversed(Path(path).parents[:-1]):
            if str(parent) not in made and not any(str(parent) == s or str(parent).startswith(s + "/")
                                                    for s in _SYSTEM):
                made.add(str(parent))
                out += ["--perms", "0755", "--dir", str(parent)]
        return out

    for path in _ETC:
        if os.path.exists(path):
            cmd += parents(path) + ["--ro-bind", path, path]
    for path in python_paths():
        cmd += parents(str(path)) + ["--ro-bind", str(path), str(path)]
    cmd += [*parents(NOTEBOOK), "--ro-bind", str(notebook), NOTEBOOK,
            "--remount-ro", "/", "--chdir", "/tmp",
            "--setenv", IN_SANDBOX_ENV, "root" if privileged else "user"]
    return cmd


def sandbox_env() -> dict[str, str]:
    """The environment inside: a short, fixed list, so that nothing of the instructor's leaks in."""
    env = {k: os.environ[k] for k in _KEPT if k in os.environ}
    env.update(PATH=os.pathsep.join([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]),
               HOME="/tmp/home", USER="learner", LOGNAME="learner", TMPDIR="/tmp",
               PYTHONDONTWRITEBYTECODE="1", PYTHONNOUSERSITE="1")
    return env


def kernel_user() -> tuple[int, int] | None:
    """The uid and gid the kernel runs as when the grader is root: random, above any real user's."""
    if os.geteuid() != 0:
        return None
    uid = 2_000_000_000 + secrets.randbelow(100_000_000)
    return uid, uid


@functools.lru_cache(maxsize=None)
def probe() -> str | None:
    """None if a sandbox runs here, else why not (short enough for the gradebook)."""
    if not sys.platform.startswith("linux"):
        return f"bubblewrap needs Linux; this is {sys.platform}"
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed; on Debian or Ubuntu: apt-get install bubblewrap"
    import tempfile

    with tempfile.TemporaryDirectory(prefix="riverbank-probe-") as folder:
        notebook = Path(folder) / "probe.ipynb"
        notebook.write_text("{}", encoding="utf-8")
        # What the worker needs, found without importing PyTorch (that alone takes a second).
        code = ("import importlib.util, os, nbclient, ipykernel; assert importlib.util.find_spec('riverbank.grading'); "
                f"open({NOTEBOOK!r}).read(); open('/tmp/w', 'w').write('x'); print(os.getpid())")
        cmd = bwrap_command(notebook, os.geteuid() == 0) + ["--", sys.executable, "-c", code]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=sandbox_env())
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"bubblewrap could not start ({type(error).__name__})"
    if done.returncode != 0 or done.stdout.strip() not in {"1", "2"}:
        last = next((s for s in reversed(done.stderr.splitlines()) if s.strip()), f"exit code {done.returncode}")
        return f"bubblewrap failed here: {last[:160]}"
    return None


def choose(mode: str) -> Isolation:
    """The isolation for ``--sandbox MODE``; raises SandboxUnavailable for "required" without one."""
    if mode not in MODES:
        raise ValueError(f"--sandbox must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "off":
        return Isolation(False, "--sandbox off")
    why = probe()
    if why is None:
        return Isolation(True)
    if mode == "required":
        raise SandboxUnavailable(why)
    return Isolation(False, why)
