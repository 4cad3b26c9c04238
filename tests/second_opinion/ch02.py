"""Chapter 2 second opinions: masked scaled dot-product attention, a causal mask, a padding mask."""

import math

import numpy as np
import torch
import torch.nn.functional as F


# --- 2.1 scaled_dot_product_attention: correct --------------------------------------------------

def ch02_sdpa_where_and_nan_to_num(q, k, v, mask=None):
    scores = q @ k.transpose(-1, -2) / math.sqrt(k.shape[-1])
    if mask is not None:
        scores = torch.where(mask, scores, torch.tensor(float("-inf")))
    weights = torch.softmax(scores, dim=-1)
    return torch.nan_to_num(weights, nan=0.0) @ v


def ch02_sdpa_einsum_float64(q, k, v, mask=None):
    s = torch.einsum("...qd,...kd->...qk", q.double(), k.double()) / q.shape[-1] ** 0.5
    if mask is not None:
        s = s.masked_fill(mask.logical_not(), -math.inf)
    w = s.softmax(-1)
    if mask is not None:
        w = torch.where(mask.any(-1, keepdim=True), w, torch.zeros_like(w))
    return torch.einsum("...qk,...kd->...qd", w, v.double()).to(q.dtype)


def ch02_sdpa_hand_softmax_masked_max(q, k, v, mask=None):
    s = torch.matmul(q, k.transpose(-2, -1)) * q.size(-1) ** -0.5
    if mask is None:
        mask = torch.ones_like(s, dtype=torch.bool)
    s = s.masked_fill(~mask, float("-inf"))
    m = s.amax(dim=-1, keepdim=True).clamp(min=-1e30)      # all-masked rows: -inf -> a finite max
    e = torch.exp(s - m)                                    # exp(-inf) = 0 at masked keys
    return (e / e.sum(-1, keepdim=True).clamp(min=1e-30)) @ v


def ch02_sdpa_torch_builtin_then_zero(q, k, v, mask=None):
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if mask is not None:
        out = out.masked_fill(~mask.any(-1, keepdim=True), 0.0)
    return torch.nan_to_num(out)


# --- 2.1 scaled_dot_product_attention: wrong ----------------------------------------------------

def ch02_sdpa_k_dot_T(q, k, v, mask=None):
    scores = q @ k.T / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.nan_to_num(torch.softmax(scores, dim=-1)) @ v


def ch02_sdpa_mask_transposed(q, k, v, mask=None):  # mask.transpose: keys as rows
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask.transpose(-2, -1), float("-inf"))
    return torch.softmax(scores, dim=-1).nan_to_num(0.0) @ v


def ch02_sdpa_mask_dot_T(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask.T, float("-inf"))
    return torch.softmax(scores, dim=-1).nan_to_num(0.0) @ v


