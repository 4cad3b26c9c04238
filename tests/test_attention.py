"""riverbank.attention against torch's SDPA, its masks and conventions, and against chapter 2's own cells."""

from __future__ import annotations

import math
from pathlib import Path

import nbformat
import pytest
import torch
import torch.nn.functional as F

from riverbank.attention import attention_weights, causal_mask, padding_mask, scaled_dot_product_attention

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "chapters" / "02_queries_keys_values.ipynb"
ATOL = 1e-6  # float32 rounding between two orders of the same sums; a real error is far larger


def qkv(seed: int, *lead: int, seq_q: int = 5, seq_k: int = 5, d_k: int = 8, d_v: int = 8):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*lead, seq_q, d_k, generator=g), torch.randn(*lead, seq_k, d_k, generator=g),
            torch.randn(*lead, seq_k, d_v, generator=g))


def torch_sdpa(q, k, v, mask=None):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@pytest.mark.parametrize("lead", [(), (3,), (2, 4)], ids=["unbatched", "batch", "batch-heads"])
def test_no_mask_equals_torch(lead):
    q, k, v = qkv(0, *lead, seq_q=4, seq_k=6, d_v=3)
    out = scaled_dot_product_attention(q, k, v)
    assert out.shape == (*lead, 4, 3)
    assert torch.allclose(out, torch_sdpa(q, k, v), atol=ATOL)


def test_causal_mask_equals_torch_is_causal():
    q, k, v = qkv(1, 2, 3, seq_q=7, seq_k=7)
    ours = scaled_dot_product_attention(q, k, v, causal_mask(7))
    assert torch.allclose(ours, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=ATOL)
    assert torch.allclose(ours, torch_sdpa(q, k, v, causal_mask(7)), atol=ATOL)


def test_causal_mask_is_the_lower_triangle_with_the_diagonal():
    mask = causal_mask(5)
    i, j = torch.meshgrid(torch.arange(5), torch.arange(5), indexing="ij")
    assert mask.dtype == torch.bool and torch.equal(mask, j <= i)


def test_causal_mask_with_a_cache_is_aligned_bottom_right():
    # The last 2 queries of a 5-token sequence: query 0 is position 3, query 1 is position 4.
    mask = causal_mask(2, 5)
    assert mask.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    # ... which equals the last rows of the full mask, so cached decoding matches a full pass.
    assert torch.equal(mask, causal_mask(5)[-2:])
    q, k, v = qkv(2, 2, seq_q=5, seq_k=5)
    full = scaled_dot_product_attention(q, k, v, causal_mask(5))
    assert torch.allclose(scaled_dot_product_attention(q[:, -2:], k, v, mask), full[:, -2:], atol=ATOL)
    with pytest.raises(ValueError, match="at least"):
        causal_mask(5, 2)


def test_padding_mask_keeps_exactly_the_first_lengths_positions():
    mask = padding_mask(torch.tensor([3, 0, 5]), 5)
    assert mask.dtype == torch.bool
    assert mask.tolist() == [[True, True, True, False, False], [False] * 5, [True] * 5]
    assert padding_mask(torch.tensor([2, 4])).shape == (2, 4)  # max_len defaults to the longest


def test_padding_mask_equals_torch_and_ignores_what_is_in_the_padding():
    lengths = torch.tensor([5, 2, 4])
    q, k, v = qkv(3, 3, seq_q=5, seq_k=5)
    mask = padding_mask(lengths, 5)[:, None, :]  # (batch, 1, seq_k): the same keys for every query
    ours = scaled_dot_product_attention(q, k, v, mask)
    assert torch.allclose(ours, torch_sdpa(q, k, v, mask), atol=ATOL)
    # Whatever sits at padded positions must not change the output.
    k2, v2 = k.clone(), v.clone()
    k2[1, 2:] = 1e3
    v2[1, 2:] = -1e3
    assert torch.allclose(scaled_dot_product_attention(q, k2, v2, mask), ours, atol=ATOL)
    # Attending over the short sequence alone gives the same answer as over its padded version.
    alone = scaled_dot_product_attention(q[1], k[1, :2], v[1, :2])
    assert torch.allclose(ours[1], alone, atol=ATOL)


def test_heads_and_padding_broadcast_together():
    q, k, v = qkv(4, 2, 3, seq_q=6, seq_k=6)  # (batch, heads, seq, d)
    mask = causal_mask(6) & padding_mask(torch.tensor([6, 3]), 6)[:, None, None, :]
    assert mask.shape == (2, 1, 6, 6)
    assert torch.allclose(scaled_dot_product_attention(q, k, v, mask), torch_sdpa(q, k, v, mask), atol=ATOL)


