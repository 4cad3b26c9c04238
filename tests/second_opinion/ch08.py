"""Chapter 8 (scaled rotary frequencies, the rotary cached layer, NTK's overshoot): learner code the
grader has never seen."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from riverbank.attention import causal_mask, scaled_dot_product_attention
from riverbank.positions import apply_rope, rope_frequencies

# --- 8.1 scaled_rope_frequencies -------------------------------------------------------------------


def ch08_freqs_float32(head_dim, scale, method):
    i = torch.arange(head_dim // 2, dtype=torch.float32)
    if method == "ntk":
        base = 10000 * scale ** (head_dim / (head_dim - 2))
        return 1.0 / base ** (2 * i / head_dim)
    return 1.0 / (10000 ** (2 * i / head_dim) * scale)


def ch08_freqs_log(head_dim, scale, method):
    i = torch.arange(0, head_dim, 2, dtype=torch.float64)
    log_base = math.log(10000.0)
    if method == "ntk":
        log_base += head_dim / (head_dim - 2) * math.log(scale)
        return torch.exp(-i / head_dim * log_base).float()
    return (torch.exp(-i / head_dim * log_base) / scale).float()


def ch08_freqs_package(head_dim, scale, method):
    if method == "interpolation":
        return (rope_frequencies(head_dim) / scale).float()
    return rope_frequencies(head_dim, base=10000.0 * scale ** (head_dim / (head_dim - 2))).float()


def ch08_freqs_ntk_times_scale(head_dim, scale, method):
    i = torch.arange(0, head_dim, 2, dtype=torch.float64)
    base = 10000.0 * scale if method == "ntk" else 10000.0
    theta = base ** (-i / head_dim)
    return (theta if method == "ntk" else theta / scale).float()


def ch08_freqs_power_flipped(head_dim, scale, method):
    i = torch.arange(0, head_dim, 2, dtype=torch.float64)
    if method == "ntk":
        return ((10000.0 * scale ** ((head_dim - 2) / head_dim)) ** (-i / head_dim)).float()
    return (10000.0 ** (-i / head_dim) / scale).float()


def ch08_freqs_interpolation_times(head_dim, scale, method):
    i = torch.arange(0, head_dim, 2, dtype=torch.float64)
    if method == "ntk":
        return ((10000.0 * scale ** (head_dim / (head_dim - 2))) ** (-i / head_dim)).float()
    return (10000.0 ** (-i / head_dim) * scale).float()


def ch08_freqs_swapped(head_dim, scale, method):
    return ch08_freqs_package(head_dim, scale, "ntk" if method == "interpolation" else "interpolation")


def ch08_freqs_unscaled(head_dim, scale, method):
    return rope_frequencies(head_dim).float()


def ch08_freqs_float64(head_dim, scale, method):
    return ch08_freqs_package(head_dim, scale, method).double()


# --- 8.2 RotaryCachedAttention ---------------------------------------------------------------------


def _rope_complex(x, positions):
    """Meta's Llama style: interleaved pairs as complex numbers, times e^(i · position · θ)."""
    d = x.shape[-1]
    freqs = 1.0 / 10000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    turns = torch.polar(torch.ones(len(positions), d // 2, dtype=torch.float64),
                        torch.outer(positions.double(), freqs))
    pairs = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    return torch.view_as_real(pairs * turns).flatten(-2).to(x.dtype)


class _Projections(nn.Module):
    def __init__(self, d_model, n_heads):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def heads(self, t):
        b, s, _ = t.shape
        return t.view(b, s, self.n_heads, self.head_dim).transpose(1, 2)


class RotaryWithPackage(_Projections):
    def forward(self, x, cache=None, layer=0):
        b, t, d = x.shape
        q, k, v = self.heads(self.q_proj(x)), self.heads(self.k_proj(x)), self.heads(self.v_proj(x))
        start = 0 if cache is None or cache.keys[layer] is None else cache.keys[layer].shape[-2]
        pos = torch.arange(start, start + t)
        q, k = apply_rope(q, pos), apply_rope(k, pos)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        out = scaled_dot_product_attention(q, k, v, causal_mask(t, k.shape[-2]))
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class RotaryComplexSDPA(_Projections):
    def forward(self, x, cache=None, layer=0):
        b, t, d = x.shape
        q, k, v = self.heads(self.q_proj(x)), self.heads(self.k_proj(x)), self.heads(self.v_proj(x))
        past = 0
        if cache is not None and cache.keys[layer] is not None:
            past = cache.keys[layer].shape[2]
        pos = past + torch.arange(t)
        q, k = _rope_complex(q, pos), _rope_complex(k, pos)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        mask = torch.arange(k.shape[2])[None, :] <= pos[:, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).flatten(-2))


