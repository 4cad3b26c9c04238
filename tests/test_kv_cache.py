"""Chapter 7's package code: the KV cache gives the same tokens as generation without it, its bytes
follow the formula, and grouped-query attention is MHA when every query head has its own kv head
and MHA with shared keys and values otherwise (checked against Hugging Face's repeat_kv). Paged
attention through a block table equals attention over the contiguous cache, and the rolling buffer
gives full attention while the sequence fits in its window and sliding-window attention after."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import repeat_kv as hf_repeat_kv

from riverbank.attention import causal_mask, scaled_dot_product_attention
from riverbank.cache import KVCache, RollingKVCache, paged_attention
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


def test_a_copy_of_the_cache_grows_without_changing_the_original():
    cache = KVCache(2)
    for layer in range(2):
        cache.update(layer, torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4))
    twin = cache.copy()
    keys_before = cache.keys[0]
    twin.update(0, torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4))
    assert twin.keys[0].shape[2] == 6 and cache.keys[0].shape[2] == 5
    assert cache.keys[0] is keys_before and torch.equal(twin.keys[0][:, :, :5], keys_before)


def paged(keys, values, block_size, order, n_blocks):
    """Write a sequence's keys and values (heads, seq, head_dim) into a pool of NaN-filled blocks,
    logical block j into physical block order[j]; return the pools and the block table."""
    heads, seq, head_dim = keys.shape
    pools = [torch.full((n_blocks, heads, block_size, head_dim), float("nan"), dtype=keys.dtype)
             for _ in range(2)]
    table = []
    for j, start in enumerate(range(0, seq, block_size)):
        for pool, x in zip(pools, (keys, values)):
            chunk = x[:, start:start + block_size]
            pool[order[j], :, :chunk.shape[1]] = chunk
        table.append(order[j])
    return pools[0], pools[1], table


@pytest.mark.parametrize("length", [1, 3, 4, 5, 11, 16])
def test_paged_attention_equals_attention_over_the_contiguous_cache(length):
    """Blocks in a scrambled order, unused slots and blocks full of NaN: the answer is attention over
    the contiguous keys and values (float64, so the two may differ only by rounding)."""
    g = torch.Generator().manual_seed(length)
    heads, head_dim, block = 3, 8, 4
    q, k, v = (torch.randn(*shape, generator=g, dtype=torch.float64)
               for shape in [(heads, head_dim), (heads, length, head_dim), (heads, length, head_dim)])
    order = [5, 2, 0, 7]                      # physical blocks, not in order; 1, 3, 4, 6 unused
    key_blocks, value_blocks, table = paged(k, v, block, order, n_blocks=8)
    out = paged_attention(q, key_blocks, value_blocks, table, length)
    expected = scaled_dot_product_attention(q[:, None], k, v)[:, 0]   # (heads, head_dim)
    assert out.shape == (heads, head_dim) and torch.isfinite(out).all()
    assert torch.allclose(out, expected, rtol=0, atol=1e-12)


def test_two_sequences_read_a_shared_block_through_their_tables():
    g = torch.Generator().manual_seed(0)
    heads, head_dim, block = 2, 8, 4
    prefix = torch.randn(2, heads, 4, head_dim, generator=g)        # keys and values of 4 tokens
    tails = [torch.randn(2, heads, n, head_dim, generator=g) for n in (5, 3)]
    key_blocks = torch.zeros(5, heads, block, head_dim)
    value_blocks = torch.zeros_like(key_blocks)
    key_blocks[0], value_blocks[0] = prefix                          # block 0: the shared prefix
    tables = {0: [0, 1, 2], 1: [0, 3]}
    for s, tail in enumerate(tails):
        for j, physical in enumerate(tables[s][1:]):
            chunk = tail[:, :, j * block:(j + 1) * block]
            key_blocks[physical, :, :chunk.shape[2]] = chunk[0]
            value_blocks[physical, :, :chunk.shape[2]] = chunk[1]
    q = torch.randn(heads, head_dim, generator=g)
    for s, tail in enumerate(tails):
        k, v = torch.cat([prefix, tail], dim=2)                      # (heads, seq, head_dim) each
        out = paged_attention(q, key_blocks, value_blocks, tables[s], k.shape[1])
        expected = scaled_dot_product_attention(q[:, None], k, v)[:, 0]
        assert torch.allclose(out, expected, atol=1e-6)


def test_paged_attention_refuses_a_table_of_the_wrong_length():
    blocks = torch.zeros(4, 1, 4, 8)
    with pytest.raises(ValueError, match="need 3 blocks"):
        paged_attention(torch.zeros(1, 8), blocks, blocks, [0, 1], 9)


def decode_one_at_a_time(attention, x, cache):
    """Run one attention layer over x (batch, seq, d_model) one token at a time, appending to cache."""
    outs = []
    for t in range(x.shape[1]):
        out, _ = attention(x[:, t:t + 1], cache=cache)   # one query: every cached key is visible
        outs.append(out)
    return torch.cat(outs, dim=1)                        # (batch, seq, d_model)


def sliding_window_mask(seq: int, window: int):
    """Query i sees keys i - window + 1 .. i: the last `window` tokens, itself included."""
    i = torch.arange(seq)[:, None]
    j = torch.arange(seq)[None, :]
    return (j <= i) & (j > i - window)


@pytest.mark.parametrize("n_kv_heads", [4, 2])
def test_the_rolling_cache_is_full_attention_within_the_window_and_sliding_window_after(n_kv_heads):
    torch.manual_seed(0)
    attention = MultiHeadAttention(32, 4, n_kv_heads=n_kv_heads).double()
    x = torch.randn(2, 13, 32, dtype=torch.float64)
    window = 5
    rolling = decode_one_at_a_time(attention, x, RollingKVCache(1, window))
    growing = decode_one_at_a_time(attention, x, KVCache(1))
    full, _ = attention(x, mask=causal_mask(13))
    sliding, _ = attention(x, mask=sliding_window_mask(13, window))
    assert torch.allclose(rolling[:, :window], growing[:, :window], atol=1e-12)
    assert torch.allclose(rolling[:, :window], full[:, :window], atol=1e-12)
    assert torch.allclose(rolling, sliding, atol=1e-12)                   # past the window too
    assert not torch.allclose(rolling[:, window:], full[:, window:], atol=1e-3)


def test_the_rolling_cache_stops_growing_at_the_window():
    cache, window = RollingKVCache(2, window=4), 4
    per_token = 2 * 2 * 3 * 8 * 4   # keys and values, batch 2, 3 kv heads, head_dim 8, float32
    sizes = []
    for t in range(10):
        for layer in range(2):
            keys, values = cache.update(layer, torch.randn(2, 3, 1, 8), torch.randn(2, 3, 1, 8))
            assert keys.shape == values.shape == (2, 3, min(t + 1, window), 8)
        sizes.append(cache.nbytes)
    assert sizes == [2 * per_token * min(t + 1, window) for t in range(10)]
    assert cache.seq_len == 10 and cache.keys[0].shape[2] == window


def test_the_rolling_cache_writes_position_i_to_slot_i_mod_window():
    cache = RollingKVCache(1, window=3)
    for position in range(7):
        value = torch.full((1, 1, 1, 2), float(position))
        cache.update(0, value, value)
    assert cache.keys[0][0, 0, :, 0].tolist() == [6.0, 4.0, 5.0]   # slots 0, 1, 2


def test_the_rolling_cache_serves_the_model_while_the_sequence_fits():
    model = model_for()
    tokens = torch.randint(0, 11, (2, 20), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full, _ = model(tokens)
        cache = RollingKVCache(len(model.blocks), window=20)
        steps = [model(tokens[:, :8], cache=cache)[0]]                   # a prefill that fits
        for t in range(8, 20):
            steps.append(model(tokens[:, t:t + 1], start=cache.seq_len, cache=cache)[0])
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


def test_the_rolling_cache_refuses_a_chunk_that_does_not_fit():
    cache = RollingKVCache(1, window=4)
    cache.update(0, torch.zeros(1, 1, 3, 2), torch.zeros(1, 1, 3, 2))
    with pytest.raises(ValueError, match="do not fit"):
        cache.update(0, torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="at least 1"):
        RollingKVCache(1, window=0)
