"""The paged KV cache, attention through block tables and the schedulers (chapter 10)."""

import pytest
import torch

from riverbank.attention import causal_mask, scaled_dot_product_attention
from riverbank.heads import repeat_kv
from riverbank.model import ModelConfig, TinyDecoder, load_reversal_model
from riverbank.paged import (BlockAllocator, OutOfBlocks, PagedKVCache, Request, blocks_for,
                             continuous_batching, decode_step, generate_alone,
                             paged_chunk_attention, paged_decode_attention, prefill,
                             static_batching)

torch.set_num_threads(1)


def test_allocator_refcounts_free_list_and_out_of_blocks():
    allocator = BlockAllocator(4)
    a = [allocator.allocate(), allocator.allocate()]
    assert a == [0, 1] and allocator.n_free == 2
    allocator.share(a[0])
    assert allocator.ref_count == [2, 1, 0, 0]
    allocator.free(a[0])
    assert allocator.ref_count[0] == 1 and 0 not in allocator.free_list  # still held once
    allocator.free(a[0])
    assert 0 in allocator.free_list
    allocator.check()
    allocator.allocate(), allocator.allocate(), allocator.allocate()
    with pytest.raises(OutOfBlocks):
        allocator.allocate()
    allocator.check()


def test_allocator_rejects_double_free_and_sharing_a_free_block():
    allocator = BlockAllocator(2)
    block = allocator.allocate()
    allocator.free(block)
    with pytest.raises(ValueError):
        allocator.free(block)
    with pytest.raises(ValueError):
        allocator.share(block)
    allocator.check()


def test_check_catches_a_broken_invariant():
    allocator = BlockAllocator(3)
    allocator.allocate()
    allocator.ref_count[0] = 0          # in use, but counted as free
    with pytest.raises(AssertionError):
        allocator.check()


def test_append_slots_is_all_or_nothing():
    cache = PagedKVCache(1, 3, 1, 4, 2)
    cache.add("a")
    cache.append_slots("a", 9)          # 3 blocks
    assert cache.tables["a"] == [0, 1, 2] and cache.lengths["a"] == 9
    cache.add("b")
    with pytest.raises(OutOfBlocks):
        cache.append_slots("b", 1)
    assert cache.tables["b"] == [] and cache.lengths["b"] == 0
    cache.append_slots("a", 3)          # fills the last block's free slots: no new block
    assert cache.tables["a"] == [0, 1, 2]


def _pool_with(sequences, block_size, n_kv_heads, head_dim, generator):
    """Random keys/values for sequences of the given lengths, stored in shuffled blocks."""
    n_blocks = sum(blocks_for(n, block_size) for n in sequences) + 2
    order = torch.randperm(n_blocks, generator=generator).tolist()
    keys = torch.randn(n_blocks, n_kv_heads, block_size, head_dim, generator=generator)
    values = torch.randn(n_blocks, n_kv_heads, block_size, head_dim, generator=generator)
    tables, dense = [], []
    for n in sequences:
        table = [order.pop() for _ in range(blocks_for(n, block_size))]
        tables.append(table)
        k = torch.cat([keys[b] for b in table], dim=1)[:, :n]   # (kv_heads, n, head_dim)
        v = torch.cat([values[b] for b in table], dim=1)[:, :n]
        dense.append((k, v))
    return keys, values, tables, dense


