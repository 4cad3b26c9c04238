"""Chapter 2 second opinions: a masked softmax written out, attention with masks built from a flag and
lengths, the saturation and float16 experiments. Torch's softmax is switched off during 2.1 and 2.2."""

import math

import numpy as np
import torch


# --- 2.1 masked_softmax: correct -----------------------------------------------------------------

def ch02_softmax_where_and_clamp(scores, mask=None):
    keep = torch.ones_like(scores, dtype=torch.bool) if mask is None else mask.expand_as(scores)
    s = torch.where(keep, scores, torch.full_like(scores, -math.inf))
    m = s.max(dim=-1, keepdim=True).values.nan_to_num(neginf=0.0)
    e = torch.where(keep, torch.exp(s - m), torch.zeros_like(s))
    return e / e.sum(-1, keepdim=True).clamp(min=torch.finfo(e.dtype).tiny)


def ch02_softmax_logsumexp(scores, mask=None):
    s = scores if mask is None else scores.masked_fill(mask.logical_not(), float("-inf"))
    lse = torch.logsumexp(s, dim=-1, keepdim=True)  # -inf where nothing is kept
    w = torch.exp(s - lse)
    return torch.nan_to_num(w, nan=0.0)


def ch02_softmax_float64_numpy(scores, mask=None):
    s = scores.detach().double().numpy()
    keep = np.ones(s.shape, bool) if mask is None else np.broadcast_to(mask.numpy(), s.shape)
    s = np.where(keep, s, -np.inf)
    top = s.max(axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    e = np.exp(s - top)
    total = e.sum(axis=-1, keepdims=True)
    out = np.divide(e, total, out=np.zeros_like(e), where=total > 0)
    return torch.from_numpy(out).to(scores.dtype)


def ch02_softmax_multiply_mask(scores, mask=None):  # exp of the masked-out scores times 0
    keep = torch.ones_like(scores) if mask is None else mask.expand_as(scores).to(scores.dtype)
    m = torch.where(keep > 0, scores, torch.full_like(scores, -1e30)).amax(-1, keepdim=True)
    e = torch.exp((scores - m).clamp(max=0.0)) * keep
    total = e.sum(-1, keepdim=True)
    return e / (total + (total == 0))


# --- 2.1 masked_softmax: wrong -------------------------------------------------------------------

def ch02_softmax_no_max(scores, mask=None):
    e = scores.exp()
    if mask is not None:
        e = e * mask
    return e / e.sum(-1, keepdim=True)


def ch02_softmax_max_of_everything(scores, mask=None):
    s = scores if mask is None else scores.masked_fill(~mask, -math.inf)
    e = torch.exp(s - scores.max())
    return e / e.sum(-1, keepdim=True).clamp(min=1e-38)


def ch02_softmax_max_before_mask(scores, mask=None):
    e = torch.exp(scores - scores.amax(-1, keepdim=True))
    if mask is not None:
        e = e.masked_fill(~mask, 0)
    total = e.sum(-1, keepdim=True)
    return torch.where(total > 0, e / total, torch.zeros_like(e))


def ch02_softmax_nan_rows(scores, mask=None):
    s = scores if mask is None else scores.masked_fill(~mask, -math.inf)
    e = torch.exp(s - s.amax(-1, keepdim=True))
    return e / e.sum(-1, keepdim=True)


def ch02_softmax_minus_1e9(scores, mask=None):
    s = scores if mask is None else scores.masked_fill(~mask, -1e9)
    e = torch.exp(s - s.amax(-1, keepdim=True))
    return e / e.sum(-1, keepdim=True)


def ch02_softmax_mask_inverted(scores, mask=None):
    s = scores if mask is None else scores.masked_fill(mask, -math.inf)
    m = s.amax(-1, keepdim=True)
    e = torch.exp(s - torch.where(torch.isinf(m), torch.zeros_like(m), m))
    total = e.sum(-1, keepdim=True)
    return e / torch.where(total == 0, torch.ones_like(total), total)


def ch02_softmax_zeroed_after(scores, mask=None):
    e = torch.exp(scores - scores.amax(-1, keepdim=True))
    w = e / e.sum(-1, keepdim=True)
    return w if mask is None else w * mask


def ch02_softmax_calls_torch(scores, mask=None):  # right numbers, but not written out
    s = scores if mask is None else scores.masked_fill(~mask, -math.inf)
    return torch.softmax(s, dim=-1).nan_to_num(0.0)


def ch02_softmax_over_rows(scores, mask=None):
    s = scores if mask is None else scores.masked_fill(~mask, -math.inf)
    e = torch.exp(s - s.amax(-2, keepdim=True).nan_to_num(neginf=0.0))
    total = e.sum(-2, keepdim=True)
    return e / torch.where(total == 0, torch.ones_like(total), total)


# --- 2.2 attention: correct ----------------------------------------------------------------------

def _mask(n, m, batch_shape, causal, lengths, padding_side):
    keep = torch.ones(n, m, dtype=torch.bool)
    if causal:
        keep = torch.ones(n, m, dtype=torch.bool).tril(diagonal=m - n)
    if lengths is None:
        return keep.expand(*batch_shape, n, m)
    pos = torch.arange(m)
    rows = []
    for length in lengths.tolist():
        real = pos >= m - length if padding_side == "left" else pos < length
        rows.append(real)
    real = torch.stack(rows)  # (batch, m)
    real = real.reshape(real.shape[0], *[1] * (len(batch_shape) - 1), 1, m)
    return keep & real


def ch02_attention_logsumexp(q, k, v, causal=False, lengths=None, padding_side="right"):
    keep = _mask(q.shape[-2], k.shape[-2], q.shape[:-2], causal, lengths, padding_side)
    s = torch.einsum("...nd,...md->...nm", q, k) / math.sqrt(q.shape[-1])
    s = s.masked_fill(~keep, -math.inf)
    w = torch.exp(s - torch.logsumexp(s, -1, keepdim=True)).nan_to_num(0.0)
    return w @ v


def ch02_attention_float64_loops(q, k, v, causal=False, lengths=None, padding_side="right"):
    n, m = q.shape[-2], k.shape[-2]
    out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=torch.float64)
    q64, k64, v64 = q.double(), k.double(), v.double()
    for b in range(q.shape[0]):
        if lengths is None:
            real = set(range(m))
        else:
            length = int(lengths[b])
            real = set(range(m - length, m)) if padding_side == "left" else set(range(length))
        for i in range(n):
            keys = [j for j in range(m) if j in real and (not causal or j <= m - n + i)]
            if not keys:
                continue
            s = q64[b, ..., i:i + 1, :] @ k64[b, ..., keys, :].transpose(-2, -1) / math.sqrt(q.shape[-1])
            w = torch.exp(s - s.max(dim=-1, keepdim=True).values)  # (..., 1, keys)
            out[b, ..., i:i + 1, :] = (w / w.sum(-1, keepdim=True)) @ v64[b, ..., keys, :]
    return out.to(q.dtype)


