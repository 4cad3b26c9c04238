"""Chapter 7's package code: the KV cache gives the same tokens as generation without it, its bytes
follow the formula, and grouped-query attention is MHA when every query head has its own kv head
and MHA with shared keys and values otherwise (checked against Hugging Face's repeat_kv)."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import repeat_kv as hf_repeat_kv

from riverbank.attention import causal_mask
from riverbank.cache import KVCache
from riverbank.heads import MultiHeadAttention, repeat_kv
from riverbank.model import ModelConfig, TinyDecoder, generate, load_reversal_model
from riverbank.tasks import Reversal


def model_for(seed: int = 0, **config) -> TinyDecoder:
    torch.manual_seed(seed)
    return TinyDecoder(ModelConfig(**{"max_len": 96, "d_model": 32, "n_heads": 4, "d_ff": 64,
                                      **config})).eval()


@pytest.mark.parametrize("config", [{}, {"positions": "sinusoidal"}, {"n_kv_heads": 2},
                                    {"n_kv_heads": 1}, {"n_layers": 3}], ids=str)
def test_cached_generation_gives_the_same_tokens(config):
    model = model_for(**config)
    prompt = torch.randint(0, 11, (3, 20), generator=torch.Generator().manual_seed(1))
    uncached = generate(model, prompt, 40)
    cached = generate(model, prompt, 40, cache=True)
    assert torch.equal(cached, uncached)
    assert cached.shape == (3, 60) and torch.equal(cached[:, :20], prompt)


def test_cached_sampling_gives_the_same_tokens_with_the_same_generator():
    model = model_for()
    prompt = torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(2))
    runs = [generate(model, prompt, 30, temperature=1.5, top_p=0.9,
                     generator=torch.Generator().manual_seed(0), cache=c) for c in (False, True)]
    assert torch.equal(runs[0], runs[1])


def test_cached_logits_equal_the_full_forward_pass_at_every_step():
    model = model_for()
    tokens = torch.randint(0, 11, (2, 30), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full, _ = model(tokens)                       # (2, 30, vocab)
        cache = KVCache(len(model.blocks))
        prefill, _ = model(tokens[:, :10], start=0, cache=cache)
        steps = [prefill]
        for t in range(10, 30):
            logits, weights = model(tokens[:, t:t + 1], start=cache.seq_len, cache=cache)
            assert weights[0].shape == (2, 4, 1, t + 1)   # one query, every cached key
            steps.append(logits)
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)
    assert cache.seq_len == 30


def test_a_chunk_of_new_tokens_is_causal_within_itself():
    model = model_for()
    tokens = torch.randint(0, 11, (1, 24), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full, _ = model(tokens)
        cache = KVCache(len(model.blocks))
        model(tokens[:, :16], cache=cache)
        chunk, weights = model(tokens[:, 16:], start=16, cache=cache)
    assert torch.allclose(chunk, full[:, 16:], atol=1e-5)
    assert not weights[0][0, :, 0, 17:].any()   # the chunk's first token does not see its future


def test_the_trained_reversal_model_answers_the_same_with_the_cache():
    model, task = load_reversal_model(), Reversal()
    prompts = task.prompt(task.held_out()[:50])
    assert torch.equal(generate(model, prompts, 8, cache=True), generate(model, prompts, 8))


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_cache_bytes_follow_the_formula_and_shrink_by_the_group_size(n_kv_heads):
    model = model_for(n_kv_heads=n_kv_heads, n_layers=3)
    cache = KVCache(3)
    batch, seq = 2, 25
    with torch.no_grad():
        model(torch.zeros(batch, seq, dtype=torch.long), cache=cache)
    head_dim, bytes_per_value = 32 // 4, 4
    formula = 2 * 3 * batch * n_kv_heads * seq * head_dim * bytes_per_value
    assert cache.nbytes == formula
    assert cache.keys[0].shape == (batch, n_kv_heads, seq, head_dim)
    full = 2 * 3 * batch * 4 * seq * head_dim * bytes_per_value
    assert full // cache.nbytes == 4 // n_kv_heads and full % cache.nbytes == 0


def test_gqa_with_one_kv_head_per_query_head_is_standard_mha():
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4)
    torch.manual_seed(0)
    gqa = MultiHeadAttention(32, 4, n_kv_heads=4)
    assert mha.state_dict().keys() == gqa.state_dict().keys()
    x = torch.randn(2, 7, 32)
    mask = causal_mask(7)
    for a, b in zip(mha(x, mask=mask), gqa(x, mask=mask)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("n_kv_heads", [2, 1])
def test_gqa_is_mha_whose_heads_share_keys_and_values_within_a_group(n_kv_heads):
    torch.manual_seed(0)
    gqa = MultiHeadAttention(32, 4, n_kv_heads=n_kv_heads)
    assert gqa.k_proj.out_features == n_kv_heads * 8
    mha = MultiHeadAttention(32, 4)
    group = 4 // n_kv_heads
    with torch.no_grad():
        for name in ("q_proj", "out_proj"):
            getattr(mha, name).load_state_dict(getattr(gqa, name).state_dict())
        for name in ("k_proj", "v_proj"):   # query head h uses kv head h // group
            weight = getattr(gqa, name).weight.view(n_kv_heads, 8, 32)
            bias = getattr(gqa, name).bias.view(n_kv_heads, 8)
            getattr(mha, name).weight.copy_(weight.repeat_interleave(group, dim=0).reshape(32, 32))
            getattr(mha, name).bias.copy_(bias.repeat_interleave(group, dim=0).reshape(32))
    x = torch.randn(2, 9, 32)
    out_gqa, w_gqa = gqa(x, mask=causal_mask(9))
    out_mha, w_mha = mha(x, mask=causal_mask(9))
    assert torch.allclose(out_gqa, out_mha, atol=1e-6) and torch.allclose(w_gqa, w_mha, atol=1e-6)


@pytest.mark.parametrize("n_rep", [1, 2, 4])
def test_repeat_kv_equals_hugging_faces(n_rep):
    kv = torch.randn(2, 3, 5, 8)
    ours = repeat_kv(kv, n_rep)
    assert torch.equal(ours, hf_repeat_kv(kv, n_rep))
    if n_rep > 1:   # tiling would pair the query heads with the wrong kv heads
        assert not torch.equal(ours, kv.repeat(1, n_rep, 1, 1))


def test_n_kv_heads_must_divide_n_heads():
    with pytest.raises(ValueError, match="must divide"):
        MultiHeadAttention(32, 4, n_kv_heads=3)
    with pytest.raises(ValueError, match="must divide"):
        MultiHeadAttention(32, 4, n_kv_heads=0)


def test_the_cache_grows_along_the_sequence_axis():
    cache = KVCache(1)
    k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    cache.update(0, k, v)
    k2, v2 = torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4)
    keys, values = cache.update(0, k2, v2)
    assert torch.equal(keys, torch.cat([k, k2], dim=2)) and torch.equal(values, torch.cat([v, v2], dim=2))
    assert cache.seq_len == 4 and cache.nbytes == 2 * 2 * 4 * 4 * 4
