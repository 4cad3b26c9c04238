"""What the built pages' HTML holds (run after `make book`; RIVERBANK_SITE=DIR checks another build):
glossary links from the chapters, the icons, the favicon, MathJax only where it is needed, and the
repository's real URL in the install instructions."""

from __future__ import annotations

import os
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HTML = Path(os.environ.get("RIVERBANK_SITE", ROOT / "_build" / "html"))
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
# index.html only redirects to the root page.
PAGES = sorted(p for p in HTML.rglob("*.html") if p.relative_to(HTML).parts[0] not in ("_static", "_sources")
               and p.relative_to(HTML).as_posix() != "index.html")
CHAPTERS = sorted(HTML.glob("chapters/*.html"))
sys.path.insert(0, str(ROOT / "_ext"))
import riverbank_site  # noqa: E402


class Links(HTMLParser):
    """Glossary links, with the tags they sit in, and every id on the page."""

    def __init__(self, text: str):
        super().__init__()
        self.stack: list[str] = []
        self.glossary: list[tuple[str, str, tuple[str, ...]]] = []  # (href, text, enclosing tags)
        self.ids: set[str] = set()
        self._open: list | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and "glossary-link" in (attrs.get("class") or "").split():
            self._open = [attrs["href"], "", tuple(self.stack)]
        if tag not in ("br", "img", "input", "meta", "link", "hr", "source", "wbr"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag == "a" and self._open is not None:
            self.glossary.append(tuple(self._open))
            self._open = None
        while self.stack:
            if self.stack.pop() == tag:
                break

    def handle_data(self, data):
        if self._open is not None:
            self._open[1] += data


def test_the_book_was_built():
    assert CHAPTERS, f"no chapter pages in {HTML}: run `make book` first"


GLOSSARY = Links((HTML / "appendix" / "glossary.html").read_text(encoding="utf-8")) if CHAPTERS else None


@pytest.mark.parametrize("page", CHAPTERS, ids=lambda p: p.name)
def test_chapters_link_glossary_terms_to_their_definitions(page):
    links = Links(page.read_text(encoding="utf-8")).glossary
    assert len(links) >= 5, f"only {len(links)} glossary links"
    targets = [href.split("#")[1] for href, _, _ in links]
    assert len(targets) == len(set(targets)), "a term is linked more than once on the page"
    for href, text, tags in links:
        assert href.startswith("../appendix/glossary.html#"), href
        assert href.split("#")[1] in GLOSSARY.ids, f"{href} names no term in the glossary"
        assert not set(tags) & {"h1", "h2", "h3", "h4", "code", "pre", "a"}, f"{text!r} linked inside {tags}"


def test_glossary_links_find_plurals_and_skip_everyday_values():
    terms = {"attention weight": ("term-Attention-weight", ""), "attention": ("term-Attention", ""),
             "value": ("term-Value", "")}
    pattern = riverbank_site.term_pattern(terms)
    found = [m.group(0) for m in pattern.finditer("Attention weights come from attention; keys and values.")]
    assert found == ["Attention weights", "attention", "values"]
    text = "tokens whose values are tiny"
    m = pattern.search(text)
    assert m.group(0) == "values" and not riverbank_site.ONLY_AFTER["value"].search(text[:m.start()])
    assert riverbank_site.ONLY_AFTER["value"].search("queries, keys and ")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(HTML).as_posix())
def test_icons_are_inline_and_font_awesome_is_not_loaded(page):
    text = page.read_text(encoding="utf-8")
    assert "vendor/fontawesome" not in text, "the page still loads Font Awesome 6"
    for match in re.finditer(r'<(i|span) class="[^"]*\b(fa-solid|fas|fa-brands|fab|fa-regular|far)\b[^"]*"[^>]*>(.{0,20})', text):
        assert match.group(3).startswith("<svg"), f"an icon without its SVG: {match.group(0)[:80]}"


def test_icons_are_read_from_font_awesome():
    script = sorted(HTML.glob("_static/vendor/fontawesome/*/js/all.min.js"))
    assert script, "the theme's Font Awesome script is not in _static"
    icons = riverbank_site.fontawesome_icons(script[-1].read_text(encoding="utf-8"))
    assert icons[("fab", "github")][:2] == (496, 512)
    assert icons[("fas", "bars")][:2] == (448, 512) and icons[("fas", "navicon")] == icons[("fas", "bars")]
    assert icons[("fas", "magnifying-glass")][2].startswith("M")
    page, missing = riverbank_site.inline_icons('<i class="fa-solid fa-bars"></i><span class="fab fa-nothing"></span>', icons)
    assert page.startswith('<i class="fa-solid fa-bars rb-icon"><svg') and missing == {"fab fa-nothing"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(HTML).as_posix())
def test_every_page_has_the_favicon(page):
    match = re.search(r'<link rel="icon" href="([^"]+)"', page.read_text(encoding="utf-8"))
    assert match, "no favicon"
    assert (page.parent / match.group(1)).resolve().is_file()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(HTML).as_posix())
def test_mathjax_only_where_there_is_a_formula(page):
    text = page.read_text(encoding="utf-8")
    loads = "npm/mathjax/tex-mml-chtml.js" in text.split("</head>")[0]
    formulas = 'class="math' in text
    assert loads == formulas, "MathJax loaded without a formula" if loads else "a formula without MathJax"


def test_printed_tables_are_marked_and_prose_is_not():
    marked = riverbank_site.mark_printed_tables("<pre>method   N   time\nnaive  1024   0.1\n</pre><pre>a long  sentence</pre>")
    assert marked == '<pre class="columns">method   N   time\nnaive  1024   0.1\n</pre><pre>a long  sentence</pre>'
    wide = "<pre>" + "a  b" + " " * 80 + "c\nd  e\n</pre>"  # wider than a desktop column: it keeps wrapping
    assert riverbank_site.mark_printed_tables(wide) == wide


def test_how_to_use_names_the_repository():
    text = (HTML / "appendix" / "how_to_use.html").read_text(encoding="utf-8")
    plain = re.sub(r"<[^>]+>", "", text)
    assert f"git clone {CONFIG['repository']['url']} riverbank" in plain
    assert "the course repository>" not in plain and "{{" not in plain
