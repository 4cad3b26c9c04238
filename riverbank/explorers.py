"""Explorers that respond without Python: sliders over values a chapter computed ahead.

A chapter computes its numbers over every setting its sliders can take and hands them here. Each
function returns one HTML output: range controls, the lines the chapter's ``explore`` would print,
and plots drawn as inline SVG, switched by a small script as the controls move. The numbers travel
inside the output as JSON, rounded to what is printed, so the explorer works wherever HTML output
runs its scripts (Jupyter, Colab, the website) and needs no kernel and no files besides itself.

Chapter 3 uses :func:`encoding_explorer` (the sinusoidal encoding, by position and dimension),
chapter 5 :func:`sampling_explorer` (temperature and top-p over five words).

The lines are formatted twice: in JavaScript as the controls move, and in Python (the
``*_lines`` functions) for the first view and for the tests, from the same rounded numbers.
"""

from __future__ import annotations

import html
import itertools
import json
import math
import re
from typing import Sequence

__all__ = ["Explorer", "encoding_explorer", "encoding_payload", "encoding_lines", "encoding_labels",
           "sampling_explorer", "sampling_payload", "sampling_lines", "sampling_label", "payload_of"]

PE_DECIMALS = 4      # PE values and frequencies as describe() prints them: {:+.4f}, {:.4f}
WAVELENGTH_DECIMALS = 1
PROB_DECIMALS = 3    # probabilities as explore() prints them: {:.3f}

_ids = itertools.count(1)  # unique ids in one kernel, and the same ids on every fresh run


class Explorer:
    """One explorer output: HTML for notebooks and the website, its first printed lines as text."""

    def __init__(self, html_text: str, text: str):
        self.html = html_text
        self.text = text

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return self.text


def payload_of(html_text: str) -> dict:
    """The JSON numbers embedded in an explorer's HTML (what its script reads)."""
    match = re.search(r'<script type="application/json" class="rbx-data">(.*?)</script>', html_text, re.S)
    if match is None:
        raise ValueError("no explorer data in this HTML")
    return json.loads(match.group(1))


def _values(x) -> list:
    """A tensor, array or nested sequence as nested lists of Python floats."""
    return x.tolist() if hasattr(x, "tolist") else [(_values(v) if isinstance(v, (list, tuple)) else v) for v in x]


def _rounded(x, decimals: int):
    if isinstance(x, list):
        return [_rounded(v, decimals) for v in x]
    return round(float(x), decimals)


def _grid_step(values: Sequence[float]) -> float:
    steps = {round(b - a, 9) for a, b in zip(values, values[1:])}
    if len(steps) != 1:
        raise ValueError(f"the slider's values must be evenly spaced, got steps {sorted(steps)}")
    return steps.pop()


# --- chapter 3: the sinusoidal encoding ---------------------------------------------------------

def encoding_payload(pe, omega) -> dict:
    """The numbers the encoding explorer embeds: the table and each pair's frequency and wavelength.

    pe: (positions, d_model), omega: (d_model // 2,). Rounded to what the explorer prints.
    """
    table, frequencies = _values(pe), [float(w) for w in _values(omega)]
    if not table or len(table[0]) != 2 * len(frequencies):
        raise ValueError(f"pe must have 2 * {len(frequencies)} dimensions, one pair per frequency")
    return {"pe": _rounded(table, PE_DECIMALS),
            "omega": _rounded(frequencies, PE_DECIMALS),
            "wavelength": [round(2 * math.pi / w, WAVELENGTH_DECIMALS) for w in frequencies]}


def encoding_lines(payload: dict, position: int, dimension: int) -> str:
    """What chapter 3's describe() prints for this setting, from the embedded numbers."""
    i = dimension // 2
    kind = "sin" if dimension % 2 == 0 else "cos"
    return (f"PE({position}, {dimension}) = {kind}({position} × {payload['omega'][i]:.4f})"
            f" = {payload['pe'][position][dimension]:+.4f}; pair {i}, wavelength {payload['wavelength'][i]:.1f}")


