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


def open_page(browser, server: str, path: str, width: int = WIDTH):
    """A page (1280 px wide unless told) whose every request outside the local server is aborted and
    recorded, with the bytes of every response it received."""
    page = browser.new_page(viewport={"width": width, "height": 900})  # its own context: an empty cache
    log = {"console": [], "failed": [], "blocked": []}
    page.on("console", lambda m: log["console"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: log["console"].append(f"uncaught: {e}"))
    page.on("requestfailed", lambda r: log["failed"].append(f"{r.url} ({r.failure})"))
    page.on("response", lambda r: log["failed"].append(f"{r.url} (HTTP {r.status})") if r.status >= 400 else None)
    log["bytes"] = []
    page.on("requestfinished", lambda r: log["bytes"].append((r.url, r.sizes()["responseBodySize"])))

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
    // A formula MathJax could not read shows an error box; one it read wrongly shows TeX itself,
    // e.g. \\_ inside \\text{} without the textmacros package: "block\\_size".
    mathErrors: [...main.querySelectorAll("mjx-merror")].map(e => e.getAttribute("data-mjx-error")),
    backslashes: [...main.querySelectorAll("mjx-container mjx-assistive-mml, mjx-container mjx-utext")]
      .filter(e => e.textContent.includes("\\\\")).map(e => e.textContent.slice(0, 60)),
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

BERTVIZ_DRAWN = """() => [...document.querySelectorAll("[id^=bertviz-]")]
  .every(d => d.querySelectorAll("svg line, svg rect, svg text, svg path").length > 0)"""

_visits: dict[str, dict] = {}


@pytest.fixture
def visit(browser, server):
    def load(path: str) -> dict:
        if path not in _visits:
            from axe_playwright_python.sync_playwright import Axe

            page, log = open_page(browser, server, path)
            # bertviz draws once require.js has loaded d3 and jquery, which under load can come after
            # the network went quiet: wait for it (the bertviz test reports a view that never drew).
            try:
                page.wait_for_function(BERTVIZ_DRAWN, timeout=15_000)
            except Exception:  # noqa: BLE001 - a timeout is what test_every_bertviz_view_is_drawn reports
                pass
            page.wait_for_timeout(300)
            result = page.evaluate(MEASURE)
            # A snapshot of the log before axe runs: axe-core fetches each stylesheet's @import
            # itself and resolves it against the page, not the sheet, so pydata-sphinx-theme's
            # `@import "../basic.css"` becomes a 404 for /basic.css that no reader's browser makes.
            page.wait_for_load_state("networkidle")
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
    assert result["mathErrors"] == [], "MathJax could not read these formulas"
    assert result["backslashes"] == [], "typeset formulas that show TeX's backslashes"


@pytest.mark.parametrize("path", PAGES)
def test_every_bertviz_view_is_drawn(visit, path):
    empty = [v["id"] for v in visit(path)["bertviz"] if v["shapes"] == 0]
    assert empty == [], "bertviz views with nothing drawn (require.js, d3 or jquery did not load?)"


@pytest.mark.parametrize("path", PAGES)
def test_every_bertviz_view_fits_its_column(visit, path):
    cut = [(v["id"], v["overflow"]) for v in visit(path)["bertviz"] if v["overflow"] > 1]
    assert cut == [], "bertviz views wider than the column, cut off at its edge (px over)"


@pytest.mark.parametrize("path", PAGES)
def test_no_page_shows_a_frozen_widget(visit, path):
    # The site has no widgets manager: a live ipywidgets view would show a control that does
    # nothing. Explorers are precomputed (riverbank/explorers.py); live ones are `remove-output`.
    assert visit(path)["widgets"] == [], "an ipywidgets view on the page: tag its cell remove-output"
    assert not [url for url, _ in visit(path)["bytes"] if "html-manager" in url or "embed-amd" in url]


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


# ---- Phones and page weight -------------------------------------------------------------------

PHONE = 390  # an iPhone 12-15's width in CSS pixels
CHAPTER_PAGES = [p for p in PAGES if p.startswith("chapters/")]
PHONE_PAGES = CHAPTER_PAGES + [p for p in ("intro.html", "quizzes/01_bank_by_the_river.html",
                                           "exercises/01_bank_by_the_river.html") if p in PAGES]

# At the phone's width: how wide the page is, what sticks out of the column or is cut off by a box
# that hides its overflow (a box that scrolls its own content sideways is fine), and whether the
# menu button opens the chapter list and the contents button the page's contents.
PHONE_MEASURE = """async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  const W = document.documentElement.clientWidth;
  const article = document.querySelector("article.bd-article") || document.querySelector("main");
  const column = article.getBoundingClientRect();
  const describe = e => `${e.tagName.toLowerCase()}.${[...e.classList].slice(0, 2).join(".")} ` +
                        `"${(e.textContent || e.getAttribute("alt") || "").trim().replace(/\\s+/g, " ").slice(0, 50)}"`;
  const scrollsItself = e => { for (let a = e.parentElement; a && a !== article; a = a.parentElement) {
      if (["auto", "scroll"].includes(getComputedStyle(a).overflowX)) return true; } return false; };
  const shown = e => { const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
  const skip = e => e.closest("mjx-assistive-mml, .sr-only, .visually-hidden");
  const cut = [], outside = [];
  for (const e of article.querySelectorAll("*")) {
    if (!shown(e) || skip(e)) continue;
    const style = getComputedStyle(e);
    if (["hidden", "clip"].includes(style.overflowX) && e.scrollWidth > e.clientWidth + 4 && !e.matches("span.math"))
      cut.push(`${describe(e)}: ${e.scrollWidth - e.clientWidth} px hidden`);
    const r = e.getBoundingClientRect();
    if (r.right > column.right + 20 && !scrollsItself(e) && !(e.parentElement && e.parentElement.getBoundingClientRect().right > column.right + 20))
      outside.push(`${describe(e)}: ${Math.round(r.right - column.right)} px past the column`);
  }
  const tables = [...article.querySelectorAll("table")].filter(shown)
    .filter(t => t.getBoundingClientRect().right > column.right + 1 && !scrollsItself(t)).map(describe);
  const fits = [...article.querySelectorAll(".animation, [id^=bertviz-]")].filter(shown)
    .filter(e => e.getBoundingClientRect().right > column.right + 20 || e.scrollWidth > e.clientWidth + 20).map(describe);
  return {scrollWidth: document.documentElement.scrollWidth, width: W, cut: cut.slice(0, 10),
          outside: outside.slice(0, 10), tables, fits};
}"""

VISIBLE_LINKS = """(selector) => [...document.querySelectorAll(selector)].filter(a => {
  const r = a.getBoundingClientRect();
  return r.width > 0 && r.height > 0 && r.left >= 0 && r.right <= innerWidth + 1 && r.top < innerHeight && r.bottom > 0
         && document.elementFromPoint(r.left + Math.min(5, r.width / 2), r.top + r.height / 2)?.closest("a") === a;
}).length"""

_phone_visits: dict[str, dict] = {}


@pytest.fixture
def phone(browser, server):
    def load(path: str) -> dict:
        if path not in _phone_visits:
            page, log = open_page(browser, server, path, width=PHONE)
            page.wait_for_timeout(300)
            result = page.evaluate(PHONE_MEASURE)
            chapters_before = page.evaluate(VISIBLE_LINKS, "nav.bd-docs-nav a.reference")
            page.locator("button.primary-toggle:visible").first.click()
            page.wait_for_timeout(500)
            result["menu"] = (chapters_before, page.evaluate(VISIBLE_LINKS, "nav.bd-docs-nav a.reference"))
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=SCREENSHOTS / ("phone-menu__" + path.removesuffix(".html").replace("/", "__") + ".png"))
            page.keyboard.press("Escape")
            page.reload(wait_until="networkidle")
            toggles = page.locator("button.secondary-toggle:visible")
            if toggles.count():
                toggles.first.click()
                page.wait_for_timeout(500)
                result["contents"] = page.evaluate(VISIBLE_LINKS, ".bd-sidebar-secondary a.nav-link, .bd-toc a.nav-link")
            result["console"] = list(log["console"])
            page.close()
            _phone_visits[path] = result
        return _phone_visits[path]

    return load


