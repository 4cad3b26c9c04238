"""Chapter 5 exercises: LayerNorm, a pre-LN Transformer block, and top-p (nucleus) filtering."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ...attention import causal_mask
from ...heads import MultiHeadAttention
from ...model import top_p_filter
from ..spec import Case, Exercise, Mistake

EPS = 1e-5  # nn.LayerNorm's default


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _drawn(seed: int, low: int, high: int) -> int:
    """A whole number drawn from [low, high) with a fixed seed: random, but the same on every run."""
    return int(torch.randint(low, high, (1,), generator=_gen(seed)))


# --- 5.1 layer_norm ------------------------------------------------------------------------------

def layer_norm(x, weight, bias):
    """weight · (x − mean) / √(var + 1e-5) + bias, statistics over the last axis, var divided by d.

    x: (..., d), weight and bias: (d,) -> (..., d).
    """
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return weight * (x - mean) / torch.sqrt(var + EPS) + bias


def _norm_over(dims):
    def wrong(x, weight, bias):
        mean = x.mean(dim=dims, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
        return weight * (x - mean) / torch.sqrt(var + EPS) + bias
    return wrong


def _bessel(x, weight, bias):
    mean = x.mean(dim=-1, keepdim=True)
    with warnings.catch_warnings():  # d = 1: "degrees of freedom is <= 0", and NaN, as learners get
        warnings.simplefilter("ignore")
        var = x.var(dim=-1, keepdim=True)
    return weight * (x - mean) / torch.sqrt(var + EPS) + bias


def _eps_outside(x, weight, bias):
    mean = x.mean(dim=-1, keepdim=True)
    std = ((x - mean) ** 2).mean(dim=-1, keepdim=True).sqrt()
    return weight * (x - mean) / (std + EPS) + bias


def _no_eps(x, weight, bias):
    mean = x.mean(dim=-1, keepdim=True)
    std = ((x - mean) ** 2).mean(dim=-1, keepdim=True).sqrt()
    return weight * (x - mean) / std + bias


def _no_affine(x, weight, bias):
    return layer_norm(x, torch.ones_like(weight), torch.zeros_like(bias))


LAYER_NORM_MISTAKES = (
    Mistake("the variance divides by d − 1 (Bessel's correction), not d", _bessel),
    Mistake("eps is added after the square root: use √(var + eps)", _eps_outside),
    Mistake("eps is missing: divide by √(var + eps)", _no_eps),
    Mistake("normalised over the sequence axis, not the last axis", _norm_over(-2)),
    # dim=1 is the sequence axis of (batch, seq, d) but the last axis of a 2-D input: right there
    Mistake("normalised over the sequence axis, not the last axis", _norm_over(1)),
    Mistake("normalised over the whole tensor, not each token's features", _norm_over(None)),
    Mistake("normalised over each sequence, not each token", _norm_over((-2, -1))),
    Mistake("weight and bias are not applied", _no_affine),
)


def _ln_inputs(seed: int, shape: tuple[int, ...], scale: float = 3.0, shift: float = 1.0):
    g = _gen(seed)
    x = scale * torch.randn(*shape, generator=g) + shift
    d = shape[-1]
    weight = 0.5 + torch.rand(d, generator=g)          # in [0.5, 1.5): not the identity
    bias = torch.rand(d, generator=g) - 0.5            # in [-0.5, 0.5)
    return x, weight, bias


_B51, _T51, _D51 = _drawn(51, 2, 5), _drawn(52, 3, 9), _drawn(53, 4, 33)

LAYER_NORM = Exercise(
    id="5.1",
    title="LayerNorm from scratch",
    function_name="layer_norm",
    arg_names=("x", "weight", "bias"),
    signature="layer_norm(x: (..., d), weight: (d,), bias: (d,)) -> (..., d)",
    reference=layer_norm,
    cases=(
        Case("a batch of 2 sequences of 3 tokens, d = 4", lambda: _ln_inputs(0, (2, 3, 4)), 2, "fixed"),
        Case(f"random size: ({_B51}, {_T51}, {_D51})", lambda: _ln_inputs(1, (_B51, _T51, _D51)), 2,
             "random"),
        Case("one sequence of 5 tokens, d = 64", lambda: _ln_inputs(2, (1, 5, 64)), 2, "fixed"),
        Case("edge: nearly constant tokens (variance about 1e-6, below eps)",
             lambda: _ln_inputs(3, (2, 4, 8), scale=1e-3, shift=0.0), 2, "edge"),
        Case("edge: a 2-D input (tokens, d) with no batch axis", lambda: _ln_inputs(4, (6, 16)), 1, "edge"),
        Case("edge: d = 1 (every output is the bias)", lambda: _ln_inputs(5, (2, 3, 1)), 1, "edge"),
    ),
    mistakes=LAYER_NORM_MISTAKES,
    # A size mismatch here is nearly always a mean or variance whose last axis was dropped; the
    # grader's shape hint names the line that dropped it (runner.shape_hint).
)


# --- 5.2 pre_ln_block ----------------------------------------------------------------------------

def pre_ln_block(x, attention, ffn, norm1, norm2):
    """A pre-LN block: x + attention(norm1(x)), then that plus ffn(norm2(that)).

    x: (batch, seq, d_model); attention, ffn, norm1, norm2: callables (batch, seq, d_model) -> same.
    """
    x = x + attention(norm1(x))
    return x + ffn(norm2(x))


def _post_ln(x, attention, ffn, norm1, norm2):
    x = norm1(x + attention(x))
    return norm2(x + ffn(x))


def _no_attention_residual(x, attention, ffn, norm1, norm2):
    x = attention(norm1(x))
    return x + ffn(norm2(x))


def _no_ffn_residual(x, attention, ffn, norm1, norm2):
    x = x + attention(norm1(x))
    return ffn(norm2(x))


def _residual_from_normalised(x, attention, ffn, norm1, norm2):
    h = norm1(x)
    x = h + attention(h)
    h = norm2(x)
    return h + ffn(h)


def _parallel(x, attention, ffn, norm1, norm2):
    return x + attention(norm1(x)) + ffn(norm2(x))


def _norms_swapped(x, attention, ffn, norm1, norm2):
    return pre_ln_block(x, attention, ffn, norm2, norm1)


def _first_of_attention(x, attention, ffn, norm1, norm2):  # as if attention returned (out, weights)
    return pre_ln_block(x, lambda h: attention(h)[0], ffn, norm1, norm2)


def _ffn_first(x, attention, ffn, norm1, norm2):
    return pre_ln_block(x, ffn, attention, norm1, norm2)


def _norm1_twice(x, attention, ffn, norm1, norm2):
    return pre_ln_block(x, attention, ffn, norm1, norm1)


def _output_normalised(x, attention, ffn, norm1, norm2):
    return norm2(pre_ln_block(x, attention, ffn, norm1, norm2))


BLOCK_MISTAKES = (
    Mistake("this is post-LN, norm(x + sublayer(x)): normalise the input", _post_ln),
    Mistake("the residual around attention is missing", _no_attention_residual),
    Mistake("the residual around the FFN is missing", _no_ffn_residual),
    Mistake("the residual adds norm(x): add the sub-layer's output to x", _residual_from_normalised),
    Mistake("the FFN reads the block's input, not x after attention", _parallel),
    Mistake("norm1 and norm2 are swapped", _norms_swapped),
    Mistake("the FFN comes first: attention, then the FFN", _ffn_first),
    Mistake("attention returns a tensor, not a tuple: drop the [0]", _first_of_attention),
    Mistake("norm1 is used twice: the FFN's input goes through norm2", _norm1_twice),
    Mistake("the output is normalised: pre-LN returns x as it is", _output_normalised),
)


class _CausalSelfAttention(nn.Module):
    """Chapter 4's attention as a plain function of x: causal self-attention, weights dropped."""

    def __init__(self, d: int):
        super().__init__()
        self.mha = MultiHeadAttention(d, 2)

    def forward(self, x):  # (batch, seq, d) -> (batch, seq, d)
        return self.mha(x, mask=causal_mask(x.shape[-2]))[0]


