"""Scaled dot-product attention and the masks that go with it (chapter 2; chapters 4 to 8 import it).

Shapes: ``q`` is ``(..., seq_q, d_k)``, ``k`` is ``(..., seq_k, d_k)`` and ``v`` is
``(..., seq_k, d_v)``. The leading dimensions (batch, heads, ...) broadcast, as in
``torch.nn.functional.scaled_dot_product_attention``.

The course's mask convention: **a boolean mask is True where a query may attend to a key
("keep") and False where it may not.** This is the convention of torch's
``scaled_dot_product_attention(attn_mask=...)``. ``torch.nn.MultiheadAttention`` uses the opposite
one for its boolean ``key_padding_mask`` and ``attn_mask``: there True means "ignore". Turn one into
the other with ``~mask``.

A query row whose keys are all masked has nothing to attend to. Its softmax would be 0/0 = NaN;
here, as in torch's SDPA, its weights and its output are zeros instead.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["attention_weights", "scaled_dot_product_attention", "causal_mask", "padding_mask",
           "sliding_window_mask"]


def attention_weights(q: Tensor, k: Tensor, mask: Tensor | None = None) -> Tensor:
    """softmax(q kᵀ / √d_k) over the keys, with masked keys given weight 0.

    q: (..., seq_q, d_k), k: (..., seq_k, d_k), mask: bool, broadcastable to (..., seq_q, seq_k),
    True = keep. Returns (..., seq_q, seq_k); each row sums to 1, except a row with every key
    masked, which is all zeros.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., seq_q, seq_k)
    if mask is None:
        return torch.softmax(scores, dim=-1)
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True = keep), got dtype {mask.dtype}")
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)  # NaN in rows where every key is masked
    nothing_to_attend = ~mask.any(dim=-1, keepdim=True)  # (..., seq_q, 1)
    return weights.masked_fill(nothing_to_attend, 0.0)


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """Attention(q, k, v) = softmax(q kᵀ / √d_k) v (Vaswani et al., 2017, eq. 1), with a boolean mask.

    q: (..., seq_q, d_k), k: (..., seq_k, d_k), v: (..., seq_k, d_v),
    mask: bool, broadcastable to (..., seq_q, seq_k), True = keep.
    Returns (..., seq_q, d_v). Equal to ``torch.nn.functional.scaled_dot_product_attention(q, k, v,
    attn_mask=mask)`` up to float rounding, including zeros for a query whose keys are all masked.
    """
    return attention_weights(q, k, mask) @ v  # (..., seq_q, seq_k) @ (..., seq_k, d_v)


def causal_mask(n: int, n_keys: int | None = None, *, device: torch.device | str | None = None) -> Tensor:
    """Which keys each query may see when it may not look ahead: True on and below the diagonal.

    Returns a bool tensor of shape (n, n_keys), n_keys defaulting to n. With n_keys > n (the last
    n queries of a sequence of n_keys tokens, as with a KV cache), query i sits at position
    n_keys - n + i and sees keys 0 to n_keys - n + i: the diagonal is aligned bottom-right.
    Note that torch's ``is_causal=True`` aligns it top-left instead when the lengths differ.
    """
    n_keys = n if n_keys is None else n_keys
    if n_keys < n:
        raise ValueError(f"n_keys ({n_keys}) must be at least the number of queries ({n})")
    ones = torch.ones(n, n_keys, dtype=torch.bool, device=device)
    return torch.tril(ones, diagonal=n_keys - n)


def sliding_window_mask(n: int, n_keys: int, window: int, *,
                        device: torch.device | str | None = None) -> Tensor:  # NEW (chapter 10)
    """The causal mask cut to a band of ``window`` keys: sliding-window attention (Beltagy et
    al., 2020; Jiang et al., 2023, section 2).

    Returns a bool tensor of shape (n, n_keys), True = keep. As in :func:`causal_mask`, query i
    sits at position p = n_keys - n + i; it sees the keys at positions p - window + 1 to p, itself
    and the window - 1 before it. With window >= n_keys this is ``causal_mask(n, n_keys)``.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    no_future = causal_mask(n, n_keys, device=device)                  # key <= p
    not_too_old = torch.triu(torch.ones_like(no_future), diagonal=n_keys - n - window + 1)
    return no_future & not_too_old                                      # key >= p - window + 1


def padding_mask(lengths: Tensor, max_len: int | None = None) -> Tensor:
    """Which positions hold real tokens in a right-padded batch: True for the first lengths[b].

    lengths: (batch,) integer tensor; max_len defaults to lengths.max(). Returns a bool tensor of
    shape (batch, max_len). To mask keys in attention, broadcast it over the queries:
    ``padding_mask(lengths)[:, None, :]`` is (batch, 1, seq_k), and ``[:, None, None, :]`` is
    (batch, 1, 1, seq_k) for (batch, heads, seq_q, seq_k) scores.
    """
    max_len = int(lengths.max()) if max_len is None else max_len
    positions = torch.arange(max_len, device=lengths.device)  # (max_len,)
    return positions[None, :] < lengths[:, None]  # (batch, max_len)
