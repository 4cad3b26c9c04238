"""The class edition of the site (``make book EDITION=class``): every page but the solutions, and
no trace of them; the default build keeps them."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from test_book import HTML, ROOT, toc_files

CLASS = Path(os.environ.get("RIVERBANK_CLASS_SITE", ROOT / "_build" / "class" / "_build" / "html"))
SOLUTIONS = [f for f in toc_files() if f.startswith("solutions/")]
OTHERS = [f for f in toc_files() if not f.startswith("solutions/")]


@pytest.fixture(scope="module")
def pages() -> dict[str, str]:
    assert (CLASS / "index.html").exists(), f"{CLASS} was not built: run `make book EDITION=class`"
    return {p.relative_to(CLASS).as_posix(): p.read_text(encoding="utf-8", errors="replace")
            for p in sorted(CLASS.rglob("*.html"))}


def test_the_solutions_are_in_the_toc_this_checks(pages):
    notebooks = sorted(p.stem for p in (ROOT / "solutions").glob("*.ipynb"))  # every one, 10 with Part III
    assert sorted(f.removeprefix("solutions/") for f in SOLUTIONS) == notebooks and len(notebooks) == 10
    assert len(OTHERS) > len(SOLUTIONS)


@pytest.mark.parametrize("page", OTHERS)
def test_every_other_page_is_in_the_class_edition(pages, page):
    assert f"{page}.html" in pages


def test_no_solutions_page_or_file_is_published(pages):
    published = [p.relative_to(CLASS).as_posix() for p in CLASS.rglob("*") if p.is_file()]
    assert [p for p in published if "solutions/" in p or p.startswith("solutions")] == []


def test_no_page_links_to_or_mentions_the_solutions(pages):
    for name, html in pages.items():
        assert not re.search(r'href="[^"]*solutions/', html), name
        text = re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S))
        assert "Solutions" not in text, f"{name} names the Solutions"
    search = (CLASS / "searchindex.js").read_text(encoding="utf-8")
    assert "solutions/" not in search


def test_the_default_edition_keeps_the_solutions_and_says_where_they_are():
    for page in SOLUTIONS:
        assert (HTML / f"{page}.html").exists(), page
    how_to = (HTML / "appendix" / "how_to_use.html").read_text(encoding="utf-8")
    assert "part shows the same notebooks with a reference solution" in how_to
    class_how_to = (CLASS / "appendix" / "how_to_use.html").read_text(encoding="utf-8")
    assert "reference solution in each exercise" not in class_how_to