@pytest.mark.parametrize("path", PHONE_PAGES)
def test_phone_page_never_scrolls_sideways(phone, path):
    result = phone(path)
    assert result["scrollWidth"] <= result["width"], f"the page is {result['scrollWidth']} px wide at {PHONE} px"
    assert result["outside"] == [], "sticks out of the text column"
    assert result["cut"] == [], "cut off by a box that hides what does not fit"


@pytest.mark.parametrize("path", PHONE_PAGES)
def test_phone_tables_bertviz_and_animations_fit(phone, path):
    result = phone(path)
    assert result["tables"] == [], "tables wider than the column must scroll inside a wrapper"
    assert result["fits"] == [], "bertviz views and animations must fit the column"


@pytest.mark.parametrize("path", PHONE_PAGES)
def test_phone_menu_opens_the_chapter_list(phone, path):
    before, after = phone(path)["menu"]
    assert before == 0, "the chapter list should start closed on a phone"
    assert after >= len(CHAPTER_PAGES), f"the menu button showed {after} links of the chapter list"


@pytest.mark.parametrize("path", CHAPTER_PAGES)
def test_phone_contents_button_opens_the_page_contents(phone, path):
    assert phone(path).get("contents", 0) >= 3, "the contents button did not show this page's sections"


# A chapter's own figures (its images under _images/) do not count against the budget.
PAGE_BUDGET = 3_000_000
_weights: dict[str, dict[str, int]] = {}


