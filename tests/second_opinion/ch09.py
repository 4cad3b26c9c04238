"""Chapter 9 (group-wise zero-point quantization, the speculative verification step, a zero-point KV
cache, the rejections of a 4-bit self-draft): learner code the grader has never seen."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from riverbank.model import load_reversal_model
from riverbank.tasks import Reversal

# --- 9.1 fake_quantize_groupwise -------------------------------------------------------------------


def ch09_groups_float64(w, bits, group_size):
    rows, cols = w.shape
    x = w.double().reshape(rows, -1, group_size)
    lo, hi = x.min(dim=2, keepdim=True).values, x.max(dim=2, keepdim=True).values
    n = 2 ** bits - 1
    s = (hi - lo) / n
    s_ok = s.clone()
    s_ok[s == 0] = 1.0
    z = (-lo / s_ok).round()
    q = torch.clamp((x / s_ok).round() + z, 0, n)
    y = (q - z) * s_ok
    y[(s == 0).expand_as(y)] = x[(s == 0).expand_as(x)]
    return y.reshape(rows, cols).to(w.dtype)


def ch09_groups_loop(w, bits, group_size):
    out = w.clone()
    n = 2 ** bits - 1
    for r in range(w.shape[0]):
        for c in range(0, w.shape[1], group_size):
            g = w[r, c:c + group_size]
            lo, hi = g.min(), g.max()
            if hi == lo:
                continue
            scale = (hi - lo) / n
            zero = torch.round(-lo / scale)
            code = torch.clamp(torch.round(g / scale) + zero, 0, n)
            out[r, c:c + group_size] = code * scale - zero * scale
    return out


def ch09_groups_flat(w, bits, group_size):
    flat = w.reshape(-1, group_size)                       # every group is a row
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    scale = (hi - lo) / (2 ** bits - 1)
    keep = scale == 0
    scale = scale.masked_fill(keep, 1.0)
    zp = torch.round(-lo / scale)
    deq = (torch.clamp(torch.round(flat / scale) + zp, 0, 2 ** bits - 1) - zp) * scale
    return torch.where(keep, flat, deq).reshape(w.shape)


def _groupwise(w, bits, group_size, n=None, top=None, zero_round=True, rnd=torch.round, whole=False,
               guard=True):
    rows, cols = w.shape
    x = w.reshape(1, -1) if whole else w.reshape(-1, group_size)
    n = 2 ** bits - 1 if n is None else n
    lo, hi = x.amin(1, keepdim=True), x.amax(1, keepdim=True)
    scale = (hi - lo) / n
    if guard:
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zp = -lo / scale
    if zero_round:
        zp = torch.round(zp)
    q = torch.clamp(rnd(x / scale) + zp, 0, 2 ** bits - 1 if top is None else top)
    out = (q - zp) * scale
    if guard:
        out = torch.where(hi == lo, x, out)
    return out.reshape(rows, cols)


def ch09_groups_two_to_the_bits(w, bits, group_size):
    return _groupwise(w, bits, group_size, n=2 ** bits)


def ch09_groups_absmax(w, bits, group_size):
    x = w.reshape(-1, group_size)
    n = 2 ** (bits - 1) - 1
    scale = x.abs().amax(1, keepdim=True) / n
    return (torch.round(x / scale).clamp(-n, n) * scale).reshape(w.shape)


def ch09_groups_zero_not_rounded(w, bits, group_size):
    return _groupwise(w, bits, group_size, zero_round=False)


def ch09_groups_floor(w, bits, group_size):
    return _groupwise(w, bits, group_size, rnd=torch.floor)


def ch09_groups_whole_tensor(w, bits, group_size):
    return _groupwise(w, bits, group_size, whole=True)


def ch09_groups_columns(w, bits, group_size):
    return _groupwise(w.T.contiguous(), bits, group_size).T.contiguous()


def ch09_groups_nan(w, bits, group_size):
    return _groupwise(w, bits, group_size, guard=False)


def ch09_groups_codes(w, bits, group_size):
    x = w.reshape(-1, group_size)
    lo, hi = x.amin(1, keepdim=True), x.amax(1, keepdim=True)
    scale = ((hi - lo) / (2 ** bits - 1)).clamp(min=1e-12)
    return (torch.round(x / scale) + torch.round(-lo / scale)).reshape(w.shape)   # not dequantized


# --- 9.2 speculative_verify ------------------------------------------------------------------------


def ch09_verify_searchsorted(target_probs, draft_probs, draft_tokens, accept_uniforms, resample_uniform):
    def draw(d):
        return int(torch.searchsorted(d.cumsum(0), torch.tensor([resample_uniform], dtype=d.dtype),
                                      right=True).clamp(max=len(d) - 1))
    accepted = []
    for i, token in enumerate(draft_tokens.tolist()):
        ratio = target_probs[i, token] / draft_probs[i, token]
        if accept_uniforms[i].item() < min(1.0, ratio.item()):
            accepted.append(token)
        else:
            residual = torch.relu(target_probs[i] - draft_probs[i])
            return accepted + [draw(residual / residual.sum())]
    return accepted + [draw(target_probs[-1])]


def ch09_verify_numpy(target_probs, draft_probs, draft_tokens, accept_uniforms, resample_uniform):
    p, q = target_probs.numpy().astype(np.float64), draft_probs.numpy().astype(np.float64)
    xs, us = draft_tokens.numpy(), accept_uniforms.numpy()
    i = 0
    while i < len(xs):
        if not us[i] < min(1.0, p[i, xs[i]] / q[i, xs[i]]):
            break
        i += 1
    head = [int(x) for x in xs[:i]]
    if i < len(xs):
        r = np.maximum(p[i] - q[i], 0.0)
        dist = r / r.sum()
    else:
        dist = p[i]
    return head + [int(np.argmax(np.cumsum(dist) > resample_uniform))]


def ch09_verify_vectorised(target_probs, draft_probs, draft_tokens, accept_uniforms, resample_uniform):
    k = len(draft_tokens)
    rows = torch.arange(k)
    ratio = target_probs[rows, draft_tokens] / draft_probs[rows, draft_tokens]
    accepted = accept_uniforms < ratio.clamp(max=1.0)             # (k,)
    n = int(accepted.long().cumprod(0).sum()) if k else 0         # leading accepted tokens
    if n < k:
        dist = (target_probs[n] - draft_probs[n]).clamp(min=0)
        dist = dist / dist.sum()
    else:
        dist = target_probs[k]
    extra = int((dist.cumsum(0) <= resample_uniform).sum())
    return draft_tokens[:n].tolist() + [min(extra, len(dist) - 1)]


def _wrong_verify(inverted=False, no_clamp=False, no_norm=False, from_p=False, no_bonus=False, carry_on=False,
                  shifted=False):
    def verify(target_probs, draft_probs, draft_tokens, accept_uniforms, resample_uniform):
        def draw(d):
            hits = (d.cumsum(0) > resample_uniform).nonzero()
            return int(hits[0, 0]) if len(hits) else len(d) - 1
        out = []
        for i in range(len(draft_tokens)):
            x = int(draft_tokens[i])
            p, q = target_probs[i + 1 if shifted else i], draft_probs[i]
            ratio = q[x] / p[x] if inverted else p[x] / q[x]
            if accept_uniforms[i] < min(1.0, float(ratio)):
                out.append(x)
                continue
            r = p.clone() if from_p else (p - q if no_clamp else (p - q).clamp(min=0))
            out.append(draw(r if no_norm else r / r.sum()))
            if not carry_on:
                return out
        if not no_bonus and len(out) == len(draft_tokens):
            out.append(draw(target_probs[len(draft_tokens)]))
        return out
    return verify


def ch09_verify_random(target_probs, draft_probs, draft_tokens, accept_uniforms, resample_uniform):
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(len(draft_tokens)):
        x = int(draft_tokens[i])
        if torch.rand((), generator=g) < min(1.0, float(target_probs[i, x] / draft_probs[i, x])):
            out.append(x)
        else:
            r = (target_probs[i] - draft_probs[i]).clamp(min=0)
            return out + [int(torch.multinomial(r / r.sum(), 1, generator=g))]
    return out + [int(torch.multinomial(target_probs[-1], 1, generator=g))]


# --- 9.3 ZeroPointKVCache --------------------------------------------------------------------------


def _quantize_rows(x):
    low = x.min(dim=-1, keepdim=True).values
    scale = (x.max(dim=-1, keepdim=True).values - low) / 255.0
    codes = ((x - low) / scale.where(scale > 0, torch.ones_like(scale))).round().clamp(0, 255).byte()
    return codes, scale, low


class ChunkListCache:
    """Keeps every update's codes as a chunk; joins them when asked."""

    def __init__(self, n_layers):
        self.chunks = [[] for _ in range(n_layers)]

    def update(self, layer, k, v):
        self.chunks[layer].append((_quantize_rows(k), _quantize_rows(v)))
        keys = torch.cat([c.float() * s + m for (c, s, m), _ in self.chunks[layer]], dim=2)
        values = torch.cat([c.float() * s + m for _, (c, s, m) in self.chunks[layer]], dim=2)
        return keys, values

    @property
    def seq_len(self):
        return sum(kq[0].shape[2] for kq, _ in self.chunks[0])

    @property
    def nbytes(self):
        return sum(t.nbytes for layer in self.chunks for pair in layer for part in pair for t in part)


