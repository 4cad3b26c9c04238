"""Chapter 8 exercises: rotary position embeddings (RoPE), and RoPE attention over a KV cache."""

from __future__ import annotations

import math

import torch

from ...attention import causal_mask
from ...positions import BASE, apply_rope
from ..spec import Case, Exercise, Mistake


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _drawn(seed: int, low: int, high: int, even: bool = False) -> int:
    """A whole number drawn from [low, high) with a fixed seed: random, but the same on every run."""
    n = int(torch.randint(low, high, (1,), generator=_gen(seed)))
    return n + n % 2 if even else n


# --- 8.1 apply_rope ------------------------------------------------------------------------------

def rope_interleaved(x, positions):
    """The exercise's reference: RoPE with interleaved pairs (2i, 2i + 1), θ_i = 10000^(−2i/d).

    x: (..., seq, head_dim), positions: (seq,) -> (..., seq, head_dim).
    """
    return apply_rope(x, positions, "interleaved")


def _rope_with(x, positions, *, exponent=lambda i, d: 2 * i / d, sign: float = 1.0,
               swap: bool = False, halves_out: bool = False):
    """Interleaved RoPE with one thing changed; each keyword is a place where learners go wrong.

    exponent(i, d): θ_i = 1 / 10000^exponent; sign: −1 turns clockwise; swap: cos and sin swapped;
    halves_out: the right pairs turned, but the results written back as [firsts…, seconds…].
    """
    d = x.shape[-1]
    i = torch.arange(d // 2, dtype=torch.float64)
    theta = 1.0 / BASE ** exponent(i, d)                                  # (d // 2,)
    angles = sign * positions.to(torch.float64)[..., None] * theta        # (seq, d // 2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    if swap:
        cos, sin = sin, cos
    a, b = x[..., 0::2], x[..., 1::2]
    if halves_out:
        return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)


def _rope32(x, positions, convention="interleaved"):
    """RoPE as learners compute it, angles in float32: it sets the checks' tolerance."""
    d = x.shape[-1]
    theta = 1.0 / BASE ** (torch.arange(0, d, 2, dtype=torch.float32) / d)  # (d // 2,)
    angles = positions.to(torch.float32)[..., None] * theta                  # (seq, d // 2)
    if convention == "split_halves":
        return apply_rope(x, positions, convention)
    a, b = x[..., 0::2], x[..., 1::2]
    cos, sin = angles.cos(), angles.sin()
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)


def _positions_ignored(x, positions):
    return apply_rope(x, torch.arange(x.shape[-2]), "interleaved")


ROPE_MISTAKES = (
    Mistake("split halves: pairs are (2i, 2i+1), not (i, i + d/2)",
            lambda x, p: apply_rope(x, p, "split_halves")),
    Mistake("turned clockwise: the sine terms have the wrong sign",
            lambda x, p: _rope_with(x, p, sign=-1.0)),
    Mistake("θ_i = 10000^(−i/d): it is 10000^(−2i/d), i the pair",
            lambda x, p: _rope_with(x, p, exponent=lambda i, d: i / d)),
    Mistake("θ_i = 10000^(−4i/d): the exponent is 2i/d, i the pair",
            lambda x, p: _rope_with(x, p, exponent=lambda i, d: 4 * i / d)),
    Mistake("frequencies inverted: θ_i is 1 / 10000^(2i/d)",
            lambda x, p: _rope_with(x, p, exponent=lambda i, d: -2 * i / d)),
    Mistake("cos and sin swapped in the rotation",
            lambda x, p: _rope_with(x, p, swap=True)),
    Mistake("`positions` ignored: rotate token t by positions[t]",
            _positions_ignored),
    Mistake("results concatenated: pair i goes back to (2i, 2i+1)",
            lambda x, p: _rope_with(x, p, halves_out=True)),
)

# A shape error on a line with the angles: positions (seq,) times θ (head_dim // 2,) needs an axis.
ROPE_HINTS = (("must match the size of tensor", "angles: positions[:, None] * θ, (seq, head_dim // 2)",
               r"cos|sin|angle|theta|freq|outer|positions|θ"),)


def _rope_inputs(seed: int, shape: tuple[int, ...], positions) -> tuple:
    x = torch.randn(*shape, generator=_gen(seed))
    return x, torch.as_tensor(positions, dtype=torch.int64)


_H81, _S81 = _drawn(81, 2, 5), _drawn(82, 3, 12)
_P81 = sorted(torch.randint(0, 300, (_S81,), generator=_gen(84)).tolist())

