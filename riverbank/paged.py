"""A paged KV cache and the schedulers that serve many requests with it (chapter 10).

Chapter 7 computed one new token's attention through one block table
(:func:`riverbank.cache.paged_attention`). This module builds the serving system around that idea
(Kwon et al., 2023, the vLLM system; Yu et al., 2022, Orca's iteration-level scheduling):

- :class:`BlockAllocator`: a free list of physical block ids with reference counts, so that a full
  block can sit in several block tables (a shared prefix); :class:`OutOfBlocks` when none is left;
- :class:`PagedKVCache`: per layer, one pool of key blocks and one of value blocks, each
  (n_blocks, n_kv_heads, block_size, head_dim), and a block table and a length per sequence;
- :func:`paged_decode_attention`: one new query per sequence for a batch of sequences of different
  lengths, read block by block through their tables (online softmax, vectorised over the batch one
  block index at a time); :func:`paged_chunk_attention`: several new queries of one sequence
  (a prefill), causal, through its table;
- :func:`prefill` and :func:`decode_step`: a :class:`~riverbank.model.TinyDecoder`'s layers run
  through the paged cache;
- :func:`continuous_batching` and :func:`static_batching`: the two schedulers, and
  :func:`generate_alone`, each request decoded by itself with the model's own cache.

Decoding is greedy and a request stops after exactly ``max_new_tokens`` tokens (no end-of-text
token), so a workload fixes every request's output length in advance.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .model import TinyDecoder, generate
from .positions import apply_rope

__all__ = ["OutOfBlocks", "BlockAllocator", "PagedKVCache", "paged_decode_attention",
           "paged_chunk_attention", "prefill", "decode_step", "Request", "ServeResult",
           "continuous_batching", "static_batching", "generate_alone", "blocks_for"]


class OutOfBlocks(RuntimeError):
    """No free physical block is left; a scheduler catches it to wait or to preempt."""


def blocks_for(tokens: int, block_size: int) -> int:
    """Blocks needed to hold ``tokens`` tokens: ceil(tokens / block_size)."""
    return -(-tokens // block_size)


class BlockAllocator:
    """Physical block ids 0 .. n_blocks - 1: a free list and a reference count per block.

    ``allocate()`` takes a free block (count 1), ``share(b)`` adds a reference to a block in use,
    ``free(b)`` drops one reference and returns the block to the free list when none is left.
    Invariant (:meth:`check`): every block is either free with count 0, or in use with count >= 1.
    """

    def __init__(self, n_blocks: int):
        self.n_blocks = n_blocks
        self.free_list: deque[int] = deque(range(n_blocks))
        self.ref_count = [0] * n_blocks

    @property
    def n_free(self) -> int:
        return len(self.free_list)

    def allocate(self) -> int:
        if not self.free_list:
            raise OutOfBlocks(f"all {self.n_blocks} blocks are in use")
        block = self.free_list.popleft()
        self.ref_count[block] = 1
        return block

    def share(self, block: int) -> int:
        if self.ref_count[block] < 1:
            raise ValueError(f"block {block} is free: there is nothing to share")
        self.ref_count[block] += 1
        return block

    def free(self, block: int) -> None:
        if self.ref_count[block] < 1:
            raise ValueError(f"block {block} is already free")
        self.ref_count[block] -= 1
        if self.ref_count[block] == 0:
            self.free_list.append(block)

    def check(self) -> None:
        """Assert the invariant: free blocks have count 0 and appear once; the others count >= 1."""
        free = set(self.free_list)
        assert len(free) == len(self.free_list), "a block is twice in the free list"
        for block, count in enumerate(self.ref_count):
            assert (count == 0) == (block in free), f"block {block}: count {count}"
            assert count >= 0


class PagedKVCache:
    """Keys and values of many sequences in fixed-size blocks from one pool per layer.

    ``keys[layer]`` and ``values[layer]``: (n_blocks, n_kv_heads, block_size, head_dim). A
    sequence's block table ``tables[seq]`` lists its physical blocks in order; logical block ``j``
    holds its tokens ``j * block_size`` to ``(j + 1) * block_size - 1``. ``lengths[seq]`` counts
    the tokens whose keys and values are stored. All layers use the same tables.
    """

    def __init__(self, n_layers: int, n_blocks: int, n_kv_heads: int, block_size: int,
                 head_dim: int, dtype: torch.dtype = torch.float32, device: str = "cpu"):
        shape = (n_blocks, n_kv_heads, block_size, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.block_size = block_size
        self.allocator = BlockAllocator(n_blocks)
        self.tables: dict[Hashable, list[int]] = {}
        self.lengths: dict[Hashable, int] = {}

    @classmethod
    def for_model(cls, model: TinyDecoder, n_blocks: int, block_size: int) -> PagedKVCache:
        attention = model.blocks[0].attention
        weight = model.lm_head.weight
        return cls(len(model.blocks), n_blocks, attention.n_kv_heads, block_size,
                   attention.head_dim, weight.dtype, str(weight.device))

    def add(self, seq: Hashable) -> None:
        """Start an empty sequence ``seq``."""
        self.tables[seq], self.lengths[seq] = [], 0

    def fork(self, parent: Hashable, seq: Hashable, tokens: int) -> int:
        """Start ``seq`` with the full blocks of ``parent``'s first ``tokens`` tokens, shared by
        reference count, not copied. A partly filled block is not shared: ``seq`` recomputes its
        tokens. Returns the number of tokens ``seq`` starts with (a multiple of block_size)."""
        full = min(tokens, self.lengths[parent]) // self.block_size
        self.tables[seq] = [self.allocator.share(b) for b in self.tables[parent][:full]]
        self.lengths[seq] = full * self.block_size
        return self.lengths[seq]

    def append_slots(self, seq: Hashable, n: int) -> int:
        """Make room for ``n`` more tokens of ``seq`` (allocating blocks when the last is full) and
        count them; returns the position of the first. Either all blocks are allocated or, with
        :class:`OutOfBlocks`, none."""
        start, table = self.lengths[seq], self.tables[seq]
        needed = blocks_for(start + n, self.block_size) - len(table)
        if needed > self.allocator.n_free:
            raise OutOfBlocks(f"sequence {seq} needs {needed} blocks, "
                              f"{self.allocator.n_free} are free")
        table.extend(self.allocator.allocate() for _ in range(needed))
        self.lengths[seq] = start + n
        return start

    def write(self, layer: int, seq: Hashable, start: int, k: Tensor, v: Tensor) -> None:
        """Store k, v (n_kv_heads, n, head_dim) of ``seq``'s tokens start .. start + n - 1."""
        positions = torch.arange(start, start + k.shape[1], device=k.device)
        blocks = torch.tensor(self.tables[seq], device=k.device)[positions // self.block_size]
        slots = positions % self.block_size
        self.keys[layer][blocks, :, slots] = k.transpose(0, 1)    # (n, n_kv_heads, head_dim)
        self.values[layer][blocks, :, slots] = v.transpose(0, 1)

    def release(self, seq: Hashable) -> None:
        """Drop ``seq``: one reference less on each of its blocks."""
        for block in self.tables.pop(seq):
            self.allocator.free(block)
        del self.lengths[seq]

    def table_tensor(self, seqs: list[Hashable]) -> Tensor:
        """(batch, max blocks) block ids, padded with block 0 (the padding is masked, never used)."""
        width = max(len(self.tables[s]) for s in seqs)
        rows = [self.tables[s] + [0] * (width - len(self.tables[s])) for s in seqs]
        return torch.tensor(rows, device=self.keys[0].device)


def _online_update(state: tuple[Tensor, Tensor, Tensor], scores: Tensor, values: Tensor):
    """Fold one block into the running max, sum and unnormalised output (chapter 6).

    scores: (..., q, slots) with -inf where a slot is masked; values: (..., slots, head_dim).
    Every query must have seen at least one unmasked key by its first block.
    """
    running_max, running_sum, out = state
    new_max = torch.maximum(running_max, scores.amax(dim=-1))   # (..., q)
    rescale = torch.exp(running_max - new_max)
    p = torch.exp(scores - new_max[..., None])                  # (..., q, slots), 0 where masked
    running_sum = running_sum * rescale + p.sum(dim=-1)
    out = out * rescale[..., None] + p @ values                 # (..., q, head_dim)
    return new_max, running_sum, out


def paged_decode_attention(query: Tensor, key_pool: Tensor, value_pool: Tensor, tables: Tensor,
                           lengths: Tensor) -> Tensor:
    """Each sequence's one new query attends to its own keys, read through its block table.

    query: (batch, n_heads, head_dim). key_pool, value_pool: (n_blocks, n_kv_heads, block_size,
    head_dim). tables: (batch, max_blocks) physical block ids (padding anywhere past a
    sequence's blocks). lengths: (batch,) tokens stored per sequence, the new one included.
    Grouped-query attention: query head h uses kv head h // (n_heads // n_kv_heads).

    The loop runs over block index j: it gathers block j of every sequence at once,
    (batch, n_kv_heads, block_size, head_dim), never a whole sequence. Slots at or past a
    sequence's length are masked. Returns (batch, n_heads, head_dim).
    """
    batch, n_heads, head_dim = query.shape
    _, n_kv_heads, block_size, _ = key_pool.shape
    group = n_heads // n_kv_heads
    q = query.view(batch, n_kv_heads, group, head_dim) / math.sqrt(head_dim)  # (b, kv, group, d)
    state = (q.new_full((batch, n_kv_heads, group), float("-inf")),
             q.new_zeros(batch, n_kv_heads, group), torch.zeros_like(q))
    slot = torch.arange(block_size, device=query.device)
    for j in range(tables.shape[1]):
        keys = key_pool[tables[:, j]]                   # (batch, kv_heads, block_size, head_dim)
        values = value_pool[tables[:, j]]
        scores = q @ keys.transpose(-2, -1)             # (batch, kv_heads, group, block_size)
        valid = (j * block_size + slot)[None] < lengths[:, None]     # (batch, block_size)
        scores = scores.masked_fill(~valid[:, None, None], float("-inf"))
        state = _online_update(state, scores, values)
    _, running_sum, out = state
    return (out / running_sum[..., None]).reshape(batch, n_heads, head_dim)


def paged_chunk_attention(query: Tensor, key_pool: Tensor, value_pool: Tensor, table: list[int],
                          start: int) -> Tensor:
    """Causal attention of one sequence's new tokens at positions start .. start + T - 1 to all
    its stored tokens (0 .. start + T - 1), block by block through its table.

    query: (n_heads, T, head_dim); the new tokens' keys and values must already be stored.
    Returns (n_heads, T, head_dim).
    """
    n_heads, T, head_dim = query.shape
    _, n_kv_heads, block_size, _ = key_pool.shape
    group = n_heads // n_kv_heads
    q = query.reshape(n_kv_heads, group * T, head_dim) / math.sqrt(head_dim)  # rows: (group, T)
    q_pos = (start + torch.arange(T, device=query.device)).repeat(group)    # (group * T,)
    state = (q.new_full((n_kv_heads, group * T), float("-inf")),
             q.new_zeros(n_kv_heads, group * T), torch.zeros_like(q))
    for j in range(blocks_for(start + T, block_size)):
        keys, values = key_pool[table[j]], value_pool[table[j]]   # (kv_heads, block_size, d)
        k_pos = j * block_size + torch.arange(block_size, device=query.device)
        scores = q @ keys.transpose(-2, -1)                      # (kv_heads, group * T, block)
        scores = scores.masked_fill(k_pos[None, None] > q_pos[None, :, None], float("-inf"))
        state = _online_update(state, scores, values)
    _, running_sum, out = state
    return (out / running_sum[..., None]).reshape(n_heads, T, head_dim)


def _layers(model: TinyDecoder, x: Tensor, positions: Tensor, attend) -> Tensor:
    """The model's blocks on new tokens x (n, d_model) at ``positions`` (n,); ``attend(layer, q,
    k, v)`` stores k, v (n, n_kv_heads, head_dim) and returns attention outputs (n, n_heads,
    head_dim) for the queries q (n, n_heads, head_dim). Returns logits (n, vocab_size)."""
    rotary = getattr(model.positions, "rotary", False)
    for layer, block in enumerate(model.blocks):
        mha, h = block.attention, block.norm1(x)
        q = mha.q_proj(h).view(-1, mha.n_heads, mha.head_dim)     # (n, heads, head_dim)
        k = mha.k_proj(h).view(-1, mha.n_kv_heads, mha.head_dim)  # (n, kv_heads, head_dim)
        v = mha.v_proj(h).view(-1, mha.n_kv_heads, mha.head_dim)
        if rotary:  # (heads, n, head_dim) with one position per row n
            q = apply_rope(q.transpose(0, 1), positions).transpose(0, 1)
            k = apply_rope(k.transpose(0, 1), positions).transpose(0, 1)
        heads = attend(layer, q, k, v)                            # (n, heads, head_dim)
        x = x + mha.out_proj(heads.reshape(x.shape))              # (n, d_model)
        x = x + block.ffn(block.norm2(x))
    return model.lm_head(model.final_norm(x))


@torch.no_grad()
def prefill(model: TinyDecoder, cache: PagedKVCache, seq: Hashable, tokens: Tensor) -> Tensor:
    """Run ``seq``'s new tokens (T,) through the model, after the tokens it already stores.

    Their keys and values go into its blocks (allocated as needed); each query attends causally
    through the block table. Returns logits (T, vocab_size).
    """
    start = cache.append_slots(seq, tokens.shape[0])
    positions = torch.arange(start, start + tokens.shape[0], device=tokens.device)
    x = model.token_embedding(tokens) + model.positions(positions)   # (T, d_model)

    def attend(layer, q, k, v):
        cache.write(layer, seq, start, k.transpose(0, 1), v.transpose(0, 1))
        out = paged_chunk_attention(q.transpose(0, 1), cache.keys[layer], cache.values[layer],
                                    cache.tables[seq], start)        # (heads, T, head_dim)
        return out.transpose(0, 1)                                   # (T, heads, head_dim)
    return _layers(model, x, positions, attend)


@torch.no_grad()
def decode_step(model: TinyDecoder, cache: PagedKVCache, seqs: list[Hashable],
                tokens: Tensor) -> Tensor:
    """One new token per sequence, tokens (batch,), appended to each sequence's last block (a
    new block when it is full). Returns logits (batch, vocab_size). Raises :class:`OutOfBlocks`
    before changing anything when the new blocks do not fit."""
    needed = sum(cache.lengths[s] % cache.block_size == 0 for s in seqs)
    if needed > cache.allocator.n_free:
        raise OutOfBlocks(f"the step needs {needed} new blocks, {cache.allocator.n_free} are free")
    starts = [cache.append_slots(s, 1) for s in seqs]
    positions = torch.tensor(starts, device=tokens.device)          # (batch,)
    tables, lengths = cache.table_tensor(seqs), positions + 1
    x = model.token_embedding(tokens) + model.positions(positions)  # (batch, d_model)

    def attend(layer, q, k, v):
        for i, (s, start) in enumerate(zip(seqs, starts)):
            cache.write(layer, s, start, k[i, :, None], v[i, :, None])
        return paged_decode_attention(q, cache.keys[layer], cache.values[layer], tables, lengths)
    return _layers(model, x, positions, attend)


@dataclass
class Request:
    """A prompt (token ids) and how many tokens to generate for it."""

    id: int
    prompt: list[int]
    max_new_tokens: int


@dataclass
class ServeResult:
    """What a scheduler did: each request's generated tokens, and per model step the number of
    requests running and of tokens generated for them (padding rows not counted)."""

    tokens: dict[int, list[int]] = field(default_factory=dict)
    running: list[int] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)
    preemptions: int = 0
    peak_blocks: int = 0

    @property
    def steps(self) -> int:
        return len(self.running)

    @property
    def tokens_per_step(self) -> float:
        return sum(self.generated) / self.steps