class DictCache:
    """One dict entry per (layer, kind), quantized with a reciprocal and dequantized with addcmul."""

    def __init__(self, n_layers):
        self.store = {}

    def _put(self, key, x):
        low = x.amin(-1, keepdim=True)
        span = x.amax(-1, keepdim=True) - low
        scale = span / 255
        inv = torch.where(span > 0, 255 / span, torch.zeros_like(span))
        codes = torch.clamp(torch.round((x - low) * inv), 0, 255).to(torch.uint8)
        if key in self.store:
            codes, scale, low = (torch.cat([a, b], 2) for a, b in zip(self.store[key], (codes, scale, low)))
        self.store[key] = (codes, scale, low)
        return torch.addcmul(low, codes.to(torch.float32), scale)

    def update(self, layer, k, v):
        return self._put((layer, "k"), k), self._put((layer, "v"), v)

    @property
    def seq_len(self):
        return self.store[(0, "k")][0].shape[2] if (0, "k") in self.store else 0

    @property
    def nbytes(self):
        return sum(t.numel() * t.element_size() for parts in self.store.values() for t in parts)


class FlatRowsCache:
    """Quantizes (batch · heads · new, head_dim) rows; keeps one tensor per layer for keys and values."""

    def __init__(self, n_layers):
        self.k = [None] * n_layers
        self.v = [None] * n_layers

    @staticmethod
    def _rows(x):
        b, h, n, d = x.shape
        rows = x.reshape(-1, d)
        lo, hi = rows.min(1, keepdim=True).values, rows.max(1, keepdim=True).values
        step = (hi - lo) / 255
        safe = torch.where(step == 0, torch.ones_like(step), step)
        q = ((rows - lo) / safe).round().clamp(0, 255).to(torch.uint8)
        return q.view(b, h, n, d), step.view(b, h, n, 1), lo.view(b, h, n, 1)

    def _add(self, slot, layer, x):
        new = self._rows(x)
        slot[layer] = new if slot[layer] is None else tuple(torch.cat(p, dim=2) for p in zip(slot[layer], new))
        q, step, lo = slot[layer]
        return lo + step * q.float()

    def update(self, layer, k, v):
        return self._add(self.k, layer, k), self._add(self.v, layer, v)

    @property
    def seq_len(self):
        return 0 if self.k[0] is None else self.k[0][0].shape[-2]

    @property
    def nbytes(self):
        return sum(t.nbytes for slot in (self.k, self.v) for parts in slot if parts for t in parts)


