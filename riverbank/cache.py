"""The KV cache: each layer's keys and values of the tokens seen so far (chapter 7).

During generation, the keys and values of earlier tokens never change (a causal model's token t
only depends on tokens 0..t). So instead of recomputing them at every step, each attention layer
stores them here and appends the new token's key and value. The model then only has to run on the
new token.

Shapes: per layer, keys and values are (batch, n_kv_heads, seq, head_dim), where seq is the number
of tokens cached so far; they grow along the sequence axis, dim 2. With grouped-query attention the
cache holds ``n_kv_heads`` heads, not ``n_heads``: that is where GQA's memory saving comes from.

The cache grows by concatenation, which is the easiest to read. Chapter 7 adds the two ways
serving systems bound and share this memory:

- :func:`paged_attention`: the cache stored in fixed-size blocks from a shared pool, reached
  through a block table (Kwon et al., 2023), and attention computed block by block through it;
- :class:`RollingKVCache`: a cache capped at a window of ``window`` tokens, each token written to
  slot ``position % window`` (Mistral 7B's rolling buffer, Jiang et al., 2023, section 2).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["KVCache", "RollingKVCache", "paged_attention"]


class KVCache:
    """Keys and values for ``n_layers`` attention layers, appended to one step at a time.

    ``update(layer, k, v)`` appends the new keys and values (batch, n_kv_heads, new, head_dim)
    of one layer and returns that layer's whole cache, old tokens first. ``seq_len`` is the number
    of tokens cached (the position of the next token), ``nbytes`` the memory the tensors hold.
    """

    def __init__(self, n_layers: int):
        self.keys: list[Tensor | None] = [None] * n_layers
        self.values: list[Tensor | None] = [None] * n_layers

    def update(self, layer: int, k: Tensor,
               v: Tensor) -> tuple[Tensor, Tensor]:
        if self.keys[layer] is None:
            self.keys[layer], self.values[layer] = k, v
        else:  # along seq: (batch, kv_heads, seq + new, head_dim)
            self.keys[layer] = torch.cat([self.keys[layer], k], dim=2)
            self.values[layer] = torch.cat([self.values[layer], v], dim=2)
        return self.keys[layer], self.values[layer]

    @property
    def seq_len(self) -> int:
        """Tokens cached so far: the position the next token will have."""
        return 0 if self.keys[0] is None else self.keys[0].shape[2]

    def copy(self) -> KVCache:
        """A second cache holding the same tensors. ``update`` replaces a layer's tensors instead of
        writing into them, so appending to the copy leaves this cache as it is: a shared prefix can
        be computed once and continued in several ways, and one decode step can be timed again and
        again at the same cache length."""
        twin = KVCache(len(self.keys))
        twin.keys, twin.values = list(self.keys), list(self.values)
        return twin

    @property
    def nbytes(self) -> int:
        """Bytes held by every layer's keys and values."""
        tensors = [t for t in self.keys + self.values if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def __repr__(self) -> str:
        return f"KVCache(n_layers={len(self.keys)}, seq_len={self.seq_len}, nbytes={self.nbytes})"


class RollingKVCache:
    """A KV cache that holds at most ``window`` tokens per layer: Mistral 7B's rolling buffer.

    With sliding-window attention (Jiang et al., 2023, section 2) a token attends only to the last
    ``window`` tokens, itself included, so older keys and values are never read again. The buffer
    has ``window`` slots per layer; the token at position ``i`` goes to slot ``i % window``,
    overwriting the token ``window`` places before it. Attention does not depend on the order of
    the keys (each key already carries its position), so the slots are never put back in order.

    ``update(layer, k, v)`` has :class:`KVCache`'s interface: k, v are (batch, n_kv_heads, new,
    head_dim), and it returns the layer's keys and values held after the update, (batch, n_kv_heads,
    min(seen, window), head_dim). One token at a time it works for any length: a single query
    may see every key held, so it needs no mask. Several tokens at once (a prefill) must still fit
    in the window, because their causal mask assumes the slots are in order; a longer prompt goes
    in one token at a time or, as Mistral does, in chunks with a mask over cache and chunk.
    :class:`~riverbank.model.TinyDecoder` builds a causal mask over every token seen, so inside
    the model this cache serves only while the sequence fits in the window; chapter 7 runs it past
    the window on one attention layer. ``seq_len`` counts every token seen (the next token's
    position); ``nbytes`` is the memory the buffers hold, which stops growing at ``window`` tokens.
    """

    def __init__(self, n_layers: int, window: int):
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.window = window
        self.keys: list[Tensor | None] = [None] * n_layers    # (batch, kv_heads, window, head_dim)
        self.values: list[Tensor | None] = [None] * n_layers
        self.seen = [0] * n_layers                             # tokens written to each layer

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        new, seen = k.shape[2], self.seen[layer]
        if new > 1 and seen + new > self.window:
            raise ValueError(f"{new} tokens after {seen} do not fit a window of "
                             f"{self.window}: feed them one at a time")
        if self.keys[layer] is None:   # allocate the slots once
            batch, heads, _, head_dim = k.shape
            self.keys[layer] = k.new_zeros(batch, heads, self.window, head_dim)
            self.values[layer] = v.new_zeros(batch, heads, self.window, head_dim)
        for i in range(new):           # position seen + i -> slot (seen + i) % window
            slot = (seen + i) % self.window
            self.keys[layer][:, :, slot] = k[:, :, i]
            self.values[layer][:, :, slot] = v[:, :, i]
        self.seen[layer] = seen + new
        held = min(seen + new, self.window)
        return self.keys[layer][:, :, :held], self.values[layer][:, :, :held]

    @property
    def seq_len(self) -> int:
        """Tokens seen so far (not only those held): the position the next token will have."""
        return self.seen[0]

    @property
    def nbytes(self) -> int:
        """Bytes of the tokens held in every layer's buffers: at most ``window`` tokens' worth."""
        total = 0
        for layer, keys in enumerate(self.keys):
            if keys is not None:
                held = min(self.seen[layer], self.window)
                per_token = keys[:, :, 0].numel() * keys.element_size()
                total += 2 * held * per_token   # keys and values
        return total

    def __repr__(self) -> str:
        return (f"RollingKVCache(n_layers={len(self.keys)}, window={self.window}, "
                f"seq_len={self.seq_len}, nbytes={self.nbytes})")


def paged_attention(query: Tensor, key_blocks: Tensor, value_blocks: Tensor, block_table: list[int],
                    length: int) -> Tensor:
    """One new token's attention over a sequence whose keys and values are stored in blocks.

    query: (heads, head_dim), the new token's query. key_blocks, value_blocks: (n_blocks, heads,
    block_size, head_dim), the pool of physical blocks shared by all sequences. block_table: the
    physical block that holds each of the sequence's logical blocks, in order (logical block ``j``
    holds tokens ``j * block_size`` to ``(j + 1) * block_size - 1``). length: the sequence's
    tokens; slots after them in its last block are unused and never read.

    The keys and values are read one block at a time through the table and never copied into one
    contiguous tensor. Kwon et al. (2023, section 4.1, eq. 4) write this block-wise computation with
    the softmax's denominator summed over all blocks; here each block's scores update a running
    max, a running sum and an unnormalised output instead (chapter 6's online softmax), so one pass
    over the table is enough. Returns (heads, head_dim), equal to softmax(q Kᵀ / √head_dim) V over
    the whole sequence up to float rounding.
    """
    block_size = key_blocks.shape[2]
    blocks_needed = math.ceil(length / block_size)
    if len(block_table) != blocks_needed:
        raise ValueError(f"{length} tokens need {blocks_needed} blocks of {block_size}, "
                         f"the table has {len(block_table)}")
    heads, head_dim = query.shape
    running_max = query.new_full((heads,), float("-inf"))
    running_sum = query.new_zeros(heads)
    out = query.new_zeros(heads, head_dim)   # sum of exp(score - running_max) * value
    for j, physical in enumerate(block_table):
        used = min(block_size, length - j * block_size)   # the last may be partial
        keys = key_blocks[physical, :, :used]       # (heads, used, head_dim), a view
        values = value_blocks[physical, :, :used]   # (heads, used, head_dim)
        scores = (keys @ query[:, :, None])[..., 0] / math.sqrt(head_dim)  # (heads, used)
        new_max = torch.maximum(running_max, scores.amax(dim=-1))
        rescale = torch.exp(running_max - new_max)  # for what was summed under the old max
        p = torch.exp(scores - new_max[:, None])    # (heads, used)
        running_sum = running_sum * rescale + p.sum(dim=-1)
        out = out * rescale[:, None] + (p[:, None, :] @ values)[:, 0]  # (heads, head_dim)
        running_max = new_max
    return out / running_sum[:, None]
