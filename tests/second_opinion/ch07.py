"""Chapter 7 (KV cache, GQA): learner functions the grader has never seen."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


# --- 7.1 append_to_cache ---------------------------------------------------------------------------

def ch07_append_preallocated(cache, new):
    b, h, s, d = cache.shape
    out = cache.new_empty(b, h, s + new.shape[2], d)
    out[:, :, :s] = cache
    out[:, :, s:] = new
    return out


def ch07_append_padded_sum(cache, new):
    s, n = cache.shape[2], new.shape[2]
    return F.pad(cache, (0, 0, 0, n)) + F.pad(new, (0, 0, s, 0))


def ch07_append_seq_first(cache, new):
    # move seq to the front, concatenate along the first axis, move it back
    return torch.cat([cache.permute(2, 0, 1, 3), new.permute(2, 0, 1, 3)]).permute(1, 2, 0, 3)


def ch07_append_per_head_loop(cache, new):
    heads = [torch.cat([cache[:, h], new[:, h]], dim=1) for h in range(cache.shape[1])]
    return torch.stack(heads, dim=1)


def ch07_append_hstack(cache, new):
    return torch.hstack([cache, new])  # hstack joins along dim=1: the heads


def ch07_append_last_axis(cache, new):
    return torch.cat((cache, new), dim=3)


def ch07_append_new_first(cache, new):
    return torch.cat((new, cache), dim=-2)


def ch07_append_stack(cache, new):
    return torch.stack([cache, new], dim=2)


def ch07_append_sliding_window(cache, new):
    # keeps the cache at a fixed length: drops the oldest tokens
    return torch.cat([cache, new], dim=2)[:, :, -cache.shape[2]:]


def ch07_append_forgot_return_value(cache, new):
    torch.cat([cache, new], dim=2)
    return cache


def ch07_append_vstack(cache, new):
    return torch.vstack([cache, new])  # the batch axis


# --- 7.2 attend_with_cache -------------------------------------------------------------------------

def ch07_attend_lower_right_bias(q, k_cache, v_cache, k_new, v_new):
    from torch.nn.attention.bias import causal_lower_right

    k, v = torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(q.shape[2], k.shape[2]))


def ch07_attend_token_loop(q, k_cache, v_cache, k_new, v_new):
    outs = []
    for i in range(q.shape[2]):  # new token i is at position len(cache) + i
        k = torch.cat([k_cache, k_new[:, :, :i + 1]], dim=2)
        v = torch.cat([v_cache, v_new[:, :, :i + 1]], dim=2)
        w = torch.softmax(q[:, :, i:i + 1] @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        outs.append(w @ v)
    return torch.cat(outs, dim=2)


def ch07_attend_einsum_additive_float64(q, k_cache, v_cache, k_new, v_new):
    k = torch.cat([k_cache, k_new], dim=2).double()
    v = torch.cat([v_cache, v_new], dim=2).double()
    n, s = q.shape[2], k.shape[2]
    bias = torch.full((n, s), float("-inf"), dtype=torch.float64).triu(s - n + 1)
    scores = torch.einsum("bhid,bhjd->bhij", q.double(), k) / math.sqrt(q.shape[-1]) + bias
    return torch.einsum("bhij,bhjd->bhid", scores.softmax(-1), v).to(q.dtype)


def ch07_attend_position_compare(q, k_cache, v_cache, k_new, v_new):
    k, v = torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)
    past = k_cache.shape[2]
    q_pos = past + torch.arange(q.shape[2])
    k_pos = torch.arange(k.shape[2])
    scores = q @ k.mT / math.sqrt(q.shape[-1])
    scores = torch.where(k_pos[None, :] <= q_pos[:, None], scores, -torch.inf)
    return torch.softmax(scores, dim=-1) @ v


def ch07_attend_is_causal(q, k_cache, v_cache, k_new, v_new):
    k, v = torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)  # aligned top-left


def ch07_attend_diagonal_minus_one(q, k_cache, v_cache, k_new, v_new):
    k, v = torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)
    past = k_cache.shape[2]
    mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool).tril(diagonal=past - 1)
    scores = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(~mask, float("-inf"))
    return scores.softmax(-1) @ v


def ch07_attend_strict_positions(q, k_cache, v_cache, k_new, v_new):
    # positions compared with <, so a token does not see itself
    k, v = torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)
    past = k_cache.shape[2]
    mask = torch.arange(k.shape[2])[None, :] < past + torch.arange(q.shape[2])[:, None]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def ch07_attend_diagonal_plus_one(q, k_cache, v_cache, k_new, v_new):
    k, v = torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)
    past = k_cache.shape[2]
    mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool).tril(diagonal=past + 1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def ch07_attend_stale(q, k_cache, v_cache, k_new, v_new):
    scores = q @ k_cache.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return torch.softmax(scores, dim=-1) @ v_cache


def ch07_attend_no_mask(q, k_cache, v_cache, k_new, v_new):
    k, v = torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)
    return F.scaled_dot_product_attention(q, k, v)


def ch07_attend_unscaled(q, k_cache, v_cache, k_new, v_new):
    k, v = torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)
    n, s = q.shape[2], k.shape[2]
    mask = torch.ones(n, s, dtype=torch.bool).tril(s - n)
    return torch.softmax((q @ k.transpose(-2, -1)).masked_fill(~mask, -1e9), dim=-1) @ v


def ch07_attend_cat_heads(q, k_cache, v_cache, k_new, v_new):
    k, v = torch.cat([k_cache, k_new], dim=1), torch.cat([v_cache, v_new], dim=1)
    n, s = q.shape[2], k.shape[2]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(n, s, dtype=torch.bool).tril(s - n))


def ch07_attend_softmax_over_queries(q, k_cache, v_cache, k_new, v_new):
    k, v = torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)
    n, s = q.shape[2], k.shape[2]
    mask = torch.ones(n, s, dtype=torch.bool).tril(s - n)
    scores = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-2).nan_to_num() @ v


# --- 7.3 expand_kv_heads ---------------------------------------------------------------------------

def ch07_expand_index_select(kv, n_heads):
    group = n_heads // kv.shape[1]
    return kv.index_select(1, torch.arange(n_heads) // group)


def ch07_expand_stack_loop(kv, n_heads):
    group = n_heads // kv.shape[1]
    return torch.stack([kv[:, h // group] for h in range(n_heads)], dim=1)


def ch07_expand_repeat_then_flatten(kv, n_heads):
    group = n_heads // kv.shape[1]
    return kv.unsqueeze(2).repeat(1, 1, group, 1, 1).flatten(1, 2)


def ch07_expand_cat_groups(kv, n_heads):
    group = n_heads // kv.shape[1]
    return torch.cat([kv[:, i:i + 1].expand(-1, group, -1, -1) for i in range(kv.shape[1])], dim=1)


def ch07_expand_modulo_index(kv, n_heads):
    return kv[:, torch.arange(n_heads) % kv.shape[1]]  # 0, 1, 0, 1: tiled


def ch07_expand_tiled_expand(kv, n_heads):
    b, n_kv, s, d = kv.shape
    return kv[:, None].expand(b, n_heads // n_kv, n_kv, s, d).reshape(b, n_heads, s, d)


def ch07_expand_by_n_heads(kv, n_heads):
    return torch.repeat_interleave(kv, n_heads, dim=1)


def ch07_expand_seq_axis(kv, n_heads):
    return kv.repeat_interleave(n_heads // kv.shape[1], dim=-2)


def ch07_expand_index_by_n_kv(kv, n_heads):
    return kv[:, torch.arange(n_heads) // kv.shape[1]]  # h // n_kv_heads, not h // group


def ch07_expand_batch_axis(kv, n_heads):
    return kv.repeat_interleave(n_heads // kv.shape[1], dim=0)


def ch07_expand_group_upside_down(kv, n_heads):
    return kv.repeat_interleave(max(kv.shape[1] // n_heads, 1), dim=1)


# --- 7.4 kv_cache_bytes ----------------------------------------------------------------------------

def ch07_bytes_python_ints(configs):
    rows = [2 * layers * batch * kv * seq * dim * nbytes
            for layers, batch, _, kv, seq, dim, nbytes in configs.tolist()]
    return torch.tensor(rows, dtype=torch.int64)


def ch07_bytes_cumprod(configs):
    return 2 * configs[:, [0, 1, 3, 4, 5, 6]].cumprod(dim=1)[:, -1]


def ch07_bytes_float64_round(configs):
    return (2.0 * configs.double()[:, [0, 1, 3, 4, 5, 6]].prod(dim=1)).round().long()


def ch07_bytes_numpy(configs):
    c = configs.numpy().astype(np.int64)
    return torch.from_numpy(2 * c[:, 0] * c[:, 1] * c[:, 3] * c[:, 4] * c[:, 5] * c[:, 6])


def ch07_bytes_per_token_times_seq(configs):
    layers, batch, heads, kv, seq, head_dim, nbytes = configs.T
    per_token = 2 * layers * kv * head_dim * nbytes      # bytes one token adds
    return per_token * seq * batch


def ch07_bytes_int32(configs):
    c = configs.int()
    return (2 * c[:, 0] * c[:, 1] * c[:, 3] * c[:, 4] * c[:, 5] * c[:, 6]).long()


def ch07_bytes_int32_returned(configs):
    return 2 * configs.to(torch.int32)[:, [0, 1, 3, 4, 5, 6]].prod(dim=1, dtype=torch.int32)


def ch07_bytes_float32(configs):
    return 2 * configs.float()[:, [0, 1, 3, 4, 5, 6]].prod(dim=1)


def ch07_bytes_float64(configs):
    return 2 * configs.double()[:, [0, 1, 3, 4, 5, 6]].prod(dim=1)


def ch07_bytes_group_size(configs):
    layers, batch, heads, kv, seq, head_dim, nbytes = configs.unbind(1)
    return 2 * layers * batch * (heads // kv) * seq * head_dim * nbytes


def ch07_bytes_d_model(configs):
    layers, batch, heads, kv, seq, head_dim, nbytes = configs.unbind(1)
    d_model = heads * head_dim
    return 2 * layers * batch * seq * d_model * nbytes


def ch07_bytes_no_two(configs):
    return configs[:, [0, 1, 3, 4, 5, 6]].prod(dim=1)


def ch07_bytes_values_only(configs):
    layers, batch, heads, kv, seq, head_dim, nbytes = configs.unbind(1)
    return 2 * layers * batch * kv * seq * head_dim


def ch07_bytes_one_layer(configs):
    layers, batch, heads, kv, seq, head_dim, nbytes = configs.unbind(1)
    return 2 * batch * kv * seq * head_dim * nbytes


def ch07_bytes_one_sequence(configs):
    layers, batch, heads, kv, seq, head_dim, nbytes = configs.unbind(1)
    return 2 * layers * kv * seq * head_dim * nbytes


def ch07_bytes_heads_over_group(configs):
    layers, batch, heads, kv, seq, head_dim, nbytes = configs.unbind(1)
    group = heads // kv                  # query heads sharing one kv head
    return 2 * layers * batch * (heads // group) * seq * head_dim * nbytes


def ch07_bytes_bits(configs):
    layers, batch, heads, kv, seq, head_dim, nbytes = configs.unbind(1)
    return 2 * layers * batch * kv * seq * head_dim * nbytes * 8


def ch07_bytes_whole_batch_summed(configs):
    return (2 * configs[:, [0, 1, 3, 4, 5, 6]].prod(dim=1)).cumsum(0)


CORRECT = {
    "7.1": [ch07_append_preallocated, ch07_append_padded_sum, ch07_append_seq_first, ch07_append_per_head_loop],
    "7.2": [ch07_attend_lower_right_bias, ch07_attend_token_loop, ch07_attend_einsum_additive_float64,
            ch07_attend_position_compare],
    "7.3": [ch07_expand_index_select, ch07_expand_stack_loop, ch07_expand_repeat_then_flatten,
            ch07_expand_cat_groups],
    "7.4": [ch07_bytes_python_ints, ch07_bytes_cumprod, ch07_bytes_float64_round, ch07_bytes_numpy,
            ch07_bytes_per_token_times_seq, ch07_bytes_heads_over_group],
}

WRONG = {
    "7.1": [
        (ch07_append_hstack, "heads axis"),
        (ch07_append_last_axis, "head_dim"),
        (ch07_append_new_first, "in front"),
        (ch07_append_stack, "torch.stack adds an axis"),
        (ch07_append_sliding_window, None),
        (ch07_append_forgot_return_value, "returned the old cache"),
        (ch07_append_vstack, "wrong axis"),
    ],
    "7.2": [
        (ch07_attend_is_causal, "offset ignored"),
        (ch07_attend_diagonal_minus_one, "see its own key"),
        (ch07_attend_strict_positions, "see its own key"),
        (ch07_attend_diagonal_plus_one, "keys up to past + i only"),
        (ch07_attend_stale, "stale cache"),
        (ch07_attend_no_mask, "no causal mask"),
        (ch07_attend_unscaled, None),
        (ch07_attend_cat_heads, "wrong axis"),
        (ch07_attend_softmax_over_queries, None),
    ],
    "7.3": [
        (ch07_expand_modulo_index, "tiled"),
        (ch07_expand_tiled_expand, "tiled"),
        (ch07_expand_by_n_heads, "repeated n_heads times"),
        (ch07_expand_seq_axis, "wrong axis"),
        (ch07_expand_index_by_n_kv, "h // (n_heads // n_kv_heads)"),
        (ch07_expand_batch_axis, None),
        (ch07_expand_group_upside_down, None),
    ],
    "7.4": [
        (ch07_bytes_int32, "int32 overflow"),
        (ch07_bytes_int32_returned, None),
        (ch07_bytes_float32, None),
        (ch07_bytes_float64, None),
        (ch07_bytes_group_size, "group size"),
        (ch07_bytes_d_model, "n_heads used"),
        (ch07_bytes_no_two, "factor 2 missing"),
        (ch07_bytes_values_only, "bytes_per_value missing"),
        (ch07_bytes_one_layer, "n_layers missing"),
        (ch07_bytes_one_sequence, "batch missing"),
        (ch07_bytes_bits, None),
        (ch07_bytes_whole_batch_summed, None),
    ],
}
