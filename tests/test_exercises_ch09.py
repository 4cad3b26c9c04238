"""Chapter 9's graded exercises: the references score full marks, stubs are "not attempted", bad code
never crashes the grader, every named mistake is named, inputs keep clear of rounding ties, and the
speculative step's output has the target's distribution while its named mistakes' do not."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from riverbank.grading import grade, render
from riverbank.grading.exercises import EXERCISES, ch09
from riverbank.grading.runner import NOT_ATTEMPTED
from riverbank.grading.spec import BUILD, EXPERIMENT, WARM_UP
from riverbank.model import load_reversal_model
from riverbank.tasks import Reversal

GROUPWISE, VERIFY, CACHE, REJECT = (EXERCISES[i] for i in ("9.1", "9.2", "9.3", "9.4"))
ALL = (GROUPWISE, VERIFY, CACHE, REJECT)
ROOT = Path(__file__).resolve().parents[1]


def name(x):
    return getattr(x, "id", None) or getattr(x, "__name__", None) or type(x).__name__


def test_chapter_9_exercises_are_registered_with_levels_and_hints():
    assert [ex.id for ex in ch09.EXERCISES] == ["9.1", "9.2", "9.3", "9.4"]
    assert [ex.level for ex in ALL] == [WARM_UP, BUILD, BUILD, EXPERIMENT]
    assert all(len(ex.hints) == 3 for ex in ALL)
    assert all(m.hint is not None or m.section for ex in ALL for m in ex.mistakes)


@pytest.mark.parametrize("ex", ALL, ids=name)
def test_messages_fit_the_page(ex):
    for message in [m.message for m in ex.mistakes] + [hint for _, hint, *_ in ex.error_hints]:
        assert len(f"  Also consistent with: {message}.") <= 80, message


@pytest.mark.parametrize("ex,handed_in", [(GROUPWISE, ch09.fake_quantize_groupwise),
                                          (VERIFY, ch09.speculative_verify),
                                          (CACHE, ch09.CourseZeroPointKVCache), (REJECT, ch09._answer_94)],
                         ids=name)
def test_the_course_version_gets_full_marks_within_the_time_limits(ex, handed_in):
    started = time.perf_counter()
    result = grade(ex, handed_in)
    assert result.earned == ex.points and not result.mistakes, render(result)
    assert time.perf_counter() - started < len(ex.cases) * ex.time_limit / 2


# --- inputs away from rounding ties ---------------------------------------------------------------

@pytest.mark.parametrize("case", GROUPWISE.cases, ids=lambda c: c.name)
def test_groupwise_inputs_are_far_from_rounding_ties(case):
    w, bits, group_size = case.make_inputs()
    g = w.double().reshape(w.shape[0], -1, group_size)
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    scale = (hi - lo) / (2 ** bits - 1)
    varying = (scale > 0).squeeze(-1)
    t, z = (g / scale)[varying], (-lo / scale)[varying]
    assert ((t - t.floor() - 0.5).abs() > 0.1).all()         # round(w / scale) is never a near tie
    assert ((z - z.floor() - 0.5).abs() > 0.1).all()         # nor is the zero point
    # and float32 gives the codes float64 gives
    assert torch.equal(ch09.fake_quantize_groupwise(w, bits, group_size).double(),
                       ch09.fake_quantize_groupwise(w.double(), bits, group_size)) or \
        (ch09.fake_quantize_groupwise(w, bits, group_size).double()
         - ch09.fake_quantize_groupwise(w.double(), bits, group_size)).abs().max() < 1e-5


def test_groupwise_hand_computed_example():
    # one group [-1, 0, 0.5, 2], 2 bits: scale 1, zero point 1, codes [0, 1, 2, 3] (0.5 + 1 = 1.5 → 2)
    w = torch.tensor([[-1.0, 0.0, 0.4, 2.0]])
    assert torch.equal(ch09.fake_quantize_groupwise(w, 2, 4), torch.tensor([[-1.0, 0.0, 0.0, 2.0]]))
    assert torch.equal(ch09.fake_quantize_groupwise(torch.full((1, 4), 3.5), 4, 4), torch.full((1, 4), 3.5))
    # zero point: a skewed group loses less than absmax with the same bits
    g = torch.Generator().manual_seed(0)
    skewed = torch.rand(64, 64, generator=g) * 2 - 0.1
    err_zero = (ch09.fake_quantize_groupwise(skewed, 4, 32) - skewed).abs().mean()
    err_absmax = (ch09._fake_quantize(skewed, 4, 32, symmetric=True) - skewed).abs().mean()
    assert err_zero < 0.7 * err_absmax


@pytest.mark.parametrize("case", [c for c in CACHE.cases if c.make_inputs()[-1] != "digits"], ids=lambda c: c.name)
def test_cache_inputs_are_far_from_rounding_ties(case):
    _, updates, _ = case.make_inputs()
    for _, k, v in updates:
        for x in (k, v):
            x = x.double()
            lo = x.amin(-1, keepdim=True)
            scale = (x.amax(-1, keepdim=True) - lo) / 255
            varying = (scale > 0).squeeze(-1)
            t = ((x - lo) / scale)[varying]
            assert ((t - t.floor() - 0.5).abs() > 0.1).all()


def test_the_cache_stores_uint8_codes_and_its_bytes_are_a_third_of_float32():
    cache = ch09.CourseZeroPointKVCache(2)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        for layer in range(2):
            k, v = torch.randn(2, 2, 4, 32, generator=g), torch.randn(2, 2, 4, 32, generator=g)
            keys, values = cache.update(layer, k, v)
    assert cache.codes["k"][0].dtype == torch.uint8 and cache.seq_len == 12
    float32_bytes = 2 * 2 * (2 * 2 * 12 * 32) * 4
    assert cache.nbytes == float32_bytes // 4 + 2 * 2 * (2 * 2 * 12) * 8     # codes + scales + offsets
    # the last update's rows come back within half a step
    step = (v.amax(-1, keepdim=True) - v.amin(-1, keepdim=True)) / 255
    assert ((values[:, :, -4:] - v).abs() <= step / 2 + 1e-6).all()


def test_the_digits_check_is_far_from_a_tie_and_the_quantized_cache_keeps_the_answer():
    n_layers, prompts, _ = ch09._digits_input()
    model = load_reversal_model()
    cache = ch09.CourseZeroPointKVCache(n_layers)
    with torch.no_grad():
        logits = [model(prompts, start=0, cache=cache)[0][:, -1]]
        digits = [logits[-1].argmax(-1)]
        for _ in range(7):
            logits.append(model(digits[-1][:, None], start=cache.seq_len, cache=cache)[0][:, -1])
            digits.append(logits[-1].argmax(-1))
    top2 = torch.stack(logits, 1).topk(2, dim=-1).values
    assert (top2[..., 0] - top2[..., 1]).min() > 1.0          # a code flip cannot change a digit
    task = Reversal()
    assert torch.equal(torch.stack(digits, 1), task.answer(task.held_out()[:len(prompts)]))


# --- the speculative step ---------------------------------------------------------------------------

def out_tokens(case):
    return ch09.speculative_verify(*case.make_inputs()[1:])


@pytest.mark.parametrize("case", [c for c in VERIFY.cases if c.make_inputs()[0] == "tokens"], ids=lambda c: c.name)
def test_verify_cases_decide_by_clear_margins(case):
    _, p, q, tokens, uniforms, resample = case.make_inputs()
    k = len(tokens)
    for i in range(k):
        a = min(1.0, float(p[i, tokens[i]] / q[i, tokens[i]]))
        assert abs(float(uniforms[i]) - a) > 1e-3 and 0 <= float(uniforms[i]) < 1
        if i == len(out_tokens(case)) - 1 and len(out_tokens(case)) <= k:
            assert a < 0.95                                  # the rejected token could be rejected
    out = ch09.speculative_verify(p, q, tokens, uniforms, resample)
    n = len(out) - 1
    last = p[k] if n == k else (p[n] - q[n]).clamp(min=0) / (p[n] - q[n]).clamp(min=0).sum()
    edges = last.double().cumsum(0)
    assert (edges - resample).abs().min() > 1e-3
    assert out == ch09.speculative_verify(p.double(), q.double(), tokens, uniforms.double(), resample)


def test_the_cases_cover_every_outcome():
    lengths = [len(ch09.speculative_verify(*c.make_inputs()[1:])) for c in VERIFY.cases
               if c.make_inputs()[0] == "tokens"]
    ks = [len(c.make_inputs()[3]) for c in VERIFY.cases if c.make_inputs()[0] == "tokens"]
    assert lengths[0] == ks[0] + 1 and lengths[1] == 1 and lengths[2] == 3 and ks[4] == 0 and lengths[4] == 1


def test_the_output_is_distributed_as_the_target_and_the_mistakes_are_not():
    _, p, q, *_ = ch09._distribution_inputs()
    table = ch09._distribution(ch09.speculative_verify, p.double(), q.double())
    assert torch.allclose(table.sum(dim=1), p[0].double(), atol=1e-12)            # first token ~ p_0
    # the second token exists only after an accepted draft token, and then it is p_1's
    accepted = torch.minimum(p[0], q[0]).double()
    assert torch.allclose(table[:, :-1], accepted[:, None] * p[1].double()[None, :], atol=1e-12)
    for kw in (dict(ratio="q/p"), dict(clamp=False), dict(renormalise=False), dict(resample="p"),
               dict(offset=1), dict(accept_below=False)):
        wrong = ch09._distribution(lambda *a, kw=kw: ch09._verify(*a, **kw), p.double(), q.double())
        assert (wrong.sum(dim=1) - p[0].double()).abs().max() > 0.02, kw


def test_the_grid_gives_exact_probabilities_for_any_distribution_of_the_kind():
    # thresholds and bucket edges on the grid lines: shifting every uniform inside its cell changes nothing
    _, p, q, *_ = ch09._distribution_inputs()
    a = torch.minimum(torch.ones(4), p[0] / q[0])
    assert torch.allclose(a * ch09.GRID_ACCEPT, (a * ch09.GRID_ACCEPT).round(), atol=1e-5)
    residual = (p[0] - q[0]).clamp(min=0) / (p[0] - q[0]).clamp(min=0).sum()
    for d in (residual, p[1]):
        edges = d.cumsum(0) * ch09.GRID_RESAMPLE
        assert torch.allclose(edges, edges.round(), atol=1e-4)


# --- every named mistake is named -------------------------------------------------------------------

def _named_first(ex, handed_in, message):
    result = grade(ex, handed_in)
    assert result.earned < ex.points, render(result)
    assert result.mistakes and result.mistakes[0] == message, render(result)


@pytest.mark.parametrize("mistake", GROUPWISE.mistakes, ids=lambda m: m.message[:40])
def test_each_groupwise_mistake_is_named(mistake):
    _named_first(GROUPWISE, mistake.function, mistake.message)


VERIFY_WRONG = [dict(ratio="q/p"), dict(accept_below=False), dict(clamp=False), dict(renormalise=False),
                dict(resample="p"), dict(bonus=False), dict(bonus_row=1), dict(stop=False), dict(offset=1)]


@pytest.mark.parametrize("wrong", VERIFY_WRONG, ids=lambda w: "-".join(f"{k}={v}" for k, v in w.items()))
def test_each_verify_mistake_is_named(wrong):
    assert len(VERIFY_WRONG) == len(VERIFY.mistakes)
    def speculative_verify(target_probs, draft_probs, draft_tokens, accept_uniforms, resample_uniform):
        return ch09._verify(target_probs, draft_probs, draft_tokens, accept_uniforms, resample_uniform, **wrong)
    message = VERIFY.mistakes[VERIFY_WRONG.index(wrong)].message   # listed in the grader's order
    _named_first(VERIFY, speculative_verify, message)


CACHE_WRONG = [dict(store="float"), dict(scales="tensor"), dict(code_dtype=torch.float32), dict(returned="new"),
               dict(offset=False), dict(steps=256), dict(symmetric=True), dict(count="every layer"),
               dict(scale_dtype=torch.float16)]


@pytest.mark.parametrize("wrong", CACHE_WRONG, ids=lambda w: "-".join(f"{k}={v}" for k, v in w.items()))
def test_each_cache_mistake_is_named(wrong):
    assert len(CACHE_WRONG) == len(CACHE.mistakes)
    class Wrong(ch09.ZeroPointKVCache):
        def __init__(self, n_layers):
            super().__init__(n_layers, **wrong)
    message = CACHE.mistakes[CACHE_WRONG.index(wrong)].message     # listed in the grader's order
    _named_first(CACHE, Wrong, message)


@pytest.mark.parametrize("mistake", REJECT.mistakes, ids=lambda m: m.message[:40])
def test_each_rejection_mistake_is_named(mistake):
    answer = mistake.function()
    _named_first(REJECT, lambda: answer, mistake.message)


def test_the_rejections_answer_is_not_on_a_knife_edge():
    measured = ch09.rejections(torch.float32)
    boundary = (math.floor(measured * 100) + 0.5) / 100                  # where 2 decimals round over
    assert abs(measured - boundary) > 50 * abs(measured - ch09.rejections(torch.float64))
    assert ch09._answer_tol_94(ch09._answer_94()) < 0.02
    # fewer bits, more rejections; 8 bits hardly any
    assert ch09.rejections(torch.float32, bits=8) < measured < ch09.rejections(torch.float32, bits=3)


# --- stubs and broken code --------------------------------------------------------------------------

def _stub(*args):
    raise NotImplementedError


class StubInit:
    def __init__(self, n_layers):
        raise NotImplementedError

    def update(self, layer, k, v):
        raise NotImplementedError


class StubUpdate(ch09.CourseZeroPointKVCache):
    def update(self, layer, k, v):
        raise NotImplementedError


def speculative_verify(target_probs, draft_probs, draft_tokens, accept_uniforms, resample_uniform):
    raise NotImplementedError


@pytest.mark.parametrize("ex,stub", [(GROUPWISE, _stub), (VERIFY, speculative_verify), (CACHE, StubInit),
                                     (CACHE, StubUpdate), (REJECT, _stub)],
                         ids=["groupwise", "verify", "cache-init", "cache-update", "rejections"])
def test_stubs_are_not_attempted(ex, stub):
    result = grade(ex, stub)
    assert result.status == NOT_ATTEMPTED and "not attempted" in render(result)


class ReturnsNone(ch09.CourseZeroPointKVCache):
    def update(self, layer, k, v):
        super().update(layer, k, v)


class NoUpdate:
    def __init__(self, n_layers):
        pass


class Mutates(ch09.CourseZeroPointKVCache):
    def update(self, layer, k, v):
        return super().update(layer, k.add_(1.0), v)


@pytest.mark.parametrize("ex,handed_in", [
    (GROUPWISE, lambda w, bits, group_size: None), (GROUPWISE, lambda w, bits, group_size: w.double()),
    (GROUPWISE, lambda w, bits, group_size: w.mul_(2)), (GROUPWISE, lambda w, bits: w),
    (VERIFY, lambda target_probs, draft_probs, draft_tokens, accept_uniforms, resample_uniform: None),
    (VERIFY, lambda target_probs, draft_probs, draft_tokens, accept_uniforms, resample_uniform: [0.5, 1.5]),
    (VERIFY, lambda target_probs, draft_probs, draft_tokens, accept_uniforms, resample_uniform: "0 1"),
    (VERIFY, lambda target_probs, draft_probs, draft_tokens, accept_uniforms, resample_uniform: list(range(9))),
    (VERIFY, lambda target_probs, draft_probs: [0]), (VERIFY, ch09.CourseZeroPointKVCache),
    (CACHE, ReturnsNone), (CACHE, NoUpdate), (CACHE, ch09.CourseZeroPointKVCache(2)), (CACHE, ch09.speculative_verify),
    (CACHE, Mutates),
    (REJECT, lambda: "1.3"), (REJECT, lambda: torch.tensor(float("nan"))), (REJECT, lambda: None),
], ids=name)
def test_bad_submissions_lose_points_without_crashing_the_grader(ex, handed_in):
    result = grade(ex, handed_in)
    assert result.earned < ex.points
    assert render(result)


def _text(path: Path) -> str:
    nb = json.loads(path.read_text())
    parts = []
    for cell in nb["cells"]:
        parts.append("".join(cell["source"]))
        for out in cell.get("outputs", []):
            parts.append("".join(out.get("text", "")) + "".join(out.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def test_the_measured_answer_is_printed_nowhere():
    answer = f"{ch09._answer_94():.2f}"
    for folder in ("chapters", "solutions", "exercises"):
        path = ROOT / folder / "09_quantization_speculative.ipynb"
        if path.exists():
            assert answer not in _text(path), folder