def _wrong_cache(no_quant=False, per_update=False, float_codes=False, only_new=False, no_offset=False,
                 steps=255, absmax=False, seq_all_layers=False):
    class Wrong:
        def __init__(self, n_layers):
            self.k, self.v = [None] * n_layers, [None] * n_layers

        def _quant(self, x):
            if no_quant:
                return (x,)
            if absmax:
                s = x.abs().amax(-1, keepdim=True) / 127
                return torch.round(x / s).clamp(-127, 127).to(torch.int8), s
            dims = (0, 1, 2, 3) if per_update else (-1,)
            lo = x.amin(dims, keepdim=True).expand(*x.shape[:-1], 1)
            s = (x.amax(dims, keepdim=True).expand(*x.shape[:-1], 1) - lo) / steps
            q = torch.round((x - lo) / torch.where(s > 0, s, torch.ones_like(s))).clamp(0, 255)
            return q.to(torch.float32 if float_codes else torch.uint8), s, lo.contiguous()

        def _deq(self, parts):
            if no_quant:
                return parts[0]
            if absmax:
                return parts[0].float() * parts[1]
            q, s, lo = parts
            return q.float() * s + (0 if no_offset else lo)

        def _add(self, slot, layer, x):
            new = self._quant(x)
            slot[layer] = new if slot[layer] is None else tuple(torch.cat(p, 2) for p in zip(slot[layer], new))
            parts = new if only_new else slot[layer]
            return self._deq(parts)

        def update(self, layer, k, v):
            return self._add(self.k, layer, k), self._add(self.v, layer, v)

        @property
        def seq_len(self):
            if seq_all_layers:
                return sum(parts[0].shape[2] for parts in self.k if parts is not None)
            return 0 if self.k[0] is None else self.k[0][0].shape[2]

        @property
        def nbytes(self):
            return sum(t.numel() * t.element_size() for slot in (self.k, self.v) for parts in slot if parts
                       for t in parts)
    return Wrong


