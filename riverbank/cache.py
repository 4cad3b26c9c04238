"""The KV cache: each layer's keys and values of the tokens seen so far (chapter 7).

During generation, the keys and values of earlier tokens never change (a causal model's token t
only depends on tokens 0..t). So instead of recomputing them at every step, each attention layer
stores them here and appends the new token's key and value. The model then only has to run on the
new token.

Shapes: per layer, keys and values are (batch, n_kv_heads, seq, head_dim), where seq is the number
of tokens cached so far; they grow along the sequence axis, dim 2. With grouped-query attention the
cache holds ``n_kv_heads`` heads, not ``n_heads``: that is where GQA's memory saving comes from.

The cache grows by concatenation, which is the easiest to read. Serving systems allocate it in
fixed-size blocks instead (paged attention, Kwon et al., 2023); chapter 7 draws the block tables.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["KVCache"]


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

    @property
    def nbytes(self) -> int:
        """Bytes held by every layer's keys and values."""
        tensors = [t for t in self.keys + self.values if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def __repr__(self) -> str:
        return f"KVCache(n_layers={len(self.keys)}, seq_len={self.seq_len}, nbytes={self.nbytes})"