class RotaryTokenLoop(_Projections):
    """The chunk's tokens one at a time, each over the keys up to itself."""

    def forward(self, x, cache=None, layer=0):
        b, t, d = x.shape
        q, k, v = self.heads(self.q_proj(x)), self.heads(self.k_proj(x)), self.heads(self.v_proj(x))
        past = 0 if cache is None or cache.keys[layer] is None else len(cache.keys[layer][0, 0])
        pos = torch.arange(past, past + t)
        q, k = apply_rope(q, pos), apply_rope(k, pos)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        outs = []
        for j in range(t):
            kj, vj = k[:, :, :past + j + 1], v[:, :, :past + j + 1]
            w = torch.softmax(q[:, :, j:j + 1] @ kj.transpose(-2, -1) / math.sqrt(self.head_dim), -1)
            outs.append(w @ vj)
        return self.out_proj(torch.cat(outs, 2).transpose(1, 2).reshape(b, t, d))


def _wrong_82(no_offset=False, seq_len=False, rotate_v=False, halves=False, top_left=False,
              rotate_cache=False):
    class Wrong(_Projections):
        def forward(self, x, cache=None, layer=0):
            b, t, d = x.shape
            q, k, v = self.heads(self.q_proj(x)), self.heads(self.k_proj(x)), self.heads(self.v_proj(x))
            past = 0
            if cache is not None:
                past = cache.seq_len if seq_len else (0 if cache.keys[layer] is None else cache.keys[layer].shape[2])
            start = 0 if no_offset else past
            pos = torch.arange(start, start + t)
            conv = "split_halves" if halves else "interleaved"
            q, k = apply_rope(q, pos, conv), apply_rope(k, pos, conv)
            if rotate_v:
                v = apply_rope(v, pos, conv)
            if cache is not None:
                k, v = cache.update(layer, k, v)
            if rotate_cache and k.shape[2] > t:
                k = apply_rope(k, torch.arange(k.shape[2]), conv)
            s = k.shape[2]
            keep = torch.ones(t, s, dtype=torch.bool).tril(0 if top_left else s - t)
            sc = (q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)).masked_fill(~keep, -math.inf)
            return self.out_proj((sc.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d))
    return Wrong


# --- 8.3 ntk_overshoot -----------------------------------------------------------------------------


def _overshoot(theta_new, theta=None, trained=2047, extended=8191):
    theta = rope_frequencies(128) if theta is None else theta
    ratio = extended * theta_new / (trained * theta)
    return round(ratio[trained * theta < 2 * math.pi].max().item(), 4)


def ch08_overshoot_float32():
    return _overshoot(ch08_freqs_float32(128, 4.0, "ntk").double())


def ch08_overshoot_loop():
    best = 0.0
    for i in range(64):
        theta = 10000 ** (-2 * i / 128)
        theta_ntk = (10000 * 4 ** (128 / 126)) ** (-2 * i / 128)
        if 2047 * theta < 2 * math.pi:
            best = max(best, 8191 * theta_ntk / (2047 * theta))
    return best


def ch08_overshoot_formula():
    # the ratio is 8191/2047 · 4^(−2i/126): largest at the first pair that never turned fully
    i = next(i for i in range(64) if 2047 * 10000 ** (-2 * i / 128) < 2 * math.pi)
    return round(8191 / 2047 * 4 ** (-2 * i / 126), 4)


def ch08_overshoot_unscaled():
    return _overshoot(rope_frequencies(128))


def ch08_overshoot_interpolation():
    return _overshoot(rope_frequencies(128) / 4)


def ch08_overshoot_base_times_four():
    return _overshoot(rope_frequencies(128, base=40000.0))


def ch08_overshoot_lengths():
    return _overshoot(ch08_freqs_package(128, 4.0, "ntk").double(), trained=2048, extended=8192)


def ch08_overshoot_every_pair():
    # the pairs that turned fully in training are kept too: pair 0 is never slowed
    ratio = 8191 * ch08_freqs_package(128, 4.0, "ntk").double() / (2047 * rope_frequencies(128))
    return round(ratio.max().item(), 4)


