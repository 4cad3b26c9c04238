"""Chapter 5 (LayerNorm, a pre-LN block, top-p filtering): learner code the grader has not seen."""

from __future__ import annotations

import torch
import torch.nn.functional as F


# --- 5.1 layer_norm: correct ----------------------------------------------------------------------

def ch05_ln_var_mean(x, weight, bias):
    var, mean = torch.var_mean(x, dim=-1, keepdim=True, correction=0)
    return (x - mean) * torch.rsqrt(var + 1e-5) * weight + bias


def ch05_ln_float64_inside(x, weight, bias):
    xd = x.double()
    mu = xd.mean(-1).unsqueeze(-1)
    sigma2 = xd.square().mean(-1).unsqueeze(-1) - mu ** 2
    y = (xd - mu) / (sigma2 + 1e-5).sqrt()
    return (y * weight.double() + bias.double()).to(x.dtype)


def ch05_ln_sums_over_d(x, weight, bias):
    d = x.shape[-1]
    mean = x.sum(dim=-1, keepdim=True) / d
    centred = x - mean
    var = torch.einsum("...i,...i->...", centred, centred)[..., None] / d
    return torch.addcmul(bias, centred / torch.sqrt(var + 1e-5), weight)


def ch05_ln_flattened_rows(x, weight, bias):
    rows = x.reshape(-1, x.shape[-1])
    out = torch.empty_like(rows)
    for i, r in enumerate(rows):
        m = r.mean()
        v = ((r - m) ** 2).mean()
        out[i] = (r - m) / (v + 1e-5) ** 0.5
    return out.reshape(x.shape) * weight + bias


# --- 5.1 layer_norm: wrong ------------------------------------------------------------------------

def ch05_ln_torch_var_default(x, weight, bias):
    mean = x.mean(-1, keepdim=True)
    return weight * (x - mean) / torch.sqrt(x.var(-1, keepdim=True) + 1e-5) + bias


def ch05_ln_std_plus_eps(x, weight, bias):
    mean = x.mean(-1, keepdim=True)
    std = x.std(-1, keepdim=True, unbiased=False)
    return weight * (x - mean) / (std + 1e-5) + bias


def ch05_ln_without_eps(x, weight, bias):
    mean = x.mean(-1, keepdim=True)
    return weight * (x - mean) * torch.rsqrt(((x - mean) ** 2).mean(-1, keepdim=True)) + bias


def ch05_ln_mean_without_keepdim(x, weight, bias):
    mean = x.mean(dim=-1)
    var = ((x - mean) ** 2).mean(dim=-1)
    return weight * (x - mean) / torch.sqrt(var + 1e-5) + bias


def ch05_ln_over_axis_1(x, weight, bias):  # "dim=1 is the features" for a (batch, seq, d) tensor
    mean = x.mean(dim=1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=1, keepdim=True)
    return weight * (x - mean) / torch.sqrt(var + 1e-5) + bias


def ch05_ln_over_all_elements(x, weight, bias):
    mean, var = x.mean(), x.var(unbiased=False)
    return weight * (x - mean) / torch.sqrt(var + 1e-5) + bias


def ch05_ln_forgot_weight_and_bias(x, weight, bias):
    return F.layer_norm(x, x.shape[-1:], eps=1e-5)


def ch05_ln_bias_times_weight(x, weight, bias):  # (x̂ + bias) * weight
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return ((x - mean) / torch.sqrt(var + 1e-5) + bias) * weight


# --- 5.2 pre_ln_block: correct --------------------------------------------------------------------

def ch05_block_loop_over_sublayers(x, attention, ffn, norm1, norm2):
    for norm, sublayer in ((norm1, attention), (norm2, ffn)):
        x = x + sublayer(norm(x))
    return x


def ch05_block_adds_in_other_order(x, attention, ffn, norm1, norm2):
    a = attention(norm1(x))
    f = ffn(norm2(a + x))
    return x + (a + f)