def encoding_labels(positions: int, dims: int, position: int, dimension: int) -> tuple[str, str]:
    """The text descriptions of the two plots (the chapter's alt text, one sentence each)."""
    return (f"Dimension {dimension} of the encoding over positions 0 to {positions - 1}, "
            f"with position {position} marked.",
            f"The {dims} values of PE({position}) as bars, dimensions 0 to {dims - 1}.")


def encoding_explorer(pe, omega, position: int = 10, dimension: int = 6) -> Explorer:
    """Position and dimension sliders over a precomputed sinusoidal encoding ``pe`` (positions, d)."""
    payload = encoding_payload(pe, omega)
    positions, dims = len(payload["pe"]), len(payload["pe"][0])
    controls = [("position", 0, positions - 1, 1, position, str(position)),
                ("dimension", 0, dims - 1, 1, dimension, str(dimension))]
    left, right = encoding_labels(positions, dims, position, dimension)
    return _explorer("encoding", controls, payload, encoding_lines(payload, position, dimension),
                     [("rbx-left", 400, 250, left), ("rbx-right", 400, 250, right)], _ENCODING_JS)


# --- chapter 5: temperature and top-p -----------------------------------------------------------

def sampling_payload(words: Sequence[str], temperatures: Sequence[float], top_ps: Sequence[float],
                     tempered, final) -> dict:
    """The numbers the sampling explorer embeds, for every (temperature, top-p) on the sliders.

    tempered: (len(temperatures), words), the softmax at each temperature; final: (len(temperatures),
    len(top_ps), words), after top-p. ``kept`` marks each word with a probability above 0 after
    top-p (bit k for word k), before rounding, as the chapter counts them.
    """
    tempered, final = _values(tempered), _values(final)
    shape = (len(temperatures), len(top_ps), len(words))
    if (len(final), len(final[0]), len(final[0][0])) != shape or (len(tempered), len(tempered[0])) != shape[::2]:
        raise ValueError(f"expected tempered {shape[::2]} and final {shape}")
    return {"words": list(words),
            "temperatures": [round(float(t), 2) for t in temperatures],
            "top_ps": [round(float(p), 2) for p in top_ps],
            "tempered": _rounded(tempered, PROB_DECIMALS),
            "final": _rounded(final, PROB_DECIMALS),
            "kept": [[sum(1 << k for k, b in enumerate(row) if b > 0) for row in by_p] for by_p in final]}


def _kept(payload: dict, t: int, p: int) -> list[bool]:
    return [bool(payload["kept"][t][p] >> k & 1) for k in range(len(payload["words"]))]


def sampling_lines(payload: dict, t: int, p: int) -> str:
    """What chapter 5's explore() prints at the t-th temperature and p-th top-p, from the numbers."""
    words, kept = payload["words"], _kept(payload, t, p)
    lines = [f"T = {payload['temperatures'][t]:.2f}, p = {payload['top_ps'][p]:.2f}: keeps "
             f"{sum(kept)} of {len(words)} words"]
    lines += [f"  {w:>6}: {a:.3f} -> {b:.3f}"
              for w, a, b in zip(words, payload["tempered"][t], payload["final"][t][p])]
    return "\n".join(lines)


def sampling_label(payload: dict, t: int, p: int) -> str:
    """The text description of the bar chart (the chapter's alt text)."""
    words, kept = payload["words"], _kept(payload, t, p)
    cut = [w for w, k in zip(words, kept) if not k]
    return (f"Bar chart of the five words' probabilities at temperature {payload['temperatures'][t]:.2f}, "
            f"with the words top-p {payload['top_ps'][p]:.2f} removes in grey "
            f"({', '.join(cut) if cut else 'none'}): "
            + ", ".join(f"{w} {a:.3f}" for w, a in zip(words, payload["tempered"][t])) + ".")


