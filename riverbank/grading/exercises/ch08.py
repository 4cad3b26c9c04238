"""Chapter 8 exercises: rescaled rotary frequencies for longer contexts (position interpolation and
NTK-aware scaling), a rotary attention layer with a KV cache inside the course's model, and how far
past its training angles a rescaled RoPE still turns, measured."""

from __future__ import annotations

import math

import torch

from ...positions import BASE
from ..spec import BUILD, EXPERIMENT, WARM_UP, Case, Exercise, Mistake
from .ch07 import (NAMES_HINT, CachedSelfAttention, _drawn, _gen, _random_prompt, _random_state, adapter,
                   model_config, run_cached, run_uncached)

SECTION_LONGER = "chapter 8, section “Longer than in training”"
SECTION_CACHE = "chapter 8, section “RoPE and the KV cache: the position offset”"
SECTION_PAIRS = "chapter 8, section “From two dimensions to many: pairs”"
SECTION_CONVENTIONS = "chapter 8, section “Two conventions: interleaved pairs and split halves”"


# --- 8.1 scaled_rope_frequencies -----------------------------------------------------------------

def _frequencies(head_dim, scale, method, dtype, *, ntk_power=None, divide=True):
    two_i = torch.arange(0, head_dim, 2, dtype=dtype)                       # (head_dim // 2,)
    if method == "interpolation":
        theta = BASE ** (-two_i / head_dim)
        return theta / scale if divide else theta * scale
    power = head_dim / (head_dim - 2) if ntk_power is None else ntk_power(head_dim)
    return (BASE * scale ** power) ** (-two_i / head_dim)


def scaled_rope_frequencies(head_dim, scale, method):
    """RoPE's θ_i for a context ``scale`` times longer than in training, float32 (head_dim // 2,).

    "interpolation" (Chen et al., 2023): every θ_i divided by scale, i.e. positions m / scale.
    "ntk" (NTK-aware scaling, bloc97, 2023): the base raised to base · scale^(d / (d − 2)), so the
    fastest pair keeps θ_0 = 1 and the slowest is divided by exactly scale.
    """
    return _frequencies(head_dim, scale, method, torch.float64).to(torch.float32)


def _precise_81(head_dim, scale, method):
    return _frequencies(head_dim, scale, method, torch.float64)


def _plain_81(head_dim, scale, method):
    return _frequencies(head_dim, scale, method, torch.float32)


def _wrong_81(**kw):
    return lambda head_dim, scale, method: _frequencies(head_dim, scale, method, torch.float64, **kw).float()


def _swapped(head_dim, scale, method):
    other = "ntk" if method == "interpolation" else "interpolation"
    return scaled_rope_frequencies(head_dim, scale, other)


def _unscaled(head_dim, scale, method):
    return scaled_rope_frequencies(head_dim, 1.0, method)


SCALED_HINTS = (
    "Position interpolation squeezes the positions: m becomes m / scale, which is the same as turning "
    "every pair more slowly. NTK-aware scaling instead changes the base, so that the fastest pair "
    "(which turns through many full circles in training anyway) keeps its speed and the slowest pair "
    "is slowed by exactly scale.",
    "θ_i = base^(−2i/d) for i = 0 .. d/2 − 1, base = 10000. Interpolation: θ_i / scale. NTK: "
    "θ_i = base'^(−2i/d) with base' = base · scale^(d/(d−2)); then pair d/2 − 1 gets θ / scale "
    "exactly, because (d − 2)/d · d/(d − 2) = 1.",
    "torch.arange(0, head_dim, 2) gives 2i; compute in float64 if you like and return float32, "
    "shape (head_dim // 2,). One branch per method.",
)