def _no_property_cache():
    class NoProperty(DictCache):
        def nbytes(self):   # a method, not a property
            return super().nbytes
    NoProperty.nbytes = lambda self: sum(t.numel() * t.element_size() for p in self.store.values() for t in p)
    return NoProperty


# --- 9.4 rejections_per_10k ------------------------------------------------------------------------


def _rejections(dtype=torch.float32, per_row=False, everything=False, positions=slice(8, 16), lowest=-7,
                top=7, divisor=7, alpha=False, fraction=False, bits_levels=None):
    target = load_reversal_model().to(dtype)
    draft = copy.deepcopy(target)
    with torch.no_grad():
        for m in draft.modules():
            kinds = (nn.Linear, nn.Embedding, nn.LayerNorm) if everything else (nn.Linear,)
            if isinstance(m, kinds):
                w = m.weight
                d = divisor if bits_levels is None else bits_levels
                s = w.abs().amax(-1, keepdim=True) / d if per_row and w.dim() == 2 else w.abs().max() / d
                lo, hi = (lowest, top) if bits_levels is None else (-bits_levels, bits_levels)
                w.copy_(torch.clamp(torch.round(w / s), lo, hi) * s)
        x = Reversal().held_out()[:, :-1]
        p = torch.softmax(target(x)[0][:, positions], dim=-1)
        q = torch.softmax(draft(x)[0][:, positions], dim=-1)
    a = torch.minimum(p, q).sum(-1).mean().item()
    if alpha:
        return round(a, 4)
    if fraction:
        return round(1 - a, 6)
    return round(10_000 * (1 - a), 2)


def ch09_rejections_float64():
    return _rejections(torch.float64)