def continuous_batching(model: TinyDecoder, requests: list[Request], n_blocks: int,
                        block_size: int, max_batch: int) -> ServeResult:
    """Iteration-level scheduling (Yu et al., 2022) over a paged cache (Kwon et al., 2023).

    Every step: retire the requests that have all their tokens and free their blocks; admit
    waiting requests, first come first served, while the batch has room and the free blocks hold
    the prompt; prefill each admitted request (its first token); decode one token for every other
    running request. When a decode step runs out of blocks, the request admitted last is
    preempted: its blocks are freed and it waits again, at the front, with the tokens generated so
    far appended to its prompt, to be recomputed (vLLM's recomputation). The step then runs again.
    """
    cache = PagedKVCache.for_model(model, n_blocks, block_size)
    device = model.lm_head.weight.device
    waiting, running, result = deque(requests), [], ServeResult()
    result.tokens = {r.id: [] for r in requests}
    by_id = {r.id: r for r in requests}
    while waiting or running:
        before = sum(len(t) for t in result.tokens.values())
        for rid in [r for r in running if len(result.tokens[r]) == by_id[r].max_new_tokens]:
            running.remove(rid)
            cache.release(rid)
        admitted = []
        while waiting and len(running) < max_batch:
            r = waiting[0]
            if len(result.tokens[r.id]) == r.max_new_tokens:   # preempted after its last token
                waiting.popleft()
                continue
            known = r.prompt + result.tokens[r.id]     # prompt, plus tokens kept from a preemption
            if blocks_for(len(known), block_size) > cache.allocator.n_free:
                break
            waiting.popleft()
            cache.add(r.id)
            logits = prefill(model, cache, r.id, torch.tensor(known, device=device))
            result.tokens[r.id].append(int(logits[-1].argmax()))
            running.append(r.id)
            admitted.append(r.id)
        if not running:
            if not waiting:
                break
            raise OutOfBlocks(f"request {waiting[0].id} does not fit in {n_blocks} blocks")
        decoding = [r for r in running if r not in admitted]
        while decoding:
            try:
                last = torch.tensor([result.tokens[r][-1] for r in decoding], device=device)
                logits = decode_step(model, cache, decoding, last)
                break
            except OutOfBlocks:
                victim = running.pop()                  # the one admitted last
                cache.release(victim)
                waiting.appendleft(by_id[victim])
                result.preemptions += 1
                if victim in decoding:
                    decoding.remove(victim)
                else:
                    admitted.remove(victim)
        for r, row in zip(decoding, logits if decoding else []):
            result.tokens[r].append(int(row.argmax()))
        result.running.append(len(running))
        result.generated.append(sum(len(t) for t in result.tokens.values()) - before)
        used = n_blocks - cache.allocator.n_free
        result.peak_blocks = max(result.peak_blocks, used)
    return result