def ch02_attention_additive_bias(q, k, v, causal=False, lengths=None, padding_side="right"):
    n, m = q.shape[-2], k.shape[-2]
    bias = torch.zeros(n, m, dtype=q.dtype)
    if causal:
        bias = bias.masked_fill(torch.ones(n, m, dtype=torch.bool).triu(m - n + 1), -math.inf)
    if lengths is not None:
        j = torch.arange(m)
        pad = (j[None] < m - lengths[:, None]) if padding_side == "left" else (j[None] >= lengths[:, None])
        bias = bias + torch.zeros(pad.shape, dtype=q.dtype).masked_fill(pad, -math.inf).view(
            pad.shape[0], *[1] * (q.dim() - 2), m)
    s = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5 + bias
    top = s.amax(-1, keepdim=True)
    e = torch.exp(s - torch.where(torch.isfinite(top), top, torch.zeros_like(top)))
    total = e.sum(-1, keepdim=True)
    return (e / total.clamp(min=1e-38)) @ v


def ch02_attention_flipped_left_padding(q, k, v, causal=False, lengths=None, padding_side="right"):
    # left padding as right padding, reversed
    n, m = q.shape[-2], k.shape[-2]
    keep = None
    if causal:
        keep = torch.arange(m)[None, :] - torch.arange(n)[:, None] <= m - n
    if lengths is not None:
        real = torch.arange(m)[None, :] < lengths[:, None]
        if padding_side == "left":
            real = real.flip(-1)
        for _ in range(q.dim() - 2):
            real = real.unsqueeze(1)
        keep = real if keep is None else keep & real
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if keep is not None:
        s = s.masked_fill(~keep, -math.inf)
    m_ = s.amax(-1, keepdim=True).clamp(min=-1e30)
    e = torch.exp(s - m_)
    return (e / e.sum(-1, keepdim=True).clamp(min=1e-38)) @ v


