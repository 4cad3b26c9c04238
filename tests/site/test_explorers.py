"""The explorers of chapters 3 and 5 on the built website: they answer their sliders without Python.

Run after a build (``$RIVERBANK_SITE`` or _build/html). Each test moves the range controls the way
a reader does (set the value, dispatch ``input``) and compares what the page then prints and draws
with what the chapter's own Python gives for that setting: ``describe`` for the printed lines,
``explore``'s alt text for the SVG descriptions, and riverbank's numbers for the bars and points.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import nbformat
import pytest
import torch
from test_browser import HTML, browser, open_page, server  # noqa: F401  (fixtures)

from riverbank.model import top_p_filter
from riverbank.positions import sinusoidal_encoding, sinusoidal_frequencies

ROOT = Path(__file__).resolve().parents[2]
CH3, CH5 = "chapters/03_positional_encodings.html", "chapters/05_transformer_block.html"
WORDS = ["bank", "shore", "edge", "money", "moon"]
LOGITS = torch.tensor([3.0, 2.2, 1.5, 0.3, -1.0])
PE = sinusoidal_encoding(100, 64)


def chapter_functions(notebook: str, cell_ids: list[str], namespace: dict) -> dict:
    """Run the chapter's cells that define describe() and explore(), with a show() that keeps the alt text."""
    cells = {c.get("id"): c.source for c in nbformat.read(ROOT / notebook, as_version=4).cells}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alts = []
    namespace.update(plt=plt, math=math, torch=torch, alts=alts,
                     show=lambda fig, alt: (plt.close(fig), alts.append(alt)))
    for cell_id in cell_ids:
        exec(cells[cell_id], namespace)
    return namespace


@pytest.fixture(scope="module")
def ch3_python():
    return chapter_functions("chapters/03_positional_encodings.ipynb", ["explore-def", "explore-plot"],
                             {"sinusoidal_encoding": sinusoidal_encoding,
                              "sinusoidal_frequencies": sinusoidal_frequencies})


@pytest.fixture(scope="module")
def ch5_python():
    return chapter_functions("chapters/05_transformer_block.ipynb", ["describe-def", "explore-def"],
                             {"logits": LOGITS, "words": WORDS, "top_p_filter": top_p_filter})


def alt_of(python: dict, *setting) -> str:
    python["alts"].clear()
    python["explore"](*setting)
    return python["alts"][-1]


@pytest.fixture(scope="module")
def pages(browser, server, ch3_python, ch5_python):  # noqa: F811
    # The chapters' Python runs first: while Python is busy, the pages' late requests (bertviz's
    # require.js modules) wait on open_page's route handler, and require.js gives up after 7 s.
    # So each page finishes loading here, with Playwright answering: until bertviz has drawn.
    opened = {}
    for path in (CH3, CH5):
        page, log = opened[path] = open_page(browser, server, path)
        page.wait_for_function("""() => [...document.querySelectorAll("[id^=bertviz-]")].every(
            view => view.querySelectorAll("svg line, svg rect, svg text, svg path").length > 0)""", timeout=30_000)
        page.wait_for_load_state("networkidle")
    yield opened
    for page, _ in opened.values():
        page.close()


READ = """() => {
  const root = document.querySelector(".riverbank-explorer");
  if (!root) { return null; }
  const num = (e, a) => parseFloat(e.getAttribute(a));
  return {
    lines: root.querySelector("pre.rbx-lines").textContent,
    shown: [...root.querySelectorAll("output")].map(o => o.textContent),
    svgLabels: [...root.querySelectorAll("svg")].map(s => s.getAttribute("aria-label")),
    svgTitles: [...root.querySelectorAll("svg")].map(s => s.querySelector("title").textContent),
    bars: [...root.querySelectorAll("svg")].map(s => [...s.querySelectorAll("rect.rbx-bar, rect.rbx-cut")].map(r =>
      ({cut: r.classList.contains("rbx-cut"), y: num(r, "y"), height: num(r, "height")}))),
    line: [...root.querySelectorAll("polyline")].map(p => p.getAttribute("points").trim().split(/\\s+/)
      .map(xy => xy.split(",").map(Number))),
    point: [...root.querySelectorAll("circle")].map(c => [num(c, "cx"), num(c, "cy")]),
  };
}"""