def test_a_fully_masked_row_gives_zeros_like_torch_and_no_nan_gradient():
    # Left padding with a causal mask: in sequence 1 queries 0 and 1 see only padding.
    left = padding_mask(torch.tensor([4, 2]), 4).flip(-1)
    mask = causal_mask(4) & left[:, None, :]
    q, k, v = qkv(5, 2, seq_q=4, seq_k=4, d_k=4, d_v=4)
    q.requires_grad_(True)
    ours = scaled_dot_product_attention(q, k, v, mask)
    theirs = torch_sdpa(q, k, v, mask)
    assert (theirs[1, :2] == 0).all()  # what torch does, and what the course's docstring promises
    assert (ours[1, :2] == 0).all() and torch.allclose(ours, theirs, atol=ATOL)
    weights = attention_weights(q, k, mask)
    assert (weights[1, :2] == 0).all()
    assert torch.allclose(weights[1, 2:].sum(-1), torch.ones(2))
    ours.sum().backward()
    assert not q.grad.isnan().any()


def test_the_naive_softmax_would_give_nan_there():
    # The reason for the zeros: without them the course's function would return NaN, as chapter 2 shows.
    mask = torch.tensor([[False, False], [True, False]])
    scores = torch.zeros(2, 2).masked_fill(~mask, float("-inf"))
    assert torch.softmax(scores, dim=-1)[0].isnan().all()
    q, k, v = qkv(6, seq_q=2, seq_k=2)
    assert not scaled_dot_product_attention(q, k, v, mask).isnan().any()


def test_true_means_keep_unlike_multihead_attentions_key_padding_mask():
    keep = padding_mask(torch.tensor([3, 1]), 3)
    mha = torch.nn.MultiheadAttention(embed_dim=4, num_heads=1, batch_first=True)
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        _, mha_weights = mha(x, x, x, key_padding_mask=~keep)  # MHA: True = ignore
    q, k, _ = qkv(8, 2, seq_q=3, seq_k=3, d_k=4)
    ours = attention_weights(q, k, keep[:, None, :])  # ours: True = keep
    assert torch.equal(ours == 0, mha_weights == 0)
    assert torch.equal(ours[:, 0] > 0, keep)


def test_multihead_attentions_bool_attn_mask_is_our_causal_mask_inverted():
    # The module docstring says MHA's boolean attn_mask also means "ignore": ~causal_mask is its causal mask.
    mha = torch.nn.MultiheadAttention(embed_dim=4, num_heads=1, batch_first=True)
    x = torch.randn(1, 5, 4, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        _, mha_weights = mha(x, x, x, attn_mask=~causal_mask(5))
    assert torch.equal(mha_weights[0] > 0, causal_mask(5))


def test_a_non_bool_mask_is_refused_with_a_message():
    q, k, v = qkv(9, seq_q=2, seq_k=2)
    with pytest.raises(TypeError, match="bool"):
        scaled_dot_product_attention(q, k, v, torch.ones(2, 2))


def test_weights_are_the_scaled_softmax():
    q, k, _ = qkv(10, seq_q=3, seq_k=4, d_k=16)
    expected = torch.softmax(q @ k.T / math.sqrt(16), dim=-1)
    assert torch.allclose(attention_weights(q, k), expected, atol=ATOL)


def _chapter_namespace() -> dict:
    """The functions chapter 2 builds in its cells, executed from the notebook's source."""
    cells = {c.get("id"): c.source for c in nbformat.read(CHAPTER, as_version=4).cells}
    namespace = {"math": math, "torch": torch}
    for cell_id in ("causal-mask-code", "padding-mask-code", "sdpa-final-code"):
        exec(compile(cells[cell_id], f"{CHAPTER.name}:{cell_id}", "exec"), namespace)
    return namespace


def test_the_package_holds_the_function_the_chapter_builds():
    chapter = _chapter_namespace()
    lengths = torch.tensor([6, 2])
    assert torch.equal(chapter["causal_mask"](6), causal_mask(6))
    assert torch.equal(chapter["padding_mask"](lengths, 6), padding_mask(lengths, 6))
    q, k, v = qkv(11, 2, 3, seq_q=6, seq_k=6)
    left = padding_mask(lengths, 6).flip(-1)[:, None, None, :]
    for mask in (None, causal_mask(6), causal_mask(6) & left):
        assert torch.allclose(chapter["scaled_dot_product_attention"](q, k, v, mask),
                              scaled_dot_product_attention(q, k, v, mask), atol=ATOL)
