"""Chapter 7's graded exercises: the references score full marks, stubs are "not attempted", bad
code never crashes the grader, every named mistake is named, and the checks stay within their time."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from riverbank.grading import grade, render
from riverbank.grading.exercises import EXERCISES, ch07
from riverbank.grading.runner import NOT_ATTEMPTED
from riverbank.grading.spec import BUILD, EXPERIMENT, WARM_UP
from riverbank.grading.tolerance import clone, expected, promote

MERGE, ATTENTION, ROLLING, OFFSET = (EXERCISES[i] for i in ("7.1", "7.2", "7.3", "7.4"))
ALL = (MERGE, ATTENTION, ROLLING, OFFSET)
ROOT = Path(__file__).resolve().parents[1]


def name(x):
    return getattr(x, "id", None) or getattr(x, "__name__", None) or str(x)


def test_chapter_7_exercises_are_registered_with_levels_and_hints():
    assert [ex.id for ex in ch07.EXERCISES] == ["7.1", "7.2", "7.3", "7.4"]
    assert [ex.level for ex in ALL] == [WARM_UP, BUILD, BUILD, EXPERIMENT]
    assert all(len(ex.hints) == 3 for ex in ALL)
    assert all(m.hint is not None or m.section for ex in ALL for m in ex.mistakes)


@pytest.mark.parametrize("ex", ALL, ids=name)
def test_messages_fit_the_page(ex):
    for message in [m.message for m in ex.mistakes] + [hint for _, hint, *_ in ex.error_hints]:
        assert len(f"  Also consistent with: {message}.") <= 80, message


# --- the references -----------------------------------------------------------------------------------

def _wrong_class(base, **wrong):
    """A subclass of a course class with one mistake switched on: what a learner would hand in."""
    def __init__(self, *args):
        base.__init__(self, *args, **wrong)
    return type("Wrong_" + "_".join(wrong), (base,), {"__init__": __init__})


REFERENCES = [(MERGE, ch07.merge_attention_chunks), (ATTENTION, ch07.CachedSelfAttention),
              (ROLLING, ch07.RollingCacheAttention), (OFFSET, ch07._answer_74)]


@pytest.mark.parametrize("ex,handed_in", REFERENCES, ids=lambda x: name(x))
def test_the_course_version_gets_full_marks_within_the_time_limits(ex, handed_in):
    started = time.perf_counter()
    result = grade(ex, handed_in)
    assert result.earned == ex.points and not result.mistakes, render(result)
    # each check (the reference twice, the learner once) well inside its limit; the whole grade short
    assert time.perf_counter() - started < len(ex.cases) * ex.time_limit / 2


def test_the_merge_of_chunks_is_attention_over_every_key():
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 3, 8, generator=g), torch.randn(2, 20, 8, generator=g), torch.randn(2, 20, 8, generator=g)
    outs, lses = ch07.chunk_partials(q, k, v, (7, 7, 6))
    assert torch.allclose(ch07.merge_attention_chunks(outs, lses), F.scaled_dot_product_attention(q, k, v),
                          atol=1e-6)


def test_the_rolling_reference_is_torchs_attention_with_a_band_mask():
    window, chunks, q, k, v = ROLLING.cases[3].make_inputs()
    seq = q.shape[2]
    i, j = torch.arange(seq)[:, None], torch.arange(seq)[None, :]
    band = (j <= i) & (j > i - window)
    assert torch.allclose(ch07.band_attention(q, k, v, window),
                          F.scaled_dot_product_attention(q, k, v, attn_mask=band), atol=1e-6)
    # a window as long as the sequence is plain causal attention
    assert torch.allclose(ch07.band_attention(q, k, v, seq), F.scaled_dot_product_attention(q, k, v, is_causal=True),
                          atol=1e-6)


@pytest.mark.parametrize("case", [c for c in ATTENTION.cases if c.make_inputs()[-1] == "tokens"], ids=lambda c: c.name)
def test_greedy_tokens_are_far_from_a_tie_and_the_same_in_float64(case):
    """Token checks are exact: float32 and float64 must pick the same tokens, by a clear margin."""
    config, state, prompt, chunks, n_new, what = case.make_inputs()
    tokens32 = ch07.run_uncached(config, state, prompt, chunks, n_new, what)
    tokens64 = ch07.run_uncached(*promote((config, state, prompt, chunks, n_new, what)))
    assert torch.equal(tokens32, tokens64)
    logits = ch07.run_uncached(config, state, prompt, chunks, n_new, "logits")[:, prompt.shape[1] - 1:]
    top2 = logits.topk(2, dim=-1).values
    assert (top2[..., 0] - top2[..., 1]).min() > 1e-3


def test_the_package_generates_the_reference_tokens_with_its_own_cache():
    from riverbank.model import generate
    config, state, prompt, chunks, n_new, _ = ATTENTION.cases[0].make_inputs()
    model = ch07._decoder(config, state)
    assert torch.equal(generate(model, prompt, n_new, cache=True)[:, prompt.shape[1]:],
                       ch07.run_uncached(config, state, prompt, chunks, n_new, "tokens"))


# --- every named mistake is named ---------------------------------------------------------------------

def _named_first(ex, handed_in, message):
    result = grade(ex, handed_in)
    assert result.earned < ex.points, render(result)
    assert result.mistakes and result.mistakes[0] == message, render(result)


@pytest.mark.parametrize("mistake", MERGE.mistakes, ids=lambda m: m.message[:40])
def test_each_merge_mistake_is_named(mistake):
    _named_first(MERGE, mistake.function, mistake.message)


ATTENTION_WRONG = [dict(mask="top_left"), dict(mask="none"), dict(offset="seq_len"), dict(heads="tile"),
                   dict(split="reshape"), dict(scale="d_model"), dict(scale="none"), dict(append=False)]


@pytest.mark.parametrize("wrong", ATTENTION_WRONG, ids=lambda w: "-".join(f"{k}={v}" for k, v in w.items()))
def test_each_attention_mistake_is_named(wrong):
    message = next(m.message for m in ATTENTION.mistakes
                   if m.function.__closure__ and wrong in [c.cell_contents for c in m.function.__closure__])
    _named_first(ATTENTION, _wrong_class(ch07.CachedSelfAttention, **wrong), message)


ROLLING_WRONG = [dict(trim="before"), dict(band=False), dict(causal=False), dict(extra=1), dict(keep_first=True),
                 dict(extra=-1)]


@pytest.mark.parametrize("wrong", ROLLING_WRONG, ids=lambda w: "-".join(f"{k}={v}" for k, v in w.items()))
def test_each_rolling_mistake_is_named(wrong):
    class Wrong(ch07.RollingCacheAttention):
        def __init__(self, window):
            super().__init__(window, **wrong)
    message = next(m.message for m in ROLLING.mistakes
                   if wrong in [c.cell_contents for c in m.function.__closure__ or ()])
    _named_first(ROLLING, Wrong, message)


@pytest.mark.parametrize("mistake", OFFSET.mistakes, ids=lambda m: m.message[:40])
def test_each_offset_mistake_is_named(mistake):
    answer = mistake.function()
    _named_first(OFFSET, lambda: answer, mistake.message)


def test_a_cache_that_never_shrinks_is_told_to_keep_the_window():
    class Unbounded(ch07.RollingCacheAttention):
        def __init__(self, window):
            super().__init__(window, trim="never")
    result = grade(ROLLING, Unbounded)
    assert result.earned < ROLLING.points
    assert "keep only the last window keys and values" in result.mistakes, render(result)


# --- stubs and broken code ----------------------------------------------------------------------------

class StubInit(nn.Module):
    def __init__(self, d_model, n_heads, n_kv_heads):
        super().__init__()
        raise NotImplementedError


class StubForward(ch07.CachedSelfAttention):
    def forward(self, x, cache=None, layer=0):
        raise NotImplementedError


class StubStep:
    def __init__(self, window):
        self.window, self.keys, self.values = window, None, None

    def step(self, q, k, v):
        raise NotImplementedError


def _stub_function(*args):
    raise NotImplementedError


def _stub_answer():
    raise NotImplementedError


@pytest.mark.parametrize("ex,stub", [(MERGE, _stub_function), (ATTENTION, StubInit), (ATTENTION, StubForward),
                                     (ROLLING, StubStep), (OFFSET, _stub_answer)],
                         ids=["merge", "attention-init", "attention-forward", "rolling", "offset"])
def test_stubs_are_not_attempted(ex, stub):
    result = grade(ex, stub)
    assert result.status == NOT_ATTEMPTED and "not attempted" in render(result)


class WrongNames(nn.Module):
    def __init__(self, d_model, n_heads, n_kv_heads):
        super().__init__()
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)

    def forward(self, x, cache=None, layer=0):
        return x


class ReturnsNone(ch07.CachedSelfAttention):
    def forward(self, x, cache=None, layer=0):
        return None


class ReturnsTuple(ch07.CachedSelfAttention):
    def forward(self, x, cache=None, layer=0):
        return super().forward(x, cache, layer), None


class NoForward(nn.Module):
    def __init__(self, d_model, n_heads, n_kv_heads):
        super().__init__()
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model // n_heads * n_kv_heads)
        self.v_proj = nn.Linear(d_model, d_model // n_heads * n_kv_heads)
        self.out_proj = nn.Linear(d_model, d_model)


class RaisesInStep(StubStep):
    def step(self, q, k, v):
        return 1 / 0


class StepReturnsNone(StubStep):
    def step(self, q, k, v):
        self.keys = k
        return None


@pytest.mark.parametrize("ex,handed_in", [
    (ATTENTION, WrongNames), (ATTENTION, ReturnsNone), (ATTENTION, ReturnsTuple), (ATTENTION, NoForward),
    (ATTENTION, ch07.CachedSelfAttention(32, 4, 2)), (ATTENTION, lambda *a: None), (ATTENTION, 3),
    (ROLLING, RaisesInStep), (ROLLING, StepReturnsNone), (ROLLING, ch07.RollingCacheAttention(3)),
    (ROLLING, int), (MERGE, lambda outs, lses: None), (MERGE, lambda outs, lses: outs),
    (OFFSET, lambda: "a lot"), (OFFSET, lambda: None), (OFFSET, lambda: float("nan")),
], ids=lambda x: name(x) if not isinstance(x, (int, nn.Module, ch07.RollingCacheAttention)) else type(x).__name__)
def test_bad_submissions_lose_points_without_crashing_the_grader(ex, handed_in):
    result = grade(ex, handed_in)
    assert result.earned < ex.points
    assert render(result)


def test_wrong_layer_names_are_told_the_expected_names():
    result = grade(ATTENTION, WrongNames)
    assert ch07.NAMES_HINT in result.mistakes, render(result)


def test_an_instance_is_told_to_hand_in_the_class():
    result = grade(ATTENTION, ch07.CachedSelfAttention(32, 4, 2))
    assert "not an instance" in render(result)


# --- nothing prints an answer -------------------------------------------------------------------------

def _outputs(path: Path) -> str:
    nb = json.loads(path.read_text())
    texts = []
    for cell in nb["cells"]:
        texts.append("".join(cell["source"]))
        for out in cell.get("outputs", []):
            texts.append("".join(out.get("text", "")) + "".join(out.get("data", {}).get("text/plain", "")))
    return "\n".join(texts)


def test_the_measured_answer_is_printed_nowhere():
    answer = f"{ch07._answer_74():.4f}"
    for folder in ("chapters", "solutions", "exercises"):
        assert answer not in _outputs(ROOT / folder / "07_kv_cache.ipynb"), folder
    assert math.isclose(ch07._answer_74(), 0.3425, abs_tol=0.01)   # about a third of the digits survive
