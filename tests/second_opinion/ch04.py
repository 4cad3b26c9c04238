"""Chapter 4 (split heads, merge heads, multi-head attention): learner code the grader has not seen."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


# --- 4.1 split_heads: correct ---------------------------------------------------------------------

def ch04_split_unflatten_swapaxes(x, n_heads):
    return x.unflatten(-1, (n_heads, -1)).swapaxes(1, 2)


def ch04_split_torch_split_stack(x, n_heads):
    head_dim = x.shape[-1] // n_heads
    return torch.stack(torch.split(x, head_dim, dim=-1), dim=1)


def ch04_split_movedim_contiguous(x, n_heads):
    b, s, d = x.shape
    return x.reshape(b, s, n_heads, -1).movedim(2, 1).contiguous()


def ch04_split_einsum_loop_into_zeros(x, n_heads):
    b, s, d = x.shape
    hd = d // n_heads
    out = torch.empty(b, n_heads, s, hd, dtype=x.dtype)
    for h in range(n_heads):
        out[:, h] = x[:, :, h * hd:(h + 1) * hd]
    return out


# --- 4.1 split_heads: wrong -----------------------------------------------------------------------

def ch04_split_view_straight_to_heads(x, n_heads):
    b, s, d = x.shape
    return x.reshape(b, n_heads, s, -1)


def ch04_split_strided_slices(x, n_heads):  # head h takes features h, h + n, h + 2n, ...
    return torch.stack([x[..., h::n_heads] for h in range(n_heads)], dim=1)


def ch04_split_stack_on_axis_2(x, n_heads):
    return torch.stack(x.chunk(n_heads, dim=-1), dim=2)


def ch04_split_transpose_last_two(x, n_heads):
    b, s, d = x.shape
    return x.view(b, s, n_heads, d // n_heads).transpose(-1, -2)


def ch04_split_transpose_before_reshape(x, n_heads):
    b, s, d = x.shape
    return x.transpose(1, 2).reshape(b, n_heads, s, d // n_heads)


def ch04_split_head_dim_and_heads_swapped(x, n_heads):
    b, s, d = x.shape
    return x.reshape(b, s, d // n_heads, n_heads).transpose(1, 2)


# --- 4.2 merge_heads: correct ---------------------------------------------------------------------

def ch04_merge_permute_flatten(x):
    return x.permute(0, 2, 1, 3).flatten(start_dim=2)


def ch04_merge_cat_by_index(x):
    return torch.cat([x[:, h, :, :] for h in range(x.shape[1])], dim=-1)


def ch04_merge_einsum(x):
    b, h, s, d = x.shape
    return torch.einsum("bhsd->bshd", x).reshape(b, s, h * d)


def ch04_merge_fill_loop(x):
    b, h, s, d = x.shape
    out = x.new_zeros(b, s, h * d)
    for i in range(h):
        out[..., i * d:(i + 1) * d] = x[:, i]
    return out


# --- 4.2 merge_heads: wrong -----------------------------------------------------------------------

def ch04_merge_flatten_without_transpose(x):
    b = x.shape[0]
    return x.reshape(b, x.shape[2], -1)


def ch04_merge_stack_last_then_flatten(x):  # head index varies fastest
    return torch.stack(x.unbind(1), dim=-1).flatten(2)


def ch04_merge_heads_reversed(x):
    return torch.cat([x[:, h] for h in range(x.shape[1] - 1, -1, -1)], dim=-1)


def ch04_merge_mean_over_heads(x):
    return x.mean(dim=1)


def ch04_merge_transpose_2_3(x):
    b, h, s, d = x.shape
    return x.transpose(2, 3).reshape(b, s, h * d)


def ch04_merge_only_transposed(x):
    return x.permute(0, 2, 1, 3)


# --- 4.3 multi_head_attention: correct ------------------------------------------------------------

def ch04_mha_sdpa(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    b, s, d = x.shape
    q, k, v = ((x @ w).view(b, s, n_heads, -1).transpose(1, 2) for w in (w_q, w_k, w_v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # bool mask: True = take part
    return out.transpose(1, 2).reshape(b, s, d) @ w_o


def ch04_mha_float64_inside(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    xd, wq, wk, wv, wo = (t.double() for t in (x, w_q, w_k, w_v, w_o))
    b, s, d = x.shape
    hd = d // n_heads
    q, k, v = ((xd @ w).reshape(b, s, n_heads, hd).permute(0, 2, 1, 3) for w in (wq, wk, wv))
    scores = q @ k.transpose(-1, -2) * hd ** -0.5
    if mask is not None:
        scores = torch.where(mask, scores, torch.full_like(scores, -1e30))
    out = scores.softmax(-1) @ v
    return (out.permute(0, 2, 1, 3).reshape(b, s, d) @ wo).to(x.dtype)


def ch04_mha_fused_qkv_exp2(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    b, s, d = x.shape
    hd = d // n_heads
    qkv = x @ torch.cat([w_q, w_k, w_v], dim=1)  # (b, s, 3d)
    q, k, v = (t.unflatten(-1, (n_heads, hd)).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(hd)
    if mask is not None:
        scores = scores.masked_fill(mask.logical_not(), -math.inf)
    scores = scores - scores.amax(dim=-1, keepdim=True)
    e = torch.exp2(scores * math.log2(math.e))
    weights = e / e.sum(dim=-1, keepdim=True)
    return torch.einsum("bhqk,bhkd->bqhd", weights, v).reshape(b, s, d) @ w_o


def ch04_mha_scale_queries_first(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    b, s, d = x.shape
    hd = d // n_heads
    split = lambda t: torch.stack(t.split(hd, dim=-1), dim=1)  # noqa: E731
    q = split(x @ w_q) / math.sqrt(hd)
    k, v = split(x @ w_k), split(x @ w_v)
    scores = q @ k.mT
    if mask is not None:
        scores = scores + torch.zeros_like(scores).masked_fill(~mask, float("-inf"))
    heads = torch.softmax(scores, dim=-1) @ v
    return sum(heads[:, h] @ w_o[h * hd:(h + 1) * hd] for h in range(n_heads))  # concat @ W_O by blocks


# --- 4.3 multi_head_attention: wrong --------------------------------------------------------------

def _ch04_mha(x, w_q, w_k, w_v, w_o, n_heads, mask, scale=None, use_mask=True, fill=None, dim=-1):
    b, s, d = x.shape
    hd = d // n_heads
    q, k, v = ((x @ w).view(b, s, n_heads, hd).transpose(1, 2) for w in (w_q, w_k, w_v))
    scores = q @ k.transpose(-2, -1) / (math.sqrt(hd) if scale is None else scale)
    if mask is not None and use_mask:
        scores = fill(scores, mask) if fill else scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(dim) @ v).transpose(1, 2).reshape(b, s, d) @ w_o


def ch04_mha_scaled_by_sqrt_d_model(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return _ch04_mha(x, w_q, w_k, w_v, w_o, n_heads, mask, scale=math.sqrt(x.shape[-1]))


def ch04_mha_divided_by_head_dim_not_sqrt(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return _ch04_mha(x, w_q, w_k, w_v, w_o, n_heads, mask, scale=x.shape[-1] // n_heads)


def ch04_mha_no_scaling(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return _ch04_mha(x, w_q, w_k, w_v, w_o, n_heads, mask, scale=1.0)


def ch04_mha_mask_ignored(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return _ch04_mha(x, w_q, w_k, w_v, w_o, n_heads, mask, use_mask=False)


def ch04_mha_masked_fill_not_assigned(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    b, s, d = x.shape
    hd = d // n_heads
    q, k, v = ((x @ w).view(b, s, n_heads, hd).transpose(1, 2) for w in (w_q, w_k, w_v))
    scores = q @ k.transpose(-2, -1) / math.sqrt(hd)
    if mask is not None:
        scores.masked_fill(mask == 0, float("-inf"))  # returns a new tensor, which is dropped
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, d) @ w_o


def ch04_mha_inverted_mask_minus_inf(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return _ch04_mha(x, w_q, w_k, w_v, w_o, n_heads, mask, fill=lambda s, m: s.masked_fill(m, float("-inf")))


def ch04_mha_masked_fill_where_true(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return _ch04_mha(x, w_q, w_k, w_v, w_o, n_heads, mask, fill=lambda s, m: s.masked_fill(m, -1e9))


def ch04_mha_mask_multiplies_scores(x, w_q, w_k, w_v, w_o, n_heads, mask=None):  # zero, not -inf
    return _ch04_mha(x, w_q, w_k, w_v, w_o, n_heads, mask, fill=lambda s, m: s * m)


def ch04_mha_softmax_over_queries(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return _ch04_mha(x, w_q, w_k, w_v, w_o, n_heads, mask, dim=2)


def ch04_mha_weights_as_nn_linear(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return _ch04_mha(x, w_q.T, w_k.T, w_v.T, w_o.T, n_heads, mask)


def ch04_mha_forgot_w_o(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return _ch04_mha(x, w_q, w_k, w_v, torch.eye(x.shape[-1]), n_heads, mask)


def ch04_mha_heads_by_plain_reshape(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    b, s, d = x.shape
    hd = d // n_heads
    q, k, v = ((x @ w).reshape(b, n_heads, s, hd) for w in (w_q, w_k, w_v))
    scores = q @ k.transpose(-2, -1) / math.sqrt(hd)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, d) @ w_o


def ch04_mha_merge_by_plain_reshape(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    b, s, d = x.shape
    hd = d // n_heads
    q, k, v = ((x @ w).view(b, s, n_heads, hd).transpose(1, 2) for w in (w_q, w_k, w_v))
    scores = q @ k.transpose(-2, -1) / math.sqrt(hd)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1) @ v).reshape(b, s, d) @ w_o


CORRECT = {
    "4.1": [ch04_split_unflatten_swapaxes, ch04_split_torch_split_stack, ch04_split_movedim_contiguous,
            ch04_split_einsum_loop_into_zeros],
    "4.2": [ch04_merge_permute_flatten, ch04_merge_cat_by_index, ch04_merge_einsum, ch04_merge_fill_loop],
    "4.3": [ch04_mha_sdpa, ch04_mha_float64_inside, ch04_mha_fused_qkv_exp2, ch04_mha_scale_queries_first],
}

WRONG = {
    "4.1": [
        (ch04_split_view_straight_to_heads, "no transpose(1, 2)"),
        (ch04_split_strided_slices, "features interleaved"),
        (ch04_split_stack_on_axis_2, "head axis not moved"),
        (ch04_split_transpose_last_two, "transpose(2, 3) moves head_dim"),
        (ch04_split_transpose_before_reshape, None),
        (ch04_split_head_dim_and_heads_swapped, None),
    ],
    "4.2": [
        (ch04_merge_flatten_without_transpose, "without transpose(1, 2)"),
        (ch04_merge_stack_last_then_flatten, "heads interleaved"),
        (ch04_merge_heads_reversed, "last first"),
        (ch04_merge_mean_over_heads, None),
        (ch04_merge_transpose_2_3, None),
        (ch04_merge_only_transposed, "the head axis is still there"),
    ],
    "4.3": [
        (ch04_mha_scaled_by_sqrt_d_model, "divided by √d_model"),
        (ch04_mha_divided_by_head_dim_not_sqrt, None),
        (ch04_mha_no_scaling, "not divided by √head_dim"),
        (ch04_mha_mask_ignored, "the mask is not applied"),
        (ch04_mha_masked_fill_not_assigned, "the mask is not applied"),
        (ch04_mha_inverted_mask_minus_inf, "mask inverted"),
        (ch04_mha_masked_fill_where_true, "mask inverted"),
        (ch04_mha_mask_multiplies_scores, None),
        (ch04_mha_softmax_over_queries, "softmax runs over the queries"),
        (ch04_mha_weights_as_nn_linear, "weights used transposed"),
        (ch04_mha_forgot_w_o, "output projection is missing"),
        (ch04_mha_heads_by_plain_reshape, "heads split on the wrong axis"),
        (ch04_mha_merge_by_plain_reshape, "merged in the wrong order"),
    ],
}