# head_dim 4 throughout: two pairs with different frequencies are enough to tell every named
# mistake apart (the positions go up to 299, where a wrong frequency shows), and the feedback rows
# stay short enough for the page.
APPLY_ROPE = Exercise(
    id="8.1",
    title="Rotary position embeddings",
    function_name="apply_rope",
    arg_names=("x", "positions"),
    signature="apply_rope(x: (..., seq, head_dim), positions: (seq,)) -> (..., seq, head_dim)",
    reference=rope_interleaved,
    cases=(
        Case("4 tokens at positions 0-3, head_dim 4", lambda: _rope_inputs(0, (4, 4), range(4)), 2,
             "fixed"),
        Case("2 heads, 3 tokens at positions 10, 11, 12",
             lambda: _rope_inputs(1, (2, 3, 4), [10, 11, 12]), 2, "fixed"),
        Case(f"random: {_H81} heads, {_S81} tokens at positions {_P81[0]}…{_P81[-1]}",
             lambda: _rope_inputs(2, (_H81, _S81, 4), _P81), 2, "random"),
        Case("batch 2, 2 heads, 200 tokens at positions 0-199",
             lambda: _rope_inputs(3, (2, 2, 200, 4), range(200)), 2, "fixed"),
        Case("edge: position 0 only (no rotation at all)", lambda: _rope_inputs(4, (1, 4), [0]), 1,
             "edge"),
        Case("edge: head_dim 2 (a single pair, θ_0 = 1)", lambda: _rope_inputs(5, (5, 2), range(5)), 1,
             "edge"),
        Case("edge: one new token at position 37",
             lambda: _rope_inputs(6, (2, 1, 4), [37]), 1, "edge"),
    ),
    mistakes=ROPE_MISTAKES,
    error_hints=ROPE_HINTS,
    # The reference rounds float64 angles once; learners' float32 angles (position · θ_i) lose ~1e-5
    # at position 300, so that plainer formula sets the tolerance.
    reference32=_rope32,
)


# --- 8.2 cached_rope_attention -------------------------------------------------------------------

