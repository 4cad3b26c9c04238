"""The oldest versions the course works with, and a plain message when an installed one is older.

``import riverbank`` (which every notebook does first) calls ``warn_if_too_old()``: a learner whose
environment has, say, an older torch reads what to upgrade and why, at the top of the notebook,
instead of meeting a failed check further down. The floors equal pyproject.toml's
(tests/test_colab_versions.py checks it).
"""

from __future__ import annotations

import importlib.metadata
import re
import sys

# package: (floor, what needs it)
FLOORS = {
    "torch": ("2.5", "attention that returns zeros for a fully masked row, chapter 2"),
    "transformers": ("4.43", "LlamaRotaryEmbedding(config), chapter 8"),
    "matplotlib": ("3.5", 'plt.subplots(layout="constrained"), every figure'),
    "ipywidgets": ("7.7", "the sliders, chapters 3 and 5"),
}


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version.split("+")[0])[:3])


def too_old() -> list[str]:
    """One line per installed package older than its floor (packages not installed are skipped)."""
    found = []
    for name, (floor, why) in FLOORS.items():
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if _release(have) < _release(floor):
            found.append(f"{name} {have} is older than {floor}, which the course needs ({why})")
    return found


def warn_if_too_old() -> None:
    problems = too_old()
    if not problems:
        return
    names = " ".join(f"'{p.split()[0]}>={FLOORS[p.split()[0]][0]}'" for p in problems)
    print("riverbank: " + "; ".join(problems) + ".\n"
          f"Upgrade with:  pip install -U {names}\n"
          "then restart the kernel (in Colab: Runtime > Restart session) and run the notebook again.",
          file=sys.stderr)