def ch02_sdpa_mask_inverted_where(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = torch.where(mask, float("-inf"), scores)
    return torch.softmax(scores, dim=-1).nan_to_num(0.0) @ v


def ch02_sdpa_finfo_min_fill(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1) @ v


def ch02_sdpa_scaled_by_d_v(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(v.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.nan_to_num(scores.softmax(-1)) @ v


def ch02_sdpa_softmax_dim_minus_2(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.nan_to_num(torch.softmax(scores, dim=-2)) @ v


def ch02_sdpa_softmax_dim_1(q, k, v, mask=None):  # right for 2-D inputs only
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.nan_to_num(torch.softmax(scores, dim=1)) @ v


def ch02_sdpa_mask_not_optional(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.nan_to_num(torch.softmax(scores, dim=-1)) @ v


def ch02_sdpa_renormalise_after_softmax(q, k, v, mask=None):  # right in exact arithmetic, underflows
    w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    if mask is not None:
        w = w * mask
        w = w / w.sum(-1, keepdim=True).clamp(min=1e-12)
    return w @ v


def ch02_sdpa_global_max_hand_softmax(q, k, v, mask=None):  # the max over masked keys too
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    e = torch.exp(s - s.amax(-1, keepdim=True))
    if mask is not None:
        e = e * mask
    return (e / e.sum(-1, keepdim=True).clamp(min=1e-12)) @ v


def ch02_sdpa_nan_rows(q, k, v, mask=None):
    scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(mask.logical_not(), -math.inf)
    return F.softmax(scores, dim=-1) @ v


# --- 2.2 causal_mask: correct -------------------------------------------------------------------

def ch02_causal_arange_comparison(n):
    i = torch.arange(n)
    return i[None, :] <= i[:, None]


def ch02_causal_not_triu(n):
    return ~torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)


def ch02_causal_float_tril_to_bool(n):
    return torch.ones(n, n).tril() > 0


def ch02_causal_python_loops(n):
    return torch.tensor([[j <= i for j in range(n)] for i in range(n)], dtype=torch.bool).reshape(n, n)


def ch02_causal_numpy(n):
    return torch.from_numpy(np.tril(np.ones((n, n), dtype=bool)))


# --- 2.2 causal_mask: wrong ---------------------------------------------------------------------

def ch02_causal_upper_by_comparison(n):
    i = torch.arange(n)
    return i[:, None] <= i[None, :]


def ch02_causal_future_true(n):
    return torch.ones(n, n, dtype=torch.bool).triu(1)


def ch02_causal_strictly_lower(n):
    return torch.ones(n, n).tril(-1).bool()


def ch02_causal_float(n):
    return torch.tril(torch.ones(n, n))


def ch02_causal_additive(n):
    return torch.triu(torch.full((n, n), float("-inf")), diagonal=1)


def ch02_causal_one_diagonal_too_many(n):
    return torch.tril(torch.ones(n, n, dtype=torch.bool), diagonal=1)


def ch02_causal_int_mask(n):
    return torch.tril(torch.ones(n, n, dtype=torch.long))


def ch02_causal_numpy_float64(n):
    return torch.from_numpy(np.tril(np.ones((n, n))))


# --- 2.3 padding_mask: correct ------------------------------------------------------------------

def ch02_padding_expand(lengths, max_len):
    positions = torch.arange(max_len).expand(len(lengths), max_len)
    return positions < lengths.unsqueeze(1)


def ch02_padding_from_one_le(lengths, max_len):
    return torch.arange(1, max_len + 1)[None, :] <= lengths[:, None]


def ch02_padding_rows_loop(lengths, max_len):
    mask = torch.zeros(len(lengths), max_len, dtype=torch.bool)
    for b, n in enumerate(lengths.tolist()):
        mask[b, :n] = True
    return mask


def ch02_padding_not_ge(lengths, max_len):
    return ~(torch.arange(max_len).view(1, -1) >= lengths.view(-1, 1))


# --- 2.3 padding_mask: wrong --------------------------------------------------------------------

def ch02_padding_le(lengths, max_len):
    return torch.arange(max_len).expand(lengths.shape[0], -1) <= lengths[:, None]


def ch02_padding_true_at_pad(lengths, max_len):
    return torch.arange(max_len)[None] >= lengths.unsqueeze(-1)


def ch02_padding_transposed(lengths, max_len):
    return torch.arange(max_len)[:, None] < lengths[None, :]


def ch02_padding_float(lengths, max_len):
    mask = torch.zeros(len(lengths), max_len)
    for b, n in enumerate(lengths.tolist()):
        mask[b, :n] = 1.0
    return mask


def ch02_padding_int32(lengths, max_len):
    return (torch.arange(max_len)[None, :] < lengths[:, None]).int()


def ch02_padding_no_unsqueeze(lengths, max_len):
    return torch.arange(max_len) < lengths


def ch02_padding_width_from_lengths(lengths, max_len):  # ignores max_len
    return torch.arange(int(lengths.max()))[None, :] < lengths[:, None]


def ch02_padding_one_too_few(lengths, max_len):
    return torch.arange(max_len)[None, :] + 1 < lengths[:, None]


CORRECT = {
    "2.1": [ch02_sdpa_where_and_nan_to_num, ch02_sdpa_einsum_float64, ch02_sdpa_hand_softmax_masked_max,
            ch02_sdpa_torch_builtin_then_zero],
    "2.2": [ch02_causal_arange_comparison, ch02_causal_not_triu, ch02_causal_float_tril_to_bool,
            ch02_causal_python_loops, ch02_causal_numpy],
    "2.3": [ch02_padding_expand, ch02_padding_from_one_le, ch02_padding_rows_loop, ch02_padding_not_ge],
}

WRONG = {
    "2.1": [
        (ch02_sdpa_k_dot_T, "if you used k.T"),
        (ch02_sdpa_mask_transposed, "the mask is transposed"),
        (ch02_sdpa_mask_dot_T, "the mask is transposed"),
        (ch02_sdpa_mask_inverted_where, "the mask is inverted"),
        (ch02_sdpa_finfo_min_fill, "a finite fill"),
        (ch02_sdpa_scaled_by_d_v, "√d_v instead of √d_k"),
        (ch02_sdpa_softmax_dim_minus_2, "softmax runs over the queries"),
        (ch02_sdpa_softmax_dim_1, None),
        (ch02_sdpa_mask_not_optional, "mask may be None"),
        (ch02_sdpa_renormalise_after_softmax, "applied after the softmax"),
        (ch02_sdpa_global_max_hand_softmax, "applied after the softmax"),
        (ch02_sdpa_nan_rows, "gets NaN"),
    ],
    "2.2": [
        (ch02_causal_upper_by_comparison, "upper triangle"),
        (ch02_causal_future_true, "True marks the future"),
        (ch02_causal_strictly_lower, "diagonal is excluded"),
        (ch02_causal_float, "not bool"),
        (ch02_causal_additive, "additive"),
        (ch02_causal_one_diagonal_too_many, None),
        (ch02_causal_int_mask, "not bool"),
        (ch02_causal_numpy_float64, "not bool"),
    ],
    "2.3": [
        (ch02_padding_le, "one position too many"),
        (ch02_padding_true_at_pad, "True marks the padding"),
        (ch02_padding_transposed, "the mask is transposed"),
        (ch02_padding_float, "not bool"),
        (ch02_padding_int32, "not bool"),
        (ch02_padding_no_unsqueeze, "compare lengths[:, None]"),
        (ch02_padding_width_from_lengths, None),
        (ch02_padding_one_too_few, "one position too few"),
    ],
}


def ch02_sdpa_k_dot_t_method(q, k, v, mask=None):
    scores = torch.matmul(q, k.t()) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.nan_to_num(torch.softmax(scores, dim=-1)) @ v


def ch02_padding_uint8(lengths, max_len):
    return (torch.arange(max_len)[None, :] < lengths[:, None]).byte()


WRONG["2.1"].append((ch02_sdpa_k_dot_t_method, "k.t() is for 2-D tensors only"))
WRONG["2.3"].append((ch02_padding_uint8, "not bool"))


def ch02_sdpa_renormalise_no_clamp(q, k, v, mask=None):  # NaN where every key is masked, too
    w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    if mask is not None:
        w = w.masked_fill(~mask, 0.0)
        w = w / w.sum(-1, keepdim=True)
    return w @ v


WRONG["2.1"].append((ch02_sdpa_renormalise_no_clamp, "gets NaN"))
