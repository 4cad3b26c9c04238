"""Chapter 8 (RoPE, RoPE over a KV cache): learner functions the grader has never seen.

Most learners compute the angles in float32, as here; the course's reference computes them in
float64 and rounds once.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _theta32(d):
    return 1.0 / (10000 ** (torch.arange(0, d, 2, dtype=torch.float32) / d))   # (d // 2,)


# --- 8.1 apply_rope --------------------------------------------------------------------------------

def ch08_rope_polar_complex(x, positions):
    d = x.shape[-1]
    angles = torch.outer(positions.to(torch.float32), _theta32(d))             # (seq, d // 2)
    rot = torch.polar(torch.ones_like(angles), angles)
    xc = torch.view_as_complex(x.reshape(*x.shape[:-1], d // 2, 2).contiguous())
    return torch.view_as_real(xc * rot).reshape(x.shape).type_as(x)


def ch08_rope_complex_from_cos_sin(x, positions):
    d = x.shape[-1]
    theta = torch.exp(-math.log(10000.0) * torch.arange(0, d, 2).float() / d)
    angles = positions.float()[:, None] * theta
    z = torch.complex(x[..., 0::2], x[..., 1::2]) * torch.complex(angles.cos(), angles.sin())
    return torch.stack([z.real, z.imag], dim=-1).flatten(-2)


def ch08_rope_even_odd_stack(x, positions):
    d = x.shape[-1]
    angles = positions[:, None] * _theta32(d)[None, :]
    cos, sin = torch.cos(angles), torch.sin(angles)
    even, odd = x[..., ::2], x[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).reshape(x.shape)


def ch08_rope_rotate_every_two(x, positions):
    # GPT-J style: x * cos + rotate_every_two(x) * sin, cos and sin repeated per pair
    d = x.shape[-1]
    angles = positions.float().unsqueeze(-1) * _theta32(d)
    cos = angles.cos().repeat_interleave(2, dim=-1)
    sin = angles.sin().repeat_interleave(2, dim=-1)
    rotated = torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)
    return x * cos + rotated * sin


def ch08_rope_rotation_matrices_float64(x, positions):
    d = x.shape[-1]
    theta = 10000.0 ** (-torch.arange(d // 2, dtype=torch.float64) * 2 / d)
    phi = positions.double()[:, None] * theta                                  # (seq, d // 2)
    c, s = phi.cos(), phi.sin()
    rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)  # (seq, d//2, 2, 2)
    pairs = x.double().unflatten(-1, (d // 2, 2))                              # (..., seq, d//2, 2)
    return torch.einsum("tpij,...tpj->...tpi", rot, pairs).flatten(-2).to(x.dtype)


def ch08_rope_write_into_empty(x, positions):
    d = x.shape[-1]
    out = torch.empty_like(x)
    for i in range(d // 2):
        phi = positions.float() * (10000.0 ** (-2.0 * i / d))
        a, b = x[..., 2 * i], x[..., 2 * i + 1]
        out[..., 2 * i] = a * phi.cos() - b * phi.sin()
        out[..., 2 * i + 1] = a * phi.sin() + b * phi.cos()
    return out


def ch08_rope_clockwise(x, positions):
    d = x.shape[-1]
    angles = positions.float()[:, None] * _theta32(d)
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * angles.cos() + b * angles.sin(), -a * angles.sin() + b * angles.cos()],
                       -1).flatten(-2)


def ch08_rope_split_halves_cat(x, positions):
    d = x.shape[-1]
    angles = positions.float()[:, None] * _theta32(d)
    a, b = x[..., :d // 2], x[..., d // 2:]
    return torch.cat([a * angles.cos() - b * angles.sin(), a * angles.sin() + b * angles.cos()], -1)


def ch08_rope_half_dim_exponent(x, positions):
    d = x.shape[-1]
    theta = 1.0 / 10000 ** (torch.arange(0, d, 2).float() / (d // 2))  # 4i/d
    angles = positions.float()[:, None] * theta
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * angles.cos() - b * angles.sin(), a * angles.sin() + b * angles.cos()], -1).flatten(-2)


def ch08_rope_inverted_frequencies(x, positions):
    d = x.shape[-1]
    theta = 10000 ** (torch.arange(0, d, 2).float() / d)
    angles = positions.float()[:, None] * theta
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * angles.cos() - b * angles.sin(), a * angles.sin() + b * angles.cos()], -1).flatten(-2)


def ch08_rope_arange_positions(x, positions):
    d, seq = x.shape[-1], x.shape[-2]
    angles = torch.arange(seq).float()[:, None] * _theta32(d)
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * angles.cos() - b * angles.sin(), a * angles.sin() + b * angles.cos()], -1).flatten(-2)


def ch08_rope_deinterleaved_output(x, positions):
    # rotates the right pairs, but writes the results back as [evens..., odds...]
    d = x.shape[-1]
    angles = positions.float()[:, None] * _theta32(d)
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.cat([a * angles.cos() - b * angles.sin(), a * angles.sin() + b * angles.cos()], -1)


def ch08_rope_sin_cos_swapped(x, positions):
    d = x.shape[-1]
    angles = positions.float()[:, None] * _theta32(d)
    s, c = angles.cos(), angles.sin()
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * c - b * s, a * s + b * c], -1).flatten(-2)


def ch08_rope_angles_not_broadcast(x, positions):
    d = x.shape[-1]
    angles = positions.float() * _theta32(d)       # (seq,) * (d // 2,): forgot [:, None]
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * angles.cos() - b * angles.sin(), a * angles.sin() + b * angles.cos()], -1).flatten(-2)


def ch08_rope_float64_returned(x, positions):
    d = x.shape[-1]
    angles = positions.double()[:, None] * _theta32(d).double()
    a, b = x[..., 0::2].double(), x[..., 1::2].double()
    return torch.stack([a * angles.cos() - b * angles.sin(), a * angles.sin() + b * angles.cos()], -1).flatten(-2)


# --- 8.2 cached_rope_attention ---------------------------------------------------------------------

def _rope32(x, positions):
    d = x.shape[-1]
    angles = positions.float()[:, None] * _theta32(d)
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * angles.cos() - b * angles.sin(), a * angles.sin() + b * angles.cos()], -1).flatten(-2)


def _rope_complex(x, positions):
    d = x.shape[-1]
    turn = torch.polar(torch.ones(len(positions), d // 2), torch.outer(positions.float(), _theta32(d)))
    xc = torch.view_as_complex(x.float().unflatten(-1, (d // 2, 2)).contiguous())
    return torch.view_as_real(xc * turn).flatten(-2)


def ch08_cached_sdpa_lower_right(q_new, k_new, v_new, k_cache, v_cache):
    from torch.nn.attention.bias import causal_lower_right

    cached = k_cache.shape[1]
    pos = torch.arange(cached, cached + q_new.shape[1])
    q = _rope32(q_new, pos)
    k = torch.cat([k_cache, _rope32(k_new, pos)], dim=1)
    v = torch.cat([v_cache, v_new], dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(q.shape[1], k.shape[1]))


def ch08_cached_complex_einsum(q_new, k_new, v_new, k_cache, v_cache):
    cached, new = k_cache.shape[-2], q_new.shape[-2]
    pos = cached + torch.arange(new)
    q, k = _rope_complex(q_new, pos), torch.cat([k_cache, _rope_complex(k_new, pos)], dim=-2)
    v = torch.cat([v_cache, v_new], dim=-2)
    scores = torch.einsum("hqd,hkd->hqk", q, k) / math.sqrt(q.shape[-1])
    visible = torch.arange(cached + new)[None, :] <= pos[:, None]
    return torch.einsum("hqk,hkd->hqd", scores.masked_fill(~visible, -torch.inf).softmax(-1), v)


def ch08_cached_float64_additive(q_new, k_new, v_new, k_cache, v_cache):
    cached, new, d = k_cache.shape[1], q_new.shape[1], q_new.shape[-1]
    pos = torch.arange(cached, cached + new, dtype=torch.float64)
    theta = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = pos[:, None] * theta

    def rot(x):
        x = x.double()
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack([a * ang.cos() - b * ang.sin(), a * ang.sin() + b * ang.cos()], -1).flatten(-2)

    q, k = rot(q_new), torch.cat([k_cache.double(), rot(k_new)], dim=1)
    v = torch.cat([v_cache, v_new], dim=1).double()
    bias = torch.zeros(new, cached + new, dtype=torch.float64)
    bias = bias.masked_fill(torch.ones_like(bias, dtype=torch.bool).triu(cached + 1), float("-inf"))
    w = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d) + bias, dim=-1)
    return (w @ v).float()


def ch08_cached_one_token_at_a_time(q_new, k_new, v_new, k_cache, v_cache):
    k_all, v_all, outs = k_cache, v_cache, []
    for j in range(q_new.shape[1]):           # as a generation loop would: append, then attend
        pos = torch.tensor([k_all.shape[1]])
        k_all = torch.cat([k_all, _rope32(k_new[:, j:j + 1], pos)], dim=1)
        v_all = torch.cat([v_all, v_new[:, j:j + 1]], dim=1)
        q = _rope32(q_new[:, j:j + 1], pos)
        outs.append(F.scaled_dot_product_attention(q, k_all, v_all))
    return torch.cat(outs, dim=1)


def _masked_attention(q, k, v, mask):
    scores = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def ch08_cached_is_causal_top_left(q_new, k_new, v_new, k_cache, v_cache):
    cached = k_cache.shape[1]
    pos = torch.arange(cached, cached + q_new.shape[1])
    q, k = _rope32(q_new, pos), torch.cat([k_cache, _rope32(k_new, pos)], dim=1)
    v = torch.cat([v_cache, v_new], dim=1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def ch08_cached_diagonal_minus_one(q_new, k_new, v_new, k_cache, v_cache):
    cached, new = k_cache.shape[1], q_new.shape[1]
    pos = torch.arange(cached, cached + new)
    q, k = _rope32(q_new, pos), torch.cat([k_cache, _rope32(k_new, pos)], dim=1)
    v = torch.cat([v_cache, v_new], dim=1)
    mask = torch.ones(new, cached + new, dtype=torch.bool).tril(cached - 1)
    return _masked_attention(q, k, v, mask)


def ch08_cached_strict_sdpa(q_new, k_new, v_new, k_cache, v_cache):
    cached, new = k_cache.shape[1], q_new.shape[1]
    pos = torch.arange(cached, cached + new)
    q, k = _rope32(q_new, pos), torch.cat([k_cache, _rope32(k_new, pos)], dim=1)
    v = torch.cat([v_cache, v_new], dim=1)
    mask = torch.arange(cached + new)[None, :] < pos[:, None]     # < where <= is meant
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def ch08_cached_positions_from_one(q_new, k_new, v_new, k_cache, v_cache):
    cached, new = k_cache.shape[1], q_new.shape[1]
    pos = torch.arange(cached + 1, cached + new + 1)               # positions counted from 1
    q, k = _rope32(q_new, pos), torch.cat([k_cache, _rope32(k_new, pos)], dim=1)
    v = torch.cat([v_cache, v_new], dim=1)
    return _masked_attention(q, k, v, torch.ones(new, cached + new, dtype=torch.bool).tril(cached))


def ch08_cached_positions_minus_one(q_new, k_new, v_new, k_cache, v_cache):
    cached, new = k_cache.shape[1], q_new.shape[1]
    pos = torch.arange(new) + cached - 1                           # "the last cached position"
    q, k = _rope32(q_new, pos), torch.cat([k_cache, _rope32(k_new, pos)], dim=1)
    v = torch.cat([v_cache, v_new], dim=1)
    return _masked_attention(q, k, v, torch.ones(new, cached + new, dtype=torch.bool).tril(cached))


def ch08_cached_no_offset(q_new, k_new, v_new, k_cache, v_cache):
    cached, new = k_cache.shape[1], q_new.shape[1]
    pos = torch.arange(new)
    q, k = _rope32(q_new, pos), torch.cat([k_cache, _rope32(k_new, pos)], dim=1)
    v = torch.cat([v_cache, v_new], dim=1)
    return _masked_attention(q, k, v, torch.ones(new, cached + new, dtype=torch.bool).tril(cached))


def ch08_cached_values_rotated(q_new, k_new, v_new, k_cache, v_cache):
    cached, new = k_cache.shape[1], q_new.shape[1]
    pos = torch.arange(cached, cached + new)
    q, k = _rope32(q_new, pos), torch.cat([k_cache, _rope32(k_new, pos)], dim=1)
    v = torch.cat([v_cache, _rope32(v_new, pos)], dim=1)
    return _masked_attention(q, k, v, torch.ones(new, cached + new, dtype=torch.bool).tril(cached))


def ch08_cached_rotate_all_keys(q_new, k_new, v_new, k_cache, v_cache):
    cached, new = k_cache.shape[1], q_new.shape[1]
    pos = torch.arange(cached, cached + new)
    q = _rope32(q_new, pos)
    k = _rope32(torch.cat([k_cache, k_new], dim=1), torch.arange(cached + new))  # cache rotated twice
    v = torch.cat([v_cache, v_new], dim=1)
    return _masked_attention(q, k, v, torch.ones(new, cached + new, dtype=torch.bool).tril(cached))


def ch08_cached_query_only_rotated(q_new, k_new, v_new, k_cache, v_cache):
    cached, new = k_cache.shape[1], q_new.shape[1]
    pos = torch.arange(cached, cached + new)
    q, k = _rope32(q_new, pos), torch.cat([k_cache, k_new], dim=1)
    v = torch.cat([v_cache, v_new], dim=1)
    return _masked_attention(q, k, v, torch.ones(new, cached + new, dtype=torch.bool).tril(cached))


def ch08_cached_no_mask(q_new, k_new, v_new, k_cache, v_cache):
    cached, new = k_cache.shape[1], q_new.shape[1]
    pos = torch.arange(cached, cached + new)
    q, k = _rope32(q_new, pos), torch.cat([k_cache, _rope32(k_new, pos)], dim=1)
    return F.scaled_dot_product_attention(q, k, torch.cat([v_cache, v_new], dim=1))


def ch08_cached_rotate_half(q_new, k_new, v_new, k_cache, v_cache):
    def rope(x, pos):  # Hugging Face's rotate_half, with an interleaved cache
        d = x.shape[-1]
        freqs = torch.outer(pos.float(), _theta32(d))
        emb = torch.cat([freqs, freqs], dim=-1)
        return x * emb.cos() + torch.cat([-x[..., d // 2:], x[..., :d // 2]], dim=-1) * emb.sin()

    cached, new = k_cache.shape[1], q_new.shape[1]
    pos = torch.arange(cached, cached + new)
    q, k = rope(q_new, pos), torch.cat([k_cache, rope(k_new, pos)], dim=1)
    v = torch.cat([v_cache, v_new], dim=1)
    return _masked_attention(q, k, v, torch.ones(new, cached + new, dtype=torch.bool).tril(cached))


def ch08_cached_stale(q_new, k_new, v_new, k_cache, v_cache):
    cached, new = k_cache.shape[1], q_new.shape[1]
    q = _rope32(q_new, torch.arange(cached, cached + new))
    if cached == 0:
        return torch.zeros_like(q_new)
    return F.scaled_dot_product_attention(q, k_cache, v_cache)


def ch08_cached_unscaled(q_new, k_new, v_new, k_cache, v_cache):
    cached, new = k_cache.shape[1], q_new.shape[1]
    pos = torch.arange(cached, cached + new)
    q, k = _rope32(q_new, pos), torch.cat([k_cache, _rope32(k_new, pos)], dim=1)
    v = torch.cat([v_cache, v_new], dim=1)
    mask = torch.ones(new, cached + new, dtype=torch.bool).tril(cached)
    return torch.softmax((q @ k.transpose(1, 2)).masked_fill(~mask, float("-inf")), dim=-1) @ v


CORRECT = {
    "8.1": [ch08_rope_polar_complex, ch08_rope_complex_from_cos_sin, ch08_rope_even_odd_stack,
            ch08_rope_rotate_every_two, ch08_rope_rotation_matrices_float64, ch08_rope_write_into_empty],
    "8.2": [ch08_cached_sdpa_lower_right, ch08_cached_complex_einsum, ch08_cached_float64_additive,
            ch08_cached_one_token_at_a_time],
}

WRONG = {
    "8.1": [
        (ch08_rope_clockwise, "clockwise"),
        (ch08_rope_split_halves_cat, "split halves"),
        (ch08_rope_half_dim_exponent, "4i/d"),
        (ch08_rope_inverted_frequencies, "inverted"),
        (ch08_rope_arange_positions, "`positions` ignored"),
        (ch08_rope_deinterleaved_output, "concatenated"),
        (ch08_rope_sin_cos_swapped, "cos and sin swapped"),
        (ch08_rope_angles_not_broadcast, "positions[:, None]"),
        (ch08_rope_float64_returned, None),
    ],
    "8.2": [
        (ch08_cached_is_causal_top_left, "aligned top-left"),
        (ch08_cached_diagonal_minus_one, "see its own key"),
        (ch08_cached_strict_sdpa, "see its own key"),
        (ch08_cached_positions_from_one, "positions off by one"),
        (ch08_cached_positions_minus_one, "positions off by one"),
        (ch08_cached_no_offset, "position offset missing"),
        (ch08_cached_values_rotated, "values rotated"),
        (ch08_cached_rotate_all_keys, "rotated again"),
        (ch08_cached_query_only_rotated, "new keys not rotated"),
        (ch08_cached_no_mask, "no causal mask"),
        (ch08_cached_rotate_half, "split halves"),
        (ch08_cached_stale, "stale cache"),
        (ch08_cached_unscaled, None),
    ],
}
