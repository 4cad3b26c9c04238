"""The built website in a real browser, offline (run after `make book`).

Serves _build/html on 127.0.0.1, blocks every request to any other host, and opens every page of
the built book in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright). Pages are
discovered from the build, so a chapter added to _toc.yml is checked without changing this file.
Each page is loaded once; the checks below read what that visit recorded. A screenshot of every
page goes to _build/screenshots/.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import threading
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HTML = Path(os.environ.get("RIVERBANK_SITE", ROOT / "_build" / "html"))
SCREENSHOTS = HTML.parent / "screenshots"
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Root in a container, no GPU, and no calls home: what Chromium needs to start here and in CI.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
WIDTH = 1280
NOT_BOOK_PAGES = {"genindex.html", "search.html", "index.html"}  # index.html only redirects to the root page


def book_pages() -> list[str]:
    if not (HTML / "searchindex.js").exists():
        return []
    return sorted(p.relative_to(HTML).as_posix() for p in HTML.rglob("*.html")
                  if p.relative_to(HTML).parts[0] not in ("_static", "_sources", "_images")
                  and p.relative_to(HTML).as_posix() not in NOT_BOOK_PAGES)


PAGES = book_pages()


def test_the_book_was_built_and_has_pages():
    assert PAGES, f"no pages in {HTML}: run `make book` first"
    assert "intro.html" in PAGES


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(HTML)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} not found: apt-get install chromium (or set CHROMIUM=...)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_page(browser, server: str, path: str):
    """A page at 1280 px whose every request outside the local server is aborted and recorded."""
    page = browser.new_page(viewport={"width": WIDTH, "height": 900})
    log = {"console": [], "failed": [], "blocked": []}
    page.on("console", lambda m: log["console"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: log["console"].append(f"uncaught: {e}"))
    page.on("requestfailed", lambda r: log["failed"].append(f"{r.url} ({r.failure})"))
    page.on("response", lambda r: log["failed"].append(f"{r.url} (HTTP {r.status})") if r.status >= 400 else None)

    def route(route):
        if route.request.url.startswith(server):
            route.continue_()
        else:
            log["blocked"].append(route.request.url)
            route.abort()

    page.route("**/*", route)
    page.goto(server + path, wait_until="networkidle")
    return page, log


# Everything the checks need, measured in the page once it has settled.
MEASURE = """async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  const main = document.querySelector("main") || document.body;
  const copy = main.cloneNode(true);
  copy.querySelectorAll("pre, code, script, style, mjx-container, textarea").forEach(e => e.remove());
  const visible = e => e.getBoundingClientRect().width > 0 && e.getBoundingClientRect().height > 0;
  return {
    rawMath: (copy.textContent.match(/\\\\\\(|\\\\\\[/g) || []).length,
    untypeset: [...main.querySelectorAll(".math")].filter(e => !e.querySelector("mjx-container")).map(e => e.textContent.slice(0, 60)),
    bertviz: [...document.querySelectorAll("[id^=bertviz-]")].map(d => ({
      id: d.id, shapes: d.querySelectorAll("svg line, svg rect, svg text, svg path").length,
      overflow: d.querySelector("svg") ? Math.round(d.querySelector("svg").getBoundingClientRect().right
                                                    - d.getBoundingClientRect().right) : 0})),
    widgets: [...document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')].map(s => {
      const area = s.previousElementSibling;
      return {model: JSON.parse(s.textContent).model_id,
              rendered: !!area && area.classList.contains("widget-subarea") && area.childElementCount > 0 && visible(area)};
    }),
    links: [...document.querySelectorAll("a[href]")].map(a => a.href),
    imagesWithoutAlt: [...main.querySelectorAll("img")].filter(i => !(i.getAttribute("alt") || "").trim()).map(i => i.src),
    brokenImages: [...main.querySelectorAll("img")].filter(i => i.complete && i.naturalWidth === 0).map(i => i.src),
    sideways: [...main.querySelectorAll("pre")].filter(p => visible(p) && p.scrollWidth > p.clientWidth + 1)
      .map(p => `${p.scrollWidth - p.clientWidth} px too wide: ${p.textContent.split("\\n").reduce((a, b) => b.length > a.length ? b : a, "").trim().slice(0, 100)}`),
  };
}"""

_visits: dict[str, dict] = {}


@pytest.fixture
def visit(browser, server):
    def load(path: str) -> dict:
        if path not in _visits:
            from axe_playwright_python.sync_playwright import Axe

            page, log = open_page(browser, server, path)
            page.wait_for_timeout(300)  # let bertviz and the widgets manager finish drawing
            result = page.evaluate(MEASURE)
            # A snapshot of the log before axe runs: axe-core fetches each stylesheet's @import
            # itself and resolves it against the page, not the sheet, so pydata-sphinx-theme's
            # `@import "../basic.css"` becomes a 404 for /basic.css that no reader's browser makes.
            result.update({key: list(value) for key, value in log.items()})
            axe = Axe().run(page)
            result["axe"] = [f"{v['id']} ({v['impact']}): {v['help']} -- {len(v['nodes'])} element(s), e.g. {v['nodes'][0]['target']}"
                             for v in axe.response["violations"] if v["impact"] in ("serious", "critical")]
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=SCREENSHOTS / (path.removesuffix(".html").replace("/", "__") + ".png"), full_page=True)
            page.close()
            _visits[path] = result
        return _visits[path]

    return load


def notebook_of(path: str) -> str | None:
    """The repository path of the notebook a page was built from, or None for a Markdown page."""
    source = HTML / "_sources" / Path(path).with_suffix(".ipynb")
    return Path(path).with_suffix(".ipynb").as_posix() if source.exists() else None


@pytest.mark.parametrize("path", PAGES)
def test_no_console_errors(visit, path):
    assert visit(path)["console"] == []


@pytest.mark.parametrize("path", PAGES)
def test_no_failed_or_third_party_requests(visit, path):
    result = visit(path)
    assert result["blocked"] == [], "the page asks another host for something: vendor it (_ext/vendor.json)"
    assert result["failed"] == []


@pytest.mark.parametrize("path", PAGES)
def test_formulas_are_typeset(visit, path):
    result = visit(path)
    assert result["untypeset"] == [], "formulas left as raw LaTeX"
    assert result["rawMath"] == 0, "raw \\( or \\[ left in the text"


@pytest.mark.parametrize("path", PAGES)
def test_every_bertviz_view_is_drawn(visit, path):
    empty = [v["id"] for v in visit(path)["bertviz"] if v["shapes"] == 0]
    assert empty == [], "bertviz views with nothing drawn (require.js, d3 or jquery did not load?)"


@pytest.mark.parametrize("path", PAGES)
def test_every_bertviz_view_fits_its_column(visit, path):
    cut = [(v["id"], v["overflow"]) for v in visit(path)["bertviz"] if v["overflow"] > 1]
    assert cut == [], "bertviz views wider than the column, cut off at its edge (px over)"


@pytest.mark.parametrize("path", PAGES)
def test_every_stored_widget_is_rendered(visit, path):
    blank = [w["model"] for w in visit(path)["widgets"] if not w["rendered"]]
    assert blank == [], "stored widgets not rendered (the widgets manager did not load?)"


@pytest.mark.parametrize("path", [p for p in PAGES if notebook_of(p)])
def test_colab_link_opens_this_pages_notebook(visit, path):
    repo = CONFIG["repository"]["url"].removeprefix("https://github.com/")
    colab = f"https://colab.research.google.com/github/{repo}/blob/{CONFIG['repository']['branch']}/{notebook_of(path)}"
    assert colab in visit(path)["links"]


@pytest.mark.parametrize("path", PAGES)
def test_every_image_has_alt_text_and_loads(visit, path):
    result = visit(path)
    assert result["imagesWithoutAlt"] == []
    assert result["brokenImages"] == []


@pytest.mark.parametrize("path", PAGES)
def test_no_code_block_scrolls_sideways(visit, path):
    assert visit(path)["sideways"] == [], f"at a {WIDTH} px window: shorten the line, or wrap it"


@pytest.mark.parametrize("path", PAGES)
def test_no_serious_accessibility_violations(visit, path):
    assert visit(path)["axe"] == []


def test_every_page_has_a_screenshot(visit):
    for path in PAGES:
        visit(path)
        assert (SCREENSHOTS / (path.removesuffix(".html").replace("/", "__") + ".png")).stat().st_size > 10_000, path


QUIZ_PAGES = [p for p in PAGES if "jupyterquiz" in (HTML / p).read_text(encoding="utf-8") or "MCButton" in (HTML / p).read_text(encoding="utf-8")]


@pytest.mark.parametrize("path", QUIZ_PAGES)
def test_quiz_answers_a_click_with_its_explanation(browser, server, path):
    page, log = open_page(browser, server, path)
    buttons = page.locator(".MCButton")
    assert buttons.count() >= 2, "the quiz did not render its answer buttons"
    buttons.first.click()
    feedback = page.locator(".Feedback.correct, .Feedback.incorrect").first
    feedback.wait_for(state="visible", timeout=5_000)
    explanation = feedback.inner_text().strip()
    page.close()
    assert len(explanation) > 20, f"an answer without an explanation: {explanation!r}"
    assert log["console"] == [] and log["failed"] == [] and log["blocked"] == []


def test_search_finds_attention(browser, server):
    page, log = open_page(browser, server, "search.html?q=attention")
    page.wait_for_selector("#search-results ul.search li", timeout=15_000)
    hits = page.locator("#search-results ul.search li").count()
    page.screenshot(path=SCREENSHOTS / "search.png")
    page.close()
    assert hits >= 1
    assert log["console"] == [] and log["failed"] == [] and log["blocked"] == []


def test_dark_mode_switches(browser, server):
    page, log = open_page(browser, server, "intro.html")
    background = "() => getComputedStyle(document.body).backgroundColor"
    light = page.evaluate(background)
    for _ in range(3):  # the button cycles light -> dark -> auto
        if page.evaluate("document.documentElement.dataset.theme") == "dark":
            break
        page.locator("button.theme-switch-button").first.click()
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    page.wait_for_timeout(300)
    dark = page.evaluate(background)
    page.screenshot(path=SCREENSHOTS / "intro-dark.png")
    page.close()

    def brightness(css: str) -> float:
        r, g, b = (int(x) for x in re.findall(r"\d+", css)[:3])
        return (0.299 * r + 0.587 * g + 0.114 * b) / 255

    assert brightness(light) > 0.8 and brightness(dark) < 0.3, (light, dark)