# --- 2.2 attention: wrong ------------------------------------------------------------------------

def _softmax_rows(s):
    top = s.amax(-1, keepdim=True)
    e = torch.exp(s - torch.where(torch.isfinite(top), top, torch.zeros_like(top)))
    total = e.sum(-1, keepdim=True)
    return e / torch.where(total == 0, torch.ones_like(total), total)


def _attend(q, k, v, keep):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return _softmax_rows(s if keep is None else s.masked_fill(~keep, -math.inf)) @ v


def _padding(lengths, m, dims, side):
    j = torch.arange(m)[None, :]
    real = j >= m - lengths[:, None] if side == "left" else j < lengths[:, None]
    return real.view(len(lengths), *[1] * (dims - 2), m)


def ch02_attention_tril_square_corner(q, k, v, causal=False, lengths=None, padding_side="right"):
    n, m = q.shape[-2], k.shape[-2]
    keep = torch.ones(n, m, dtype=torch.bool).tril() if causal else None
    if lengths is not None:
        pad = _padding(lengths, m, q.dim(), padding_side)
        keep = pad if keep is None else keep & pad
    return _attend(q, k, v, keep)


def ch02_attention_ignores_padding_side(q, k, v, causal=False, lengths=None, padding_side="right"):
    n, m = q.shape[-2], k.shape[-2]
    keep = torch.ones(n, m, dtype=torch.bool).tril(m - n) if causal else None
    if lengths is not None:
        pad = _padding(lengths, m, q.dim(), "right")
        keep = pad if keep is None else keep & pad
    return _attend(q, k, v, keep)


def ch02_attention_strict_causal(q, k, v, causal=False, lengths=None, padding_side="right"):
    n, m = q.shape[-2], k.shape[-2]
    keep = torch.ones(n, m, dtype=torch.bool).tril(m - n - 1) if causal else None
    if lengths is not None:
        pad = _padding(lengths, m, q.dim(), padding_side)
        keep = pad if keep is None else keep & pad
    return _attend(q, k, v, keep)


def ch02_attention_padding_le(q, k, v, causal=False, lengths=None, padding_side="right"):
    n, m = q.shape[-2], k.shape[-2]
    keep = torch.ones(n, m, dtype=torch.bool).tril(m - n) if causal else None
    if lengths is not None:
        pad = _padding(lengths + 1, m, q.dim(), padding_side)
        keep = pad if keep is None else keep & pad
    return _attend(q, k, v, keep)


def ch02_attention_nan_rows(q, k, v, causal=False, lengths=None, padding_side="right"):
    n, m = q.shape[-2], k.shape[-2]
    keep = torch.ones(n, m, dtype=torch.bool).tril(m - n) if causal else None
    if lengths is not None:
        pad = _padding(lengths, m, q.dim(), padding_side)
        keep = pad if keep is None else keep & pad
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if keep is not None:
        s = s.masked_fill(~keep, -math.inf)
    e = torch.exp(s - s.amax(-1, keepdim=True))
    return (e / e.sum(-1, keepdim=True)) @ v


def ch02_attention_or_masks(q, k, v, causal=False, lengths=None, padding_side="right"):
    n, m = q.shape[-2], k.shape[-2]
    keep = torch.ones(n, m, dtype=torch.bool).tril(m - n) if causal else None
    if lengths is not None:
        pad = _padding(lengths, m, q.dim(), padding_side)
        keep = pad if keep is None else keep | pad
    return _attend(q, k, v, keep)


def ch02_attention_uses_torch_sdpa(q, k, v, causal=False, lengths=None, padding_side="right"):
    n, m = q.shape[-2], k.shape[-2]
    keep = torch.ones(n, m, dtype=torch.bool).tril(m - n) if causal else None
    if lengths is not None:
        pad = _padding(lengths, m, q.dim(), padding_side)
        keep = pad if keep is None else keep & pad
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep)


# --- 2.3 and 2.4 experiments ---------------------------------------------------------------------

