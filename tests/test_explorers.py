"""riverbank.explorers: the explorers of chapters 3 and 5 that answer their sliders without Python.

Fast and without a kernel: the payload functions against known answers, the lines the explorer's
script prints (mirrored in Python) against the chapters' own ``describe`` at every setting, and the
explorers stored in the chapters against the package's functions recomputed over the whole grid.
tests/site/test_explorers.py moves the sliders in a browser.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import nbformat
import pytest
import torch

from riverbank import explorers
from riverbank.model import top_p_filter
from riverbank.positions import sinusoidal_encoding, sinusoidal_frequencies

ROOT = Path(__file__).resolve().parents[1]
CH3 = ROOT / "chapters" / "03_positional_encodings.ipynb"
CH5 = ROOT / "chapters" / "05_transformer_block.ipynb"
WORDS = ["bank", "shore", "edge", "money", "moon"]
LOGITS = torch.tensor([3.0, 2.2, 1.5, 0.3, -1.0])
TEMPERATURES = [round(0.1 + 0.05 * i, 2) for i in range(59)]  # the chapter's slider: 0.1 to 3.0
TOP_PS = [round(0.05 * j, 2) for j in range(1, 21)]             # 0.05 to 1.0


def cell(path: Path, cell_id: str) -> nbformat.NotebookNode:
    found = [c for c in nbformat.read(path, as_version=4).cells if c.get("id") == cell_id]
    assert len(found) == 1, f"{path.name} has no single cell {cell_id!r}"
    return found[0]


def chapter_describe(path: Path, cell_id: str, namespace: dict):
    """The chapter's own describe(), run from its cell's source with the names it needs."""
    exec(cell(path, cell_id).source, namespace)
    return namespace["describe"]


@pytest.fixture(scope="module")
def ch3_describe():
    return chapter_describe(CH3, "explore-def", {"math": math, "sinusoidal_encoding": sinusoidal_encoding,
                                                 "sinusoidal_frequencies": sinusoidal_frequencies})


@pytest.fixture(scope="module")
def ch5_describe():
    return chapter_describe(CH5, "describe-def", {"torch": torch, "logits": LOGITS, "words": WORDS,
                                                  "top_p_filter": top_p_filter})


def grids():
    tempered = torch.stack([torch.softmax(LOGITS / t, dim=-1) for t in TEMPERATURES])
    final = torch.stack([top_p_filter(tempered, p) for p in TOP_PS], dim=1)
    return tempered, final


def stored_explorers(path: Path) -> list[str]:
    return [out["data"]["text/html"] for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"
            for out in c.outputs if "riverbank-explorer" in out.get("data", {}).get("text/html", "")]


# --- the payloads against known answers ----------------------------------------------------------

def test_encoding_payload_holds_the_formula_rounded_as_printed():
    payload = explorers.encoding_payload(sinusoidal_encoding(100, 64), sinusoidal_frequencies(64))
    assert len(payload["pe"]) == 100 and {len(row) for row in payload["pe"]} == {64}
    assert payload["pe"][10][6] == round(math.sin(10 * 10000 ** (-6 / 64)), 4) == -0.8798
    assert payload["pe"][10][7] == round(math.cos(10 * 10000 ** (-6 / 64)), 4)
    assert payload["pe"][0][1] == 1.0 and payload["pe"][0][0] == 0.0
    assert payload["omega"][3] == 0.4217 and payload["wavelength"][3] == 14.9  # 2π / 0.42170
    assert len(payload["omega"]) == 32


def test_encoding_lines_match_the_known_line():
    payload = explorers.encoding_payload(sinusoidal_encoding(100, 64), sinusoidal_frequencies(64))
    assert explorers.encoding_lines(payload, 10, 6) == \
        "PE(10, 6) = sin(10 × 0.4217) = -0.8798; pair 3, wavelength 14.9"
    assert explorers.encoding_lines(payload, 0, 1) == "PE(0, 1) = cos(0 × 1.0000) = +1.0000; pair 0, wavelength 6.3"


def test_negative_zero_keeps_its_sign_as_python_prints_it():
    payload = explorers.encoding_payload([[-0.00001, 0.5]], [1.0])
    assert explorers.encoding_lines(payload, 0, 0).split(" = ")[2].startswith("-0.0000")
    assert "Object.is(v, -0)" in explorers._ENCODING_JS  # the script's sign does the same


def test_sampling_payload_at_t1_p09_keeps_three_words():
    tempered, final = grids()
    payload = explorers.sampling_payload(WORDS, TEMPERATURES, TOP_PS, tempered, final)
    t, p = TEMPERATURES.index(1.0), TOP_PS.index(0.9)
    assert payload["kept"][t][p] == 0b00111                   # bank, shore, edge
    assert payload["tempered"][t] == [0.569, 0.256, 0.127, 0.038, 0.010]
    assert payload["final"][t][p] == [0.598, 0.269, 0.133, 0.0, 0.0]
    assert payload["kept"][t][TOP_PS.index(1.0)] == 0b11111    # p = 1 keeps every word
    assert all(row[0] == 0b00001 for row in payload["kept"][:3])  # T ≤ 0.2: bank alone up to p = 0.05
    assert explorers.sampling_lines(payload, t, p) == (
        "T = 1.00, p = 0.90: keeps 3 of 5 words\n"
        "    bank: 0.569 -> 0.598\n   shore: 0.256 -> 0.269\n    edge: 0.127 -> 0.133\n"
        "   money: 0.038 -> 0.000\n    moon: 0.010 -> 0.000")
    assert explorers.sampling_label(payload, t, p).startswith(
        "Bar chart of the five words' probabilities at temperature 1.00, with the words top-p 0.90 "
        "removes in grey (money, moon): bank 0.569,")


def test_a_word_kept_with_a_tiny_probability_still_counts_as_kept():
    final = [[[0.9996, 0.0004]]]  # prints as 0.000, but top-p kept it
    payload = explorers.sampling_payload(["a", "b"], [1.0], [1.0], [[0.9996, 0.0004]], final)
    assert payload["final"][0][0][1] == 0.0 and payload["kept"][0][0] == 0b11
    assert explorers.sampling_lines(payload, 0, 0).splitlines()[0].endswith("keeps 2 of 2 words")


def test_payload_shapes_are_checked():
    with pytest.raises(ValueError):
        explorers.encoding_payload(sinusoidal_encoding(4, 6), sinusoidal_frequencies(4))
    tempered, final = grids()
    with pytest.raises(ValueError):
        explorers.sampling_payload(WORDS, TEMPERATURES, TOP_PS[:-1], tempered, final)


# --- the lines the script prints are the chapters' lines, at every setting -----------------------

def test_encoding_lines_equal_the_chapters_describe_everywhere(ch3_describe):
    payload = explorers.encoding_payload(sinusoidal_encoding(100, 64), sinusoidal_frequencies(64))
    wrong = [(p, d) for p in range(100) for d in range(64)
             if explorers.encoding_lines(payload, p, d) != ch3_describe(p, d)]
    assert wrong == []


def test_sampling_lines_equal_the_chapters_describe_everywhere(ch5_describe):
    payload = explorers.sampling_payload(WORDS, TEMPERATURES, TOP_PS, *grids())
    wrong = [(T, p) for t, T in enumerate(TEMPERATURES) for j, p in enumerate(TOP_PS)
             if explorers.sampling_lines(payload, t, j) != ch5_describe(T, p)]
    assert wrong == []


def test_the_script_formats_the_lines_as_python_does():
    # The JavaScript pieces of each line, in the order describe() prints them.
    js = explorers._ENCODING_JS
    for piece in ['"PE(" + p + ", " + d + ") = " + kind + "(" + p + " × "', "data.omega[i].toFixed(4)",
                  "signed(data.pe[p][d], 4)", '"; pair " + i + ", wavelength "', "data.wavelength[i].toFixed(1)"]:
        assert piece in js, piece
    js = explorers._SAMPLING_JS
    for piece in ['"T = " + T + ", p = " + P + ": keeps "', 'w.padStart(6) + ": "', "tempered[k].toFixed(3)",
                  '" -> "', "final[k].toFixed(3)", "ts[t].toFixed(2)", "ps[p].toFixed(2)"]:
        assert piece in js, piece


# --- the HTML ------------------------------------------------------------------------------------

def test_each_explorer_is_one_self_contained_output_with_unique_ids():
    tempered, final = grids()
    pages = [explorers.encoding_explorer(sinusoidal_encoding(100, 64), sinusoidal_frequencies(64)).html,
             explorers.sampling_explorer(WORDS, TEMPERATURES, TOP_PS, tempered, final).html,
             explorers.sampling_explorer(WORDS, TEMPERATURES, TOP_PS, tempered, final).html]
    ids = [i for page in pages for i in re.findall(r'\bid="([^"]+)"', page)]
    assert len(ids) == len(set(ids)), "two explorers on one page would share an id"
    for page in pages:
        assert len(page.encode()) < 200_000
        assert not re.search(r"\bsrc=|<link|https?://(?!www\.w3\.org/2000/svg)", page), "loads another file"
        for input_id in re.findall(r'<input type="range" id="([^"]+)"', page):
            assert f'<label for="{input_id}">' in page and f'for="{input_id}">' in page
        assert page.count("<svg") == page.count('role="img"') == page.count('width="100%"') >= 1
        assert page.count('fill="currentColor"') == page.count("<svg") and "viewBox=" in page
        script = re.search(r"<script>\n(.*?)</script>", page, re.S).group(1)
        assert script.startswith("(function () {") and script.rstrip().endswith("})();")
        assert not re.search(r"\bvar\b", script), "let/const only, inside the function"


def test_the_explorer_text_is_its_first_lines():
    explorer = explorers.encoding_explorer(sinusoidal_encoding(100, 64), sinusoidal_frequencies(64), 3, 5)
    w = 10000 ** (-4 / 64)  # pair 2
    assert repr(explorer) == f"PE(3, 5) = cos(3 × {w:.4f}) = {math.cos(3 * w):+.4f}; pair 2, wavelength 11.2"
    assert f"<pre class=\"rbx-lines\" aria-live=\"polite\">{repr(explorer)}</pre>" in explorer._repr_html_()
    assert 'aria-label="Dimension 5 of the encoding over positions 0 to 99, with position 3 marked."' \
        in explorer.html


# --- the explorers stored in the chapters --------------------------------------------------------

def test_chapter_3_stores_an_explorer_of_the_whole_encoding():
    found = stored_explorers(CH3)
    assert len(found) == 1
    payload = explorers.payload_of(found[0])
    pe = torch.tensor(payload["pe"], dtype=torch.float64)
    assert pe.shape == (100, 64)
    assert (pe - sinusoidal_encoding(100, 64).double()).abs().max() <= 0.5e-4 + 1e-9
    omega = torch.tensor(payload["omega"], dtype=torch.float64)
    assert (omega - sinusoidal_frequencies(64)).abs().max() <= 0.5e-4 + 1e-12
    wavelength = torch.tensor(payload["wavelength"], dtype=torch.float64)
    assert (wavelength - 2 * math.pi / sinusoidal_frequencies(64)).abs().max() <= 0.05 + 1e-9


def test_chapter_5_stores_an_explorer_of_every_slider_setting():
    found = stored_explorers(CH5)
    assert len(found) == 1
    payload = explorers.payload_of(found[0])
    assert payload["words"] == WORDS
    assert payload["temperatures"] == TEMPERATURES and payload["top_ps"] == TOP_PS
    for t, T in enumerate(TEMPERATURES):
        tempered = torch.softmax(LOGITS / T, dim=-1)
        assert (torch.tensor(payload["tempered"][t]) - tempered).abs().max() <= 0.5e-3 + 1e-6, T
        for j, p in enumerate(TOP_PS):
            final = top_p_filter(tempered, p)  # one setting at a time, as explore() computes it
            assert (torch.tensor(payload["final"][t][j]) - final).abs().max() <= 0.5e-3 + 1e-6, (T, p)
            assert payload["kept"][t][j] == sum(1 << k for k, b in enumerate(final) if b > 0), (T, p)


@pytest.mark.parametrize("path", [CH3, CH5], ids=lambda p: p.stem)
def test_each_figure_appears_once_and_the_live_explorer_stays_off_the_site(path):
    interact = cell(path, "explorer")
    assert "widgets.interact(explore" in interact.source
    assert "remove-output" in interact.metadata.get("tags", [])
    once = cell(path, "explore-once")
    assert [o.output_type for o in once.outputs] == ["stream"], "the ordinary call draws the figure again"
    assert once.outputs[0].text.startswith("PE(10, 6) = " if path == CH3 else "T = 1.00, p = 0.90: keeps 3")
    assert "explorer" in cell(path, "explorer-static").source


def test_no_notebook_stores_widget_state():
    found = [p.relative_to(ROOT).as_posix() for folder in ("chapters", "solutions", "exercises", "quizzes")
             for p in sorted((ROOT / folder).glob("*.ipynb")) if "widgets" in nbformat.read(p, 4).metadata]
    assert found == []


def test_chapter_5_trains_with_printed_progress_not_a_widget():
    train = cell(CH5, "train")
    assert "tqdm" not in train.source and "tqdm" not in cell(CH5, "imports").source
    assert [o.output_type for o in train.outputs] == ["stream"]
    assert train.outputs[0].text.splitlines()[0].startswith("step  50 of 200: loss ")


def test_execute_stores_no_widget_state(tmp_path, monkeypatch):
    import nbclient

    class Client:  # stands in for nbclient, which writes the widget state it collected into nb
        def __init__(self, nb, **kwargs):
            self.nb = nb

        def execute(self):
            self.nb.metadata["widgets"] = {
                "application/vnd.jupyter.widget-state+json": {"state": {"x": {}}, "version_major": 2}}

    monkeypatch.setattr(nbclient, "NotebookClient", Client)
    path = tmp_path / "n.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")]), path)
    from riverbank.authoring import execute

    execute(path)
    assert "widgets" not in nbformat.read(path, 4).metadata
