"""Chapter 8's graded exercises: the references score full marks, stubs are "not attempted", bad
code never crashes the grader, every named mistake is named, and the checks stay within their time."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from riverbank.grading import grade, render
from riverbank.grading.exercises import EXERCISES, ch07, ch08
from riverbank.grading.runner import NOT_ATTEMPTED
from riverbank.grading.spec import BUILD, EXPERIMENT, WARM_UP
from riverbank.grading.tolerance import promote
from riverbank.positions import rope_frequencies

SCALED, ROTARY, OVERSHOOT, CONVERT = (EXERCISES[i] for i in ("8.1", "8.2", "8.3", "8.4"))
ALL = (SCALED, ROTARY, OVERSHOOT, CONVERT)
ROOT = Path(__file__).resolve().parents[1]


def name(x):
    return getattr(x, "id", None) or getattr(x, "__name__", None) or type(x).__name__


def test_chapter_8_exercises_are_registered_with_levels_and_hints():
    assert [ex.id for ex in ch08.EXERCISES] == ["8.1", "8.2", "8.3", "8.4"]
    assert [ex.level for ex in ALL] == [WARM_UP, BUILD, EXPERIMENT, WARM_UP]
    assert all(len(ex.hints) == 3 for ex in ALL)
    assert all(m.hint is not None or m.section for ex in ALL for m in ex.mistakes)


@pytest.mark.parametrize("ex", ALL, ids=name)
def test_messages_fit_the_page(ex):
    for message in [m.message for m in ex.mistakes] + [hint for _, hint, *_ in ex.error_hints]:
        assert len(f"  Also consistent with: {message}.") <= 80, message


@pytest.mark.parametrize("ex,handed_in", [(SCALED, ch08.scaled_rope_frequencies),
                                          (ROTARY, ch08.RotaryCachedAttention), (OVERSHOOT, ch08._answer_83),
                                          (CONVERT, ch08.to_split_halves)],
                         ids=name)
def test_the_course_version_gets_full_marks_within_the_time_limits(ex, handed_in):
    started = time.perf_counter()
    result = grade(ex, handed_in)
    assert result.earned == ex.points and not result.mistakes, render(result)
    assert time.perf_counter() - started < len(ex.cases) * ex.time_limit / 2


def test_ntk_keeps_the_fastest_pair_and_slows_the_slowest_by_the_scale():
    for head_dim, scale in [(8, 4.0), (64, 2.0), (128, 8.0)]:
        plain = rope_frequencies(head_dim)
        ntk = ch08._precise_81(head_dim, scale, "ntk")
        assert ntk[0] == 1.0 and math.isclose(ntk[-1] * scale, plain[-1], rel_tol=1e-12)
        assert torch.all(ntk <= plain) and torch.all(ntk >= plain / scale - 1e-15)
        assert torch.allclose(ch08._precise_81(head_dim, scale, "interpolation") * scale, plain)


def test_the_overshoot_answer_is_not_on_a_knife_edge():
    # the pairs that never turned fully in training are decided by a clear margin from 2π
    seen = 2047 * rope_frequencies(128)
    assert ((seen - 2 * math.pi).abs() / (2 * math.pi)).min() > 0.01
    # NTK's worst slow pair: between interpolation's ratio (about 1) and no scaling's (about 4)
    assert ch08.overshoot("interpolation") < ch08._answer_83() < ch08.overshoot("none")


@pytest.mark.parametrize("case", [c for c in ROTARY.cases if c.make_inputs()[-1] == "tokens"], ids=lambda c: c.name)
def test_greedy_tokens_are_far_from_a_tie_and_the_same_in_float64(case):
    config, state, prompt, chunks, n_new, what = case.make_inputs()
    tokens32 = ch07.run_uncached(config, state, prompt, chunks, n_new, what)
    assert torch.equal(tokens32, ch07.run_uncached(*promote((config, state, prompt, chunks, n_new, what))))
    logits = ch07.run_uncached(config, state, prompt, chunks, n_new, "logits")[:, prompt.shape[1] - 1:]
    top2 = logits.topk(2, dim=-1).values
    assert (top2[..., 0] - top2[..., 1]).min() > 1e-3


def test_the_course_rope_model_generates_the_reference_tokens_with_its_own_cache():
    from riverbank.model import generate
    config, state, prompt, chunks, n_new, _ = ROTARY.cases[0].make_inputs()
    model = ch07._decoder(config, state)
    assert torch.equal(generate(model, prompt, n_new, cache=True)[:, prompt.shape[1]:],
                       ch07.run_uncached(config, state, prompt, chunks, n_new, "tokens"))


# --- every named mistake is named ---------------------------------------------------------------------

def _named_first(ex, handed_in, message):
    result = grade(ex, handed_in)
    assert result.earned < ex.points, render(result)
    assert result.mistakes and result.mistakes[0] == message, render(result)


@pytest.mark.parametrize("mistake", SCALED.mistakes, ids=lambda m: m.message[:40])
def test_each_frequency_mistake_is_named(mistake):
    _named_first(SCALED, mistake.function, mistake.message)


ROTARY_WRONG = [dict(rope_offset=False), dict(offset="seq_len"), dict(offset="seq_len_rope"),
                dict(rotate_values=True), dict(rotate_cached=True), dict(convention="split_halves"),
                dict(mask="top_left"), dict(mask="none"), dict(append=False), dict(scale="none")]


@pytest.mark.parametrize("wrong", ROTARY_WRONG, ids=lambda w: "-".join(f"{k}={v}" for k, v in w.items()))
def test_each_rotary_mistake_is_named(wrong):
    class Wrong(ch07.CachedSelfAttention):
        def __init__(self, d_model, n_heads):
            super().__init__(d_model, n_heads, rope=True, **wrong)
    message = next(m.message for m in ROTARY.mistakes
                   if wrong in [c.cell_contents for c in m.function.__closure__ or ()])
    _named_first(ROTARY, Wrong, message)


@pytest.mark.parametrize("mistake", CONVERT.mistakes, ids=lambda m: m.message[:40])
def test_each_conversion_mistake_is_named(mistake):
    _named_first(CONVERT, mistake.function, mistake.message)


def test_the_conversion_is_hugging_faces_permute_and_makes_split_halves_give_the_same_scores():
    from riverbank.positions import apply_rope, rope_pair_permutation
    g = torch.Generator().manual_seed(0)
    w_q, w_k = torch.randn(32, 16, generator=g), torch.randn(16, 16, generator=g)   # 4 heads, 2 kv heads
    # convert_llama_weights_to_hf.py's permute(w, n_heads, dim1, dim2)
    hf = w_q.view(4, 32 // 4 // 2, 2, 16).transpose(1, 2).reshape(32, 16)
    assert torch.equal(ch08.to_split_halves(w_q, 4), hf)
    x, pos = torch.randn(6, 16, generator=g), torch.arange(6)

    def scores(wq, wk, convention):
        q = apply_rope((x @ wq.T).view(6, 4, 8).transpose(0, 1), pos, convention)
        k = apply_rope((x @ wk.T).view(6, 2, 8).transpose(0, 1), pos, convention).repeat_interleave(2, 0)
        return q @ k.transpose(-2, -1)
    assert torch.allclose(scores(ch08.to_split_halves(w_q, 4), ch08.to_split_halves(w_k, 2), "split_halves"),
                          scores(w_q, w_k, "interleaved"), atol=1e-4)
    assert rope_pair_permutation(8).tolist() == ch08.to_split_halves(torch.arange(8.0)[:, None], 1).flatten().int().tolist()


@pytest.mark.parametrize("mistake", OVERSHOOT.mistakes, ids=lambda m: m.message[:40])
def test_each_overshoot_mistake_is_named(mistake):
    answer = mistake.function()
    _named_first(OVERSHOOT, lambda: answer, mistake.message)


# --- stubs and broken code ----------------------------------------------------------------------------

def _stub(*args):
    raise NotImplementedError


class StubInit(nn.Module):
    def __init__(self, d_model, n_heads):
        super().__init__()
        raise NotImplementedError


class StubForward(ch08.RotaryCachedAttention):
    def forward(self, x, cache=None, layer=0):
        raise NotImplementedError


@pytest.mark.parametrize("ex,stub", [(SCALED, _stub), (ROTARY, StubInit), (ROTARY, StubForward), (OVERSHOOT, _stub),
                                     (CONVERT, _stub)],
                         ids=["frequencies", "rotary-init", "rotary-forward", "overshoot", "convert"])
def test_stubs_are_not_attempted(ex, stub):
    result = grade(ex, stub)
    assert result.status == NOT_ATTEMPTED and "not attempted" in render(result)


class NeedsKvHeads(ch07.CachedSelfAttention):
    """Chapter 7's signature handed in: __init__ wants a third argument."""

    def __init__(self, d_model, n_heads, n_kv_heads):
        super().__init__(d_model, n_heads, n_kv_heads, rope=True)