def _fraction(n_queries=10_000, n_keys=16, scaled=False, dtype=torch.float32, seed=7, what="fraction"):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n_queries, 64, generator=g, dtype=dtype)
    k = torch.randn(n_queries, n_keys, 64, generator=g, dtype=dtype)
    s = torch.einsum("nd,nkd->nk", q, k) / (8.0 if scaled else 1.0)
    w = torch.softmax(s, dim=-1)
    if what == "mean":
        return w.max(-1).values.mean().item()
    return (w.max(-1).values > 0.9).double().mean().item()


def ch02_fraction_float32():
    return _fraction()


def ch02_fraction_float64_more_queries():
    return _fraction(n_queries=40_000, dtype=torch.float64, seed=3)


def ch02_fraction_numpy():
    rng = np.random.default_rng(11)
    q = rng.standard_normal((12_000, 1, 64))
    k = rng.standard_normal((12_000, 16, 64))
    s = (q @ k.transpose(0, 2, 1))[:, 0, :]
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return float((w.max(-1) > 0.9).mean())


def ch02_overflow_loop_float16():
    for s in range(100):
        x = torch.tensor([s, 0], dtype=torch.float16)
        if torch.isnan(x.exp() / x.exp().sum()).any():
            return s


def ch02_overflow_from_finfo():  # the first whole s past ln(65504): right, and checked by its type
    return math.floor(math.log(torch.finfo(torch.float16).max)) + 1


def ch02_overflow_tensor_answer():  # a one-entry tensor is read as its number
    s = torch.arange(1, 40, dtype=torch.float16)
    x = torch.stack([s, torch.zeros_like(s)], dim=-1)
    e = x.exp()
    broken = torch.isnan(e / e.sum(-1, keepdim=True)).any(-1)
    return s[broken][0].int()


CORRECT = {
    "2.1": [ch02_softmax_where_and_clamp, ch02_softmax_logsumexp, ch02_softmax_float64_numpy,
            ch02_softmax_multiply_mask],
    "2.2": [ch02_attention_logsumexp, ch02_attention_float64_loops, ch02_attention_additive_bias,
            ch02_attention_flipped_left_padding],
    "2.3": [ch02_fraction_float32, ch02_fraction_float64_more_queries, ch02_fraction_numpy],
    "2.4": [ch02_overflow_loop_float16, ch02_overflow_from_finfo, ch02_overflow_tensor_answer],
}

WRONG = {
    "2.1": [
        (ch02_softmax_no_max, "exp overflows"),
        (ch02_softmax_max_of_everything, "one maximum for the whole tensor"),
        (ch02_softmax_max_before_mask, "maximum is taken before masking"),
        (ch02_softmax_nan_rows, "gets NaN"),
        (ch02_softmax_minus_1e9, "a finite fill"),
        (ch02_softmax_mask_inverted, "the mask is inverted"),
        (ch02_softmax_zeroed_after, "zeroed after a softmax"),
        (ch02_softmax_calls_torch, "write the softmax with torch.exp"),
        (ch02_softmax_over_rows, "wrong axis"),
    ],
    "2.2": [
        (ch02_attention_tril_square_corner, "aligned to the first key"),
        (ch02_attention_ignores_padding_side, "padding_side is ignored"),
        (ch02_attention_strict_causal, "excludes the diagonal"),
        (ch02_attention_padding_le, "off by one"),
        (ch02_attention_nan_rows, "gets NaN"),
        (ch02_attention_or_masks, "combined with 'or'"),
        (ch02_attention_uses_torch_sdpa, "masked_softmax from exercise 2.1"),
    ],
    "2.3": [
        (lambda: _fraction(scaled=True), "the scaled softmax"),
        (lambda: _fraction(what="mean"), "mean largest weight"),
        (lambda: _fraction(n_keys=8), "8 keys"),
        (lambda: 100 * _fraction(), None),
        (lambda: _fraction(n_keys=32), None),
        (lambda: round(_fraction(), 1), None),
    ],
    "2.4": [
        (lambda: 89, "float32's limit"),
        (lambda: 11, "last score that still works"),
        (lambda: 65504, "largest number"),
        (lambda: 12.5, None),
        (lambda: "12", None),
        (lambda: math.log(65504), None),
    ],
}