def sampling_explorer(words: Sequence[str], temperatures: Sequence[float], top_ps: Sequence[float],
                      tempered, final, temperature: float = 1.0, top_p: float = 0.9) -> Explorer:
    """Temperature and top-p sliders over distributions computed for every value on their grids."""
    payload = sampling_payload(words, temperatures, top_ps, tempered, final)
    ts, ps = payload["temperatures"], payload["top_ps"]
    t, p = ts.index(round(temperature, 2)), ps.index(round(top_p, 2))
    controls = [("temperature", ts[0], ts[-1], _grid_step(ts), ts[t], f"{ts[t]:.2f}"),
                ("top-p", ps[0], ps[-1], _grid_step(ps), ps[p], f"{ps[p]:.2f}")]
    return _explorer("sampling", controls, payload, sampling_lines(payload, t, p),
                     [("rbx-bars", 420, 260, sampling_label(payload, t, p))], _SAMPLING_JS)


# --- the HTML and the script --------------------------------------------------------------------

_STYLE = """<style>
.riverbank-explorer { margin: 0.5em 0 1em; }
.riverbank-explorer .rbx-controls { display: flex; flex-wrap: wrap; gap: 0.4em 1.5em; padding-right: 0.25em; }
.riverbank-explorer .rbx-control { display: flex; align-items: center; gap: 0.6em; flex: 1 1 15em; min-width: 0; }
.riverbank-explorer .rbx-control label { flex: none; white-space: nowrap; }
.riverbank-explorer .rbx-control input { flex: 1 1 6em; min-width: 6em; width: auto; margin: 0; }
.riverbank-explorer .rbx-control output { flex: none; min-width: 4ch; text-align: right; white-space: nowrap;
  font-family: var(--pst-font-family-monospace, monospace); }
.riverbank-explorer pre.rbx-lines { white-space: pre-wrap; overflow-wrap: anywhere; margin: 0.6em 0; }
.riverbank-explorer .rbx-plots { display: flex; flex-wrap: wrap; gap: 0.5em 1.5em; }
.riverbank-explorer .rbx-plots svg { flex: 1 1 300px; width: 100%; min-width: 0; height: auto; max-width: 34em; }
.riverbank-explorer .rbx-note { font-style: italic; }
.riverbank-explorer .rbx-series { fill: none; stroke: #1f77b4; stroke-width: 2; }
.riverbank-explorer .rbx-bar { fill: #1f77b4; }
.riverbank-explorer .rbx-cut { fill: currentColor; fill-opacity: 0.25; }
.riverbank-explorer .rbx-point { fill: #d62728; }
/* JupyterLab's dark theme; the website's dark mode puts HTML outputs on a light panel instead. */
body[data-jp-theme-light="false"] .riverbank-explorer .rbx-series { stroke: #6cb4ee; }
body[data-jp-theme-light="false"] .riverbank-explorer .rbx-bar { fill: #6cb4ee; }
body[data-jp-theme-light="false"] .riverbank-explorer .rbx-point { fill: #ff7f7f; }
</style>"""