@pytest.mark.parametrize("block_size", [1, 3, 4, 16])
@pytest.mark.parametrize("n_heads,n_kv_heads", [(4, 4), (4, 2), (4, 1)])
def test_paged_decode_attention_equals_dense(block_size, n_heads, n_kv_heads):
    g = torch.Generator().manual_seed(block_size * 10 + n_kv_heads)
    lengths, head_dim = [1, 5, 8, 13, 20], 8
    keys, values, tables, dense = _pool_with(lengths, block_size, n_kv_heads, head_dim, g)
    query = torch.randn(len(lengths), n_heads, head_dim, generator=g)
    width = max(map(len, tables))
    table_tensor = torch.tensor([t + [0] * (width - len(t)) for t in tables])
    out = paged_decode_attention(query, keys, values, table_tensor, torch.tensor(lengths))
    for i, (k, v) in enumerate(dense):
        rep = n_heads // n_kv_heads
        k64, v64 = repeat_kv(k[None].double(), rep)[0], repeat_kv(v[None].double(), rep)[0]
        truth = scaled_dot_product_attention(query[i, :, None].double(), k64, v64)[:, 0]
        assert (out[i] - truth).abs().max() < 1e-5


@pytest.mark.parametrize("block_size,start,T", [(4, 0, 7), (4, 5, 6), (1, 3, 4), (16, 9, 8)])
def test_paged_chunk_attention_is_causal_attention(block_size, start, T):
    g = torch.Generator().manual_seed(start + T)
    n_heads, n_kv_heads, head_dim = 4, 2, 8
    keys, values, (table,), ((k, v),) = _pool_with([start + T], block_size, n_kv_heads,
                                                    head_dim, g)
    query = torch.randn(n_heads, T, head_dim, generator=g)
    out = paged_chunk_attention(query, keys, values, table, start)
    k64, v64 = repeat_kv(k[None].double(), 2)[0], repeat_kv(v[None].double(), 2)[0]
    truth = scaled_dot_product_attention(query.double(), k64, v64, causal_mask(T, start + T))
    assert (out - truth).abs().max() < 1e-5


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = ModelConfig(max_len=64, d_model=32, n_heads=4, n_kv_heads=2, n_layers=2, d_ff=64)
    return TinyDecoder(config).eval()


@pytest.mark.parametrize("block_size", [1, 4, 5])
def test_paged_model_decode_equals_tiny_decoder(model, block_size):
    g = torch.Generator().manual_seed(block_size)
    sequences = [torch.randint(0, 11, (n,), generator=g) for n in (4, 9, 11, 20)]
    cache = PagedKVCache.for_model(model, 64, block_size)
    for i, tokens in enumerate(sequences):
        cache.add(i)
        first = prefill(model, cache, i, tokens[:-1])
        with torch.no_grad():
            dense = model(tokens[None, :-1])[0][0]
        assert (first - dense).abs().max() < 1e-4
    logits = decode_step(model, cache, list(range(4)), torch.stack([t[-1] for t in sequences]))
    for i, tokens in enumerate(sequences):
        with torch.no_grad():
            dense = model(tokens[None])[0][0, -1]
        assert (logits[i] - dense).abs().max() < 1e-4
        assert cache.lengths[i] == len(tokens)
        assert len(cache.tables[i]) == blocks_for(len(tokens), block_size)
    cache.allocator.check()


def test_paged_decode_on_the_reversal_model_and_rope():
    reversal = load_reversal_model()
    tokens = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6, 10, 6, 2, 9])
    cache = PagedKVCache.for_model(reversal, 8, 4)
    cache.add(0)
    prefill(reversal, cache, 0, tokens[:-1])
    logits = decode_step(reversal, cache, [0], tokens[-1:])
    with torch.no_grad():
        assert (logits[0] - reversal(tokens[None])[0][0, -1]).abs().max() < 1e-4
    torch.manual_seed(0)
    rope = TinyDecoder(ModelConfig(max_len=32, d_model=32, n_heads=2, positions="rope")).eval()
    cache = PagedKVCache.for_model(rope, 8, 4)
    cache.add(0)
    prefill(rope, cache, 0, tokens[:6])
    for t in range(6, len(tokens)):
        logits = decode_step(rope, cache, [0], tokens[t:t + 1])
    with torch.no_grad():
        assert (logits[0] - rope(tokens[None])[0][0, -1]).abs().max() < 1e-4


