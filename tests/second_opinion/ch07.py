"""Chapter 7 (flash-decoding merge, cached attention layer, rolling cache, the offset measured):
learner code the grader has never seen."""

from __future__ import annotations

import math
from collections import deque

import torch
import torch.nn.functional as F
from torch import nn

from riverbank.attention import causal_mask, scaled_dot_product_attention
from riverbank.cache import KVCache
from riverbank.model import load_reversal_model
from riverbank.tasks import Reversal

# --- 7.1 merge_attention_chunks --------------------------------------------------------------------


def ch07_merge_by_max(outs, lses):
    m = lses.amax(dim=0)                                        # (..., n)
    safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    w = torch.exp(lses - safe)                                  # exp(−inf) = 0
    total = w.sum(dim=0)
    return (w[..., None] * outs).sum(dim=0) / total.clamp(min=1e-30)[..., None]


def ch07_merge_running(outs, lses):
    # fold the chunks one at a time, as an online softmax would: a running output and lse
    out, lse = outs[0], lses[0]
    for o, l in zip(outs[1:], lses[1:]):
        new = torch.logaddexp(lse, l)
        a = torch.exp(lse - new).nan_to_num(0.0)[..., None]
        b = torch.exp(l - new).nan_to_num(0.0)[..., None]
        out, lse = a * out + b * o, new
    return out


def ch07_merge_softmax64(outs, lses):
    w = torch.softmax(lses.double(), dim=0).nan_to_num(0.0)
    return torch.einsum("c...n,c...nd->...nd", w, outs.double()).float()


def ch07_merge_mean(outs, lses):
    return outs.mean(dim=0)


def ch07_merge_naive(outs, lses):
    w = lses.exp()
    return (w[..., None] * outs).sum(0) / w.sum(0)[..., None]


def ch07_merge_softmax_last_axis(outs, lses):
    w = torch.softmax(lses, dim=-1).nan_to_num(0.0)
    return (w.unsqueeze(-1) * outs).sum(0)


def ch07_merge_argmax(outs, lses):
    best = lses.argmax(dim=0)
    return torch.stack([outs[c] for c in range(outs.shape[0])]).mul(
        F.one_hot(best, outs.shape[0]).movedim(-1, 0)[..., None]).sum(0)


def ch07_merge_nan_rows(outs, lses):
    w = torch.softmax(lses, dim=0)
    return (w[..., None] * outs).sum(0)


def ch07_merge_unnormalised(outs, lses):
    w = torch.exp(lses - lses.amax(0)).nan_to_num(0.0)
    return (w[..., None] * outs).sum(0)


def ch07_merge_sum(outs, lses):
    return outs.sum(0)


# --- 7.2 CachedSelfAttention -----------------------------------------------------------------------


