"""Chapter 8's graded exercises: the reference scores full marks, every named mistake is caught and
named, learners' own correct variants pass (Meta's complex-number RoPE among them), realistic bugs
are named, and broken functions get a clear message."""

from __future__ import annotations

import math

import pytest
import torch

from riverbank.grading import grade, render
from riverbank.grading.exercises import EXERCISES, ch08
from riverbank.grading.runner import COMPLETE, NOT_ATTEMPTED

ROPE, CACHED = EXERCISES["8.1"], EXERCISES["8.2"]
BOTH = [ROPE, CACHED]


def name(x):
    """Readable test ids: the exercise id, or the function's name."""
    return getattr(x, "id", None) or getattr(x, "__name__", None) or str(x)


def test_chapter_8_exercises_are_registered():
    assert [ex.id for ex in ch08.EXERCISES] == ["8.1", "8.2"]
    assert ROPE is ch08.APPLY_ROPE and CACHED is ch08.CACHED_ROPE




@pytest.mark.parametrize("ex", BOTH, ids=name)
def test_named_mistakes_are_distinct_and_fit_the_page(ex):
    # One message may name several functions (one mistake, written two ways), never twice the same.
    assert len({(m.message, m.function) for m in ex.mistakes}) == len(ex.mistakes)
    for message in (m.message for m in ex.mistakes):
        assert len(f"  Also consistent with: {message}.") <= 80, message


# --- learners' own code: correct variants must pass ---------------------------------------------

def rope_complex(x, positions):
    """Meta's Llama style: each interleaved pair as a complex number, times e^(i·position·θ)."""
    d = x.shape[-1]
    freqs = 1.0 / (10000.0 ** (torch.arange(0, d, 2).float() / d))
    turns = torch.polar(torch.ones(len(positions), d // 2), torch.outer(positions.float(), freqs))
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    return torch.view_as_real(pairs * turns).flatten(-2).to(x.dtype)


def rope_loops(x, positions):
    out = x.clone()
    d = x.shape[-1]
    for t, m in enumerate(positions.tolist()):
        for i in range(d // 2):
            phi = m / 10000 ** (2 * i / d)
            a, b = x[..., t, 2 * i], x[..., t, 2 * i + 1]
            out[..., t, 2 * i] = a * math.cos(phi) - b * math.sin(phi)
            out[..., t, 2 * i + 1] = a * math.sin(phi) + b * math.cos(phi)
    return out


def cached_with_package_rope(q_new, k_new, v_new, k_cache, v_cache):
    from riverbank.positions import apply_rope

    start = k_cache.shape[1]
    pos = torch.arange(start, start + q_new.shape[1])
    q, k = apply_rope(q_new, pos), torch.cat([k_cache, apply_rope(k_new, pos)], dim=1)
    v = torch.cat([v_cache, v_new], dim=1)
    outputs = []
    for j in range(q.shape[1]):  # one new token at a time, each over keys 0 .. start + j
        w = torch.softmax(q[:, j:j + 1] @ k[:, :start + j + 1].transpose(1, 2) / math.sqrt(q.shape[-1]), -1)
        outputs.append(w @ v[:, :start + j + 1])
    return torch.cat(outputs, dim=1)


@pytest.mark.parametrize("ex,fn", [(ROPE, rope_complex), (ROPE, rope_loops), (CACHED, cached_with_package_rope)],
                         ids=name)
def test_correct_learner_variants_get_full_marks(ex, fn):
    result = grade(ex, fn)
    assert result.status == COMPLETE and result.earned == ex.points, render(result)


# --- realistic bugs, written as learners write them ---------------------------------------------

def rope_rotate_half(x, positions):  # Hugging Face's Llama code pasted in: split halves
    d = x.shape[-1]
    freqs = torch.outer(positions.float(), 1.0 / 10000 ** (torch.arange(0, d, 2).float() / d))
    emb = torch.cat([freqs, freqs], dim=-1)
    rotated = torch.cat([-x[..., d // 2:], x[..., :d // 2]], dim=-1)
    return x * emb.cos() + rotated * emb.sin()


def rope_pair_index_exponent(x, positions):  # i / d with i the pair index
    d = x.shape[-1]
    theta = 1.0 / 10000 ** (torch.arange(d // 2).float() / d)
    angles = positions[:, None].float() * theta
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * angles.cos() - b * angles.sin(), a * angles.sin() + b * angles.cos()], -1).flatten(-2)


def cached_without_offset(q_new, k_new, v_new, k_cache, v_cache):
    from riverbank.positions import apply_rope

    pos = torch.arange(q_new.shape[1])  # the bug: counts from 0 at every step
    q, k = apply_rope(q_new, pos), torch.cat([k_cache, apply_rope(k_new, pos)], dim=1)
    v = torch.cat([v_cache, v_new], dim=1)
    cached, new = k_cache.shape[1], q_new.shape[1]
    mask = torch.ones(new, cached + new, dtype=torch.bool).tril(cached)
    scores = (q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])).masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


@pytest.mark.parametrize(
    "ex,fn,named",
    [(ROPE, rope_rotate_half, "split halves"), (ROPE, rope_pair_index_exponent, "10000^(−i/d)"),
     (CACHED, cached_without_offset, "position offset missing")],
    ids=["rotate-half", "exponent", "offset"])
def test_realistic_bugs_are_named_first(ex, fn, named):
    result = grade(ex, fn)
    assert result.earned < ex.points
    assert named in result.mistakes[0], render(result)


def test_a_missing_offset_still_scores_the_empty_cache():
    # With nothing cached the offset is 0 either way: partial credit for the prompt case.
    result = grade(CACHED, cached_without_offset)
    passed = {c.name for c in result.checks if c.passed}
    assert passed == {"edge: an empty cache (the prompt: 4 new tokens from position 0)"}


# --- robustness ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "ex,fn,message",
    [
        (ROPE, lambda x, positions: None, "returned None: did you forget `return`?"),
        (ROPE, lambda x, positions: x.double(), "dtype torch.float64, expected torch.float32"),
        (ROPE, lambda x, positions: x[..., ::2], "has shape"),
        (ROPE, lambda x, positions: x * float("nan"), "NaN"),
        (CACHED, lambda q, k, v, kc, vc: torch.cat([kc, k], dim=1), "has shape"),
        (CACHED, lambda q, k, v, kc, vc: 1 / 0, "raised ZeroDivisionError"),
    ],
    ids=["none", "dtype", "shape", "nan", "cache-shape", "crash"],
)
def test_bad_outputs_get_clear_messages(ex, fn, message):
    result = grade(ex, fn)
    assert result.earned < ex.points
    assert message in render(result)


@pytest.mark.parametrize("ex", BOTH, ids=name)
def test_stub_is_not_attempted(ex):
    def stub(*args):
        raise NotImplementedError

    result = grade(ex, stub)
    assert result.status == NOT_ATTEMPTED and "not attempted" in render(result)