def weigh(path: str, responses) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for url, size in responses:
        name = url.split("?")[0].split("#")[0]
        kind = ("figures" if "/_images/" in name else "fonts" if name.endswith((".woff", ".woff2", ".ttf", ".otf", ".eot"))
                else "scripts" if name.endswith(".js") else "styles" if name.endswith(".css") else "page" if name.endswith(".html")
                else "other")
        kinds[kind] = kinds.get(kind, 0) + size
    kinds["total"] = sum(v for k, v in kinds.items() if k != "figures")
    return kinds


def test_weigh_counts_known_responses():
    w = weigh("x.html", [("http://h/x.html", 100), ("http://h/_static/a.js?v=1", 20), ("http://h/_images/f.png", 7),
                         ("http://h/_static/f.woff2", 5), ("http://h/_static/s.css", 3)])
    assert w == {"page": 100, "scripts": 20, "figures": 7, "fonts": 5, "styles": 3, "total": 128}


@pytest.mark.parametrize("path", PAGES)
def test_page_weight_within_budget(visit, path):
    _weights[path] = weight = weigh(path, visit(path)["bytes"])
    assert weight.get("page", 0) > 0, "the page itself was not counted"
    big = sorted(visit(path)["bytes"], key=lambda r: -r[1])[:5]
    assert weight["total"] <= PAGE_BUDGET, (f"{weight['total']:,} bytes without its figures, over the {PAGE_BUDGET:,} budget; "
                                            f"largest: {[(u.split('/')[-1][:40], n) for u, n in big]}")


def test_page_weight_report():
    """The bytes each page loads, by kind, in _build/page-weight.tsv (and printed with -s)."""
    assert _weights, "run with the page-weight tests"
    kinds = ["page", "scripts", "styles", "fonts", "other", "total", "figures"]
    lines = ["path\t" + "\t".join(kinds)] + [f"{p}\t" + "\t".join(str(w.get(k, 0)) for k in kinds) for p, w in sorted(_weights.items())]
    (HTML.parent / "page-weight.tsv").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


# ---- Search snippets ----------------------------------------------------------------------------

def test_plain_math_writes_formulas_out(browser, server):
    page, _ = open_page(browser, server, "search.html")
    cases = {r"W_Q": "W_Q", r"\sqrt{d_k}": "√d_k", r"QK^\top": "QKᵀ", r"\mathrm{softmax}(x)": "softmax(x)",
             r"\frac{a}{b}": "(a)/(b)", r"N \times N": "N × N", r"\omega_i = 1/10000^{2i/d}": "ω_i = 1/10000^2i/d"}
    got = {tex: page.evaluate("(t) => window.riverbankPlainMath(t)", tex) for tex in cases}
    page.close()
    assert got == cases


def test_search_snippets_are_article_text(browser, server):
    page, log = open_page(browser, server, "search.html?q=queries")
    page.wait_for_selector("#search-results ul.search li p.context", timeout=20_000)
    page.wait_for_timeout(1500)  # the snippets arrive one page at a time
    snippets = page.locator("#search-results ul.search li p.context").all_inner_texts()
    page.screenshot(path=SCREENSHOTS / "search-snippets.png")
    page.close()
    assert len(snippets) >= 3
    for text in snippets:
        assert "\\(" not in text and "\\[" not in text and "\\mathrm" not in text, f"raw LaTeX in a snippet: {text}"
        assert not re.search(r"\d+\.\d+\. [^.]{3,60} \d+\.\d+\. ", text), f"a table of contents in a snippet: {text}"
    assert log["console"] == []