# Helpers shared by both explorers: SVG elements, a plot frame with ticks, grid and labels.
_COMMON_JS = r"""
  const NS = "http://www.w3.org/2000/svg";
  const root = document.getElementById(ID);
  if (!root || root.dataset.ready) { return; }
  const data = JSON.parse(root.querySelector("script.rbx-data").textContent);
  const control = name => root.querySelector("#" + ID + "-" + name);
  const svgs = root.querySelectorAll(".rbx-plots svg");
  function el(parent, name, attrs, text) {
    const node = document.createElementNS(NS, name);
    for (const key in attrs) { node.setAttribute(key, attrs[key]); }
    if (text !== undefined) { node.textContent = text; }
    parent.appendChild(node);
    return node;
  }
  const fix = v => v.toFixed(2);
  function frame(svg, o) {
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    svg.setAttribute("aria-label", o.label);
    el(svg, "title", {}, o.label);
    const [w, h] = svg.getAttribute("viewBox").split(" ").slice(2).map(Number);
    const x0 = 58, x1 = w - 10, y0 = h - 44, y1 = 30;
    const sx = v => x0 + (v - o.x[0]) / (o.x[1] - o.x[0]) * (x1 - x0);
    const sy = v => y0 - (v - o.y[0]) / (o.y[1] - o.y[0]) * (y0 - y1);
    const axes = el(svg, "g", {"stroke": "currentColor"});
    for (const [v, text] of o.yticks) {
      el(axes, "line", {x1: x0, x2: x1, y1: fix(sy(v)), y2: fix(sy(v)), "stroke-opacity": 0.15});
      el(svg, "text", {x: x0 - 6, y: fix(sy(v) + 4.5), "text-anchor": "end"}, text);
    }
    for (const [v, text] of o.xticks) {
      el(axes, "line", {x1: fix(sx(v)), x2: fix(sx(v)), y1: y0, y2: y0 + 5});
      el(svg, "text", {x: fix(sx(v)), y: y0 + 19, "text-anchor": "middle"}, text);
    }
    el(axes, "rect", {x: x0, y: y1, width: x1 - x0, height: y0 - y1, fill: "none"});
    el(svg, "text", {x: (x0 + x1) / 2, y: 20, "text-anchor": "middle", "font-size": 14}, o.title);
    el(svg, "text", {x: (x0 + x1) / 2, y: h - 6, "text-anchor": "middle"}, o.xlabel);
    el(svg, "text", {x: 14, y: (y0 + y1) / 2, "text-anchor": "middle",
                     transform: "rotate(-90 14 " + (y0 + y1) / 2 + ")"}, o.ylabel);
    return {sx: sx, sy: sy, plot: el(svg, "g", {})};
  }
  function bar(plot, f, x, width, value, cls) {
    const top = f.sy(Math.max(value, 0)), bottom = f.sy(Math.min(value, 0));
    return el(plot, "rect", {"class": cls, x: fix(f.sx(x - width / 2)), width: fix(f.sx(width) - f.sx(0)),
                             y: fix(top), height: fix(bottom - top)});
  }
  function show(name, value) { root.querySelector("#" + ID + "-" + name + "-value").textContent = value; }
"""

_ENCODING_JS = r"""
  const signed = (v, digits) => (v < 0 || Object.is(v, -0) ? "-" : "+") + Math.abs(v).toFixed(digits);
  const positions = data.pe.length, dims = data.pe[0].length;
  const unit = [[-1, "-1.0"], [-0.5, "-0.5"], [0, "0.0"], [0.5, "0.5"], [1, "1.0"]];
  function update() {
    const p = parseInt(control("position").value, 10), d = parseInt(control("dimension").value, 10);
    const i = Math.floor(d / 2), kind = d % 2 === 0 ? "sin" : "cos";
    show("position", String(p));
    show("dimension", String(d));
    root.querySelector(".rbx-lines").textContent =
      "PE(" + p + ", " + d + ") = " + kind + "(" + p + " × " + data.omega[i].toFixed(4) + ") = " +
      signed(data.pe[p][d], 4) + "; pair " + i + ", wavelength " + data.wavelength[i].toFixed(1);
    const left = frame(svgs[0], {
      label: "Dimension " + d + " of the encoding over positions 0 to " + (positions - 1) +
             ", with position " + p + " marked.",
      title: "dimension " + d, xlabel: "position", ylabel: "PE value", x: [-2, positions + 1], y: [-1.15, 1.15],
      xticks: [0, 20, 40, 60, 80].filter(v => v < positions).map(v => [v, String(v)]), yticks: unit});
    const points = data.pe.map((row, q) => fix(left.sx(q)) + "," + fix(left.sy(row[d]))).join(" ");
    el(left.plot, "polyline", {"class": "rbx-series", points: points});
    el(left.plot, "circle", {"class": "rbx-point", cx: fix(left.sx(p)), cy: fix(left.sy(data.pe[p][d])), r: 5});
    const right = frame(svgs[1], {
      label: "The " + dims + " values of PE(" + p + ") as bars, dimensions 0 to " + (dims - 1) + ".",
      title: "PE(" + p + ")", xlabel: "dimension", ylabel: "PE value", x: [-1, dims], y: [-1.15, 1.15],
      xticks: [0, 16, 32, 48].filter(v => v < dims).map(v => [v, String(v)]), yticks: unit});
    data.pe[p].forEach((v, k) => bar(right.plot, right, k, 1, v, "rbx-bar"));
  }
"""