def static_batching(model: TinyDecoder, requests: list[Request], n_blocks: int, block_size: int,
                    max_batch: int) -> ServeResult:
    """The baseline: take ``max_batch`` requests in order, run them together until the one with
    the longest output is done, then take the next batch.

    A request that has all its tokens stays in the batch as a padding row: it is computed every
    step, its tokens are thrown away, and a new request cannot take its place. (A padded batch
    runs every row; here the rows go through the same paged model step as continuous batching,
    so the two differ only in their scheduling.) ``running`` counts the requests not finished.
    """
    cache = PagedKVCache.for_model(model, n_blocks, block_size)
    device = model.lm_head.weight.device
    result = ServeResult(tokens={r.id: [] for r in requests})
    for first in range(0, len(requests), max_batch):
        batch = requests[first:first + max_batch]
        rows = []
        for r in batch:
            cache.add(r.id)
            logits = prefill(model, cache, r.id, torch.tensor(r.prompt, device=device))
            rows.append(int(logits[-1].argmax()))
        longest = max(r.max_new_tokens for r in batch)
        for step in range(longest):
            alive = [r for r in batch if step < r.max_new_tokens]
            for r, token in zip(batch, rows):
                if step < r.max_new_tokens:
                    result.tokens[r.id].append(token)
            result.running.append(len(alive))
            result.generated.append(len(alive))
            result.peak_blocks = max(result.peak_blocks, n_blocks - cache.allocator.n_free)
            if step + 1 < longest:
                logits = decode_step(model, cache, [r.id for r in batch],
                                     torch.tensor(rows, device=device))
                rows = [int(t) for t in logits.argmax(dim=-1)]
        for r in batch:
            cache.release(r.id)
    return result


def generate_alone(model: TinyDecoder, request: Request) -> list[int]:
    """The request decoded by itself, greedily, with the model's own contiguous KV cache."""
    device = model.lm_head.weight.device
    prompt = torch.tensor([request.prompt], device=device)        # (1, prompt)
    out = generate(model, prompt, request.max_new_tokens, cache=True)
    return out[0, len(request.prompt):].tolist()
