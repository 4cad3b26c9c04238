"""The built website (run after `make book`): every notebook has a page with Colab and download links,
figures with alt text, and the stored outputs a reader relies on."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
NOTEBOOKS = sorted(p.relative_to(ROOT) for d in ("chapters", "solutions", "exercises") for p in (ROOT / d).glob("*.ipynb"))


class Page(HTMLParser):
    def __init__(self, path: Path):
        super().__init__()
        self.links: list[str] = []
        self.images: list[dict] = []
        self.text: list[str] = []
        self.feed(path.read_text(encoding="utf-8"))

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
        if tag == "img":
            self.images.append(attrs)

    def handle_data(self, data):
        self.text.append(data)


def page(notebook: Path) -> Page:
    path = HTML / notebook.with_suffix(".html")
    assert path.exists(), f"{path} was not built: run `make book` first"
    return Page(path)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=str)
def test_page_links_to_colab_and_to_the_notebook_download(notebook):
    repo = CONFIG["repository"]["url"].removeprefix("https://github.com/")
    colab = f"https://colab.research.google.com/github/{repo}/blob/{CONFIG['repository']['branch']}/{notebook.as_posix()}"
    links = page(notebook).links
    assert colab in links
    assert any(link.endswith(f"_sources/{notebook.as_posix()}") for link in links)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=str)
def test_figures_have_alt_text_and_exist(notebook):
    for img in page(notebook).images:
        assert img.get("alt", "").strip(), f"an image without alt text: {img.get('src')}"
        src = img.get("src", "")  # an animation's <img> gets its frames from JavaScript
        if src and not src.startswith(("http", "data:")):
            assert (HTML / notebook.parent / src).resolve().exists(), src


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=str)
def test_no_error_output_on_the_page(notebook):
    text = "".join(page(notebook).text)
    assert "Traceback (most recent call last)" not in text
    # The grader's feedback may quote a learner's error ("your function raised RuntimeError: ...").
    assert not re.search(r"(?<!raised )\b\w+Error\b: ", text.replace("NotImplementedError", ""))


def test_chapter_one_shows_its_figures():
    assert sum(1 for img in page(Path("chapters/01_bank_by_the_river.ipynb")).images if "_images/" in img.get("src", "")) >= 2


def test_exercise_page_shows_named_feedback_and_not_attempted():
    text = "".join(page(Path("exercises/01_bank_by_the_river.ipynb")).text)
    assert "Likely mistake: the scores are not divided by √d_k." in text
    assert "not attempted" in text


def test_footer_shows_the_configured_copyright():
    assert f"Copyright {CONFIG['copyright']}" in "".join(Page(HTML / "intro.html").text)