SCALED = Exercise(
    id="8.1",
    title="Rotary frequencies for a longer context",
    function_name="scaled_rope_frequencies",
    arg_names=("head_dim", "scale", "method"),
    signature='scaled_rope_frequencies(head_dim: int, scale: float, method: "interpolation" | "ntk") '
              "-> (head_dim // 2,) float32",
    reference=scaled_rope_frequencies,
    cases=(
        Case("head_dim 8, scale 4, NTK", lambda: (8, 4.0, "ntk"), 2, "fixed"),
        Case("head_dim 128, scale 4, interpolation", lambda: (128, 4.0, "interpolation"), 2, "fixed"),
        Case("head_dim 128, scale 8, NTK (a Llama-sized head)", lambda: (128, 8.0, "ntk"), 2, "fixed"),
        Case(f"random: head_dim {2 * _drawn(81, 4, 33)}, scale {_drawn(82, 2, 9)}, NTK",
             lambda: (2 * _drawn(81, 4, 33), float(_drawn(82, 2, 9)), "ntk"), 2, "random"),
        Case("edge: scale 1 (nothing changes)", lambda: (16, 1.0, "ntk"), 1, "edge"),
        Case("edge: head_dim 4 (two pairs, d / (d − 2) = 2)", lambda: (4, 3.0, "ntk"), 1, "edge"),
    ),
    mistakes=(
        Mistake("NTK: the base times scale^(d/(d−2)), not scale",
                _wrong_81(ntk_power=lambda d: 1.0), hint=2),
        Mistake("NTK: the power is d/(d−2), not (d−2)/d", _wrong_81(ntk_power=lambda d: (d - 2) / d), hint=2),
        Mistake("interpolation slows the turns: divide θ_i by scale", _wrong_81(divide=False), hint=1),
        Mistake("the two methods are swapped", _swapped, hint=1),
        Mistake("scale is ignored", _unscaled, hint=2),
    ),
    error_hints=(("division by zero", "head_dim − 2 in the power: head_dim is at least 4 here"),),
    precise=_precise_81,
    reference32=_plain_81,
    level=WARM_UP,
    hints=SCALED_HINTS,
)


# --- 8.2 RotaryCachedAttention -------------------------------------------------------------------

class RotaryCachedAttention(CachedSelfAttention):
    """The course's answer to 8.2: chapter 7's cached layer with interleaved RoPE at the offset."""

    def __init__(self, d_model, n_heads):
        super().__init__(d_model, n_heads, rope=True)


def _make_82(cls, cfg):
    return cls(cfg.d_model, cfg.n_heads)


def _mistake_82(**wrong):
    def function(config, state, prompt, chunks, n_new, what):
        return run_cached(lambda cfg: CachedSelfAttention(cfg.d_model, cfg.n_heads, rope=True, **wrong),
                          config, state, prompt, chunks, n_new, what)
    return function


ROPE_2 = model_config(positions="rope", max_len=64, d_model=32, n_heads=2, n_layers=2, d_ff=64)
ROPE_4 = model_config(positions="rope", max_len=64, d_model=32, n_heads=4, n_layers=2, d_ff=64)
ROPE_1 = model_config(positions="rope", max_len=64, d_model=16, n_heads=1, n_layers=3, d_ff=32)


def _inputs(config, seed, what, chunks, n_new, batch=2):
    return lambda: (config, _random_state(seed, config), _random_prompt(seed, batch, sum(chunks)), chunks,
                    n_new, what)


_C82 = (_drawn(83, 3, 8), _drawn(84, 1, 6), _drawn(85, 2, 6))

ROTARY_HINTS = (
    "Chapter 7's cached layer, with one more step: after splitting the heads, turn the new queries "
    "and keys by their positions, and only then store the keys. The cached keys are already turned; "
    "the values never are. The new tokens' positions start where this layer's cache ends.",
    "past = the number of keys this layer cached before the call (0 with no cache); positions "
    "past, past + 1, .., past + new − 1. q and k rotated with interleaved RoPE (θ_i = 10000^(−2i/d), "
    "riverbank.positions.apply_rope); scores q·kᵀ/√head_dim with a causal mask whose diagonal is "
    "moved past columns to the right.",
    "In order: q_proj, k_proj, v_proj; view(batch, new, heads, head_dim).transpose(1, 2); read past "
    "from cache.keys[layer]; positions = torch.arange(past, past + new); apply_rope to q and k; "
    "cache.update(layer, k, v); scores, mask, softmax, times v; transpose back, reshape, out_proj.",
)