class CorrectWithPackageAttention(nn.Module):
    """The course's attention and causal mask; heads expanded with expand + reshape."""

    def __init__(self, d_model, n_heads, n_kv_heads):
        super().__init__()
        self.h, self.kv, self.hd = n_heads, n_kv_heads, d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, n_kv_heads * self.hd)
        self.v_proj = nn.Linear(d_model, n_kv_heads * self.hd)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x, cache=None, layer=0):
        b, t, d = x.shape
        q = self.q_proj(x).view(b, t, self.h, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv, self.hd).transpose(1, 2)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        s, g = k.shape[2], self.h // self.kv
        k = k[:, :, None].expand(b, self.kv, g, s, self.hd).reshape(b, self.h, s, self.hd)
        v = v[:, :, None].expand(b, self.kv, g, s, self.hd).reshape(b, self.h, s, self.hd)
        out = scaled_dot_product_attention(q, k, v, causal_mask(t, s))
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class CorrectTorchSDPA(nn.Module):
    """torch's sdpa with an explicit boolean mask built from positions; its own reading of past."""

    def __init__(self, d_model, n_heads, n_kv_heads):
        super().__init__()
        hd = d_model // n_heads
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, hd
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, n_kv_heads * hd)
        self.v_proj = nn.Linear(d_model, n_kv_heads * hd)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x, cache=None, layer=0):
        b, t, d = x.shape
        q = self.q_proj(x).unflatten(-1, (self.n_heads, self.head_dim)).permute(0, 2, 1, 3)
        k = self.k_proj(x).unflatten(-1, (self.n_kv_heads, self.head_dim)).permute(0, 2, 1, 3)
        v = self.v_proj(x).unflatten(-1, (self.n_kv_heads, self.head_dim)).permute(0, 2, 1, 3)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        past = k.shape[2] - t
        mask = torch.arange(k.shape[2])[None, :] <= past + torch.arange(t)[:, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        return self.out_proj(out.permute(0, 2, 1, 3).flatten(-2))


class CorrectHeadLoop(nn.Module):
    """One head at a time, each with its group's key/value head; einsum; float64 scores."""

    def __init__(self, d_model, n_heads, n_kv_heads):
        super().__init__()
        self.nh, self.nkv, self.hd = n_heads, n_kv_heads, d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, n_kv_heads * self.hd)
        self.v_proj = nn.Linear(d_model, n_kv_heads * self.hd)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x, cache=None, layer=0):
        b, t, _ = x.shape
        k = self.k_proj(x).reshape(b, t, self.nkv, self.hd).transpose(1, 2)
        v = self.v_proj(x).reshape(b, t, self.nkv, self.hd).transpose(1, 2)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        s = k.shape[2]
        visible = torch.ones(t, s, dtype=torch.bool).tril(s - t)
        q = self.q_proj(x)
        heads = []
        for h in range(self.nh):
            qh = q[..., h * self.hd:(h + 1) * self.hd]                       # (b, t, hd)
            kv_head = h // (self.nh // self.nkv)
            sc = torch.einsum("btd,bsd->bts", qh.double(), k[:, kv_head].double()) / math.sqrt(self.hd)
            w = sc.masked_fill(~visible, -math.inf).softmax(-1).to(x.dtype)
            heads.append(w @ v[:, kv_head])
        return self.out_proj(torch.cat(heads, dim=-1))


