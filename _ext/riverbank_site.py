"""Sphinx extension that makes the built site self-contained and fixes what the browser tests found.

Loaded from _config.yml (`sphinx: local_extensions`). The committed notebooks are not changed:
their outputs keep the CDN URLs that Colab and Jupyter need, and this extension rewrites them in
the HTML pages only.

- Serves _ext/static/ (the files `make vendor` fetched from npm, plus site.css) as _static/.
- Rewrites bertviz's CDN URLs (require.js, and d3 and jquery in its `require.config`) to the
  vendored copies, relative to each page, so the site works under any URL prefix.
- Rewrites jupyterquiz's fallback MathJax URL to the vendored MathJax, and the Font Awesome 4
  stylesheet of matplotlib's animations to a vendored copy.
- Defines the MyST substitution `{{ repository_url }}` from _config.yml's repository URL.
- Names the sidebar's expand/collapse toggles, matplotlib animations' frame sliders, and
  (site.js) jupyterquiz's answer boxes.
- Gives bertviz's unlabelled `<select>` menus an accessible name (axe rule `select-name`).
- Removes duplicated inline scripts: sphinx-thebe's `const THEBE_JS_URL = ...` is added twice by
  Sphinx 7.4, and the second copy throws a SyntaxError on every page.
- Links the first use of each glossary term on every chapter page to its definition (the
  notebooks stay plain Markdown, so Colab shows no MyST roles), with the definition's first
  sentence as the link's title.
- Substitutes `{{ repository_url }}` inside code blocks of Markdown pages too (MyST does it only
  in running text), so the clone command names the real repository.
- Replaces the theme's Font Awesome 6 (a 1.5 MB script that turns each icon into an SVG, a
  0.1 MB stylesheet and 0.3 MB of preloaded web fonts, on every page) with the few icons a page
  shows, as inline SVG taken from that same script at build time.
- Leaves MathJax out of pages without a formula (the theme loads it on every page).
- Marks printed tables (`<pre class="columns">`), which site.css keeps unwrapped.
- Lists every external link of the book, with the pages that use it, in _build/external-links.txt.
- Fails the build (a warning, an error under -W) if a page still loads a script, stylesheet or
  font from another host, or if _static/npm/ is missing or stale.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

from docutils import nodes
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.errors import ExtensionError
from sphinx.util import logging

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
VENDOR_SPEC = HERE / "vendor.json"

# CDN URL (a regex) -> vendored file under _static/. `{js}` marks URLs that require.js takes
# without their .js suffix (require.config paths).
REWRITES = [
    (r"https://cdnjs\.cloudflare\.com/ajax/libs/require\.js/[\d.]+/require(?:\.min)?\.js", "npm/requirejs/require.js"),
    (r"https://cdnjs\.cloudflare\.com/ajax/libs/d3/5\.7\.0/d3(?:\.min)?(?=['\"])", "npm/d3/d3.min{js}"),
    (r"https://(?:cdnjs\.cloudflare\.com/ajax/libs|ajax\.googleapis\.com/ajax/libs)/jquery/[\d.]+/jquery(?:\.min)?(?=['\"])",
     "npm/jquery/jquery.min{js}"),
    # matplotlib's JavaScript animations (Animation.to_jshtml) style their buttons with Font Awesome 4.
    (r"https://maxcdn\.bootstrapcdn\.com/font-awesome/4\.[\d.]+/css/font-awesome(?:\.min)?\.css", "npm/font-awesome/css/font-awesome.min.css"),
    # jupyterquiz injects MathJax from a CDN when it finds MathJax configured but not yet started.
    (r"https://cdn\.jsdelivr\.net/npm/mathjax@3/es5/tex-(?:svg|chtml|mml-chtml)\.js", "npm/mathjax/tex-mml-chtml.js"),
]

# `Layer: <select id="layer">` -> the same select with aria-label="Layer".
UNLABELLED_SELECT = re.compile(r"(?P<label>[A-Z][\w ]*?):\s*<select (?![^>]*aria-label)")

# The sidebar's expand/collapse toggle is a <summary> holding only an icon (axe: summary-name).
UNNAMED_TOGGLE = '<summary><span class="toctree-toggle" role="presentation">'
NAMED_TOGGLE = '<summary aria-label="Show or hide the pages in this section"><span class="toctree-toggle" role="presentation">'

EXTERNAL_LINK = re.compile(r'<a [^>]*href="(https?://[^"]+)"')

# The frame slider of matplotlib's JavaScript animations has no label (axe: label, critical).
ANIMATION_SLIDER = re.compile(r'<input (?=[^>]*id="_anim_slider)(?![^>]*aria-label)')

# What may not appear in a built page: a script, stylesheet or font loaded from another host.
THIRD_PARTY = re.compile(
    r"<script[^>]+src=\"(https?:)?//|<link[^>]+rel=\"(stylesheet|preload)\"[^>]+href=\"(https?:)?//"
    r"|<link[^>]+href=\"(https?:)?//[^\"]+\"[^>]+rel=\"(stylesheet|preload)\"|require\.config\([^)]*https?://",
    re.S,
)


# The theme's Font Awesome 6: its script, its stylesheet and the preloads of its web fonts.
FONTAWESOME_ASSETS = re.compile(r'<(?:script|link)[^>]+_static/vendor/fontawesome/[\d.]+/[^>]*>(?:</script>)?\s*')
# An icon as the theme writes it: <i class="fa-solid fa-bars"></i> (also fas/fab/far, <span>).
FA6_ICON = re.compile(r'<(i|span) class="([^"]*?\b(fa-solid|fas|fa-brands|fab|fa-regular|far)\b[^"]*)"([^>]*)></\1>')
STYLE_OF = {"fa-solid": "fas", "fas": "fas", "fa-brands": "fab", "fab": "fab", "fa-regular": "far", "far": "far"}
# In all.min.js each style's icons are an object literal `name:[width,height,[aliases],"unicode","path"]`
# followed by d("fab",p)-style registration.
FA6_ENTRY = re.compile(r'(?:"([\w-]+)"|([\w$]+)):\[(\d+),(\d+),\[([^\]]*)\],"[0-9a-f]*",("[^"]*"|\[[^\]]*\])\]')
FA6_STYLE_END = re.compile(r'\bd\("(fas|far|fab)",\w+\)')

# Glossary links go only into running text: never into headings, code, math, links or raw output.
NO_TERM_LINKS = (nodes.title, nodes.literal, nodes.literal_block, nodes.math, nodes.math_block,
                 nodes.reference, nodes.raw, nodes.caption, nodes.rubric, addnodes.pending_xref,
                 nodes.term, nodes.field_name, nodes.container)
GLOSSARY_DOC = "appendix/glossary"
# Terms that are also everyday words link only where the text means the term ("tokens whose
# values are tiny" is not attention's value): a pattern the text just before the match must end with.
ONLY_AFTER = {"value": re.compile(r"(?:keys?|queries) and $|keys?, and $", re.I)}
LINKED_DOCS = re.compile(r"^chapters/")


def vendored() -> bool:
    manifest = STATIC / "npm" / "manifest.json"
    return manifest.exists() and json.loads(manifest.read_text()) == json.loads(VENDOR_SPEC.read_text())["packages"]


def config_inited(app: Sphinx, config) -> None:
    if not vendored():
        raise ExtensionError("_ext/static/npm/ is missing or out of date: run `make vendor` "
                             "(it fetches MathJax, require.js, d3, jquery and Font Awesome 4 from npm)")
    if config.riverbank_edition not in ("full", "class"):
        raise ExtensionError(f"riverbank_edition must be 'full' or 'class', not {config.riverbank_edition!r}")
    if config.riverbank_edition == "full":
        app.tags.add("solutions")
    config.html_static_path.append(str(STATIC))
    # Pages name the repository through {{ repository_url }}, so _config.yml stays its one source.
    url = (config.html_theme_options or {}).get("repository_url", "")
    config.myst_substitutions = {**(config.myst_substitutions or {}), "repository_url": url}


def source_read(app: Sphinx, docname: str, source: list) -> None:
    url = (app.config.html_theme_options or {}).get("repository_url", "")
    if url and str(app.env.doc2path(docname)).endswith(".md"):
        source[0] = source[0].replace("{{ repository_url }}", url)


def glossary_terms(env) -> dict[str, tuple[str, str]]:
    """lower-case term -> (its label in the glossary, the first sentence of its definition)."""
    terms = {}
    doctree = env.get_doctree(GLOSSARY_DOC) if GLOSSARY_DOC in env.all_docs else None
    if doctree is None:
        return terms
    for item in doctree.findall(nodes.definition_list_item):
        for term in item.findall(nodes.term):
            if term["ids"]:
                definition = item.next_node(nodes.definition)
                text = definition.astext().replace("\n", " ") if definition is not None else ""
                first = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
                terms[term.astext().strip().lower()] = (term["ids"][0], first)
    return terms


def term_pattern(terms) -> re.Pattern | None:
    if not terms:
        return None
    # Longest first, so "attention weight" wins over "attention"; plurals and "-s" forms match.
    names = sorted(terms, key=len, reverse=True)
    return re.compile(r"(?<![\w-])(" + "|".join(re.escape(n) for n in names) + r")(?:s|es)?(?![\w-])", re.I)


def link_glossary_terms(app: Sphinx, doctree, docname: str) -> None:
    """The first use of each glossary term on a chapter page links to its definition."""
    if app.builder.format != "html" or not LINKED_DOCS.match(docname):
        return
    # Read once per build (kept on the app, not the pickled environment, so it is never stale).
    if not hasattr(app, "riverbank_terms"):
        app.riverbank_terms = glossary_terms(app.env)
    terms = app.riverbank_terms
    pattern = term_pattern(terms)
    if pattern is None:
        return
    target = app.builder.get_relative_uri(docname, GLOSSARY_DOC)
    done: set[str] = set()
    for text in list(doctree.findall(nodes.Text)):
        parent = text.parent
        if parent is None or not isinstance(parent, (nodes.paragraph, nodes.emphasis, nodes.strong)):
            continue
        ancestor, blocked = parent, False
        while ancestor is not None:
            if isinstance(ancestor, NO_TERM_LINKS) or "cell_output" in ancestor.get("classes", []):
                blocked = True
                break
            ancestor = ancestor.parent
        if blocked:
            continue
        value, pieces, last = str(text), [], 0
        for match in pattern.finditer(value):
            key = match.group(1).lower()
            if key in done or (key in ONLY_AFTER and not ONLY_AFTER[key].search(value[:match.start()])):
                continue
            done.add(key)
            label, definition = terms[key]
            pieces.append(nodes.Text(value[last:match.start()]))
            link = nodes.reference("", "", nodes.Text(match.group(0)), refuri=f"{target}#{label}",
                                   reftitle=definition, classes=["glossary-link"], internal=True)
            pieces.append(link)
            last = match.end()
        if pieces:
            pieces.append(nodes.Text(value[last:]))
            parent.replace(text, pieces)


PRE = re.compile(r"<pre>(.*?)</pre>", re.S)
ALIGNED = re.compile(r"\S {2,}\S")
TABLE_WIDTH = 77  # characters that fit an output box at a 1280 px window; wider tables still wrap


def mark_printed_tables(body: str) -> str:
    """`<pre class="columns">` for printed output whose lines line up in columns (two or more lines
    with a run of spaces inside them) that fits a desktop column, so that site.css keeps those
    lines whole and a phone scrolls them instead of wrapping them apart."""
    def mark(match):
        text = html.unescape(re.sub(r"<[^>]+>", "", match.group(1)))
        lines = text.splitlines()
        aligned = sum(1 for line in lines if ALIGNED.search(line.strip()))
        fits = max((len(line) for line in lines), default=0) <= TABLE_WIDTH
        return f'<pre class="columns">{match.group(1)}</pre>' if aligned >= 2 and fits else match.group(0)
    return PRE.sub(mark, body)


def rewrite_body(body: str, pathto) -> str:
    for pattern, target in REWRITES:
        suffix_free = "{js}" in target
        url = pathto("_static/" + target.replace("{js}", ".js"), 1)
        body = re.sub(pattern, url[:-3] if suffix_free else url, body)
    body = ANIMATION_SLIDER.sub('<input aria-label="Animation frame" ', mark_printed_tables(body))
    return UNLABELLED_SELECT.sub(lambda m: f'{m.group(0)}aria-label="{m.group("label").strip()}" ', body)


def dedupe_scripts(scripts: list) -> list:
    seen, kept = set(), []
    for script in scripts:
        # An inline script is registered once with filename None and again with '' (Sphinx 7.4).
        key = (str(getattr(script, "filename", script) or ""),
               tuple(sorted((k, str(v)) for k, v in getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            kept.append(script)
    return kept


def page_context(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    if "body" in context:
        context["body"] = rewrite_body(context["body"], context["pathto"])
    if "script_files" in context:
        context["script_files"] = dedupe_scripts(context["script_files"])
        if not needs_mathjax(doctree, context.get("body", "")):
            context["script_files"] = [s for s in context["script_files"]
                                      if "mathjax" not in str(getattr(s, "filename", s) or "")]


def needs_mathjax(doctree, body: str) -> bool:
    """MathJax (1.2 MB) only where there is a formula: the theme loads it on every page. A quiz
    typesets its own formulas and loads MathJax itself when it has some."""
    if doctree is None:
        return False
    if any(True for _ in doctree.findall(lambda n: isinstance(n, (nodes.math, nodes.math_block)))):
        return True
    return bool(re.search(r"\\\(|\\\[|\$\$", body)) and "jupyterquiz" not in body


def fontawesome_icons(script: str) -> dict[tuple[str, str], tuple[int, int, str]]:
    """(style, name) -> (width, height, SVG path) for every icon in Font Awesome 6's all.min.js."""
    icons, start = {}, 0
    for end in FA6_STYLE_END.finditer(script):
        for m in FA6_ENTRY.finditer(script, start, end.start()):
            name, width, height, aliases, path = m.group(1) or m.group(2), int(m.group(3)), int(m.group(4)), m.group(5), m.group(6)
            if path.startswith("["):  # duotone: two paths, none used here; keep the primary
                path = re.findall(r'"([^"]*)"', path)[-1] if re.findall(r'"([^"]*)"', path) else ""
            else:
                path = path[1:-1]
            for alias in [name] + re.findall(r'"([\w-]+)"', aliases):
                icons.setdefault((end.group(1), alias), (width, height, path))
        start = end.end()
    return icons