SEQ_LEN = "cache.seq_len counts layer 0: count this layer's keys"

ROTARY = Exercise(
    id="8.2",
    title="RoPE attention over a KV cache, in the model",
    function_name="RotaryCachedAttention",
    arg_names=("config", "state", "prompt", "chunks", "n_new", "what"),
    signature="class RotaryCachedAttention(nn.Module): __init__(d_model, n_heads); "
              "forward(x: (batch, new, d_model), cache: KVCache | None, layer: int) -> (batch, new, d_model)",
    reference=run_uncached,
    cases=(
        Case("2 heads, a 6-token prompt, 10 new: the generated tokens", _inputs(ROPE_2, 1, "tokens", (6,), 10),
             3, "fixed"),
        Case("2 heads, a 6-token prompt, 10 new: logits at every step", _inputs(ROPE_2, 1, "logits", (6,), 10),
             2, "fixed"),
        Case("4 heads, the prompt fed in chunks of 5 and 4, 8 new: logits",
             _inputs(ROPE_4, 2, "logits", (5, 4), 8), 2, "fixed"),
        Case(f"random: 4 heads, prompt chunks {', '.join(map(str, _C82))}, 12 new: logits",
             _inputs(ROPE_4, 3, "logits", _C82, 12), 2, "random"),
        Case("edge: one head, 3 layers, a one-token prompt, 20 new: logits",
             _inputs(ROPE_1, 4, "logits", (1,), 20), 1, "edge"),
        Case("edge: no cache (cache=None), the whole prompt at once", _inputs(ROPE_4, 5, "no cache", (12,), 0),
             1, "edge"),
    ),
    mistakes=(
        Mistake("offset missing: positions start at the cache length",
                _mistake_82(rope_offset=False), hint=1, section=SECTION_CACHE),
        Mistake(SEQ_LEN, _mistake_82(offset="seq_len"), hint=3),
        Mistake(SEQ_LEN, _mistake_82(offset="seq_len_rope"), hint=3),
        Mistake("values rotated too: RoPE turns queries and keys only", _mistake_82(rotate_values=True),
                hint=1),
        Mistake("cached keys rotated again: they are stored rotated", _mistake_82(rotate_cached=True), hint=1),
        Mistake("split halves: pairs are (2i, 2i+1), not (i, i + d/2)",
                _mistake_82(convention="split_halves"), hint=2, section=SECTION_CONVENTIONS),
        Mistake("mask aligned top-left: new token i sees keys 0..past+i", _mistake_82(mask="top_left"),
                hint=2),
        Mistake("no causal mask: new tokens see later new tokens", _mistake_82(mask="none"), hint=2),
        Mistake("cache unused: update it, attend to all it holds", _mistake_82(append=False),
                hint=1),
        Mistake("scores not divided by √head_dim", _mistake_82(scale="none"), hint=2),
    ),
    error_hints=(
        ("Missing key(s)", NAMES_HINT),
        ("Unexpected key(s)", NAMES_HINT),
        ("must match the size", "angles: positions[:, None] * θ, (new, head_dim // 2)"),
        ("'NoneType' object has no attribute", "cache may be None: then positions start at 0"),
    ),
    time_limit=10.0,
    level=BUILD,
    hints=ROTARY_HINTS,
    adapt=adapter(_make_82, "RotaryCachedAttention"),
)


# --- 8.3 how far past its training angles a scaled RoPE turns ------------------------------------

HEAD_DIM, TRAINED, EXTENDED = 128, 2048, 8192


def overshoot(method="ntk", dtype=torch.float64, positions=(TRAINED, EXTENDED),
              ntk_power=None):
    """Among the pairs that never made a full turn in training, the largest ratio of the angle at the
    last extended position to the largest angle in training. The keywords are the named mistakes."""
    scale = EXTENDED / TRAINED
    two_i = torch.arange(0, HEAD_DIM, 2, dtype=dtype)
    theta = BASE ** (-two_i / HEAD_DIM)                                 # (64,), as trained
    if method == "none":
        scaled = theta
    elif method == "interpolation":
        scaled = theta / scale
    else:
        power = HEAD_DIM / (HEAD_DIM - 2) if ntk_power is None else ntk_power
        scaled = (BASE * scale ** power) ** (-two_i / HEAD_DIM)
    trained_max, extended_max = positions[0] - 1, positions[1] - 1
    seen = trained_max * theta                                          # the largest angle in training
    ratio = extended_max * scaled / seen
    return float(ratio[seen < 2 * math.pi].max())