def _wrong_72(**change):
    """A learner's class, written out, with one thing changed."""
    top_left, seq_len, tile, reshape_split = (change.get(k, False) for k in
                                              ("top_left", "seq_len", "tile", "reshape_split"))
    unscaled, no_mask, no_cache = change.get("unscaled", False), change.get("no_mask", False), \
        change.get("no_cache", False)

    class Wrong(nn.Module):
        def __init__(self, d_model, n_heads, n_kv_heads):
            super().__init__()
            self.nh, self.nkv, self.hd = n_heads, n_kv_heads, d_model // n_heads
            self.q_proj = nn.Linear(d_model, d_model)
            self.k_proj = nn.Linear(d_model, n_kv_heads * self.hd)
            self.v_proj = nn.Linear(d_model, n_kv_heads * self.hd)
            self.out_proj = nn.Linear(d_model, d_model)

        def split(self, t, n):
            b, s, _ = t.shape
            if reshape_split:
                return t.reshape(b, n, s, self.hd)
            return t.view(b, s, n, self.hd).transpose(1, 2)

        def forward(self, x, cache=None, layer=0):
            b, t, d = x.shape
            q, k, v = self.split(self.q_proj(x), self.nh), self.split(self.k_proj(x), self.nkv), \
                self.split(self.v_proj(x), self.nkv)
            past = 0
            if cache is not None:
                past = cache.seq_len if seq_len else (0 if cache.keys[layer] is None else cache.keys[layer].shape[2])
                if not no_cache:
                    k, v = cache.update(layer, k, v)
                else:
                    past = 0
            g = self.nh // self.nkv
            if tile:
                k, v = k.repeat(1, g, 1, 1), v.repeat(1, g, 1, 1)
            else:
                k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
            sc = q @ k.transpose(-2, -1)
            if not unscaled:
                sc = sc / math.sqrt(self.hd)
            if not no_mask:
                keep = torch.ones(t, k.shape[2], dtype=torch.bool).tril(0 if top_left else past)
                sc = sc.masked_fill(~keep, float("-inf"))
            out = (sc.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
            return self.out_proj(out)

    Wrong.__name__ = "Wrong_" + "_".join(change)
    return Wrong


class WrongIsCausalTopLeft(CorrectTorchSDPA):
    """is_causal=True: aligned top-left when there are more keys than queries."""

    def forward(self, x, cache=None, layer=0):
        b, t, d = x.shape
        q = self.q_proj(x).unflatten(-1, (self.n_heads, self.head_dim)).transpose(1, 2)
        k = self.k_proj(x).unflatten(-1, (self.n_kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).unflatten(-1, (self.n_kv_heads, self.head_dim)).transpose(1, 2)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.out_proj(out.transpose(1, 2).flatten(-2))


# --- 7.3 RollingCacheAttention ---------------------------------------------------------------------


class RingBuffer:
    """A fixed buffer of `window` slots written at position % window, with each slot's position."""

    def __init__(self, window):
        self.window, self.keys, self.values, self.slot_pos, self.seen = window, None, None, None, 0

    def step(self, q, k, v):
        b, h, new, d = q.shape
        if self.keys is None:
            self.keys, self.values = k.new_zeros(b, h, 0, d), v.new_zeros(b, h, 0, d)
            self.slot_pos = torch.zeros(0, dtype=torch.long)
        pos_new = torch.arange(self.seen, self.seen + new)
        k_all, v_all = torch.cat([self.keys, k], 2), torch.cat([self.values, v], 2)
        kpos = torch.cat([self.slot_pos, pos_new])
        keep = (kpos[None, :] <= pos_new[:, None]) & (kpos[None, :] > pos_new[:, None] - self.window)
        sc = (q @ k_all.transpose(-2, -1)) / math.sqrt(d)
        out = sc.masked_fill(~keep, -math.inf).softmax(-1) @ v_all
        # write the new tokens into their slots, oldest overwritten
        size = min(self.window, self.seen + new)
        keys, values = k.new_zeros(b, h, size, d), v.new_zeros(b, h, size, d)
        slot_pos = torch.zeros(size, dtype=torch.long)
        for j, p in enumerate(kpos.tolist()):
            if p > self.seen + new - 1 - self.window:
                keys[:, :, p % size], values[:, :, p % size] = k_all[:, :, j], v_all[:, :, j]
                slot_pos[p % size] = p
        self.keys, self.values, self.slot_pos, self.seen = keys, values, slot_pos, self.seen + new
        return out


class TokenByToken:
    """Each new token alone: append, cut to the window, attend to everything kept."""

    def __init__(self, window):
        self.window, self.keys, self.values = window, None, None

    def step(self, q, k, v):
        outs = []
        for i in range(q.shape[2]):
            ki, vi = k[:, :, i:i + 1], v[:, :, i:i + 1]
            self.keys = ki if self.keys is None else torch.cat([self.keys, ki], 2)[:, :, -self.window:]
            self.values = vi if self.values is None else torch.cat([self.values, vi], 2)[:, :, -self.window:]
            outs.append(F.scaled_dot_product_attention(q[:, :, i:i + 1], self.keys, self.values))
        return torch.cat(outs, 2)


class DequeOfTokens:
    """A deque of per-token (k, v) with maxlen = window, stacked into the attributes after each step."""

    def __init__(self, window):
        self.window, self.kept = window, deque(maxlen=window)
        self.keys = self.values = None

    def step(self, q, k, v):
        old = len(self.kept)
        tokens = list(self.kept) + [(k[:, :, i], v[:, :, i]) for i in range(k.shape[2])]
        ks = torch.stack([t[0] for t in tokens], 2).double()
        vs = torch.stack([t[1] for t in tokens], 2).double()
        new = q.shape[2]
        i = torch.arange(new)[:, None] + old
        j = torch.arange(len(tokens))[None, :]
        bias = torch.where((j <= i) & (j > i - self.window), 0.0, -math.inf).double()
        w = torch.softmax(q.double() @ ks.transpose(-2, -1) / math.sqrt(q.shape[-1]) + bias, -1)
        self.kept.extend(tokens[old:])
        self.keys = torch.stack([t[0] for t in self.kept], 2)
        self.values = torch.stack([t[1] for t in self.kept], 2)
        return (w @ vs).to(q.dtype)


def _rolling(trim_first=False, band=True, causal=True, extra=0, keep_first=False, cut=True):
    class Wrong:
        def __init__(self, window):
            self.window, self.keys, self.values = window, None, None

        def step(self, q, k, v):
            if self.keys is not None:
                k, v = torch.cat([self.keys, k], 2), torch.cat([self.values, v], 2)
            if trim_first:
                k, v = k[:, :, -self.window:], v[:, :, -self.window:]
            n, s = q.shape[2], k.shape[2]
            kp, qp = torch.arange(s)[None, :], torch.arange(s - n, s)[:, None]
            keep = torch.ones(n, s, dtype=torch.bool)
            if causal:
                keep = keep & (kp <= qp)
            if band:
                keep = keep & (kp >= qp - self.window + 1 - extra)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
            if cut:
                sl = slice(None, self.window) if keep_first else slice(-self.window, None)
                k, v = k[:, :, sl], v[:, :, sl]
            self.keys, self.values = k, v
            return out
    return Wrong


# --- 7.4 the offset, measured ----------------------------------------------------------------------


def _measure(dtype=torch.float32, per_prompt=False):
    model = load_reversal_model().to(dtype)
    task = Reversal()
    test = task.held_out()
    if per_prompt:  # prompts one batch of 250 at a time
        parts = [_generate_no_offset(model, task.prompt(test[i:i + 250])) for i in range(0, 1000, 250)]
        digits = torch.cat(parts)
    else:
        digits = _generate_no_offset(model, task.prompt(test))
    return (digits == task.answer(test)).sum().item() / digits.numel()


@torch.no_grad()
def _generate_no_offset(model, prompts, offset=False):
    cache = KVCache(len(model.blocks))
    logits, _ = model(prompts, cache=cache)
    out = [logits[:, -1:].argmax(-1)]
    for _ in range(7):
        logits, _ = model(out[-1], start=cache.seq_len if offset else 0, cache=cache)
        out.append(logits[:, -1:].argmax(-1))
    return torch.cat(out, 1)


def ch07_offset_batched():
    return round(_measure(), 4)


def ch07_offset_in_parts():
    return _measure(per_prompt=True)


def ch07_offset_float64():
    return float(f"{_measure(torch.float64):.4f}")


def ch07_offset_right():
    model, task = load_reversal_model(), Reversal()
    test = task.held_out()
    return (_generate_no_offset(model, task.prompt(test), offset=True) == task.answer(test)).float().mean().item()


def ch07_offset_whole_sequences():
    model, task = load_reversal_model(), Reversal()
    test = task.held_out()
    return (_generate_no_offset(model, task.prompt(test)) == task.answer(test)).all(1).float().mean().item()


def ch07_offset_percent():
    return 100 * _measure()


def ch07_offset_after_first():
    model, task = load_reversal_model(), Reversal()
    test = task.held_out()
    right = _generate_no_offset(model, task.prompt(test)) == task.answer(test)
    return right[:, 1:].float().mean().item()


def ch07_offset_guess():
    return 0.5


CORRECT = {
    "7.1": [ch07_merge_by_max, ch07_merge_running, ch07_merge_softmax64],
    "7.2": [CorrectWithPackageAttention, CorrectTorchSDPA, CorrectHeadLoop],
    "7.3": [RingBuffer, TokenByToken, DequeOfTokens],
    "7.4": [ch07_offset_batched, ch07_offset_in_parts, ch07_offset_float64],
}

WRONG = {
    "7.1": [
        (ch07_merge_mean, "averaged"),
        (ch07_merge_naive, "overflows"),
        (ch07_merge_softmax_last_axis, "over the queries"),
        (ch07_merge_argmax, "largest lse's chunk"),
        (ch07_merge_nan_rows, "every key masked"),
        (ch07_merge_unnormalised, "not divided by their sum"),
        (ch07_merge_sum, None),
    ],
    "7.2": [
        (_wrong_72(top_left=True), "top-left"),
        (WrongIsCausalTopLeft, "top-left"),
        (_wrong_72(seq_len=True), "cache.seq_len counts layer 0"),
        (_wrong_72(tile=True), "heads tiled"),
        (_wrong_72(reshape_split=True), "split by reshape"),
        (_wrong_72(unscaled=True), "not divided by √head_dim"),
        (_wrong_72(no_mask=True), "no causal mask"),
        (_wrong_72(no_cache=True), "cache unused"),
    ],
    "7.3": [
        (_rolling(trim_first=True), "cut before attending"),
        (_rolling(band=False), "no band in a chunk"),
        (_rolling(causal=False), "no causal mask"),
        (_rolling(extra=1), "window off by one"),
        (_rolling(keep_first=True), "first tokens kept"),
        (_rolling(band=False, cut=False), "keep only the last window"),
    ],
    "7.4": [
        (ch07_offset_right, "with the offset"),
        (ch07_offset_whole_sequences, "whole sequences"),
        (ch07_offset_percent, "percentage"),
        (ch07_offset_after_first, "prefill's digit"),
        (ch07_offset_guess, None),
    ],
}
