"""Multi-head attention (Vaswani et al., 2017, section 3.2.2), built on chapter 2's attention
(chapter 4; chapter 5's model uses it, chapter 7 adds grouped-query heads and a KV cache).

Each head attends in its own ``head_dim = d_model // n_heads``-dimensional slice of the projected
queries, keys and values; the heads' outputs are concatenated back to ``d_model`` and mixed by one
output projection. The four projections are ``d_model × d_model`` each, so a layer has
``4 · d_model² (+ 4 · d_model biases)`` parameters, whatever the number of heads.

Grouped-query attention (GQA, Ainslie et al., 2023; chapter 7): with ``n_kv_heads < n_heads``
the keys and values get only ``n_kv_heads`` heads, each shared by a group of
``n_heads // n_kv_heads`` query heads (:func:`repeat_kv`); ``n_kv_heads = 1`` is multi-query
attention (MQA, Shazeer, 2019). The default, ``n_kv_heads = n_heads``, is standard multi-head
attention with exactly the parameters above. Lines added for chapter 7 are marked ``# NEW``.

Masks follow the course convention of :mod:`riverbank.attention`: **bool, True = keep**. (torch's
``nn.MultiheadAttention`` uses True = ignore; pass it ``~mask``.)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .attention import attention_weights
from .positions import apply_rope

__all__ = ["MultiHeadAttention", "split_heads", "merge_heads", "repeat_kv"]


def split_heads(x: Tensor, n_heads: int) -> Tensor:
    """Cut the last axis into ``n_heads`` slices of ``head_dim`` and give each head its own axis.

    x: (batch, seq, n_heads · head_dim) -> (batch, n_heads, seq, head_dim). Head h gets features
    ``h · head_dim`` to ``(h + 1) · head_dim - 1``. The view splits the features, the transpose
    moves the head axis in front of the sequence axis; a reshape straight to
    (batch, n_heads, seq, head_dim) would cut the *sequence* into pieces instead.
    """
    batch, seq, width = x.shape
    if width % n_heads:
        raise ValueError(f"the last axis ({width}) is not divisible by n_heads ({n_heads})")
    x = x.view(batch, seq, n_heads, width // n_heads)  # (batch, seq, heads, head_dim)
    return x.transpose(1, 2)  # (batch, heads, seq, head_dim)


def merge_heads(x: Tensor) -> Tensor:
    """Undo :func:`split_heads`: concatenate the heads' outputs along the feature axis.

    x: (batch, n_heads, seq, head_dim) -> (batch, seq, n_heads · head_dim), head 0's features first.
    """
    batch, n_heads, seq, head_dim = x.shape
    x = x.transpose(1, 2)  # (batch, seq, heads, head_dim)
    return x.reshape(batch, seq, n_heads * head_dim)  # (batch, seq, d_model); copies: not contiguous


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:  # NEW (chapter 7)
    """Give each group of ``n_rep`` query heads its shared key/value head.

    x: (batch, n_kv_heads, seq, head_dim) -> (batch, n_kv_heads · n_rep, seq, head_dim), where
    output head h is input head ``h // n_rep``: each kv head is repeated ``n_rep`` times in a row
    (``repeat_interleave``, as in Hugging Face's Llama). ``x.repeat(1, n_rep, 1, 1)`` would tile
    the heads instead (0, 1, 0, 1, ...) and pair query heads with the wrong keys.
    """
    if n_rep == 1:
        return x
    return x.repeat_interleave(n_rep, dim=1)  # (batch, n_kv_heads * n_rep, seq, head_dim)


class MultiHeadAttention(nn.Module):
    """Multi-head attention: project, split into heads, attend in each head, merge, project.

    Args:
        d_model: width of the input and output vectors.
        n_heads: number of heads; must divide ``d_model``. Each head works in
            ``head_dim = d_model // n_heads`` dimensions and is scaled by ``1/√head_dim``.
        bias: whether the four projections have biases.
        n_kv_heads: heads for the keys and values (chapter 7); must divide ``n_heads``. None (the
            default) means ``n_heads``: standard multi-head attention.

    Attributes ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj`` are ``nn.Linear(d_model, d_model)``;
    with grouped-query attention ``k_proj`` and ``v_proj`` are ``nn.Linear(d_model, n_kv_heads · head_dim)``.
    """

    def __init__(self, d_model: int, n_heads: int, bias: bool = True, n_kv_heads: int | None = None):
        super().__init__()
        if n_heads <= 0 or d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be a multiple of n_heads ({n_heads})")
        self.d_model = d_model
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads  # NEW
        if self.n_kv_heads <= 0 or n_heads % self.n_kv_heads:  # NEW
            raise ValueError(f"n_kv_heads ({self.n_kv_heads}) must divide n_heads ({n_heads})")
        kv_width = self.n_kv_heads * self.head_dim  # NEW: d_model when n_kv_heads == n_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, kv_width, bias=bias)  # NEW: kv_width
        self.v_proj = nn.Linear(d_model, kv_width, bias=bias)  # NEW: kv_width
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None,
                cache=None, layer: int = 0,
                rope_positions: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Attend from ``x`` to ``context`` (to ``x`` itself when ``context`` is None).

        Args:
            x: (batch, seq_q, d_model), the queries' tokens.
            context: (batch, seq_k, d_model), the keys' and values' tokens (cross-attention), or
                None for self-attention.
            mask: bool, True = keep, broadcastable to (batch, n_heads, seq_q, seq_k): for example
                ``causal_mask(seq)`` of shape (seq_q, seq_k), or a padding mask
                ``padding_mask(lengths)[:, None, None, :]`` of shape (batch, 1, 1, seq_k).
                A 3-D mask is refused, because (batch, seq_q, seq_k) would line its batch axis up
                with the heads; add the head axis with ``mask[:, None]``.
            cache: a :class:`riverbank.cache.KVCache` or None (chapter 7). When given, this call's
                keys and values are appended to the cache's entry ``layer``, and the queries attend
                to every cached key: seq_k is then the number of tokens cached, and ``mask`` must
                cover all of them, e.g. ``causal_mask(seq_q, seq_k)``.
            layer: which of the cache's layers this attention is.
            rope_positions: (seq_q,) positions of ``x``'s tokens, or None (chapter 8). When given,
                the queries and this call's keys are rotated by RoPE (:func:`~riverbank.positions.apply_rope`,
                interleaved pairs) before attention; self-attention only. The values are not rotated.

        Returns:
            ``(out, weights)``: out is (batch, seq_q, d_model); weights is
            (batch, n_heads, seq_q, seq_k), each head's attention weights (rows sum to 1, or are
            all zero for a query whose keys are all masked).
        """
        if context is None:
            context = x
        if mask is not None and mask.dim() == 3:
            raise ValueError(f"a 3-D mask {tuple(mask.shape)} is ambiguous: give it a head axis, "
                             "e.g. mask[:, None] for (batch, 1, seq_q, seq_k)")
        q = split_heads(self.q_proj(x), self.n_heads)  # (batch, heads, seq_q, head_dim)
        k = split_heads(self.k_proj(context), self.n_kv_heads)  # (batch, kv_heads, seq_k, head_dim)
        v = split_heads(self.v_proj(context), self.n_kv_heads)  # (batch, kv_heads, seq_k, head_dim)
        if rope_positions is not None:  # RoPE (chapter 8): turn q and the new k by their positions
            q, k = apply_rope(q, rope_positions), apply_rope(k, rope_positions)
        if cache is not None:  # NEW: append, then attend to every token cached so far
            k, v = cache.update(layer, k, v)  # (batch, kv_heads, cached seq_k, head_dim)
        k = repeat_kv(k, self.n_heads // self.n_kv_heads)  # NEW: (batch, heads, seq_k, head_dim)
        v = repeat_kv(v, self.n_heads // self.n_kv_heads)  # NEW: (batch, heads, seq_k, head_dim)
        weights = attention_weights(q, k, mask)  # (batch, heads, seq_q, seq_k), scaled by 1/√head_dim
        heads = weights @ v  # (batch, heads, seq_q, head_dim)
        out = self.out_proj(merge_heads(heads))  # (batch, seq_q, d_model)
        return out, weights

    def extra_repr(self) -> str:
        kv = f", n_kv_heads={self.n_kv_heads}" if self.n_kv_heads != self.n_heads else ""  # NEW
        return f"d_model={self.d_model}, n_heads={self.n_heads}, head_dim={self.head_dim}" + kv
