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
    Mistake("normalised over the whole tensor, not each token's features", _norm_over(None)),
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
    atol=1e-4,
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


BLOCK_MISTAKES = (
    Mistake("this is post-LN, norm(x + sublayer(x)): normalise the input", _post_ln),
    Mistake("the residual around attention is missing", _no_attention_residual),
    Mistake("the residual around the FFN is missing", _no_ffn_residual),
    Mistake("the residual adds norm(x): add the sub-layer's output to x", _residual_from_normalised),
    Mistake("the FFN reads the block's input, not x after attention", _parallel),
    Mistake("norm1 and norm2 are swapped", _norms_swapped),
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
    atol=1e-4,
)


# --- 5.3 top_p_filter ----------------------------------------------------------------------------

def _sorted_keep(probs, keep_rule):
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    keep_sorted = keep_rule(sorted_probs)
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def _crossing_left_out(probs, p):
    keep = _sorted_keep(probs, lambda s: s.cumsum(-1) < p)
    kept = probs * keep
    return kept / kept.sum(dim=-1, keepdim=True)


def _not_renormalised(probs, p):
    keep = _sorted_keep(probs, lambda s: s.cumsum(-1) - s < p)
    return probs * keep


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
    Mistake("the kept probabilities are not renormalised", _not_renormalised),
    Mistake("one token too many: stop at the token that reaches p", _one_too_many),
    Mistake("the result is in sorted order: scatter it back", _stays_sorted),
    Mistake("the least likely tokens are kept: sort descending", _least_likely),
)


def _five_words():
    return torch.softmax(torch.tensor([3.0, 2.2, 1.5, 0.3, -1.0]), dim=-1), 0.8


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
        Case("edge: p = 1 keeps every token", lambda: _random_rows(4, 2, 6, 1.0), 1, "edge"),
        Case("edge: one row with a single very likely token, p = 0.6",
             lambda: (torch.tensor([[0.02, 0.9, 0.05, 0.03]]), 0.6), 1, "edge"),
    ),
    mistakes=TOP_P_MISTAKES,
)

EXERCISES = (LAYER_NORM, PRE_LN_BLOCK, TOP_P)