def _block_inputs(seed: int, batch: int, seq: int, d: int):
    """x and four sub-layers with fixed random weights (LayerNorms too: weight not 1, bias not 0)."""
    with torch.random.fork_rng():  # build the layers reproducibly, leave the learner's RNG alone
        torch.manual_seed(seed)
        x = 2 * torch.randn(batch, seq, d) + 0.5
        layers = (_CausalSelfAttention(d), nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)),
                  nn.LayerNorm(d), nn.LayerNorm(d))
        with torch.no_grad():
            for layer in layers:
                for p in layer.parameters():
                    p.add_(0.3 * torch.randn(p.shape)).requires_grad_(False)
    return (x, *layers)


_B52, _T52, _D52 = _drawn(61, 1, 4), _drawn(62, 2, 10), 2 * _drawn(63, 2, 12)

PRE_LN_BLOCK = Exercise(
    id="5.2",
    title="A pre-LN Transformer block",
    function_name="pre_ln_block",
    arg_names=("x", "attention", "ffn", "norm1", "norm2"),
    signature="pre_ln_block(x: (batch, seq, d_model), attention, ffn, norm1, norm2) -> (batch, seq, d_model)",
    reference=pre_ln_block,
    cases=(
        Case("1 sequence of 4 tokens, d_model = 8", lambda: _block_inputs(0, 1, 4, 8), 2, "fixed"),
        Case(f"random size: ({_B52}, {_T52}, {_D52})", lambda: _block_inputs(10, _B52, _T52, _D52), 2,
             "random"),
        Case("2 sequences of 6 tokens, d_model = 16", lambda: _block_inputs(20, 2, 6, 16), 2, "fixed"),
        Case("edge: a single token", lambda: _block_inputs(30, 2, 1, 8), 1, "edge"),
    ),
    mistakes=BLOCK_MISTAKES,
)


