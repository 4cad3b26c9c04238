"""Chapter 2's graded exercises: torch's softmax is switched off only while 2.1 and 2.2 are checked,
learner-style bugs are named and pointed to a hint or a section, bad code never crashes the grader,
and the notebook headings match the specs."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from riverbank.grading import grade, render
from riverbank.grading.exercises import EXERCISES
from riverbank.grading.exercises import ch02
from riverbank.grading.runner import COMPLETE, FAILED, NOT_ATTEMPTED

IDS = ("2.1", "2.2", "2.3", "2.4")
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("exercise_id", IDS)
def test_a_stub_is_not_attempted(exercise_id):
    def masked_softmax(*args):
        raise NotImplementedError

    assert grade(EXERCISES[exercise_id], masked_softmax).status == NOT_ATTEMPTED


def test_a_build_calling_an_unwritten_softmax_says_so():
    def masked_softmax(scores, mask=None):
        raise NotImplementedError

    def attention(q, k, v, causal=False, lengths=None, padding_side="right"):
        return masked_softmax(q @ k.transpose(-2, -1)) @ v

    text = render(grade(EXERCISES["2.2"], attention))
    assert "calls masked_softmax(), which is not written yet" in text


# --- torch's softmax is off during 2.1 and 2.2, and back afterwards --------------------------------

def softmax_by_torch(scores, mask=None):
    s = scores if mask is None else scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(s, dim=-1).nan_to_num(0.0)


def test_torch_softmax_is_refused_with_a_pointer_to_the_hints():
    result = grade(EXERCISES["2.1"], softmax_by_torch)
    text = render(result)
    assert result.earned == 0
    assert "switched off" in text and 'hint("2.1")' in text
    for fn in (lambda s, m=None: F.softmax(s, -1), lambda s, m=None: s.softmax(-1),
               lambda s, m=None: torch.log_softmax(s, -1).exp(), lambda s, m=None: torch.special.softmax(s, -1)):
        assert grade(EXERCISES["2.1"], fn).earned == 0


def test_the_library_softmax_is_restored_after_every_check_even_a_timeout():
    originals = [getattr(o, n) for o, n in ch02._LIBRARY_SOFTMAXES]

    def slow(scores, mask=None):
        while True:
            pass

    ex = ch02.MASKED_SOFTMAX
    for fn in (softmax_by_torch, slow, ch02.masked_softmax):
        grade(ex, fn)
        assert [getattr(o, n) for o, n in ch02._LIBRARY_SOFTMAXES] == originals
    assert torch.allclose(torch.softmax(torch.zeros(2), 0), torch.tensor([0.5, 0.5]))


def test_the_adapter_rejects_what_is_not_a_function():
    for obj in (42, torch.nn.Softmax, "masked_softmax"):
        result = grade(EXERCISES["2.1"], obj)
        assert result.status == FAILED and result.earned == 0
    text = render(grade(EXERCISES["2.2"], lambda q, k, v: q))
    assert "takes (q, k, v)" in text


# --- learner-style bugs --------------------------------------------------------------------------

def attention_top_left_causal(q, k, v, causal=False, lengths=None, padding_side="right"):
    n, m = q.shape[-2], k.shape[-2]
    keep = torch.tril(torch.ones(n, m, dtype=torch.bool)) if causal else None  # the chapter's mask, cut
    if lengths is not None:
        j = torch.arange(m)
        real = j[None, :] >= (m - lengths)[:, None] if padding_side == "left" else j[None, :] < lengths[:, None]
        real = real.reshape(len(lengths), *([1] * (q.dim() - 2)), m)
        keep = real if keep is None else keep & real
    return ch02.masked_softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), keep) @ v


def attention_fixed(q, k, v, causal=False, lengths=None, padding_side="right"):
    n, m = q.shape[-2], k.shape[-2]
    keep = torch.tril(torch.ones(n, m, dtype=torch.bool), diagonal=m - n) if causal else None
    if lengths is not None:
        j = torch.arange(m)
        real = j[None, :] >= (m - lengths)[:, None] if padding_side == "left" else j[None, :] < lengths[:, None]
        real = real.reshape(len(lengths), *([1] * (q.dim() - 2)), m)
        keep = real if keep is None else keep & real
    return ch02.masked_softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), keep) @ v


def test_a_top_left_causal_mask_is_named_and_the_fix_gets_full_marks():
    result = grade(EXERCISES["2.2"], attention_top_left_causal)
    text = render(result)
    assert result.earned < EXERCISES["2.2"].points
    assert "aligned to the first key" in result.mistakes[0], text
    assert 'hint("2.2", 2)' in text
    assert grade(EXERCISES["2.2"], attention_fixed).earned == EXERCISES["2.2"].points


def test_a_softmax_without_the_max_points_to_the_chapters_softmax_section():
    def no_max(scores, mask=None):
        e = scores.exp() if mask is None else scores.exp() * mask
        return e / e.sum(-1, keepdim=True)

    text = render(grade(EXERCISES["2.1"], no_max))
    assert "exp overflows" in text and "Softmax: the example [2, 1, 0]" in text


def test_every_section_named_is_a_heading_of_chapter_2():
    nb = json.loads((ROOT / "chapters" / "02_queries_keys_values.ipynb").read_text())
    headings = {re.sub(r"[*`]", "", line.lstrip("#").strip()).replace("$\\sqrt{d_k}$", "√d_k")
                for c in nb["cells"] if c["cell_type"] == "markdown"
                for line in "".join(c["source"]).splitlines() if line.startswith("#")}
    for ex in ch02.EXERCISES:
        for m in ex.mistakes:
            if m.section:
                assert m.section.split("“")[1].rstrip("”") in headings, m.section


def test_the_saturation_tolerance_covers_a_fresh_draw_and_excludes_the_known_mistakes():
    truth = ch02.saturated_fraction()
    tol = ch02._spread_tol(truth)
    assert 0.005 < tol < 0.05
    fresh = ch02._measure(99, ch02.N_QUERIES)
    assert abs(fresh - truth) < tol / 2
    for m in ch02.SATURATED.mistakes:
        assert abs(m.function() - truth) > 2 * tol, m.message


def test_the_cheap_sampler_agrees_with_drawing_every_key():
    g = torch.Generator().manual_seed(5)
    q = torch.randn(20_000, 1, 64, generator=g, dtype=torch.float64)
    k = torch.randn(20_000, 16, 64, generator=g, dtype=torch.float64)
    w = torch.softmax((q @ k.transpose(-2, -1)).squeeze(1), dim=-1)
    direct = float((w.amax(-1) > 0.9).double().mean())
    assert abs(direct - ch02.saturated_fraction()) < ch02._spread_tol(ch02.saturated_fraction()) / 2


# --- bad code never crashes the grader -----------------------------------------------------------

BAD = [
    lambda *a: None,
    lambda *a: "a string",
    lambda *a: torch.zeros(1),
    lambda *a: torch.zeros(2, 2, dtype=torch.int64),
    lambda *a: (torch.zeros(1), torch.zeros(1)),
    lambda *a: 1 / 0,
    lambda *a: float("nan"),
]


@pytest.mark.parametrize("exercise_id", IDS)
@pytest.mark.parametrize("index", range(len(BAD)))
def test_bad_code_gets_feedback_not_a_crash(exercise_id, index):
    ex = EXERCISES[exercise_id]
    fn = BAD[index]
    result = grade(ex, lambda *args: fn(*args))
    assert result.earned < ex.points
    assert render(result)


@pytest.mark.parametrize("exercise_id", IDS)
def test_the_reference_checks_are_fast(exercise_id):
    ex = EXERCISES[exercise_id]
    ex.reference()if not ex.arg_names else None  # caches filled, as after the first check
    start = time.perf_counter()
    assert grade(ex, ex.reference).status == COMPLETE
    assert time.perf_counter() - start < 2.0


def test_the_notebook_headings_give_each_exercises_level_and_points():
    nb = json.loads((ROOT / "solutions" / "02_queries_keys_values.ipynb").read_text())
    cells = {c.get("id"): "".join(c["source"]) for c in nb["cells"]}
    for ex in ch02.EXERCISES:
        n = ex.id.replace(".", "-")
        heading = cells[f"ex-{n}-md"].splitlines()[0]
        assert heading.startswith(f"## Exercise {ex.id}: ") and heading.endswith(
            f" ({ex.level}, {ex.points:g} points)"), heading
        assert f'check("{ex.id}", {ex.function_name})' == cells[f"ex-{n}-check"].strip()