def move(page, name: str, value) -> dict:
    page.evaluate("""([name, value]) => {
      const input = document.querySelector(".riverbank-explorer input[id$='-" + name + "']");
      input.value = String(value);
      input.dispatchEvent(new Event("input", {bubbles: true}));
    }""", [name, value])
    return page.evaluate(READ)


def test_both_pages_have_an_explorer(pages):
    for path, (page, _) in pages.items():
        assert page.evaluate(READ) is not None, f"{path}: no explorer on the page"


@pytest.mark.parametrize("position, dimension", [(10, 6), (37, 13), (99, 63), (0, 0), (55, 2), (3, 50)])
def test_chapter_3_explorer_prints_and_draws_each_setting(pages, ch3_python, position, dimension):
    page, log = pages[CH3]
    before = page.evaluate(READ)
    assert before is not None, "no explorer on the page"
    move(page, "position", position)
    view = move(page, "dimension", dimension)
    assert view["lines"] == ch3_python["describe"](position, dimension)
    assert view["shown"] == [str(position), str(dimension)]
    left, right = alt_of(ch3_python, position, dimension).removeprefix("Left: ").split(" Right: ")
    assert view["svgLabels"] == view["svgTitles"] == [left[0].upper() + left[1:], right[0].upper() + right[1:]]

    # Right: 64 bars, each as tall as |PE(position, k)|, above the axis for a positive value.
    values = PE[position].tolist()
    bars = view["bars"][1]
    assert len(bars) == 64
    scale = max(b["height"] for b in bars) / max(abs(v) for v in values)
    assert all(abs(b["height"] - abs(v) * scale) < 0.05 for b, v in zip(bars, values))
    baseline = next(b["y"] + b["height"] for b, v in zip(bars, values) if v > 0.01)
    assert all(abs(b["y"] - baseline) < 0.05 for b, v in zip(bars, values) if v < -0.01)

    # Left: the curve of dimension `dimension` over 100 positions, a straight map of the values.
    points, column = view["line"][0], PE[:, dimension].tolist()
    assert len(points) == 100
    if max(column) - min(column) > 0.1:
        hi, lo = column.index(max(column)), column.index(min(column))
        slope = (points[hi][1] - points[lo][1]) / (column[hi] - column[lo])
        assert slope < 0  # larger values higher up
        assert all(abs(y - (points[hi][1] + slope * (v - column[hi]))) < 0.05 for (_, y), v in zip(points, column))
    assert view["point"] == [points[position]], "the marked point is not at the chosen position"
    assert log["console"] == []


@pytest.mark.parametrize("temperature, top_p", [(1.0, 0.9), (0.35, 0.5), (2.5, 0.95), (3.0, 1.0), (0.1, 0.05),
                                                (1.75, 0.6), (0.6, 0.85)])
def test_chapter_5_explorer_prints_and_draws_each_setting(pages, ch5_python, temperature, top_p):
    page, log = pages[CH5]
    assert page.evaluate(READ) is not None, "no explorer on the page"
    move(page, "temperature", temperature)
    view = move(page, "top-p", top_p)
    assert view["lines"] == ch5_python["describe"](temperature, top_p)
    assert view["shown"] == [f"{temperature:.2f}", f"{top_p:.2f}"]
    assert view["svgLabels"] == view["svgTitles"] == [alt_of(ch5_python, temperature, top_p)]

    tempered = torch.softmax(LOGITS / temperature, dim=-1)
    final = top_p_filter(tempered, top_p)
    bars = view["bars"][0]
    assert [b["cut"] for b in bars] == (final == 0).tolist(), "the greyed bars are not the cut words"
    heights = [b["height"] for b in bars]
    for h, p in zip(heights, tempered.tolist()):  # each bar against the tallest: the ratio of the numbers
        assert abs(h / heights[0] - p / tempered[0].item()) < 0.005
    assert log["console"] == []


def test_bars_change_when_a_control_moves(pages):
    page, _ = pages[CH5]
    cold = move(page, "temperature", 0.3)["bars"][0]
    hot = move(page, "temperature", 2.9)["bars"][0]
    assert cold[0]["height"] > 1.5 * hot[0]["height"] and cold[4]["height"] < hot[4]["height"]


