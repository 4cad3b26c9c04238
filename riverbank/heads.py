"""Multi-head attention (Vaswani et al., 2017, section 3.2.2), built on chapter 2's attention
(chapter 4; chapter 5's model uses it, chapter 7 adds grouped-query heads and a KV cache).

Each head attends in its own ``head_dim = d_model // n_heads``-dimensional slice of the projected
queries, keys and values; the heads' outputs are concatenated back to ``d_model`` and mixed by one
output projection. The four projections are ``d_model × d_model`` each, so a layer has
``4 · d_model² (+ 4 · d_model biases)`` parameters, whatever the number of heads.

Masks follow the course convention of :mod:`riverbank.attention`: **bool, True = keep**. (torch's
``nn.MultiheadAttention`` uses True = ignore; pass it ``~mask``.)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .attention import attention_weights

__all__ = ["MultiHeadAttention", "split_heads", "merge_heads"]


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


class MultiHeadAttention(nn.Module):
    """Multi-head attention: project, split into heads, attend in each head, merge, project.

    Args:
        d_model: width of the input and output vectors.
        n_heads: number of heads; must divide ``d_model``. Each head works in
            ``head_dim = d_model // n_heads`` dimensions and is scaled by ``1/√head_dim``.
        bias: whether the four projections have biases.

    Attributes ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj`` are ``nn.Linear(d_model, d_model)``.
    """

    def __init__(self, d_model: int, n_heads: int, bias: bool = True):
        super().__init__()
        if n_heads <= 0 or d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be a multiple of n_heads ({n_heads})")
        self.d_model = d_model
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x: Tensor, context: Tensor | None = None,
                mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
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
        k = split_heads(self.k_proj(context), self.n_heads)  # (batch, heads, seq_k, head_dim)
        v = split_heads(self.v_proj(context), self.n_heads)  # (batch, heads, seq_k, head_dim)
        weights = attention_weights(q, k, mask)  # (batch, heads, seq_q, seq_k), scaled by 1/√head_dim
        heads = weights @ v  # (batch, heads, seq_q, head_dim)
        out = self.out_proj(merge_heads(heads))  # (batch, seq_q, d_model)
        return out, weights

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_heads={self.n_heads}, head_dim={self.head_dim}"
