"""Chapter 7's graded exercises: the reference scores full marks, every named mistake is caught and
named, learners' own correct variants pass, and a wrong axis that crashes is still named."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from riverbank.grading import grade, render
from riverbank.grading.exercises import EXERCISES
from riverbank.grading.exercises import ch07

APPEND, ATTEND, EXPAND, BYTES = (EXERCISES[i] for i in ("7.1", "7.2", "7.3", "7.4"))
ALL = (APPEND, ATTEND, EXPAND, BYTES)


def name(x):
    return getattr(x, "id", None) or getattr(x, "__name__", None) or str(x)


def test_chapter_7_exercises_are_registered():
    assert [ex.id for ex in ch07.EXERCISES] == ["7.1", "7.2", "7.3", "7.4"]
    assert APPEND is ch07.APPEND and ATTEND is ch07.ATTEND and EXPAND is ch07.EXPAND
    assert BYTES is ch07.BYTES


@pytest.mark.parametrize("ex", ALL, ids=name)
def test_named_mistakes_and_checks_are_distinct_and_fit_the_page(ex):
    # One message may name several functions (one mistake, written two ways), never twice the same.
    assert len({(m.message, m.function) for m in ex.mistakes}) == len(ex.mistakes)
    for message in [m.message for m in ex.mistakes] + [hint for _, hint in ex.error_hints]:
        assert len(f"  Also consistent with: {message}.") <= 80, message
    for line in render(grade(ex, ex.mistakes[0].function)).splitlines():
        assert len(line) <= 80, line




def test_the_reference_agrees_with_the_package_cache_and_hugging_faces_repeat_kv():
    from transformers.models.llama.modeling_llama import repeat_kv as hf_repeat_kv

    from riverbank.cache import KVCache
    for case in APPEND.cases[:3]:
        cache, new = case.make_inputs()
        kv = KVCache(1)
        kv.update(0, cache, cache)
        assert torch.equal(kv.update(0, new, new)[0], APPEND.reference(cache, new))
    for case in EXPAND.cases:
        kv, n_heads = case.make_inputs()
        assert torch.equal(EXPAND.reference(kv, n_heads), hf_repeat_kv(kv, n_heads // kv.shape[1]))


def test_the_cached_step_equals_full_causal_attention_on_the_whole_sequence():
    q, k_cache, v_cache, k_new, v_new = ATTEND.cases[1].make_inputs()   # 3 new after 4 cached
    past = k_cache.shape[2]
    g = torch.Generator().manual_seed(9)
    q_all = torch.cat([torch.randn(1, 2, past, 4, generator=g), q], dim=2)
    k, v = torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)
    full = F.scaled_dot_product_attention(q_all, k, v, is_causal=True)   # square: top-left is right
    assert torch.allclose(ATTEND.reference(q, k_cache, v_cache, k_new, v_new), full[:, :, past:], atol=1e-6)


def test_cache_bytes_reference_matches_the_bytes_the_package_cache_holds():
    from riverbank.cache import KVCache
    from riverbank.model import ModelConfig, TinyDecoder
    for kv_heads in (4, 2, 1):
        torch.manual_seed(0)
        model = TinyDecoder(ModelConfig(max_len=64, d_model=32, n_heads=4, n_kv_heads=kv_heads)).eval()
        cache = KVCache(2)
        with torch.no_grad():
            model(torch.zeros(3, 20, dtype=torch.long), cache=cache)
        row = torch.tensor([[2, 3, 4, kv_heads, 20, 8, 4]])
        assert BYTES.reference(row).item() == cache.nbytes
    assert BYTES.reference(torch.tensor([ch07.LLAMA_3_8B])).item() == 2**30   # 1 GiB


# --- learners' own code ---------------------------------------------------------------------------

def append_negative_axis(cache, new):
    return torch.cat((cache, new), dim=-2)


def attend_by_hand(q, k_cache, v_cache, k_new, v_new):
    k = torch.cat([k_cache, k_new], dim=-2)
    v = torch.cat([v_cache, v_new], dim=-2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    n, s = q.shape[-2], k.shape[-2]
    future = torch.ones(n, s, dtype=torch.bool).triu(diagonal=s - n + 1)
    return scores.masked_fill(future, float("-inf")).softmax(-1) @ v


def attend_with_sdpa(q, k_cache, v_cache, k_new, v_new):
    k = torch.cat([k_cache, k_new], dim=2)
    v = torch.cat([v_cache, v_new], dim=2)
    past = k_cache.shape[2]
    mask = torch.arange(k.shape[2])[None, :] <= past + torch.arange(q.shape[2])[:, None]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def expand_with_expand(kv, n_heads):
    b, n_kv, s, d = kv.shape
    return kv[:, :, None].expand(b, n_kv, n_heads // n_kv, s, d).reshape(b, n_heads, s, d)


def expand_with_index(kv, n_heads):
    return kv[:, torch.arange(n_heads) // (n_heads // kv.shape[1])]


def bytes_by_columns(configs):
    layers, batch, heads, kv, seq, dim, per = (configs[:, i] for i in range(7))
    return layers * batch * kv * seq * dim * per * 2


def bytes_by_prod(configs):
    return 2 * configs[:, [0, 1, 3, 4, 5, 6]].prod(dim=-1)


@pytest.mark.parametrize("exercise_id,fn", [("7.4", bytes_by_columns), ("7.4", bytes_by_prod),
                                            ("7.1", append_negative_axis), ("7.2", attend_by_hand),
                                            ("7.2", attend_with_sdpa), ("7.3", expand_with_expand),
                                            ("7.3", expand_with_index)], ids=lambda x: name(x))
def test_learners_correct_variants_pass(exercise_id, fn):
    ex = EXERCISES[exercise_id]
    result = grade(ex, fn)
    assert result.earned == ex.points, render(result)


def test_a_wrong_axis_that_crashes_is_named():
    def stacked_on_batch(cache, new):
        return torch.cat([cache, new], dim=0)
    result = grade(APPEND, stacked_on_batch)
    assert result.earned < APPEND.points
    assert ch07.WRONG_AXIS in render(result)
