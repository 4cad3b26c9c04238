"""Chapter 9 exercises: group-wise zero-point quantization at any bit width, the speculative
verification step with its randomness made explicit (and its output distribution checked exactly),
a KV cache stored as 8-bit zero-point codes, and how often a quantized copy of the reversal model
is rejected as its own draft, measured.

Quantizing rounds to whole codes, and a value whose code is a near tie could round differently in
float32 and float64 (or on another machine). So every quantized input here is built from its codes:
each group's minimum and maximum sit on the ends of the code range, and every other value lies at
least 0.15 of a step from a rounding boundary (``_tie_free``). The speculative cases are built the
same way: each uniform lies at least 5% of its interval away from the acceptance threshold or a
bucket edge of the distribution it samples from.
"""

from __future__ import annotations

import copy
import functools
import math
import operator

import torch
from torch import nn

from ...model import load_reversal_model
from ...tasks import Reversal
from ..sandbox import signature_problem
from ..spec import BUILD, EXPERIMENT, WARM_UP, Case, Exercise, Mistake, WrongKind
from .ch07 import _drawn, _gen

SECTION_CACHE = "chapter 7, section “The cache”"
SECTION_ZERO = "chapter 9, section “Zero-point quantization”"
SECTION_GROUPS = "chapter 9, section “Group-wise int4”"
SECTION_PER = "chapter 9, section “Absmax int8, per tensor and per channel”"
SECTION_KV = "chapter 9, section “Quantizing the KV cache”"
SECTION_RULE = "chapter 9, section “The accept/reject rule”"
SECTION_ALPHA = "chapter 9, section “Acceptance rate and speed-up against k”"