LAYOUT = """() => {
  const root = document.querySelector(".riverbank-explorer");
  const box = root.getBoundingClientRect();
  return {
    labels: [...root.querySelectorAll("label")].map(l => ({text: l.textContent, scroll: l.scrollWidth,
              client: l.clientWidth, names: document.getElementById(l.htmlFor).labels.length})),
    inputs: [...root.querySelectorAll("input[type=range]")].map(i => ({disabled: i.disabled,
              name: i.labels.length ? i.labels[0].textContent : ""})),
    svgOut: [...root.querySelectorAll("svg")].map(s => Math.round(s.getBoundingClientRect().right - box.right)),
    pageWide: document.documentElement.scrollWidth - document.documentElement.clientWidth,
    svgWidths: [...root.querySelectorAll("svg")].map(s => Math.round(s.getBoundingClientRect().width)),
  };
}"""


@pytest.mark.parametrize("width", [1280, 390])
@pytest.mark.parametrize("path, names", [(CH3, ["position", "dimension"]), (CH5, ["temperature", "top-p"])])
def test_controls_are_named_uncut_and_the_plots_fit(pages, path, names, width):
    page, _ = pages[path]
    page.set_viewport_size({"width": width, "height": 900})
    page.wait_for_timeout(100)
    layout = page.evaluate(LAYOUT)
    page.set_viewport_size({"width": 1280, "height": 900})
    assert [label["text"] for label in layout["labels"]] == names
    assert all(label["scroll"] <= label["client"] and label["client"] > 0 for label in layout["labels"]), layout
    assert layout["inputs"] == [{"disabled": False, "name": name} for name in names]
    assert all(over <= 1 for over in layout["svgOut"]), "a plot is wider than the explorer"
    assert layout["pageWide"] <= 0, "the page scrolls sideways"
    assert all(w >= 250 for w in layout["svgWidths"]), "a plot too small to read"


@pytest.mark.parametrize("path", [CH3, CH5])
def test_text_and_axes_stay_readable_in_light_and_dark_mode(pages, path):
    page, _ = pages[path]
    colours = """() => {
      const svg = document.querySelector(".riverbank-explorer svg");
      const text = svg.querySelector("text"), axis = svg.querySelector("g[stroke] line");
      let e = svg, background = "rgba(0, 0, 0, 0)";
      while (e && /rgba\\(.*, 0\\)$|transparent/.test(background)) {
        background = getComputedStyle(e).backgroundColor; e = e.parentElement;
      }
      return {ink: [getComputedStyle(svg).color, getComputedStyle(text).fill, getComputedStyle(axis).stroke],
              background: background};
    }"""

    def luminance(css: str) -> float:
        channels = [int(x) / 255 for x in re.findall(r"\d+", css)[:3]]
        r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    def contrast(a: str, b: str) -> float:
        hi, lo = sorted([luminance(a), luminance(b)], reverse=True)
        return (hi + 0.05) / (lo + 0.05)

    seen = {}
    for theme in ("light", "dark"):
        page.evaluate(f"document.documentElement.dataset.theme = '{theme}'")
        page.wait_for_timeout(100)
        seen[theme] = page.evaluate(colours)
    page.evaluate("document.documentElement.dataset.theme = 'light'")
    for theme, found in seen.items():
        assert len(set(found["ink"])) == 1, f"{theme}: text and axes are not drawn in the text colour"
        assert contrast(found["ink"][0], found["background"]) >= 4.5, (theme, found)


@pytest.mark.parametrize("path", [CH3, CH5])
def test_no_console_errors_and_no_widgets_manager(pages, path):
    page, log = pages[path]
    loaded = page.evaluate("""() => [...performance.getEntriesByType("resource").map(e => e.name),
                                     ...[...document.scripts].map(s => s.src).filter(Boolean)]""")
    assert [url for url in loaded if "embed-amd" in url or "html-manager" in url] == []
    assert page.evaluate("document.querySelectorAll('script[type*=\"jupyter.widget\"]').length") == 0
    assert log["console"] == [] and log["failed"] == [] and log["blocked"] == []
