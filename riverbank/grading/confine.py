"""Starting the learner's kernel inside the sandbox: ``python -I -S confine.py [--user UID:GID] -- CMD``.

Sets the limits that bound what the kernel can start, gives up root for UID:GID when asked (the
connection file is handed to that user first), forbids gaining privileges back, then runs CMD
(ipykernel) in its place. Runs only inside the sandbox (``isolation`` module), as a file and
with the standard library alone, so that starting it costs milliseconds.
"""

from __future__ import annotations

import ctypes
import os
import resource
import sys

PR_SET_NO_NEW_PRIVS = 38


def process_cap() -> int:
    """Processes and threads the kernel's user may have at once: enough for PyTorch's thread pools."""
    return 4 * (os.cpu_count() or 1) + 64


def _limit(which: int, value: int) -> None:
    hard = resource.getrlimit(which)[1]
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(which, (value, value))


def main(argv: list[str]) -> int:
    user = None
    if argv[:1] == ["--user"]:
        uid, gid = (int(x) for x in argv[1].split(":"))
        user, argv = (uid, gid), argv[2:]
    if argv[:1] != ["--"] or len(argv) < 2:
        print("usage: python -I -S confine.py [--user UID:GID] -- CMD ...", file=sys.stderr)
        return 2
    cmd = argv[1:]
    _limit(resource.RLIMIT_NPROC, process_cap())  # a fork bomb stops here
    _limit(resource.RLIMIT_CORE, 0)
    if user is not None:
        uid, gid = user
        if "-f" in cmd:  # ipykernel's connection file, written by the worker (root) with mode 600
            os.chown(cmd[cmd.index("-f") + 1], uid, gid)
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        if os.getuid() != uid or os.geteuid() != uid:
            raise SystemExit("could not give up root")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise SystemExit("prctl(PR_SET_NO_NEW_PRIVS) failed")
    os.execv(cmd[0], cmd)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