def ch08_overshoot_guess():
    return 2.0


CORRECT = {
    "8.1": [ch08_freqs_float32, ch08_freqs_log, ch08_freqs_package],
    "8.2": [RotaryWithPackage, RotaryComplexSDPA, RotaryTokenLoop],
    "8.3": [ch08_overshoot_float32, ch08_overshoot_loop, ch08_overshoot_formula],
}

WRONG = {
    "8.1": [
        (ch08_freqs_ntk_times_scale, "not scale"),
        (ch08_freqs_power_flipped, "not (d−2)/d"),
        (ch08_freqs_interpolation_times, "divide θ_i by scale"),
        (ch08_freqs_swapped, "swapped"),
        (ch08_freqs_unscaled, "scale is ignored"),
        (ch08_freqs_float64, None),
    ],
    "8.2": [
        (_wrong_82(no_offset=True), "offset missing"),
        (_wrong_82(seq_len=True), "cache.seq_len counts layer 0"),
        (_wrong_82(rotate_v=True), "values rotated"),
        (_wrong_82(halves=True), "split halves"),
        (_wrong_82(top_left=True), "top-left"),
        (_wrong_82(rotate_cache=True), "rotated again"),
    ],
    "8.3": [
        (ch08_overshoot_unscaled, "unscaled"),
        (ch08_overshoot_every_pair, "unscaled"),
        (ch08_overshoot_interpolation, "position interpolation"),
        (ch08_overshoot_base_times_four, "not 10000 · 4"),
        (ch08_overshoot_lengths, "2047 and 8191"),
        (ch08_overshoot_guess, None),
    ],
}


# --- 8.4 to_split_halves ---------------------------------------------------------------------------


def ch08_convert_loop(weight, n_heads):
    hd = weight.shape[0] // n_heads
    perm = torch.cat([torch.arange(0, hd, 2), torch.arange(1, hd, 2)])
    return torch.cat([weight[h * hd:(h + 1) * hd][perm] for h in range(n_heads)])


def ch08_convert_arithmetic(weight, n_heads):
    hd = weight.shape[0] // n_heads
    r = torch.arange(weight.shape[0])
    h, i = r // hd, r % hd
    old = torch.where(i < hd // 2, 2 * i, 2 * (i - hd // 2) + 1)
    return weight[h * hd + old]


def ch08_convert_numpy(weight, n_heads):
    import numpy as np
    w = weight.numpy()
    hd = w.shape[0] // n_heads
    blocks = w.reshape(n_heads, hd, -1)
    out = np.concatenate([blocks[:, 0::2], blocks[:, 1::2]], axis=1)
    return torch.from_numpy(out.reshape(w.shape).copy())


def ch08_convert_whole(weight, n_heads):
    return torch.cat([weight[0::2], weight[1::2]])


def ch08_convert_inverse(weight, n_heads):
    hd = weight.shape[0] // n_heads
    perm = torch.cat([torch.arange(0, hd, 2), torch.arange(1, hd, 2)])
    inverse = torch.argsort(perm)
    return torch.cat([weight[h * hd:(h + 1) * hd][inverse] for h in range(n_heads)])


def ch08_convert_strided_heads(weight, n_heads):
    # reads head h as rows h, h + n_heads, h + 2 n_heads, ...
    rows, d = weight.shape
    hd = rows // n_heads
    w = weight.view(hd, n_heads, d)
    return torch.cat([w[0::2], w[1::2]]).reshape(rows, d)


def ch08_convert_columns(weight, n_heads):
    hd = weight.shape[1] // n_heads
    perm = torch.cat([torch.arange(0, hd, 2), torch.arange(1, hd, 2)])
    return torch.cat([weight[:, h * hd:(h + 1) * hd][:, perm] for h in range(n_heads)], dim=1)


def ch08_convert_reversed(weight, n_heads):
    return weight.flip(0)


CORRECT["8.4"] = [ch08_convert_loop, ch08_convert_arithmetic, ch08_convert_numpy]
WRONG["8.4"] = [
    (ch08_convert_whole, "across heads"),
    (ch08_convert_inverse, "inverse order"),
    (ch08_convert_strided_heads, "head h is rows"),
    (ch08_convert_columns, "columns reordered"),
    (ch08_convert_reversed, None),
]