_SAMPLING_JS = r"""
  const words = data.words, ts = data.temperatures, ps = data.top_ps;
  const index = (values, input) => Math.max(0, Math.min(values.length - 1,
    Math.round((parseFloat(input.value) - values[0]) / (values[1] - values[0]))));
  function update() {
    const t = index(ts, control("temperature")), p = index(ps, control("top-p"));
    const kept = words.map((w, k) => (data.kept[t][p] >> k & 1) === 1);
    const tempered = data.tempered[t], final = data.final[t][p];
    const T = ts[t].toFixed(2), P = ps[p].toFixed(2);
    show("temperature", T);
    show("top-p", P);
    const lines = ["T = " + T + ", p = " + P + ": keeps " + kept.filter(k => k).length + " of " +
                   words.length + " words"];
    words.forEach((w, k) => lines.push("  " + w.padStart(6) + ": " + tempered[k].toFixed(3) + " -> " +
                                       final[k].toFixed(3)));
    root.querySelector(".rbx-lines").textContent = lines.join("\n");
    const cut = words.filter((w, k) => !kept[k]);
    const f = frame(svgs[0], {
      label: "Bar chart of the five words' probabilities at temperature " + T + ", with the words top-p " +
             P + " removes in grey (" + (cut.length ? cut.join(", ") : "none") + "): " +
             words.map((w, k) => w + " " + tempered[k].toFixed(3)).join(", ") + ".",
      title: "temperature " + T + ", top-p " + P, xlabel: "next word", ylabel: "probability",
      x: [-0.6, words.length - 0.4], y: [0, 1],
      xticks: words.map((w, k) => [k, w]), yticks: [0, 0.2, 0.4, 0.6, 0.8, 1].map(v => [v, v.toFixed(1)])});
    words.forEach((w, k) => bar(f.plot, f, k, 0.8, tempered[k], kept[k] ? "rbx-bar" : "rbx-cut"));
  }
"""

_START_JS = r"""
  root.querySelectorAll("input[type=range]").forEach(input => {
    input.disabled = false;
    input.addEventListener("input", update);
  });
  root.querySelectorAll(".rbx-note").forEach(note => note.remove());
  root.dataset.ready = "1";
  update();
"""


def _explorer(kind: str, controls: list, payload: dict, lines: str, plots: list, script: str) -> Explorer:
    """The HTML of one explorer: controls, printed lines, empty SVGs the script draws, data, script.

    controls: (name, min, max, step, value, shown value); plots: (class, width, height, label).
    """
    root = f"riverbank-explorer-{kind}-{next(_ids)}"
    parts = [_STYLE, f'<div class="riverbank-explorer" id="{root}">', '<div class="rbx-controls">']
    for name, low, high, step, value, shown in controls:
        parts.append(f'<div class="rbx-control"><label for="{root}-{name}">{name}</label>'
                     f'<input type="range" id="{root}-{name}" min="{low}" max="{high}" step="{step}" '
                     f'value="{value}" disabled>'
                     f'<output id="{root}-{name}-value" for="{root}-{name}">{shown}</output></div>')
    parts.append("</div>")
    parts.append(f'<pre class="rbx-lines" aria-live="polite">{html.escape(lines)}</pre>')
    parts.append('<p class="rbx-note">Run this cell to draw the plots and move the sliders.</p>')
    parts.append('<div class="rbx-plots">' + "".join(
        f'<svg class="{cls}" role="img" aria-label="{html.escape(label)}" viewBox="0 0 {w} {h}" '
        f'width="100%" fill="currentColor" font-size="13"><title>{html.escape(label)}</title></svg>'
        for cls, w, h, label in plots) + "</div>")
    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).replace("</", "<\\/")
    parts.append(f'<script type="application/json" class="rbx-data">{data}</script>')
    parts.append("<script>\n(function () {\n  \"use strict\";\n  const ID = " + json.dumps(root) + ";"
                 + _COMMON_JS + script + _START_JS + "})();\n</script>")
    parts.append("</div>")
    return Explorer("\n".join(parts), lines)
