"""riverbank.heads against torch.nn.MultiheadAttention (weights copied), and the head split/merge."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from riverbank.attention import causal_mask, padding_mask, scaled_dot_product_attention
from riverbank.heads import MultiHeadAttention, merge_heads, split_heads

ATOL = 1e-5  # float32 rounding between two orders of the same sums; a real error is far larger


def pair(d_model: int, n_heads: int, seed: int, bias: bool = True):
    """Our layer and torch's, with torch's random weights copied into ours."""
    torch.manual_seed(seed)
    theirs = nn.MultiheadAttention(d_model, n_heads, bias=bias, batch_first=True).eval()
    if bias:  # torch starts biases at 0, which would hide a missing or misplaced bias
        with torch.no_grad():
            theirs.in_proj_bias.normal_()
            theirs.out_proj.bias.normal_()
    ours = MultiHeadAttention(d_model, n_heads, bias=bias)
    with torch.no_grad():
        w_q, w_k, w_v = theirs.in_proj_weight.chunk(3)  # each (d_model, d_model)
        ours.q_proj.weight.copy_(w_q), ours.k_proj.weight.copy_(w_k), ours.v_proj.weight.copy_(w_v)
        ours.out_proj.weight.copy_(theirs.out_proj.weight)
        if bias:
            b_q, b_k, b_v = theirs.in_proj_bias.chunk(3)
            ours.q_proj.bias.copy_(b_q), ours.k_proj.bias.copy_(b_k), ours.v_proj.bias.copy_(b_v)
            ours.out_proj.bias.copy_(theirs.out_proj.bias)
    return ours, theirs


def torch_mha(theirs, x, context=None, keep=None):
    context = x if context is None else context
    ignore = None if keep is None else ~keep  # torch's bool attn_mask: True = ignore
    return theirs(x, context, context, attn_mask=ignore, need_weights=True, average_attn_weights=False)


@pytest.mark.parametrize("d_model,n_heads", [(8, 1), (8, 2), (12, 3), (16, 8)])
@pytest.mark.parametrize("bias", [True, False])
def test_self_attention_equals_torch(d_model, n_heads, bias):
    ours, theirs = pair(d_model, n_heads, seed=d_model + n_heads, bias=bias)
    x = torch.randn(3, 5, d_model, generator=torch.Generator().manual_seed(1))
    out, weights = ours(x)
    want_out, want_weights = torch_mha(theirs, x)
    assert out.shape == (3, 5, d_model) and weights.shape == (3, n_heads, 5, 5)
    assert torch.allclose(out, want_out, atol=ATOL)
    assert torch.allclose(weights, want_weights, atol=ATOL)


def test_causal_mask_equals_torch_with_the_mask_inverted():
    ours, theirs = pair(16, 4, seed=0)
    x = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(2))
    out, weights = ours(x, mask=causal_mask(6))
    want_out, want_weights = torch_mha(theirs, x, keep=causal_mask(6))
    assert torch.allclose(out, want_out, atol=ATOL) and torch.allclose(weights, want_weights, atol=ATOL)
    assert (weights.triu(diagonal=1) == 0).all()  # no query looks ahead, in any head
    # Passing our True = keep mask to torch unchanged would keep the future instead: not equal.
    wrong_out, _ = torch_mha(theirs, x, keep=~causal_mask(6) | torch.eye(6, dtype=torch.bool))
    assert not torch.allclose(out, wrong_out, atol=1e-3)


def test_cross_attention_with_padding_equals_torch():
    ours, theirs = pair(12, 3, seed=3)
    g = torch.Generator().manual_seed(3)
    x, context = torch.randn(2, 4, 12, generator=g), torch.randn(2, 7, 12, generator=g)
    keep = padding_mask(torch.tensor([7, 5]))  # (batch, seq_k)
    out, weights = ours(x, context, mask=keep[:, None, None, :])  # (batch, 1, 1, seq_k)
    want_out, want_weights = theirs(x, context, context, key_padding_mask=~keep, average_attn_weights=False)
    assert out.shape == (2, 4, 12) and weights.shape == (2, 3, 4, 7)
    assert torch.allclose(out, want_out, atol=ATOL) and torch.allclose(weights, want_weights, atol=ATOL)
    assert (weights[1, :, :, 5:] == 0).all()


def test_each_head_is_attention_on_its_own_slice():
    torch.manual_seed(4)
    mha = MultiHeadAttention(12, 3)
    x = torch.randn(2, 5, 12)
    out, weights = mha(x)
    q, k, v = mha.q_proj(x), mha.k_proj(x), mha.v_proj(x)
    heads = [scaled_dot_product_attention(q[..., s:s + 4], k[..., s:s + 4], v[..., s:s + 4]) for s in (0, 4, 8)]
    assert torch.allclose(out, mha.out_proj(torch.cat(heads, dim=-1)), atol=ATOL)
    # The scale is 1/√head_dim, not 1/√d_model.
    scores = q[..., 4:8] @ k[..., 4:8].transpose(-2, -1) / math.sqrt(4)
    assert torch.allclose(weights[:, 1], scores.softmax(-1), atol=ATOL)


def test_split_heads_gives_each_head_a_contiguous_slice_of_features():
    x = torch.arange(2 * 3 * 6.0).view(2, 3, 6)  # (batch, seq, d_model)
    heads = split_heads(x, 2)
    assert heads.shape == (2, 2, 3, 3)
    assert torch.equal(heads[1, 0, 2], x[1, 2, :3]) and torch.equal(heads[1, 1, 2], x[1, 2, 3:])
    assert torch.equal(merge_heads(heads), x)
    with pytest.raises(ValueError, match="divisible"):
        split_heads(x, 4)


def test_parameter_count_is_four_square_matrices_whatever_the_heads():
    for n_heads in (1, 2, 4, 8):
        assert sum(p.numel() for p in MultiHeadAttention(64, n_heads).parameters()) == 4 * 64 * 64 + 4 * 64
    assert sum(p.numel() for p in MultiHeadAttention(64, 8, bias=False).parameters()) == 4 * 64 * 64


def test_bad_arguments_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="multiple of n_heads"):
        MultiHeadAttention(10, 3)
    mha = MultiHeadAttention(8, 2)
    with pytest.raises(ValueError, match="head axis"):
        mha(torch.randn(2, 4, 8), mask=torch.ones(2, 4, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        mha(torch.randn(2, 4, 8), mask=torch.ones(4, 4))


def test_a_query_with_every_key_masked_gets_zeros_not_nan():
    torch.manual_seed(5)
    mha = MultiHeadAttention(8, 2, bias=False)
    keep = torch.ones(3, 3, dtype=torch.bool)
    keep[1] = False
    out, weights = mha(torch.randn(1, 3, 8), mask=keep)
    assert not out.isnan().any() and (weights[:, :, 1] == 0).all() and (out[:, 1] == 0).all()
