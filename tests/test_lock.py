"""requirements.lock agrees with requirements.txt and with the installed environment.

`make lock` writes the lock from requirements.txt; `make install` installs it with --require-hashes.
These tests fail when someone changes a pin in requirements.txt and forgets `make lock`, edits the
lock by hand, or installs something into .venv that the lock does not hold.
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import lock  # noqa: E402

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.M)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, version in PIN.findall(text):
        assert canonical(name) not in found, f"{name} is pinned twice"
        found[canonical(name)] = version
    return found


def entries(text: str) -> dict[str, str]:
    """name -> the entry's whole text (its pin line, hashes and comments)."""
    return {canonical(e.split("==", 1)[0].strip()): e
            for e in re.split(r"(?m)^(?=[A-Za-z0-9])", text) if "==" in e.split("\n", 1)[0]}


REQUIREMENTS = pins((ROOT / "requirements.txt").read_text())
LOCK_TEXT = (ROOT / "requirements.lock").read_text()
LOCKED = pins(LOCK_TEXT)


def test_the_parsers_read_known_text():
    text = "a-b==1.0 \\\n    --hash=sha256:00\n    # via x\nC_d==2.0rc1 \\\n    --hash=sha256:11\n"
    assert pins(text) == {"a-b": "1.0", "c-d": "2.0rc1"}
    assert set(entries(text)) == {"a-b", "c-d"}
    assert lock.drop(text, {"a-b"}) == "C_d==2.0rc1 \\\n    --hash=sha256:11\n"
    with pytest.raises(AssertionError, match="twice"):
        pins("x==1\nX==2\n")


def test_every_direct_pin_is_in_the_lock_at_the_same_version():
    assert REQUIREMENTS, "requirements.txt pins nothing?"
    for name, version in REQUIREMENTS.items():
        if name in lock.UNLOCKED:
            assert name not in LOCKED, f"{name} is installed from requirements.txt and must not be in the lock"
            continue
        assert name in LOCKED, f"{name} is in requirements.txt but not in requirements.lock: run `make lock`"
        assert LOCKED[name] == version, (f"requirements.txt pins {name}=={version}, the lock {LOCKED[name]}: "
                                         "run `make lock`")


def test_every_requirement_is_pinned_exactly():
    lines = [line.split("#", 1)[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    loose = [line for line in lines if line and not PIN.match(line)]
    assert not loose, f"not pinned with ==: {loose}"


def test_every_locked_package_has_a_hash():
    bare = [name for name, entry in entries(LOCK_TEXT).items() if "--hash=sha256:" not in entry]
    assert not bare, f"no hash for {bare}"
    assert len(entries(LOCK_TEXT)) == len(LOCKED) > len(REQUIREMENTS)


def installed() -> dict[str, str]:
    return {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}


def test_the_installed_environment_is_the_lock():
    have = installed()
    wrong = {n: (v, have.get(n)) for n, v in LOCKED.items() if have.get(n) != v and n not in ("pip",)}
    assert not wrong, f"installed versions differ from the lock (name: (locked, installed)): {wrong}; run `make install`"
    extra = set(have) - set(LOCKED) - lock.UNLOCKED - {"pip", "riverbank"}
    assert not extra, f"installed but not in requirements.lock: {sorted(extra)}"
    assert have["torch"].split("+")[0] == REQUIREMENTS["torch"]
