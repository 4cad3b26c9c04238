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
- Lists every external link of the book, with the pages that use it, in _build/external-links.txt.
- Fails the build (a warning, an error under -W) if a page still loads a script, stylesheet or
  font from another host, or if _static/npm/ is missing or stale.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

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


def vendored() -> bool:
    manifest = STATIC / "npm" / "manifest.json"
    return manifest.exists() and json.loads(manifest.read_text()) == json.loads(VENDOR_SPEC.read_text())["packages"]


def config_inited(app: Sphinx, config) -> None:
    if not vendored():
        raise ExtensionError("_ext/static/npm/ is missing or out of date: run `make vendor` "
                             "(it fetches MathJax, require.js, d3, jquery and the widgets manager from npm)")
    if config.riverbank_edition not in ("full", "class"):
        raise ExtensionError(f"riverbank_edition must be 'full' or 'class', not {config.riverbank_edition!r}")
    if config.riverbank_edition == "full":
        app.tags.add("solutions")
    config.html_static_path.append(str(STATIC))
    # Pages name the repository through {{ repository_url }}, so _config.yml stays its one source.
    url = (config.html_theme_options or {}).get("repository_url", "")
    config.myst_substitutions = {**(config.myst_substitutions or {}), "repository_url": url}


def rewrite_body(body: str, pathto) -> str:
    for pattern, target in REWRITES:
        suffix_free = "{js}" in target
        url = pathto("_static/" + target.replace("{js}", ".js"), 1)
        body = re.sub(pattern, url[:-3] if suffix_free else url, body)
    body = ANIMATION_SLIDER.sub('<input aria-label="Animation frame" ', body)
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


def build_finished(app: Sphinx, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    out = Path(app.outdir)
    links: dict[str, set[str]] = {}
    for page in sorted(out.rglob("*.html")):
        text = page.read_text(encoding="utf-8")
        if page.relative_to(out).parts[0] not in ("_static", "_sources"):
            for url in EXTERNAL_LINK.findall(text):
                links.setdefault(html.unescape(url), set()).add(page.relative_to(out).as_posix())
        labelled = text.replace(UNNAMED_TOGGLE, NAMED_TOGGLE)
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
    app.connect("html-page-context", page_context, priority=900)
    app.connect("build-finished", build_finished)
    app.add_css_file("site.css")
    app.add_js_file("site.js")
    return {"parallel_read_safe": True, "parallel_write_safe": True}
