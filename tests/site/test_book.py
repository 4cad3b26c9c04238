"""The pages around the chapters keep up with the chapters (run after `make book`)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HTML = Path(os.environ.get("RIVERBANK_SITE", ROOT / "_build" / "html"))


def toc_files() -> list[str]:
    def walk(entry):
        if isinstance(entry, dict):
            if "file" in entry:
                yield entry["file"]
            for value in entry.values():
                yield from walk(value) if isinstance(value, (list, dict)) else ()
        elif isinstance(entry, list):
            for item in entry:
                yield from walk(item)

    return list(walk(yaml.safe_load((ROOT / "_toc.yml").read_text())))


CHAPTERS = [f for f in toc_files() if f.startswith("chapters/")]


def built(page: str) -> str:
    path = HTML / f"{page}.html"
    assert path.exists(), f"{path} was not built: run `make book` first"
    return path.read_text(encoding="utf-8")


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_landing_page_links_every_chapter_in_the_book(chapter):
    assert f'href="{chapter}.html"' in built("intro"), "add the chapter to the chapter map in intro.md"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_references_page_lists_every_paper_a_chapter_cites(chapter):
    papers = set(re.findall(r'href="(https://(?:arxiv\.org/abs|doi\.org)/[^"]+)"', built(chapter)))
    missing = papers - set(re.findall(r'href="([^"]+)"', built("appendix/references")))
    assert not missing, "add these to appendix/references.md"


def test_external_links_are_listed_in_one_place():
    listed = (HTML.parent / "external-links.txt").read_text().splitlines()
    urls = {line.split("\t")[0] for line in listed}
    assert "https://arxiv.org/abs/1706.03762" in urls
    assert all(url.startswith(("http://", "https://")) for url in urls)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_chapter_has_a_self_check_quiz_in_the_book(chapter):
    assert "quizzes/" + chapter.removeprefix("chapters/") in toc_files(), "write quizzes/<chapter>.ipynb and list it in _toc.yml"


def test_the_last_chapters_next_button_leads_to_the_exercises_overview():
    last = CHAPTERS[-1]
    next_link = re.search(r'<a class="right-next"\s+href="([^"]+)"', built(last))
    assert next_link and next_link.group(1) == "../exercises/index.html", (
        "after the last chapter, Next must open the exercises' overview, not one chapter's exercises")
    overview = built("exercises/index")
    for chapter in CHAPTERS:
        assert f'href="{chapter.replace("chapters/", "")}.html"' in overview, f"the overview lists {chapter}'s exercises"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_each_chapter_links_to_its_own_exercises(chapter):
    exercises = chapter.replace("chapters/", "../exercises/")
    assert f'href="{exercises}.html"' in built(chapter), "make the chapter's closing 'Next: the exercises' a link"