def inline_icons(text: str, icons) -> tuple[str, set[str]]:
    """Each Font Awesome 6 icon element gets its SVG inside; returns the page and the names missing."""
    missing: set[str] = set()

    def svg(match):
        tag, classes, style, rest = match.group(1), match.group(2), STYLE_OF[match.group(3)], match.group(4)
        names = [c[3:] for c in classes.split() if c.startswith("fa-") and c not in STYLE_OF
                 and (style, c[3:]) in icons]
        if not names:
            missing.add(classes)
            return match.group(0)
        width, height, path = icons[(style, names[0])]
        return (f'<{tag} class="{classes} rb-icon"{rest}><svg class="svg-inline--fa" aria-hidden="true" '
                f'focusable="false" role="img" viewBox="0 0 {width} {height}"><path fill="currentColor" '
                f'd="{path}"/></svg></{tag}>')
    return FA6_ICON.sub(svg, text), missing


def build_finished(app: Sphinx, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    out = Path(app.outdir)
    scripts = sorted(out.glob("_static/vendor/fontawesome/*/js/all.min.js"))
    icons = fontawesome_icons(scripts[-1].read_text(encoding="utf-8")) if scripts else {}
    if scripts and len(icons) < 1000:
        raise ExtensionError(f"read only {len(icons)} icons from {scripts[-1]}: has Font Awesome's format changed?")
    links: dict[str, set[str]] = {}
    for page in sorted(out.rglob("*.html")):
        text = page.read_text(encoding="utf-8")
        if page.relative_to(out).parts[0] not in ("_static", "_sources"):
            for url in EXTERNAL_LINK.findall(text):
                links.setdefault(html.unescape(url), set()).add(page.relative_to(out).as_posix())
        labelled = text.replace(UNNAMED_TOGGLE, NAMED_TOGGLE)
        if icons:
            labelled, missing = inline_icons(FONTAWESOME_ASSETS.sub("", labelled), icons)
            if missing:
                logger.warning("%s: no Font Awesome icon for %s", page.relative_to(out), sorted(missing),
                               type="riverbank", subtype="icons")
        if labelled != text:
            page.write_text(labelled, encoding="utf-8")
        match = THIRD_PARTY.search(labelled)
        if match:
            logger.warning("%s loads from another host: %s", page.relative_to(out), match.group(0)[:200],
                           type="riverbank", subtype="third-party")
    # Every external link in one list, for `make linkcheck` (which CI cannot run: no network).
    (out.parent / "external-links.txt").write_text(
        "".join(f"{url}\t{' '.join(sorted(pages))}\n" for url, pages in sorted(links.items())), encoding="utf-8")


def setup(app: Sphinx) -> dict:
    # "class" (make book EDITION=class) leaves the solutions out: no pages (its own table of
    # contents) and no sentence about them (```{only} solutions``` blocks).
    app.add_config_value("riverbank_edition", "full", "env", [str])
    app.connect("config-inited", config_inited)
    app.connect("source-read", source_read)
    app.connect("doctree-resolved", link_glossary_terms)
    app.connect("html-page-context", page_context, priority=900)
    app.connect("build-finished", build_finished)
    app.add_css_file("site.css")
    app.add_js_file("site.js")
    return {"parallel_read_safe": True, "parallel_write_safe": True}