def ch09_rejections_named_parameters():
    target = load_reversal_model()
    draft = copy.deepcopy(target)
    linear = {name for name, m in draft.named_modules() if isinstance(m, nn.Linear)}
    state = draft.state_dict()
    for name in linear:
        w = state[f"{name}.weight"]
        scale = w.abs().max() / 7
        state[f"{name}.weight"] = (w / scale).round().clamp(-7, 7) * scale
    draft.load_state_dict(state)
    inputs = Reversal().held_out()[:, :-1]
    with torch.no_grad():
        p = target(inputs)[0].softmax(-1)[:, 8:].reshape(-1, 11)
        q = draft(inputs)[0].softmax(-1)[:, 8:].reshape(-1, 11)
    total_variation = 0.5 * (p - q).abs().sum(-1)                  # = 1 − Σ min(p, q)
    return round(10_000 * total_variation.mean().item(), 2)


def ch09_rejections_per_sequence_loop():
    task = Reversal()
    seqs = task.held_out()
    target = load_reversal_model()
    draft = copy.deepcopy(target)
    with torch.no_grad():
        for layer in [m for m in draft.modules() if type(m) is nn.Linear]:
            s = layer.weight.abs().max() / 7
            layer.weight.data = torch.round(layer.weight / s).clamp(-7, 7) * s
        total = 0.0
        for chunk in seqs.split(250):
            lp = torch.log_softmax(target(chunk[:, :-1])[0], -1)[:, task.n_digits:]
            lq = torch.log_softmax(draft(chunk[:, :-1])[0], -1)[:, task.n_digits:]
            total += (lq.exp() - lp.exp()).clamp(min=0).sum().item()
    return round(10_000 * total / (len(seqs) * task.n_digits), 2)


CORRECT = {
    "9.1": [ch09_groups_float64, ch09_groups_loop, ch09_groups_flat],
    "9.2": [ch09_verify_searchsorted, ch09_verify_numpy, ch09_verify_vectorised],
    "9.3": [ChunkListCache, DictCache, FlatRowsCache],
    "9.4": [ch09_rejections_float64, ch09_rejections_named_parameters, ch09_rejections_per_sequence_loop],
}

WRONG = {
    "9.1": [
        (ch09_groups_two_to_the_bits, "not 2^bits"),
        (ch09_groups_absmax, "absmax"),
        (ch09_groups_zero_not_rounded, "whole code"),
        (ch09_groups_floor, "floor"),
        (ch09_groups_whole_tensor, "whole tensor"),
        (ch09_groups_columns, "along a row"),
        (ch09_groups_nan, "divides by 0"),
        (ch09_groups_codes, None),
    ],
    "9.2": [
        (_wrong_verify(inverted=True), "ratio inverted"),
        (_wrong_verify(no_clamp=True), "not clamped"),
        (_wrong_verify(no_norm=True), "not renormalised"),
        (_wrong_verify(from_p=True), "resampled from p"),
        (_wrong_verify(no_bonus=True), "no bonus"),
        (_wrong_verify(carry_on=True), "no stop"),
        (_wrong_verify(shifted=True), "off by one"),
        (ch09_verify_random, None),
    ],
    "9.3": [
        (_wrong_cache(no_quant=True), "not quantized"),
        (_wrong_cache(per_update=True), "one scale per update"),
        (_wrong_cache(float_codes=True), "4 bytes"),
        (_wrong_cache(only_new=True), "only the new tokens"),
        (_wrong_cache(no_offset=True), "offset forgotten"),
        (_wrong_cache(steps=256), "not 256"),
        (_wrong_cache(absmax=True), "absmax"),
        (_no_property_cache(), "properties"),
        (_wrong_cache(seq_all_layers=True), "seq_len counts layer 0"),
    ],
    "9.4": [
        (lambda: _rejections(alpha=True), "that is α"),
        (lambda: _rejections(fraction=True), "a fraction"),
        (lambda: _rejections(positions=slice(None)), "every position"),
        (lambda: _rejections(per_row=True), "one scale per row"),
        (lambda: _rejections(everything=True), "embeddings and LayerNorms"),
        (lambda: _rejections(lowest=-8, divisor=8), "codes −7 .. 7"),
        (lambda: _rejections(bits_levels=127), None),
    ],
}