class WrongNames(nn.Module):
    def __init__(self, d_model, n_heads):
        super().__init__()
        self.wq = nn.Linear(d_model, d_model)

    def forward(self, x, cache=None, layer=0):
        return x


class Crashes(ch08.RotaryCachedAttention):
    def forward(self, x, cache=None, layer=0):
        return x @ x


@pytest.mark.parametrize("ex,handed_in", [
    (ROTARY, NeedsKvHeads), (ROTARY, WrongNames), (ROTARY, Crashes), (ROTARY, ch08.RotaryCachedAttention(32, 4)),
    (ROTARY, ch08.scaled_rope_frequencies), (SCALED, lambda head_dim, scale, method: None),
    (SCALED, lambda head_dim, scale, method: rope_frequencies(head_dim)[:-1].float()),
    (SCALED, lambda head_dim, scale, method: [1.0] * (head_dim // 2)),
    (OVERSHOOT, lambda: "1.6"), (OVERSHOOT, lambda: torch.tensor(1.6)), (OVERSHOOT, lambda: float("inf")),
    (CONVERT, lambda weight, n_heads: weight.view(n_heads, -1)), (CONVERT, lambda weight, n_heads: weight.double()),
    (CONVERT, lambda weight, n_heads: weight.mul_(2)),
], ids=name)
def test_bad_submissions_lose_points_without_crashing_the_grader(ex, handed_in):
    result = grade(ex, handed_in)
    assert result.earned < ex.points
    assert render(result)


def test_wrong_layer_names_are_told_the_expected_names():
    result = grade(ROTARY, WrongNames)
    assert ch07.NAMES_HINT in result.mistakes, render(result)


def _text(path: Path) -> str:
    nb = json.loads(path.read_text())
    parts = []
    for cell in nb["cells"]:
        parts.append("".join(cell["source"]))
        for out in cell.get("outputs", []):
            parts.append("".join(out.get("text", "")) + "".join(out.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def test_the_measured_answer_is_printed_nowhere():
    answer = f"{ch08._answer_83():.4f}"
    for folder in ("chapters", "solutions", "exercises"):
        assert answer not in _text(ROOT / folder / "08_rope.ipynb"), folder