DECIMALS = 4  # the answer is asked for to 4 decimals


def _answer_83():
    return round(overshoot(), DECIMALS)


def _answer_tol_83(truth: float) -> float:
    # float32's own error on the angles (8 times, as for tensors), and one unit of the last decimal
    # asked for: float32 angles may round the other way
    return 8 * abs(overshoot() - overshoot(dtype=torch.float32)) + 10 ** -DECIMALS


OVERSHOOT_HINTS = (
    "A pair whose angle went through a full turn (2π) in training has met every direction already; "
    "a pair that did not has only met angles up to its largest training angle, and whatever lies "
    "beyond is new to the model. Measure, for NTK-aware scaling, how far beyond the worst such pair goes.",
    "Trained on positions 0 .. 2047, run on 0 .. 8191: scale 4. Pair i's largest training angle is "
    "2047 · θ_i with the plain θ_i; at the longer length it is 8191 · θ'_i with θ'_i from your 8.1 "
    "function. Keep the pairs with 2047 · θ_i < 2π and report the largest 8191 θ'_i / (2047 θ_i).",
    "θ = 10000 ** (−arange(0, 128, 2) / 128) in float64; θ' = scaled_rope_frequencies(128, 4.0, 'ntk') "
    "(or the same formula in float64); a boolean mask picks the pairs; .max() of the ratio, as a "
    "Python float rounded to 4 decimals.",
)

OVERSHOOT = Exercise(
    id="8.3",
    title="How far past its training angles NTK-scaled RoPE turns",
    function_name="ntk_overshoot",
    arg_names=(),
    signature="ntk_overshoot() -> float, the largest ratio of new to trained angle",
    reference=_answer_83,
    cases=(Case("your answer", lambda: (), 4, "experiment"),),
    mistakes=(
        Mistake("that is unscaled (or every pair): NTK θ'_i, pairs < 2π",
                lambda: round(overshoot(method="none"), 4), hint=1),
        Mistake("that is position interpolation: use NTK-aware scaling",
                lambda: round(overshoot(method="interpolation"), 4), hint=1),
        Mistake("NTK's base is 10000 · 4^(d/(d−2)), not 10000 · 4",
                lambda: round(overshoot(ntk_power=1.0), 4), hint=2),
        Mistake("the last positions are 2047 and 8191, not 2048 and 8192",
                lambda: round(overshoot(positions=(TRAINED + 1, EXTENDED + 1)), 4), hint=2),
    ),
    level=EXPERIMENT,
    hints=OVERSHOOT_HINTS,
    answer_tol=_answer_tol_83,
)


# --- 8.4 to_split_halves -------------------------------------------------------------------------