# --- 5.3 top_p_filter ----------------------------------------------------------------------------

def _sorted_keep(probs, keep_rule):
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    keep_sorted = keep_rule(sorted_probs)
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def _crossing_left_out(probs, p, inclusive=False):
    keep = _sorted_keep(probs, lambda s: s.cumsum(-1) <= p if inclusive else s.cumsum(-1) < p)
    kept = probs * keep
    return kept / kept.sum(dim=-1, keepdim=True)


def _not_renormalised(probs, p):
    keep = _sorted_keep(probs, lambda s: s.cumsum(-1) - s < p)
    return probs * keep


def _total_p_not_enough(probs, p):  # mass_before <= p: a total of exactly p does not stop it
    keep = _sorted_keep(probs, lambda s: s.cumsum(-1) - s <= p)
    kept = probs * keep
    return kept / kept.sum(dim=-1, keepdim=True)


def _one_too_many(probs, p):
    def rule(s):
        n = (s.cumsum(-1) - s < p).sum(dim=-1, keepdim=True) + 1  # (..., 1)
        return torch.arange(s.shape[-1]) < n
    keep = _sorted_keep(probs, rule)
    kept = probs * keep
    return kept / kept.sum(dim=-1, keepdim=True)


def _stays_sorted(probs, p):
    s = probs.sort(dim=-1, descending=True).values
    kept = s * (s.cumsum(-1) - s < p)
    return kept / kept.sum(dim=-1, keepdim=True)


def _least_likely(probs, p):
    s, order = probs.sort(dim=-1)  # ascending: the wrong end
    keep_sorted = s.cumsum(-1) - s < p
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    kept = probs * keep
    return kept / kept.sum(dim=-1, keepdim=True)


