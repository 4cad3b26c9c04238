"""Learner pages speak to learners: no private names for the source lessons, no test-harness talk.

The course follows five public lessons. Learners have never seen the files the maintainers keep
them in, so a page names a lesson by its public title, never as a "seed"; the word is left to
random seeds. Nor does a page talk about the regression test or the machine that built it: that is
the README's business.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted(
    [p for folder in ("chapters", "quizzes", "exercises", "solutions") for p in (ROOT / folder).glob("*.ipynb")]
    + sorted((ROOT / "appendix").glob("*.md")) + sorted((ROOT / "exercises").glob("*.md")) + [ROOT / "intro.md"]
)

# In code, these identifiers are random seeds; any other name containing "seed" is not.
SEED_NAMES = {"seed", "seeds", "manual_seed", "random_seed", "initial_seed", "SEED"}
# In prose and printed text, "seed" must be a random seed: "random seed(s)", or code in backticks.
PROSE_SEED = re.compile(r"seed", re.I)
RANDOM_SEED = re.compile(r"(random|fixed) seeds?\b|`[^`]*seed[^`]*`|manual_seed", re.I)
HARNESS = re.compile(r"regression test|nbval|load average|getloadavg|\bCI\b|test harness|build machine", re.I)


def texts(path: Path):
    """(kind, text) for what a reader sees or runs: prose, code and printed outputs, never images."""
    if path.suffix == ".md":
        yield "prose", path.read_text(encoding="utf-8")
        return
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type == "markdown":
            yield "prose", cell.source
        elif cell.cell_type == "code":
            yield "code", cell.source
            for out in cell.get("outputs", []):
                if out.get("output_type") == "stream":
                    yield "prose", out.get("text", "")
                for mime in ("text/plain", "text/markdown"):
                    if mime in out.get("data", {}):
                        yield "prose", out["data"][mime]


def stray_seeds(kind: str, text: str) -> list[str]:
    if kind == "code":
        names = set(re.findall(r"\w*seed\w*", text, re.I)) - SEED_NAMES
        comments = [m for line in text.splitlines() if "#" in line for m in stray_seeds("prose", line.split("#", 1)[1])]
        return sorted(names) + comments
    without = RANDOM_SEED.sub("", text)
    return [without[max(0, m.start() - 40):m.end() + 40] for m in PROSE_SEED.finditer(without)]


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_the_word_seed_means_only_a_random_seed(path):
    found = [hit for kind, text in texts(path) for hit in stray_seeds(kind, text)]
    assert not found, ("name the lesson by its public title (../shared/seeds/SOURCES.md) or write "
                       f"'a common claim is', and rename the variables: {found}")


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_talk_of_the_test_harness_or_the_build_machine(path):
    found = [m.group(0) for kind, text in texts(path) for m in HARNESS.finditer(text)]
    assert not found, f"keep this in the README, not on a learner page: {found}"


def test_the_checks_catch_what_they_are_for():
    assert stray_seeds("prose", "the seed lesson says") and stray_seeds("prose", "seed 004's mask")
    assert stray_seeds("code", "seed_scores = torch.tensor([1.0])")
    assert stray_seeds("code", "x = 1  # as the seed lesson has it")
    assert not stray_seeds("code", "torch.manual_seed(0)\ndef f(seed=0):\n    g.manual_seed(seed)")
    assert not stray_seeds("prose", "with the same random seeds, a fixed seed, and `torch.manual_seed(0)`")
    assert HARNESS.search("The regression test only checks") and HARNESS.search("load average 0.9")
