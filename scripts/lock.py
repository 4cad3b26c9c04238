"""Write requirements.lock: every package the course installs, at one version, with its hashes.

Run by `make lock` after a change to requirements.txt. pip-compile (pip-tools, in its own virtual
environment .venv-lock so that it does not enter the locked set) resolves requirements.txt and
records the sha256 of every file of each chosen version. torch is then taken out of the lock:
requirements.txt pins it, and `make install` installs it on its own, because the file that pin
selects differs between machines (a CPU wheel from local disk here, a CUDA wheel from PyPI on a
GPU laptop) and a hash can name only one of them. Its dependencies stay locked.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
TOOLS = ROOT / ".venv-lock"
PIP_TOOLS = "pip-tools==7.6.2"
UNLOCKED = {"torch"}  # installed from requirements.txt's pin by `make install`, see above

HEADER = """\
# Every package `make install` installs, pinned with its hashes. Generated from requirements.txt by
# `make lock` (scripts/lock.py, pip-compile --generate-hashes); do not edit by hand.
# torch is not here: requirements.txt pins it and `make install` installs it on its own, because
# the file that pin selects differs between machines (scripts/lock.py says why).
# tests/test_lock.py checks that this file agrees with requirements.txt and with the installed .venv.
"""


def drop(lock_text: str, names: set[str]) -> str:
    """Remove whole entries (the `name==version` line, its hashes and its `# via` comments)."""
    entries = re.split(r"(?m)^(?=[A-Za-z0-9])", lock_text)
    kept = [e for e in entries if not e or e.split("==", 1)[0].strip().lower() not in names]
    return "".join(kept)


def main() -> int:
    python = TOOLS / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(TOOLS)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", PIP_TOOLS], check=True)
    out = ROOT / "requirements.lock.new"
    subprocess.run([str(TOOLS / "bin" / "pip-compile"), "--quiet", "--generate-hashes", "--allow-unsafe",
                    "--strip-extras", "--no-header", "--no-emit-index-url", "--no-emit-find-links",
                    "--output-file", str(out),
                    str(ROOT / "requirements.txt")], check=True, cwd=ROOT)
    body = drop(out.read_text(), UNLOCKED)
    out.unlink()
    LOCK.write_text(HEADER + body)
    print(f"wrote {LOCK.name}: {body.count('==')} packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