def _tie_free(g: torch.Generator, n: int, levels: int, z0: float) -> torch.Tensor:
    """n values of w / scale for one group (float64): the minimum −z0 and maximum levels − z0 both
    present, every other value at least 0.15 from a half-integer, and −z0 itself 0.15 from one."""
    lo, hi = -z0, levels - z0
    whole = torch.randint(math.ceil(lo), math.floor(hi) + 1, (n,), generator=g).double()
    t = (whole + (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * 0.7).clamp(lo, hi)
    picks = torch.randperm(n, generator=g)[:2]
    t[picks[0]], t[picks[1]] = lo, hi
    return t


def _zero_point(g: torch.Generator, levels: int, skewed: bool = False) -> float:
    """A fractional zero point z0 in (0, levels), at least 0.15 away from a half-integer."""
    while True:
        top = min(levels, 1.0) if skewed else levels
        z0 = 0.15 + float(torch.rand((), generator=g, dtype=torch.float64)) * (top - 0.3)
        if abs(z0 - math.floor(z0) - 0.5) >= 0.15:
            return z0


# --- 9.1 fake_quantize_groupwise -----------------------------------------------------------------

def _fake_quantize(w, bits, group_size, *, levels=None, symmetric=False, round_zero=True,
                   axis="cols", rounding=torch.round, per_tensor=False, guard=True, top=None):
    """Group-wise zero-point quantize-dequantize. The keywords are the named mistakes."""
    if axis == "rows":
        return _fake_quantize(w.T, bits, group_size, levels=levels, symmetric=symmetric,
                              round_zero=round_zero, rounding=rounding, guard=guard).T
    rows, cols = w.shape
    L = 2 ** bits - 1 if levels is None else levels(bits)
    g = w.reshape(rows, cols // group_size, group_size)             # (rows, groups, group_size)
    if per_tensor:
        g = w.reshape(1, 1, -1)
    if symmetric:                                                    # absmax: codes −L..L
        L = 2 ** (bits - 1) - 1
        scale = g.abs().amax(dim=-1, keepdim=True) / L
        return (rounding(g / scale).clamp(-L, L) * scale).reshape(rows, cols)
    lo, hi = g.amin(dim=-1, keepdim=True), g.amax(dim=-1, keepdim=True)
    scale = (hi - lo) / L                                            # (rows, groups, 1)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale)) if guard else scale
    zero = -lo / safe
    if round_zero:
        zero = torch.round(zero)
    codes = (rounding(g / safe) + zero).clamp(0, L if top is None else top(bits))
    out = (codes - zero) * safe
    if guard:
        out = torch.where(scale > 0, out, g)                         # a constant group: itself
    return out.reshape(rows, cols)


def fake_quantize_groupwise(w, bits, group_size):
    """w: (rows, cols), quantized in groups of ``group_size`` consecutive entries of a row to codes
    0 .. 2^bits − 1 with scale (max − min) / (2^bits − 1) and zero point round(−min / scale), and
    dequantized: (rows, cols). A constant group comes back as it is."""
    return _fake_quantize(w, bits, group_size)


def _wrong_91(**kw):
    return lambda w, bits, group_size: _fake_quantize(w, bits, group_size, **kw)


def _groups_input(seed, rows, cols, bits, group_size, skewed=False, constant=()):
    g = _gen(seed)
    levels = 2 ** bits - 1
    out = torch.empty(rows, cols // group_size, group_size, dtype=torch.float64)
    for r in range(rows):
        for j in range(cols // group_size):
            spread = 0.2 + 3.0 * float(torch.rand((), generator=g, dtype=torch.float64))
            z0 = _zero_point(g, levels, skewed)
            out[r, j] = _tie_free(g, group_size, levels, z0) * spread / levels
    for r, j, value in constant:
        out[r, j] = value
    return out.reshape(rows, cols).float(), bits, group_size


_B91, _G91 = _drawn(91, 2, 9), (4, 8, 16)[_drawn(92, 0, 3)]

GROUPWISE_HINTS = (
    "Zero-point (affine) quantization maps a group's whole range, min to max, onto the codes "
    "0 .. 2^bits − 1, so no code is wasted on values the group does not have; the zero point is the "
    "code that stands for 0. Each group of group_size consecutive entries in a row gets its own "
    "scale and zero point. A group whose entries are all equal has a range of 0.",
    "L = 2^bits − 1 steps; scale = (max − min) / L; zero = round(−min / scale); "
    "code = clamp(round(w / scale) + zero, 0, L); dequantized = (code − zero) · scale. "
    "Where max = min, return the group as it is instead of dividing by 0.",
    "reshape w to (rows, cols // group_size, group_size); amin and amax over the last axis with "
    "keepdim=True give (rows, groups, 1); compute the codes, dequantize, and reshape back to "
    "(rows, cols). torch.where picks the constant groups.",
)

STEPS = "2^bits − 1 steps between min and max, not 2^bits"

GROUPWISE = Exercise(
    id="9.1",
    title="Group-wise zero-point quantization at any bit width",
    function_name="fake_quantize_groupwise",
    arg_names=("w", "bits", "group_size"),
    signature="fake_quantize_groupwise(w: (rows, cols), bits: int, group_size: int) -> (rows, cols)",
    reference=fake_quantize_groupwise,
    cases=(
        Case("4 bits, groups of 8, a 4 × 16 matrix", lambda: _groups_input(0, 4, 16, 4, 8), 2, "fixed"),
        Case("8 bits, groups of 32, a 32 × 64 matrix", lambda: _groups_input(1, 32, 64, 8, 32), 2, "fixed"),
        Case("3 bits, groups of 4, ranges mostly above 0 (as after a GELU)",
             lambda: _groups_input(2, 8, 8, 3, 4, skewed=True), 1, "fixed"),
        Case(f"random: {_B91} bits, groups of {_G91}, a 16 × 48 matrix",
             lambda: _groups_input(3, 16, 48, _B91, _G91), 2, "random"),
        Case("edge: 1 bit (two codes per group)", lambda: _groups_input(4, 4, 8, 1, 4), 1, "edge"),
        Case("edge: constant groups (max = min) come back as they are",
             lambda: _groups_input(5, 4, 16, 4, 4, constant=((0, 1, 0.75), (2, 3, 0.0), (3, 0, -2.5))),
             1, "edge"),
    ),
    mistakes=(
        Mistake(STEPS, _wrong_91(levels=lambda b: 2 ** b), hint=2),
        Mistake(STEPS, _wrong_91(levels=lambda b: 2 ** b, top=lambda b: 2 ** b - 1), hint=2),
        Mistake("that is absmax (symmetric): use min, max, a zero point",
                _wrong_91(symmetric=True), hint=1, section=SECTION_ZERO),
        Mistake("the zero point is a whole code: round(−min / scale)", _wrong_91(round_zero=False), hint=2),
        Mistake("groups run along a row (the last axis), not a column", _wrong_91(axis="rows"), hint=3),
        Mistake("floor is not round: round w / scale to the nearest",
                _wrong_91(rounding=torch.floor), hint=2),
        Mistake("one scale for the whole tensor: one per group", _wrong_91(per_tensor=True), hint=1, section=SECTION_GROUPS),
        Mistake("a constant group divides by 0: return it as it is", _wrong_91(guard=False), hint=2),
    ),
    error_hints=(("shape '[", "reshape to (rows, cols // group_size, group_size)"),),
    level=WARM_UP,
    hints=GROUPWISE_HINTS,
    nan_hint="NaN where a group is constant: max − min = 0, so return the group itself",
)


# --- 9.2 speculative_verify ----------------------------------------------------------------------

def _first_above(dist: torch.Tensor, u: float) -> int:
    """Inverse-CDF sampling: the first v with cumsum(dist)[v] > u (the last one if none is)."""
    above = (dist.cumsum(dim=0) > u).nonzero()
    return int(above[0, 0]) if len(above) else dist.shape[0] - 1


def _verify(target_probs, draft_probs, draft_tokens, accept_uniforms, resample_uniform, *, ratio="p/q",
            clamp=True, renormalise=True, bonus=True, stop=True, resample="residual", offset=0,
            accept_below=True, bonus_row=0):
    """The speculative verification step. The keywords are the named mistakes."""
    k = draft_tokens.shape[0]
    out = []
    for i in range(k):
        x = int(draft_tokens[i])
        p, q = target_probs[i + offset], draft_probs[i]
        a = min(1.0, float(p[x] / q[x])) if ratio == "p/q" else min(1.0, float(q[x] / p[x]))
        u = float(accept_uniforms[i])
        if (u < a) if accept_below else (u >= a):
            out.append(x)
            continue
        residual = p - q if resample == "residual" else p.clone()
        if clamp:
            residual = residual.clamp(min=0)
        if renormalise:
            residual = residual / residual.sum()
        out.append(_first_above(residual, resample_uniform))
        if stop:
            return out
    if len(out) == k and bonus:
        out.append(_first_above(target_probs[k - bonus_row], resample_uniform))
    return out


def speculative_verify(target_probs, draft_probs, draft_tokens, accept_uniforms, resample_uniform):
    """One verification of k draft tokens: the accepted ones, then one more token.

    target_probs: (k + 1, V), p_i for each draft position and one after; draft_probs: (k, V);
    draft_tokens: (k,) long; accept_uniforms: (k,) in [0, 1); resample_uniform: a float in [0, 1).
    Token i is accepted iff u_i < min(1, p_i(x_i) / q_i(x_i)); at the first rejection the next token
    is drawn from normalize(max(0, p_i − q_i)), and if all k are accepted it is drawn from p_k,
    both by inverse CDF: the first v with cumsum[v] > resample_uniform. Returns a list of ints.
    """
    return _verify(target_probs, draft_probs, draft_tokens, accept_uniforms, resample_uniform)


def _as_tokens(out) -> torch.Tensor:
    """The learner's list of token ids as a long tensor, or a TypeError that says what is wrong."""
    if isinstance(out, torch.Tensor):
        if out.is_floating_point() or out.dim() != 1:
            raise TypeError(f"return a list of ints, not {compare_describe(out)}")
        return out.detach().cpu().long()
    if not isinstance(out, (list, tuple)):
        raise TypeError(f"return a list of ints (token ids), not {compare_describe(out)}")
    try:
        return torch.tensor([operator.index(t) for t in out], dtype=torch.long)
    except TypeError:
        raise TypeError("return token ids as ints: int(token), not floats or tensors of floats") from None


def compare_describe(value) -> str:
    from ..compare import describe
    return describe(value)


GRID_ACCEPT, GRID_RESAMPLE = 10, 20  # midpoints of the uniforms' intervals: see _distribution


def _distribution(fn, target_probs, draft_probs):
    """P(output sequence) for k = 1, computed exactly over the draft's tokens and the uniforms.

    The draft token x is weighted by q(x); each uniform runs over the midpoints of a grid (10 for
    the acceptance, 20 for the resampling). The case's p and q are multiples of 1/20 whose ratios
    and residuals put every threshold and bucket edge of the right answer on the grid lines, so the
    grid gives the exact probabilities. Returns (V, V + 1): [x0, x1] for two tokens, [x0, V] for one.
    """
    V = target_probs.shape[1]
    table = torch.zeros(V, V + 1, dtype=torch.float64)
    for x in range(V):
        weight = float(draft_probs[0, x]) / (GRID_ACCEPT * GRID_RESAMPLE)
        if weight == 0:
            continue
        for i in range(GRID_ACCEPT):
            for j in range(GRID_RESAMPLE):
                tokens = _as_tokens(fn(target_probs.clone(), draft_probs.clone(), torch.tensor([x]),
                                       torch.tensor([(i + 0.5) / GRID_ACCEPT], dtype=target_probs.dtype),
                                       (j + 0.5) / GRID_RESAMPLE))
                if not 1 <= len(tokens) <= 2 or not all(0 <= int(t) < V for t in tokens):
                    raise ValueError(f"with k = 1 the answer has 1 or 2 tokens in 0 .. {V - 1}, "
                                     f"got {tokens.tolist()}")
                table[int(tokens[0]), int(tokens[1]) if len(tokens) == 2 else V] += weight
    return table.to(target_probs.dtype)


def _run_92(fn):
    def run(mode, target_probs, draft_probs, draft_tokens, accept_uniforms, resample_uniform):
        if mode == "distribution":
            return _distribution(fn, target_probs, draft_probs)
        return _as_tokens(fn(target_probs, draft_probs, draft_tokens, accept_uniforms, resample_uniform))
    return run


def _adapt_92(obj):
    if not callable(obj) or isinstance(obj, type):
        raise WrongKind(f"hand in the function speculative_verify, not {compare_describe(obj)}")
    wrong = signature_problem(obj, VERIFY_ARGS)
    if wrong:
        raise WrongKind(f"{wrong}; it should be {VERIFY.signature}")
    return _run_92(obj)


def _mistake_92(**kw):
    return _run_92(lambda *args: _verify(*args, **kw))


def _verify_inputs(seed, k, V, reject_at=None, zero_at=None):
    """A verification whose outcome is decided by wide margins: draft tokens from q, token
    ``reject_at`` rejected (None: all accepted), its uniform and the resampling uniform each at least
    5% of their interval away from a threshold or a bucket edge. ``zero_at``: the target gives the
    draft's token at that position probability 0."""
    g = _gen(seed)
    p = torch.softmax(1.5 * torch.randn(k + 1, V, generator=g, dtype=torch.float64), dim=-1).float()
    q = torch.softmax(1.5 * torch.randn(k, V, generator=g, dtype=torch.float64), dim=-1).float()
    tokens, uniforms = torch.zeros(k, dtype=torch.long), torch.zeros(k)
    for i in range(k):
        if i == zero_at:
            x = int(q[i].argmax())
            p[i, x] = 0.0
            p[i] /= p[i].sum()
        elif i == reject_at:  # the token the target likes least compared with the draft
            x = int((p[i].double() / q[i].double()).argmin())
        else:
            x = int(torch.multinomial(q[i].double(), 1, generator=g))
        tokens[i] = x
        if i == zero_at:
            reject_at = i if reject_at is None else min(reject_at, i)
        a = min(1.0, float(p[i, x].double() / q[i, x].double()))
        share = 0.05 + 0.9 * float(torch.rand((), generator=g))
        uniforms[i] = a + (1 - a) * share if i == reject_at else a * share   # after it: only mistakes look
    if reject_at is not None and reject_at < k:
        last = (p[reject_at].double() - q[reject_at].double()).clamp(min=0)
        last = last / last.sum()
    else:
        last = p[k].double()
    v = int(torch.multinomial(torch.where(last > 0.05, last, torch.zeros_like(last)), 1, generator=g))
    share = 0.05 + 0.9 * float(torch.rand((), generator=g))
    resample = float(last[:v].sum() + share * last[v])
    return "tokens", p, q, tokens, uniforms, resample


def _distribution_inputs():
    """k = 1, V = 4: p_0 = [0.2, 0.2, 0.1, 0.5], q = [0.5, 0.1, 0.2, 0.2], so min(1, p/q) =
    [0.4, 1, 0.5, 1] and the residual is [0, 0.25, 0, 0.75]; p_1 = [0.1, 0.2, 0.3, 0.4]."""
    p = torch.tensor([[0.2, 0.2, 0.1, 0.5], [0.1, 0.2, 0.3, 0.4]])
    q = torch.tensor([[0.5, 0.1, 0.2, 0.2]])
    return "distribution", p, q, torch.zeros(1, dtype=torch.long), torch.zeros(1), 0.0


_K92 = _drawn(93, 3, 7)
_R92 = _drawn(94, 1, _K92)

VERIFY_ARGS = ("target_probs", "draft_probs", "draft_tokens", "accept_uniforms", "resample_uniform")

VERIFY_HINTS = (
    "Walk through the draft tokens in order. Token i is kept with probability min(1, p_i(x_i) / "
    "q_i(x_i)): always when the target likes it at least as much as the draft did. At the first "
    "token that is not kept, stop: the last token comes from the part of p_i that q_i left out. If "
    "every draft token is kept, the target's row after them gives one token for free (the bonus).",
    "Accept x_i iff u_i < min(1, p_i[x_i] / q_i[x_i]). Residual r = max(0, p_i − q_i) / Σ max(0, p_i − q_i). "
    "Bonus distribution: target_probs[k]. Inverse CDF with u = resample_uniform: the first v with "
    "cumsum(dist)[v] > u. With k = 0 there is nothing to verify: one token from target_probs[0].",
    "A for loop over i in range(k) appending int(draft_tokens[i]) while accepted; at a rejection "
    "append the sampled residual token and return; after the loop append the bonus and return. "
    "(dist.cumsum(0) > u).nonzero() gives the candidates; take the first.",
)

VERIFY = Exercise(
    id="9.2",
    title="The speculative verification step, randomness made explicit",
    function_name="speculative_verify",
    arg_names=("mode",) + VERIFY_ARGS,
    signature="speculative_verify(target_probs: (k + 1, V), draft_probs: (k, V), draft_tokens: (k,) long, "
              "accept_uniforms: (k,), resample_uniform: float) -> list[int]",
    reference=_run_92(speculative_verify),
    cases=(
        Case("k = 4, all four accepted: then the bonus token", lambda: _verify_inputs(0, 4, 8), 2, "fixed"),
        Case("k = 4, the first draft token rejected", lambda: _verify_inputs(1, 4, 8, reject_at=0), 2,
             "fixed"),
        Case("k = 3, the third rejected", lambda: _verify_inputs(2, 3, 6, reject_at=2), 2, "fixed"),
        Case(f"random: k = {_K92}, draft token {_R92} rejected, 16 tokens",
             lambda: _verify_inputs(3, _K92, 16, reject_at=_R92), 2, "random"),
        Case("edge: k = 0 (nothing to verify: one token from p_0)", lambda: _verify_inputs(4, 0, 5), 1, "edge"),
        Case("edge: a draft token the target gives probability 0",
             lambda: _verify_inputs(5, 3, 6, zero_at=1), 1, "edge"),
        Case("the output's distribution for k = 1, every draft token and uniform", _distribution_inputs, 2,
             "fixed"),
    ),
    mistakes=(
        Mistake("ratio inverted: accept when u < min(1, p/q), not q/p", _mistake_92(ratio="q/p"), hint=2, section=SECTION_RULE),
        Mistake("accepted when u ≥ ratio: accept when u < min(1, p/q)", _mistake_92(accept_below=False),
                hint=2),
        Mistake("residual not clamped: normalize(max(0, p − q))", _mistake_92(clamp=False), hint=2, section=SECTION_RULE),
        Mistake("residual not renormalised: divide by Σ max(0, p − q)", _mistake_92(renormalise=False),
                hint=2, section=SECTION_RULE),
        Mistake("resampled from p: use the residual max(0, p − q)", _mistake_92(resample="p"), hint=1, section=SECTION_RULE),
        Mistake("no bonus token: all k accepted, add one from p_k", _mistake_92(bonus=False), hint=1),
        Mistake("the bonus comes from target_probs[k], the last row", _mistake_92(bonus_row=1), hint=2),
        Mistake("no stop at a rejection: its token is the last one", _mistake_92(stop=False), hint=1),
        Mistake("off by one: draft token i is scored by target_probs[i]", _mistake_92(offset=1), hint=2),
    ),
    error_hints=(
        ("index 0 is out of bounds", "k = 0: the bonus token alone, from target_probs[0]"),
        ("1 or 2 tokens", "return the accepted tokens and exactly one more"),
    ),
    level=BUILD,
    hints=VERIFY_HINTS,
    adapt=_adapt_92,
    time_limit=10.0,
)


# --- 9.3 ZeroPointKVCache ------------------------------------------------------------------------

class ZeroPointKVCache:
    """A KV cache that stores each (batch, head, token) row of keys and values as 8-bit zero-point
    codes: scale = (max − min) / 255, code = round((x − min) / scale) in 0 .. 255 (torch.uint8), the
    scale and the offset min kept per row in the input's float dtype. ``update`` returns the layer's
    whole cache dequantized, code · scale + min. The keywords are the named mistakes."""

    def __init__(self, n_layers, *, store="codes", scales="row", code_dtype=torch.uint8, offset=True,
                 steps=255, returned="all", symmetric=False, guard=True, scale_dtype=None, count="layer 0"):
        self.store, self.scales, self.code_dtype, self.offset = store, scales, code_dtype, offset
        self.steps, self.returned, self.symmetric, self.guard = steps, returned, symmetric, guard
        self.scale_dtype, self.count = scale_dtype, count
        self.codes = {name: [None] * n_layers for name in ("k", "v")}    # (batch, heads, seq, head_dim)
        self.scale = {name: [None] * n_layers for name in ("k", "v")}    # (batch, heads, seq, 1)
        self.low = {name: [None] * n_layers for name in ("k", "v")}      # (batch, heads, seq, 1)

    def _quantize(self, x):
        dims = (-1,) if self.scales == "row" else (0, 1, 2, 3)
        if self.symmetric:
            scale = x.abs().amax(dim=dims, keepdim=True).expand(*x.shape[:-1], 1) / 127
            return torch.round(x / scale).clamp(-127, 127).to(torch.int8), scale, None
        low = x.amin(dim=dims, keepdim=True).expand(*x.shape[:-1], 1)
        scale = (x.amax(dim=dims, keepdim=True).expand(*x.shape[:-1], 1) - low) / self.steps
        if self.scale_dtype is not None:
            scale, low = scale.to(self.scale_dtype).to(x.dtype), low.to(self.scale_dtype).to(x.dtype)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale)) if self.guard else scale
        codes = torch.round((x - low) / safe).clamp(0, 255).to(self.code_dtype)
        return codes, scale, low.contiguous()

    def _dequantize(self, codes, scale, low):
        out = codes.to(scale.dtype) * scale
        return out + low if (low is not None and self.offset) else out

    def update(self, layer, k, v):
        out = []
        for name, x in (("k", k), ("v", v)):
            parts = (x, None, None) if self.store == "float" else self._quantize(x)
            for store, part in zip((self.codes, self.scale, self.low), parts):
                if part is not None:  # along seq: (batch, heads, seq + new, ...)
                    old = store[name][layer]
                    store[name][layer] = part if old is None else torch.cat([old, part], dim=2)
            held = [store[name][layer] for store in (self.codes, self.scale, self.low)]
            if self.returned == "new":
                held = [None if t is None else t[:, :, -x.shape[2]:] for t in held]
            out.append(held[0] if self.store == "float" else self._dequantize(*held))
        return out[0], out[1]

    @property
    def seq_len(self):
        if self.count == "every layer":
            return sum(t.shape[2] for t in self.codes["k"] if t is not None)
        keys = self.codes["k"][0]
        return 0 if keys is None else keys.shape[2]

    @property
    def nbytes(self):
        tensors = [t for store in (self.codes, self.scale, self.low) for name in ("k", "v")
                   for t in store[name] if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)


class CourseZeroPointKVCache(ZeroPointKVCache):
    """The course's answer to 9.3: ``ZeroPointKVCache(n_layers)`` as the learner writes it."""

    def __init__(self, n_layers):
        super().__init__(n_layers)


def _rows_input(g, batch, heads, seq, head_dim, constant=False):
    """(batch, heads, seq, head_dim) float32 built from tie-free codes: each row's min and max at
    codes 0 and 255 exactly (see the module docstring)."""
    out = torch.empty(batch * heads * seq, head_dim, dtype=torch.float64)
    for r in range(out.shape[0]):
        low = float(torch.randn((), generator=g, dtype=torch.float64)) - 0.5
        spread = 0.5 + 3.0 * float(torch.rand((), generator=g, dtype=torch.float64))
        out[r] = low + (_tie_free(g, head_dim, 255, 0.0) * spread / 255)
    if constant:
        out[0], out[1] = 0.0, 0.625
    return out.reshape(batch, heads, seq, head_dim).float()


def _updates_input(seed, n_layers, chunks, batch=1, heads=2, head_dim=8, what="values", constant=False):
    g = _gen(seed)
    updates = []
    for size in chunks:
        for layer in range(n_layers):
            k = _rows_input(g, batch, heads, size, head_dim, constant=constant)
            v = _rows_input(g, batch, heads, size, head_dim, constant=constant)
            updates.append((layer, k, v))
    return n_layers, updates, what


def _digits_input(n=200):
    return 2, Reversal().prompt(Reversal().held_out()[:n]), "digits"


class CacheContractBroken(TypeError):
    """The learner's cache does not keep KVCache's interface."""


def _drive_93(make, n_layers, updates, what):
    """Feed the updates to a fresh cache (or generate with it); the answer the case asks for."""
    cache = make(n_layers)
    if what == "digits":
        return _greedy_digits(cache, updates)
    returned = []
    for layer, k, v in updates:
        out = cache.update(layer, k, v)
        if not (isinstance(out, tuple) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)):
            raise CacheContractBroken("update must return (keys, values), two tensors, as KVCache's does")
        returned += [out[0].reshape(-1), out[1].reshape(-1)]
    if what == "values":
        if len({t.dtype for t in returned}) > 1:
            raise CacheContractBroken("update returned tensors of different dtypes: return float32 both times")
        return torch.cat(returned)
    value = getattr(cache, what)
    if callable(value):
        raise CacheContractBroken(f"{what} is a method: make it a @property, as in KVCache")
    return value


def _greedy_digits(cache, prompts):
    model = load_reversal_model()
    with torch.no_grad():
        logits = model(prompts, start=0, cache=cache)[0]
        digits = [logits[:, -1].argmax(dim=-1)]
        for _ in range(Reversal().n_digits - 1):
            logits = model(digits[-1][:, None], start=cache.seq_len, cache=cache)[0]
            digits.append(logits[:, -1].argmax(dim=-1))
    return torch.stack(digits, dim=1)                               # (batch, n_digits)


def _adapt_93(obj):
    if not isinstance(obj, type):
        raise WrongKind(f"hand in the class ZeroPointKVCache itself, not {compare_describe(obj)}")
    if not callable(getattr(obj, "update", None)):
        raise WrongKind(f"{obj.__name__} has no method update(layer, k, v)")
    return lambda n_layers, updates, what: _drive_93(obj, n_layers, updates, what)


def _mistake_93(**kw):
    return lambda n_layers, updates, what: _drive_93(lambda n: ZeroPointKVCache(n, **kw), n_layers, updates,
                                                     what)


_C93 = tuple(int(c) for c in torch.randint(1, 5, (3,), generator=_gen(95)))

CACHE_HINTS = (
    "Each update brings new keys and values, (batch, heads, new, head_dim). Quantize every "
    "(batch, head, token) row of head_dim numbers on its own, with its own scale and offset, and keep "
    "only the codes, scales and offsets. What update returns is the whole layer, old tokens and new, "
    "dequantized, so that attention sees every cached token.",
    "Per row: low = min, scale = (max − min) / 255, code = round((x − low) / scale) clamped to "
    "0 .. 255, stored as torch.uint8; dequantized = code · scale + low. A row with max = min: "
    "divide by 1 instead (its codes are 0, and it comes back as low). nbytes = Σ numel · element_size "
    "of the stored codes, scales and offsets: 1 byte a code, 4 a float32 scale or offset.",
    "Keep per layer three lists for keys and three for values, like KVCache's keys and values: codes "
    "(batch, heads, seq, head_dim), scales and offsets (batch, heads, seq, 1), concatenated along "
    "dim 2. amin and amax over dim -1 with keepdim=True; seq_len counts layer 0's tokens.",
)

CACHE = Exercise(
    id="9.3",
    title="A KV cache of 8-bit zero-point codes",
    function_name="ZeroPointKVCache",
    arg_names=("n_layers", "updates", "what"),
    signature="class ZeroPointKVCache: __init__(n_layers); update(layer, k, v: (batch, heads, new, head_dim)) "
              "-> (keys, values) dequantized, (batch, heads, seq, head_dim); seq_len; nbytes",
    reference=lambda n_layers, updates, what: _drive_93(CourseZeroPointKVCache, n_layers, updates, what),
    cases=(
        Case("one layer, a 5-token prefill, then 3 single tokens: what update returns",
             lambda: _updates_input(0, 1, (5, 1, 1, 1)), 2, "fixed"),
        Case("two layers, batch 2, chunks of 4, 1, 2: what update returns",
             lambda: _updates_input(1, 2, (4, 1, 2), batch=2), 2, "fixed"),
        Case(f"random: two layers, 3 heads, head_dim 16, chunks {', '.join(map(str, _C93))}: returned",
             lambda: _updates_input(2, 2, _C93, heads=3, head_dim=16), 2, "random"),
        Case("nbytes after two layers, batch 2, chunks of 4, 1, 2",
             lambda: _updates_input(1, 2, (4, 1, 2), batch=2, what="nbytes"), 1, "fixed"),
        Case("seq_len after two layers, chunks of 4, 1, 2",
             lambda: _updates_input(1, 2, (4, 1, 2), batch=2, what="seq_len"), 1, "fixed"),
        Case("edge: a row of zeros and a constant row (max = min)",
             lambda: _updates_input(3, 1, (3, 1), constant=True), 1, "edge"),
        Case("the reversal model with your cache: 200 held-out prompts' 8 digits", _digits_input, 2, "fixed"),
    ),
    mistakes=(
        Mistake("not quantized: store codes, scales and offsets only",
                _mistake_93(store="float"), hint=1, section=SECTION_KV),
        Mistake("one scale per update: each row (token, head) its own",
                _mistake_93(scales="tensor"), hint=1),
        Mistake("codes kept in 4 bytes: store them as torch.uint8", _mistake_93(code_dtype=torch.float32), hint=2),
        Mistake("only the new tokens returned: return the whole layer",
                _mistake_93(returned="new"), hint=1, section=SECTION_CACHE),
        Mistake("offset forgotten: dequantized = code · scale + min", _mistake_93(offset=False), hint=2),
        Mistake("255 steps from min to max, not 256", _mistake_93(steps=256), hint=2),
        Mistake("that is absmax (the chapter's): use min and max", _mistake_93(symmetric=True), hint=1, section=SECTION_KV),
        Mistake("seq_len counts layer 0's tokens, not every layer's", _mistake_93(count="every layer"),
                hint=3),
        Mistake("scales and offsets rounded to float16: keep float32", _mistake_93(scale_dtype=torch.float16),
                hint=2),
    ),
    error_hints=(
        ("update must return", "update returns (keys, values) of the whole layer"),
        ("is a method", "nbytes and seq_len are properties: put @property above"),
        ("'NoneType' object", "a layer starts as None: the first update sets it"),
        ("must match the size", "seq_len counts layer 0's tokens: the next position"),
        ("Expected size for first two dimensions", "return every token of the layer, old and new"),
    ),
    level=BUILD,
    hints=CACHE_HINTS,
    adapt=_adapt_93,
    time_limit=10.0,
    nan_hint="NaN where a row is constant: max − min = 0, so divide by 1 there",
)


# --- 9.4 rejections of a quantized self-draft ----------------------------------------------------

def _quantized_draft(model, bits=4, per="tensor", levels=None, embeddings=False, biases=False):
    """A copy of ``model`` with every nn.Linear weight absmax-quantized (and dequantized)."""
    draft = copy.deepcopy(model)
    L = 2 ** (bits - 1) - 1 if levels is None else levels          # codes −L .. L (levels: −L .. L − 1)
    top = L if levels is None else L - 1

    def quantize(t, per_row):
        scale = t.abs().amax(dim=-1, keepdim=True) / L if per_row else t.abs().amax() / L
        return torch.round(t / scale).clamp(-L, top) * scale

    with torch.no_grad():
        for module in draft.modules():
            if isinstance(module, nn.Linear):
                module.weight.copy_(quantize(module.weight, per == "channel"))
                if biases and module.bias is not None:
                    module.bias.copy_(quantize(module.bias, False))
            elif embeddings and isinstance(module, (nn.Embedding, nn.LayerNorm)):
                module.weight.copy_(quantize(module.weight, False))
    return draft


@functools.lru_cache(maxsize=None)  # the grader asks for the same measurements again and again
def rejections(dtype=torch.float64, positions="answer", dim=-1, answer="per10k", **draft):
    """Expected rejected draft tokens per 10,000 when the reversal model verifies the proposals of
    its own int4 per-tensor copy: 10,000 · (1 − α), α the mean over the held-out answer positions of
    Σ_v min(p(v), q(v)). The keywords are the named mistakes."""
    target = load_reversal_model().to(dtype)
    drafted = _quantized_draft(target, **draft)
    task = Reversal()
    inputs = task.held_out()[:, :-1]                                 # (1000, 16), teacher forcing
    with torch.no_grad():
        p = target(inputs)[0].softmax(dim=dim)
        q = drafted(inputs)[0].softmax(dim=dim)
    if positions == "answer":                                        # rows n_digits .. predict the answer
        p, q = p[:, task.n_digits:], q[:, task.n_digits:]
    if answer == "argmax":
        alpha = (p.argmax(dim=-1) == q.argmax(dim=-1)).double().mean().item()
    else:
        alpha = 1 - (p - q).clamp(min=0).sum(dim=-1).double().mean().item()
    if answer == "alpha":
        return alpha
    return 10_000 * (1 - alpha) if answer != "fraction" else 1 - alpha


DECIMALS = 2  # the answer is asked for to 2 decimals


def _answer_94():
    return round(rejections(torch.float32), DECIMALS)


def _answer_tol_94(truth: float) -> float:
    # float32's own error on the measurement (8 times, as for tensors), and one unit of the last
    # decimal asked for: a float32 answer may round the other way
    return 8 * abs(rejections(torch.float32) - rejections(torch.float64)) + 10 ** -DECIMALS


REJECT_HINTS = (
    "Self-speculative decoding: the draft is the model itself with 4-bit weights. At each position "
    "the draft proposes from q and the target keeps the token with probability min(1, p/q), so the "
    "chance of a rejection there is 1 − Σ_v min(p(v), q(v)) = Σ_v max(0, q(v) − p(v)). Measure it "
    "with the target's and draft's next-token distributions at the positions of the answer.",
    "Draft: every nn.Linear weight W (biases, embeddings and LayerNorms untouched) replaced by "
    "round(W / s).clamp(−7, 7) · s with one s = max|W| / 7 per weight matrix. Inputs: held_out()[:, :-1], "
    "all 16 tokens at once; positions 8 .. 15 predict the 8 answer digits. Softmax at temperature 1 "
    "over the vocabulary; answer 10,000 · mean(Σ_v max(0, q − p)), rounded to 2 decimals.",
    "copy.deepcopy the loaded model; loop over draft.modules(), isinstance(m, nn.Linear), change "
    "m.weight in place under torch.no_grad(); logits = model(inputs)[0] is (1000, 16, 11); slice "
    "[:, 8:], softmax(dim=-1), then the mean over the 8000 rows.",
)

REJECT = Exercise(
    id="9.4",
    title="How often a 4-bit copy of the model is rejected as its own draft",
    function_name="rejections_per_10k",
    arg_names=(),
    signature="rejections_per_10k() -> float, expected rejections per 10,000 draft tokens",
    reference=_answer_94,
    cases=(Case("your answer", lambda: (), 4, "experiment"),),
    mistakes=(
        Mistake("that is α: give the rejections, 10,000 · (1 − α)",
                lambda: round(rejections(torch.float32, answer="alpha"), 4), hint=1, section=SECTION_ALPHA),
        Mistake("a fraction: give it per 10,000 draft tokens",
                lambda: round(rejections(torch.float32, answer="fraction"), 6), hint=2),
        Mistake("every position counted: only the 8 answer positions",
                lambda: round(rejections(torch.float32, positions="all"), DECIMALS), hint=2),
        Mistake("softmax over the wrong axis: over the vocabulary",
                lambda: round(rejections(torch.float32, dim=1), DECIMALS), hint=2),
        Mistake("one scale per row: the draft is quantized per tensor",
                lambda: round(rejections(torch.float32, per="channel"), DECIMALS), hint=2, section=SECTION_PER),
        Mistake("embeddings and LayerNorms quantized too: nn.Linear only",
                lambda: round(rejections(torch.float32, embeddings=True), DECIMALS), hint=2),
        Mistake("int4 absmax here uses codes −7 .. 7: s = max|W| / 7",
                lambda: round(rejections(torch.float32, levels=8), DECIMALS), hint=2),
    ),
    level=EXPERIMENT,
    hints=REJECT_HINTS,
    answer_tol=_answer_tol_94,
    time_limit=20.0,
)

EXERCISES = (GROUPWISE, VERIFY, CACHE, REJECT)
