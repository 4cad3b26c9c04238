"""What a Colab runtime holds (scripts/colab/, Google's published lists) and whether installing the
course there would replace any of it. Used by scripts/colab_runs.py (``make colab``) and
tests/test_colab_versions.py."""

from __future__ import annotations

import importlib.metadata
import re
import urllib.parse
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

LISTS = Path(__file__).resolve().parent / "colab"
_WHEEL = re.compile(r"/([A-Za-z0-9_.]+)-([0-9][^-]*)-[^/]*\.whl")


def colab_versions(runtime: str = "cpu", folder: Path = LISTS) -> dict[str, str]:
    """Package (canonical name) -> version in Colab's ``runtime`` ("cpu" or "gpu") list.

    ``name==version`` lines as they are; ``name @ URL`` lines by the wheel's file name when the
    URL names a wheel (torch's), else left out (Google's own packages, built in the image)."""
    found = {}
    for line in (folder / f"pip-freeze.{runtime}.txt").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "==" in line:
            name, version = line.split("==", 1)
            found[canonicalize_name(name)] = version.strip()
        elif " @ " in line:
            name, url = line.split(" @ ", 1)
            wheel = _WHEEL.search(urllib.parse.unquote(url))
            if wheel:
                found[canonicalize_name(name)] = wheel.group(2)
    return found


def python_version(folder: Path = LISTS) -> str:
    text = (folder / "os-info-gpu.txt").read_text(encoding="utf-8")
    return re.search(r"^Python (\d+\.\d+\.\d+)", text, re.M).group(1)


def _environment() -> dict[str, str]:
    # Markers as Colab evaluates them: Linux, CPython 3.13, no extras.
    env = dict(default_environment())
    env.update(python_version="3.13", python_full_version="3.13.15", sys_platform="linux",
               platform_system="Linux", extra="")
    return env


def replacements(requirements: list[str], colab: dict[str, str], installed=importlib.metadata) -> list[str]:
    """Why installing ``requirements`` into Colab would replace one of its packages (empty if not).

    A requirement on a package Colab has must accept Colab's version. A package Colab lacks gets
    installed, so its own requirements are followed in turn, as this environment's metadata
    states them (its pinned version is the one installed there too)."""
    problems, seen = [], set()
    todo = [(r, "the course") for r in requirements]
    while todo:
        text, needed_by = todo.pop(0)
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(_environment()):
            continue
        name = canonicalize_name(req.name)
        if name in colab:
            have = Version(colab[name])
            if req.specifier and not req.specifier.contains(have, prereleases=True):
                problems.append(f"{needed_by} requires {req}, which would replace Colab's {req.name} {have}")
            continue
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = installed.requires(req.name) or []
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{req.name} ({needed_by}) is not installed here, so its requirements are unknown")
            continue
        todo += [(r, req.name) for r in requires]
    return problems


def unmet(package: str, colab: dict[str, str], installed=importlib.metadata) -> dict[str, str]:
    """The requirements of ``package`` as installed here that Colab's versions do not meet:
    canonical name -> the requirement (what a stand-in for Colab's own version drags along)."""
    found = {}
    for text in installed.requires(package) or []:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(_environment()):
            continue
        name = canonicalize_name(req.name)
        if name in colab and req.specifier and not req.specifier.contains(Version(colab[name]), prereleases=True):
            found[name] = str(req)
    return found