TOP_P_MISTAKES = (
    Mistake("the token that crosses p is left out: keep it", _crossing_left_out),
    # cumsum <= p: the same, but right where the total reaches p exactly (and at p = 1)
    Mistake("the token that crosses p is left out: keep it",
            lambda probs, p: _crossing_left_out(probs, p, inclusive=True)),
    Mistake("the kept probabilities are not renormalised", _not_renormalised),
    # Before "one token too many": on the exact-tie case the two agree, and a learner with <= p has
    # only that case wrong, where this message says more.
    Mistake("a running total equal to p reaches p: stop there", _total_p_not_enough),
    Mistake("one token too many: stop at the token that reaches p", _one_too_many),
    Mistake("the result is in sorted order: scatter it back", _stays_sorted),
    Mistake("the least likely tokens are kept: sort descending", _least_likely),
)


def _five_words():
    return torch.softmax(torch.tensor([3.0, 2.2, 1.5, 0.3, -1.0]), dim=-1), 0.8


def _exact_tie():
    """Two rows whose running total, most likely first, is exactly p = 0.75 after 2 and 3 tokens.

    Every probability is a multiple of 1/64 and all are different, so the sums are exact in float32
    and float64 alike and no sort order can change which tokens are kept. The smallest set that
    reaches p stops at the token that makes the total exactly p.
    """
    rows = [[4, 32, 2, 7, 16, 3],   # sorted: 32, 16 | 7, 4, 3, 2   (32 + 16 = 48 = 0.75 · 64)
            [8, 4, 24, 5, 16, 7]]   # sorted: 24, 16, 8 | 7, 5, 4   (24 + 16 + 8 = 48)
    return torch.tensor(rows) / 64.0, 0.75


def _all_of_it():
    """p = 1, with rows that sum to exactly 1 (multiples of 1/256): a softmax row's float32 total is
    1 give or take a rounding, which would decide whether `cumsum <= p` keeps the last token."""
    rows = [[10, 70, 3, 41, 100, 32],
            [5, 90, 60, 1, 44, 56]]
    return torch.tensor(rows) / 256.0, 1.0


def _random_rows(seed: int, rows: int, vocab: int, p: float, temperature: float = 1.0):
    logits = torch.randn(rows, vocab, generator=_gen(seed)) / temperature
    return torch.softmax(logits, dim=-1), p


_P53 = round(0.3 + 0.6 * float(torch.rand(1, generator=_gen(71))), 2)
_V53 = _drawn(72, 8, 40)

TOP_P = Exercise(
    id="5.3",
    title="Top-p (nucleus) filtering",
    function_name="top_p_filter",
    arg_names=("probs", "p"),
    signature="top_p_filter(probs: (..., vocab), p: float) -> (..., vocab)",
    reference=top_p_filter,
    cases=(
        Case("the chapter's five words, p = 0.8", _five_words, 2, "fixed"),
        Case(f"random: 4 rows of {_V53} tokens, p = {_P53}", lambda: _random_rows(1, 4, _V53, _P53), 2,
             "random"),
        Case("a batch (2, 3, 10), p = 0.9", lambda: (_random_rows(2, 6, 10, 0.9, 0.5)[0].reshape(2, 3, 10), 0.9),
             2, "fixed"),
        Case("edge: p = 0.05 keeps only the most likely token", lambda: _random_rows(3, 3, 12, 0.05), 1, "edge"),
        Case("edge: p = 1 keeps every token", _all_of_it, 1, "edge"),
        Case("edge: one row with a single very likely token, p = 0.6",
             lambda: (torch.tensor([[0.02, 0.9, 0.05, 0.03]]), 0.6), 1, "edge"),
        Case("edge: the running total hits p = 0.75 exactly", _exact_tie, 1, "edge"),
    ),
    mistakes=TOP_P_MISTAKES,
)

EXERCISES = (LAYER_NORM, PRE_LN_BLOCK, TOP_P)