def ch05_block_functional_layer_norm(x, attention, ffn, norm1, norm2):
    def ln(norm, h):
        return F.layer_norm(h, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    h = torch.add(x, attention(ln(norm1, x)))
    return torch.add(h, ffn(ln(norm2, h)))


def ch05_block_clone_then_add_in_place(x, attention, ffn, norm1, norm2):
    out = x.clone()
    out += attention(norm1(out))
    out += ffn(norm2(out))
    return out


# --- 5.2 pre_ln_block: wrong ----------------------------------------------------------------------

def ch05_block_post_ln(x, attention, ffn, norm1, norm2):
    h = norm1(attention(x) + x)
    return norm2(ffn(h) + h)


def ch05_block_no_residual_around_attention(x, attention, ffn, norm1, norm2):
    h = attention(norm1(x))
    return h + ffn(norm2(h))


def ch05_block_no_residual_around_ffn(x, attention, ffn, norm1, norm2):
    h = x + attention(norm1(x))
    return ffn(norm2(h))


def ch05_block_residual_of_normalised(x, attention, ffn, norm1, norm2):
    x = norm1(x)
    x = x + attention(x)
    x = norm2(x)
    return x + ffn(x)


def ch05_block_parallel(x, attention, ffn, norm1, norm2):
    return x + attention(norm1(x)) + ffn(norm2(x))


def ch05_block_ffn_first(x, attention, ffn, norm1, norm2):
    x = x + ffn(norm1(x))
    return x + attention(norm2(x))


def ch05_block_norm1_twice(x, attention, ffn, norm1, norm2):
    x = x + attention(norm1(x))
    return x + ffn(norm1(x))


def ch05_block_adds_in_place_to_input(x, attention, ffn, norm1, norm2):
    x += attention(norm1(x))
    x += ffn(norm2(x))
    return x


def ch05_block_final_norm(x, attention, ffn, norm1, norm2):
    x = x + attention(norm1(x))
    x = x + ffn(norm2(x))
    return norm2(x)


# --- 5.3 top_p_filter: correct --------------------------------------------------------------------

def ch05_top_p_count_then_arange(probs, p):
    s, idx = probs.sort(dim=-1, descending=True)
    n_keep = (s.cumsum(-1) < p).sum(-1, keepdim=True) + 1  # up to and including the one reaching p
    keep_sorted = torch.arange(s.shape[-1]) < n_keep
    keep = torch.empty_like(keep_sorted).scatter_(-1, idx, keep_sorted)
    out = torch.where(keep, probs, torch.zeros_like(probs))
    return out / out.sum(-1, keepdim=True)


def ch05_top_p_searchsorted(probs, p):
    s, idx = torch.sort(probs, dim=-1, descending=True)
    c = s.cumsum(-1)
    first = torch.searchsorted(c.contiguous(), torch.full((*c.shape[:-1], 1), p, dtype=c.dtype))
    keep_sorted = torch.arange(c.shape[-1]) <= first
    kept_sorted = s * keep_sorted
    out = torch.zeros_like(probs).scatter(-1, idx, kept_sorted)
    return out / kept_sorted.sum(-1, keepdim=True)


def ch05_top_p_ascending_tail(probs, p):  # today's transformers: drop the tail of mass <= 1 - p
    s, idx = probs.sort(dim=-1)  # ascending
    remove_sorted = s.cumsum(-1) <= 1 - p
    remove_sorted[..., -1] = False
    remove = remove_sorted.scatter(-1, idx, remove_sorted)
    out = probs.masked_fill(remove, 0.0)
    return out / out.sum(-1, keepdim=True)


def ch05_top_p_python_loop(probs, p):
    flat = probs.reshape(-1, probs.shape[-1])
    out = torch.zeros_like(flat)
    for r in range(flat.shape[0]):
        values, order = flat[r].sort(descending=True)
        mass = 0.0
        for v, i in zip(values.tolist(), order.tolist()):
            if mass >= p:
                break
            out[r, i] = v
            mass += v
        out[r] = out[r] / out[r].sum()
    return out.reshape(probs.shape)


def ch05_top_p_threshold_value(probs, p):  # keep every token at least as likely as the last one kept
    s = probs.sort(dim=-1, descending=True).values
    n_keep = ((s.cumsum(-1) - s) < p).sum(-1, keepdim=True)
    smallest_kept = s.gather(-1, n_keep - 1)
    out = probs * (probs >= smallest_kept)
    return out / out.sum(-1, keepdim=True)


# --- 5.3 top_p_filter: wrong ----------------------------------------------------------------------

def ch05_top_p_mass_before_at_most_p(probs, p):  # a token with exactly p before it is kept too
    s, idx = probs.sort(dim=-1, descending=True)
    keep = (s.cumsum(-1) - s) <= p
    out = probs * keep.scatter(-1, idx, keep)
    return out / out.sum(-1, keepdim=True)


def ch05_top_p_old_hf_shift(probs, p):  # remove where cumsum > p, shifted right by one
    s, idx = probs.sort(descending=True)
    remove = s.cumsum(-1) > p
    remove[..., 1:] = remove[..., :-1].clone()
    remove[..., 0] = False
    out = probs.masked_fill(remove.scatter(-1, idx, remove), 0.0)
    return out / out.sum(-1, keepdim=True)


def ch05_top_p_cumsum_below_p(probs, p):
    s, idx = probs.sort(dim=-1, descending=True)
    keep = s.cumsum(-1) < p
    out = probs * keep.scatter(-1, idx, keep)
    return out / out.sum(-1, keepdim=True)


def ch05_top_p_no_renormalisation(probs, p):
    s, idx = probs.sort(dim=-1, descending=True)
    n_keep = (s.cumsum(-1) < p).sum(-1, keepdim=True) + 1
    keep = torch.arange(s.shape[-1]) < n_keep
    return probs * keep.scatter(-1, idx, keep)


def ch05_top_p_sorted_output(probs, p):
    s = probs.sort(dim=-1, descending=True).values
    kept = s * ((s.cumsum(-1) - s) < p)
    return kept / kept.sum(-1, keepdim=True)


def ch05_top_p_ascending_sort(probs, p):
    s, idx = probs.sort(dim=-1)
    keep = (s.cumsum(-1) - s) < p
    out = probs * keep.scatter(-1, idx, keep)
    return out / out.sum(-1, keepdim=True)


def ch05_top_p_renormalise_whole_tensor(probs, p):
    s, idx = probs.sort(dim=-1, descending=True)
    keep = (s.cumsum(-1) - s) < p
    out = probs * keep.scatter(-1, idx, keep)
    return out / out.sum()


def ch05_top_p_gather_instead_of_scatter(probs, p):  # puts the mask back with the wrong inverse
    s, idx = probs.sort(dim=-1, descending=True)
    keep_sorted = (s.cumsum(-1) - s) < p
    out = probs * keep_sorted.gather(-1, idx)
    return out / out.sum(-1, keepdim=True)


# --- more wrong ones ----------------------------------------------------------------------------

def ch05_ln_bert_eps(x, weight, bias):  # 1e-12, as in BERT, not nn.LayerNorm's 1e-5
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return weight * (x - mean) / torch.sqrt(var + 1e-12) + bias


def ch05_ln_per_sequence(x, weight, bias):
    mean = x.mean(dim=(-2, -1), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(-2, -1), keepdim=True)
    return weight * (x - mean) / torch.sqrt(var + 1e-5) + bias


def ch05_block_takes_first_of_attention(x, attention, ffn, norm1, norm2):  # as if it returned a tuple
    x = x + attention(norm1(x))[0]
    return x + ffn(norm2(x))


CORRECT = {
    "5.1": [ch05_ln_var_mean, ch05_ln_float64_inside, ch05_ln_sums_over_d, ch05_ln_flattened_rows],
    "5.2": [ch05_block_loop_over_sublayers, ch05_block_adds_in_other_order, ch05_block_functional_layer_norm,
            ch05_block_clone_then_add_in_place],
    "5.3": [ch05_top_p_count_then_arange, ch05_top_p_searchsorted, ch05_top_p_ascending_tail,
            ch05_top_p_python_loop, ch05_top_p_threshold_value],
}

WRONG = {
    "5.1": [
        (ch05_ln_torch_var_default, "Bessel"),
        (ch05_ln_std_plus_eps, "eps is added after the square root"),
        (ch05_ln_without_eps, "eps is missing"),
        (ch05_ln_mean_without_keepdim, "keepdim"),
        (ch05_ln_over_axis_1, "sequence axis"),
        (ch05_ln_over_all_elements, "whole tensor"),
        (ch05_ln_forgot_weight_and_bias, "weight and bias are not applied"),
        (ch05_ln_bias_times_weight, None),
        (ch05_ln_bert_eps, None),
        (ch05_ln_per_sequence, "normalised over each sequence"),
    ],
    "5.2": [
        (ch05_block_post_ln, "post-LN"),
        (ch05_block_no_residual_around_attention, "residual around attention is missing"),
        (ch05_block_no_residual_around_ffn, "residual around the FFN is missing"),
        (ch05_block_residual_of_normalised, "the residual adds norm(x)"),
        (ch05_block_parallel, "the FFN reads the block's input"),
        (ch05_block_ffn_first, "the FFN comes first"),
        (ch05_block_norm1_twice, "norm1 is used twice"),
        (ch05_block_adds_in_place_to_input, None),
        (ch05_block_final_norm, "the output is normalised"),
        (ch05_block_takes_first_of_attention, "drop the [0]"),
    ],
    "5.3": [
        (ch05_top_p_mass_before_at_most_p, "a running total equal to p"),
        (ch05_top_p_old_hf_shift, "a running total equal to p"),
        (ch05_top_p_cumsum_below_p, "the token that crosses p is left out"),
        (ch05_top_p_no_renormalisation, "not renormalised"),
        (ch05_top_p_sorted_output, "sorted order"),
        (ch05_top_p_ascending_sort, "least likely"),
        (ch05_top_p_renormalise_whole_tensor, None),
        (ch05_top_p_gather_instead_of_scatter, None),
    ],
}