def to_split_halves(weight, n_heads):
    """W_Q or W_K of a model trained with interleaved RoPE, rows reordered for split-halves RoPE.

    weight: (n_heads · head_dim, d_in), head h's rows h · head_dim .. (h + 1) · head_dim − 1; inside
    each head, row 2i + j moves to row i + j · head_dim / 2 (the permutation of chapter 8, per head).
    """
    rows, d_in = weight.shape
    head_dim = rows // n_heads
    per_head = weight.view(n_heads, head_dim // 2, 2, d_in)          # (heads, pair, member, d_in)
    return per_head.transpose(1, 2).reshape(rows, d_in)              # members first, then pairs


def _whole_matrix(weight, n_heads):
    perm = torch.cat([torch.arange(0, weight.shape[0], 2), torch.arange(1, weight.shape[0], 2)])
    return weight[perm]


def _inverse(weight, n_heads):
    rows, d_in = weight.shape
    head_dim = rows // n_heads
    return weight.view(n_heads, 2, head_dim // 2, d_in).transpose(1, 2).reshape(rows, d_in)


def _heads_interleaved(weight, n_heads):
    rows, d_in = weight.shape
    head_dim = rows // n_heads
    w = weight.view(head_dim, n_heads, d_in).transpose(0, 1)         # the heads read as interleaved
    return to_split_halves(w.reshape(rows, d_in), n_heads).view(n_heads, head_dim, d_in).transpose(0, 1) \
        .reshape(rows, d_in)


def _columns(weight, n_heads):
    if weight.shape[1] % (2 * n_heads):
        raise ValueError("the columns do not split into heads here: no evidence either way")
    return to_split_halves(weight.T.contiguous(), n_heads).T.contiguous()


def _weight(seed, rows, d_in, counting=False):
    if counting:  # row r holds r everywhere: a wrong order shows in the first column
        return (torch.arange(rows, dtype=torch.float32)[:, None].expand(rows, d_in).contiguous(),)
    return (torch.randn(rows, d_in, generator=_gen(seed)),)


CONVERT_HINTS = (
    "Split-halves RoPE pairs dimension i with i + head_dim/2, interleaved RoPE pairs 2i with 2i + 1. "
    "A query's dimensions are the rows of W_Q, so reordering the rows moves each pair to where split "
    "halves looks for it. Each head is rotated on its own, so the reordering happens inside each head.",
    "Inside a head, the new order is perm = [0, 2, 4, …, head_dim − 2, 1, 3, …, head_dim − 1]: new row "
    "r is old row perm[r]. Head h occupies rows h · head_dim to (h + 1) · head_dim − 1; head_dim = "
    "rows / n_heads.",
    "view the weight as (n_heads, head_dim / 2, 2, d_in): axis 1 is the pair, axis 2 the member; swap "
    "those two axes and reshape back to (rows, d_in). Or index each head's block of rows with perm.",
)

CONVERT = Exercise(
    id="8.4",
    title="Converting interleaved weights for split halves, per head",
    function_name="to_split_halves",
    arg_names=("weight", "n_heads"),
    signature="to_split_halves(weight: (n_heads · head_dim, d_in), n_heads: int) -> (n_heads · head_dim, d_in)",
    reference=to_split_halves,
    cases=(
        Case("2 heads of 4 rows, each row holding its own index", lambda: (*_weight(0, 8, 3, counting=True), 2), 2,
             "fixed"),
        Case("4 heads of head_dim 8, d_in 32", lambda: (*_weight(1, 32, 32), 4), 2, "fixed"),
        Case(f"random: {_drawn(86, 2, 6)} heads of head_dim {2 * _drawn(87, 2, 6)}, d_in 16",
             lambda: (*_weight(2, _drawn(86, 2, 6) * 2 * _drawn(87, 2, 6), 16), _drawn(86, 2, 6)), 2, "random"),
        Case("GQA keys: 2 kv heads of head_dim 16 (k_proj is narrower)", lambda: (*_weight(3, 32, 64), 2), 1, "edge"),
        Case("edge: one head (chapter 8's case)", lambda: (*_weight(4, 16, 16), 1), 1, "edge"),
        Case("edge: head_dim 2 (nothing moves)", lambda: (*_weight(5, 6, 4), 3), 1, "edge"),
    ),
    mistakes=(
        Mistake("permuted across heads: reorder rows inside each head", _whole_matrix, hint=1),
        Mistake("the inverse order: new row r is old row perm[r]", _inverse, hint=2),
        Mistake("head h is rows h·head_dim .. (h+1)·head_dim − 1", _heads_interleaved, hint=2),
        Mistake("columns reordered: a query's dimensions are rows", _columns, hint=1,
                section=SECTION_CONVENTIONS),
    ),
    error_hints=(("shape '[", "view as (n_heads, head_dim // 2, 2, d_in)"),),
    level=WARM_UP,
    hints=CONVERT_HINTS,
)

EXERCISES = (SCALED, ROTARY, OVERSHOOT, CONVERT)