def _workload(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [Request(i, torch.randint(0, 11, (int(torch.randint(2, 12, (), generator=g)),),
                                     generator=g).tolist(),
                    int(torch.randint(1, 12, (), generator=g))) for i in range(n)]


def test_schedulers_finish_every_request_with_the_tokens_of_decoding_alone(model):
    requests = _workload(10, seed=1)
    alone = {r.id: generate_alone(model, r) for r in requests}
    runs = [continuous_batching(model, requests, 64, 4, max_batch=4),
            static_batching(model, requests, 64, 4, max_batch=4),
            continuous_batching(model, requests, 12, 4, max_batch=10)]   # tight: preempts
    for result in runs:
        assert {r: len(t) for r, t in result.tokens.items()} == \
            {r.id: r.max_new_tokens for r in requests}
        assert result.tokens == alone
        assert sum(result.generated) == sum(r.max_new_tokens for r in requests)
    assert runs[2].preemptions > 0
    assert runs[0].steps < runs[1].steps
    assert max(runs[0].running) <= 4 and runs[2].peak_blocks <= 12


def test_static_batching_steps_and_continuous_refill_on_a_hand_case(model):
    # outputs 1, 5, 2, 2 with batch 2: static runs max(1, 5) + max(2, 2) = 7 steps;
    # continuous: request 2 takes request 0's row at step 1, request 3 that of request 2 at
    # step 3, and request 1 finishes at step 4: 5 steps, the batch always full.
    requests = [Request(i, [1, 2, 3], n) for i, n in enumerate([1, 5, 2, 2])]
    static = static_batching(model, requests, 32, 4, max_batch=2)
    continuous = continuous_batching(model, requests, 32, 4, max_batch=2)
    assert static.running == [2, 1, 1, 1, 1, 2, 2]
    assert continuous.running == [2, 2, 2, 2, 2]
    assert continuous.tokens == static.tokens


def test_a_request_larger_than_the_pool_is_refused(model):
    with pytest.raises(OutOfBlocks):
        continuous_batching(model, [Request(0, list(range(10)), 2)], 2, 4, max_batch=1)


def test_waste_on_a_hand_case():
    # lengths 5 and 9, blocks of 4: 2 + 3 blocks = 20 slots for 14 tokens; blocks of 1: none.
    used = [5, 9]
    slots = {size: sum(blocks_for(n, size) * size for n in used) for size in (1, 4, 16)}
    assert slots == {1: 14, 4: 20, 16: 32}
    cache = PagedKVCache(1, 8, 1, 4, 2)
    for i, n in enumerate(used):
        cache.add(i)
        cache.append_slots(i, n)
    assert sum(map(len, cache.tables.values())) * 4 == slots[4]


def test_prefix_sharing_refcounts_and_savings(model):
    system, questions = torch.arange(10) % 11, [torch.tensor([1, 2]), torch.tensor([3])]
    cache = PagedKVCache.for_model(model, 16, 4)
    cache.add("system")
    prefill(model, cache, "system", system)          # 10 tokens: blocks of 4, 4 and 2
    positions = 0
    for i, q in enumerate(questions):
        start = cache.fork("system", i, len(system))
        assert start == 8                            # 2 full blocks shared, 2 tokens redone
        rest = torch.cat([system, q])[start:]
        logits = prefill(model, cache, i, rest)
        positions += len(rest)
        with torch.no_grad():
            dense = model(torch.cat([system, q])[None])[0][0, -1]
        assert (logits[-1] - dense).abs().max() < 1e-4
    shared = cache.tables["system"]
    assert [cache.allocator.ref_count[b] for b in shared] == [3, 3, 1]
    assert positions == (2 + 2) + (2 + 1)            # against 12 + 11 without sharing
    assert 16 - cache.allocator.n_free == 3 + 1 + 1  # each request: one block of its own
    cache.release(0)
    cache.release("system")
    assert [cache.allocator.ref_count[b] for b in shared] == [1, 1, 0]
    cache.allocator.check()