def _attend(q, k, v, n_new, *, diagonal_shift=0, top_left=False, empty_rows_zero=False):
    """Causal attention of n_new queries over all keys, bottom-right aligned (the cache convention).

    The keywords are mistakes: the diagonal moved by ``diagonal_shift``, or aligned top-left (torch's
    ``is_causal=True`` when there are more keys than queries). A row left with no key is NaN here
    (masked_fill and softmax) and zeros with ``empty_rows_zero`` (torch's sdpa, a boolean mask).
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])             # (heads, new, cached + new)
    mask = causal_mask(n_new, k.shape[-2], device=q.device)
    if diagonal_shift or top_left:
        diagonal = (0 if top_left else k.shape[-2] - n_new) + diagonal_shift
        mask = torch.ones_like(mask).tril(diagonal)
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    return (weights.nan_to_num(0.0) if empty_rows_zero else weights) @ v


def cached_rope_attention(q_new, k_new, v_new, k_cache, v_cache, *, offset=True, rotate_values=False,
                          rotate_cache=False, rotate_keys=True, append=True, causal=True,
                          convention="interleaved", rope=apply_rope, position_shift=0, **mask):
    """Attention for new tokens over a KV cache, with RoPE; the keywords are the named mistakes.

    q_new, k_new, v_new: (heads, new, head_dim), not yet rotated; k_cache: (heads, cached, head_dim),
    already rotated at positions 0 .. cached − 1; v_cache: (heads, cached, head_dim).
    Returns (heads, new, head_dim). ``rope`` is the rotation used (the float32 check uses a plainer one).
    ``position_shift`` moves the new tokens' positions; ``mask`` goes to ``_attend``.
    """
    apply_rope = rope  # noqa: N806 - the keyword replaces the module's function in this body
    cached, new = k_cache.shape[-2], q_new.shape[-2]
    start = (cached if offset else 0) + position_shift
    positions = torch.arange(start, start + new)                           # (new,)
    q = apply_rope(q_new, positions, convention)
    k_rot = apply_rope(k_new, positions, convention) if rotate_keys else k_new
    v_in = apply_rope(v_new, positions, convention) if rotate_values else v_new
    if not append:  # the stale cache: the new tokens' own keys and values never join it
        if not cached:
            return torch.zeros_like(q_new)
        scores = q @ k_cache.transpose(-2, -1) / math.sqrt(q.shape[-1])   # every cached key is past
        return torch.softmax(scores, dim=-1) @ v_cache
    k = torch.cat([k_cache, k_rot], dim=-2)                               # (heads, cached + new, hd)
    v = torch.cat([v_cache, v_in], dim=-2)
    if rotate_cache:  # every key rotated again from position 0 at each step
        k = apply_rope(k, torch.arange(cached + new), convention)
    if not causal:
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        return torch.softmax(scores, dim=-1) @ v
    return _attend(q, k, v, new, **mask)


def _reference_82(q_new, k_new, v_new, k_cache, v_cache):
    return cached_rope_attention(q_new, k_new, v_new, k_cache, v_cache)


def _mistake(**wrong):
    def function(q_new, k_new, v_new, k_cache, v_cache):
        return cached_rope_attention(q_new, k_new, v_new, k_cache, v_cache, **wrong)
    return function


ROTATED_AGAIN = "cached keys rotated again: they are stored rotated"
OFF_BY_ONE = "positions off by one: new token i is at cached + i"
SELF_UNSEEN = "mask off by one: each token must also see its own key"

CACHE_MISTAKES = (
    Mistake("position offset missing: new tokens start at len(cache)",
            _mistake(offset=False)),
    Mistake("values rotated too: RoPE turns queries and keys only", _mistake(rotate_values=True)),
    Mistake(ROTATED_AGAIN, _mistake(rotate_cache=True)),
    Mistake(ROTATED_AGAIN, _mistake(rotate_cache=True, rotate_keys=False)),  # all keys turned once, here
    Mistake("new keys not rotated before they join the cache", _mistake(rotate_keys=False)),
    Mistake("stale cache: append the new keys and values first", _mistake(append=False)),
    Mistake("no causal mask among the new tokens", _mistake(causal=False)),
    Mistake("split halves: pairs are (2i, 2i+1), not (i, i + d/2)",
            _mistake(convention="split_halves")),
    Mistake(OFF_BY_ONE, _mistake(position_shift=1)),
    Mistake(OFF_BY_ONE, _mistake(position_shift=-1)),
    Mistake(SELF_UNSEEN, _mistake(diagonal_shift=-1)),
    Mistake(SELF_UNSEEN, _mistake(diagonal_shift=-1, empty_rows_zero=True)),
    Mistake("mask aligned top-left: token i sees keys 0..cached+i", _mistake(top_left=True)),
)


def _cache_inputs(seed: int, heads: int, cached: int, new: int, head_dim: int) -> tuple:
    g = _gen(seed)
    q_new, k_new, v_new = (2 * torch.randn(heads, new, head_dim, generator=g) for _ in range(3))
    k_raw = 2 * torch.randn(heads, cached, head_dim, generator=g)
    k_cache = apply_rope(k_raw, torch.arange(cached))  # cached keys are stored rotated
    v_cache = torch.randn(heads, cached, head_dim, generator=g)
    return q_new, k_new, v_new, k_cache, v_cache


_H82, _C82, _N82, _D82 = _drawn(91, 1, 4), _drawn(92, 4, 20), _drawn(93, 2, 6), _drawn(94, 4, 24, even=True)

CACHED_ROPE = Exercise(
    id="8.2",
    title="RoPE attention over a KV cache",
    function_name="cached_rope_attention",
    arg_names=("q_new", "k_new", "v_new", "k_cache", "v_cache"),
    signature=("cached_rope_attention(q_new, k_new, v_new: (heads, new, head_dim), "
               "k_cache, v_cache: (heads, cached, head_dim)) -> (heads, new, head_dim)"),
    reference=_reference_82,
    cases=(
        Case("1 head, 3 cached tokens, 1 new token, head_dim 4", lambda: _cache_inputs(0, 1, 3, 1, 4), 2,
             "fixed"),
        Case("2 heads, 5 cached tokens, 3 new tokens, head_dim 8", lambda: _cache_inputs(1, 2, 5, 3, 8), 2,
             "fixed"),
        Case(f"random: {_H82} heads, {_C82} cached, {_N82} new, head_dim {_D82}",
             lambda: _cache_inputs(2, _H82, _C82, _N82, _D82), 2, "random"),
        Case("edge: an empty cache (the prompt: 4 new tokens from position 0)",
             lambda: _cache_inputs(3, 2, 0, 4, 8), 1, "edge"),
        Case("edge: a long cache (40 tokens), 1 new token", lambda: _cache_inputs(4, 2, 40, 1, 16), 2,
             "edge"),
    ),
    mistakes=CACHE_MISTAKES,
    reference32=lambda q_new, k_new, v_new, k_cache, v_cache: cached_rope_attention(
        q_new, k_new, v_new, k_cache, v_cache, rope=_rope32),
)

EXERCISES = (APPLY_ROPE, CACHED_ROPE)
