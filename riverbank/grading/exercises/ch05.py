"""Chapter 5 exercises: RMSNorm's backward pass by hand, top-k with top-p, a configurable pre-LN
decoder block, a LLaMA-style model trained to reverse digits, and which single attention head of the
trained model does best."""

from __future__ import annotations

import copy
import functools
import inspect

import torch
import torch.nn.functional as F
from torch import nn

from ...attention import causal_mask
from ...heads import MultiHeadAttention
from ...tasks import VOCAB_SIZE, Reversal
from ..sandbox import signature_problem, switched_off
from ..spec import BUILD, EXPERIMENT, SAFETY, WARM_UP, Case, Exercise, Mistake, WrongKind

RMS_EPS = 1e-6   # LLaMA's RMSNorm epsilon (Touvron et al., 2023)
LN_EPS = 1e-5    # nn.LayerNorm's default

RMSNORM = "chapter 5, section “RMSNorm”"
RESIDUAL = "chapter 5, section “Residual connections”"
GELU = "chapter 5, section “ReLU against GELU”"
PREPOST = "chapter 5, section “Pre-LN and post-LN”"
DECODER = "chapter 5, section “Encoder blocks, decoder blocks and cross-attention”"
TRAINING = "chapter 5, section “Training”"
SAMPLING = "chapter 5, section “Generating: greedy, temperature and top-p”"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _drawn(seed: int, low: int, high: int) -> int:
    """A whole number drawn from [low, high) with a fixed seed: random, but the same on every run."""
    return int(torch.randint(low, high, (1,), generator=_gen(seed)))


# --- 5.1 rms_norm_backward -----------------------------------------------------------------------
# The learner returns the pair (grad_x, grad_weight). The check compares them as one table: grad_x's
# rows (every leading axis flattened), then grad_weight as the last row (_as_table). The reference,
# the float64 truth and the known mistakes are functions of the case's inputs that return that table.

def rms_norm(x, weight, eps):
    """The chapter's RMSNorm: weight · x / √(mean(x²) + eps), the mean over the last axis.

    x: (..., d), weight: (d,), eps: float -> (..., d).
    """
    mean_square = x.pow(2).mean(dim=-1, keepdim=True)  # (..., 1)
    return weight * x / torch.sqrt(mean_square + eps)


def _as_table(grad_x, grad_weight):
    """(..., d) and (d,) -> (rows + 1, d): grad_x's rows, then grad_weight."""
    return torch.cat([grad_x.reshape(-1, grad_x.shape[-1]), grad_weight.reshape(1, -1)])


def _tabled(fn):
    """A function in the learner's form, returning (grad_x, grad_weight), as the check compares it."""
    @functools.wraps(fn)
    def table(x, weight, grad_out, eps):
        return _as_table(*fn(x, weight, grad_out, eps))
    return table


def _autograd(forward):
    def grads(x, weight, grad_out, eps):
        x, weight = (t.detach().clone().requires_grad_() for t in (x, weight))
        with torch.enable_grad():
            return torch.autograd.grad(forward(x, weight, eps), (x, weight), grad_out)
    grads.__name__ = f"autograd_of_{forward.__name__}"
    return grads


def _rms_backward(x, weight, grad_out, eps, wrong=frozenset()):
    """RMSNorm's backward by hand, with a switch for each named mistake.

    rms = √(mean(x²) + eps), x̂ = x / rms, ĝ = weight · grad_out:
    grad_x = (ĝ − x̂ · mean(ĝ · x̂)) / rms, grad_weight = Σ grad_out · x̂ over every leading axis.
    """
    if "grad_out_ignored" in wrong:
        grad_out = torch.ones_like(grad_out)
    if "layer_norm" in wrong:  # LayerNorm's statistics: x centred first
        x = x - x.mean(dim=-1, keepdim=True)
    mean_square = x.pow(2).mean(dim=-1, keepdim=True)                    # (..., 1)
    if "no_eps" in wrong:
        rms = torch.sqrt(mean_square)
    elif "eps_outside" in wrong or "eps_outside_exact" in wrong:
        rms = torch.sqrt(mean_square) + eps
    else:
        rms = torch.sqrt(mean_square + eps)
    x_hat = x / rms
    g_hat = grad_out if "weight_left_out" in wrong else weight * grad_out  # (..., d)
    reduce = torch.sum if "sum_not_mean" in wrong else torch.mean
    correction = x_hat * reduce(g_hat * x_hat, dim=-1, keepdim=True)
    if "rms_constant" in wrong:
        grad_x = g_hat / rms
    elif "sign" in wrong:
        grad_x = (g_hat + correction) / rms
    elif "eps_outside_exact" in wrong:  # the exact gradient of the forward with eps outside
        grad_x = g_hat / rms - x * (g_hat * x).mean(dim=-1, keepdim=True) / (rms ** 2 * torch.sqrt(mean_square))
    elif "mean_subtracted" in wrong or "layer_norm" in wrong:
        grad_x = (g_hat - g_hat.mean(dim=-1, keepdim=True) - correction) / rms
    elif "correction_not_divided" in wrong:
        grad_x = g_hat / rms - correction
    else:
        grad_x = (g_hat - correction) / rms
    per_token = grad_out * (weight * x_hat if "weight_in_grad_weight" in wrong else
                            x if "x_not_normalised" in wrong else x_hat)
    per_token = per_token.reshape(-1, x.shape[-1])                       # (rows, d)
    grad_weight = per_token.mean(dim=0) if "averaged" in wrong else per_token.sum(dim=0)
    return grad_x, grad_weight


def rms_norm_backward(x, weight, grad_out, eps):
    """The gradients of RMSNorm by hand: (grad_x (..., d), grad_weight (d,))."""
    return _rms_backward(x, weight, grad_out, eps)


def _rms_backward_wrong(*wrong):
    def fn(x, weight, grad_out, eps):
        return _rms_backward(x, weight, grad_out, eps, frozenset(wrong))
    fn.__name__ = "rms_norm_backward_" + "_".join(wrong)
    return _tabled(fn)


def _rms_backward_fixed_eps(value):
    def fn(x, weight, grad_out, eps):
        return _rms_backward(x, weight, grad_out, value)
    fn.__name__ = f"rms_norm_backward_eps_{value:g}"
    return _tabled(fn)


RMS_BACKWARD_MISTAKES = (
    Mistake("the root mean square is treated as a constant: it depends on x too, which adds the term "
            "−x̂ · mean(ĝ · x̂) / rms to grad_x", _rms_backward_wrong("rms_constant"), hint=1, section=RMSNORM),
    Mistake("this is LayerNorm's gradient, with the mean of ĝ subtracted: RMSNorm does not centre, so "
            "grad_x has no −mean(ĝ) term", _rms_backward_wrong("mean_subtracted"), hint=1, section=RMSNORM),
    Mistake("this is LayerNorm's gradient, with the mean of ĝ subtracted: RMSNorm does not centre, so "
            "grad_x has no −mean(ĝ) term", _rms_backward_wrong("layer_norm"), hint=1, section=RMSNORM),
    Mistake("eps is added after the square root: rms = √(mean(x²) + eps)", _rms_backward_wrong("eps_outside"),
            hint=2, section=RMSNORM),
    Mistake("eps is added after the square root: rms = √(mean(x²) + eps)",
            _rms_backward_wrong("eps_outside_exact"), hint=2, section=RMSNORM),
    Mistake("eps is missing: rms = √(mean(x²) + eps)", _rms_backward_wrong("no_eps"), hint=2),
    Mistake("the eps argument is not used: a fixed number stands in its place", _rms_backward_fixed_eps(RMS_EPS),
            hint=2),
    Mistake("the eps argument is not used: a fixed number stands in its place", _rms_backward_fixed_eps(LN_EPS),
            hint=2),
    Mistake("grad_x's second term sums over the features: it is a mean, (1/d) Σ_j ĝ_j x̂_j",
            _rms_backward_wrong("sum_not_mean"), hint=2),
    Mistake("grad_x's second term has the wrong sign: grad_x = (ĝ − x̂ · mean(ĝ · x̂)) / rms",
            _rms_backward_wrong("sign"), hint=2),
    Mistake("grad_x's second term is not divided by rms: both terms are, (ĝ − x̂ · mean(ĝ · x̂)) / rms",
            _rms_backward_wrong("correction_not_divided"), hint=2),
    Mistake("weight is left out of grad_x: the gradient reaching x̂ is ĝ = weight · grad_out",
            _rms_backward_wrong("weight_left_out"), hint=2),
    Mistake("grad_out is not used: the gradients are those of sum(y), as if grad_out were all ones",
            _rms_backward_wrong("grad_out_ignored"), hint=2),
    Mistake("grad_weight is averaged over the tokens: each token adds its share, so it is a sum",
            _rms_backward_wrong("averaged"), hint=3),
    Mistake("grad_weight uses x: it is Σ grad_out · x̂, with x̂ = x / rms", _rms_backward_wrong("x_not_normalised"),
            hint=2),
    Mistake("grad_weight has weight in it: it is Σ grad_out · x̂, without the weight",
            _rms_backward_wrong("weight_in_grad_weight"), hint=2),
)

AUTOGRAD_OFF = ("autograd is switched off while this exercise is checked (backward(), torch.autograd.grad, "
                "torch.func): write the gradients by hand, and test them against autograd outside the check")


def _autograd_entry_points():
    import torch.autograd.functional as functional
    import torch.func as func

    return ([(torch.autograd, "grad"), (torch.autograd, "backward"), (torch.Tensor, "backward")]
            + [(func, name) for name in ("grad", "grad_and_value", "vjp", "jvp", "jacrev", "jacfwd", "hessian",
                                         "linearize") if hasattr(func, name)]
            + [(functional, name) for name in ("vjp", "jvp", "jacobian", "hessian", "vhp", "hvp")
               if hasattr(functional, name)])


def _without_autograd():
    return switched_off(_autograd_entry_points(), AUTOGRAD_OFF)


GRAD_WEIGHT_SHAPE = ("grad_weight is not summed over every leading axis: weight is shared by every token of every "
                     "sequence, so grad_weight adds up all their shares and has weight's shape (d,)")
SWAPPED = "the two gradients are swapped: return (grad_x, grad_weight), in that order"


def _two_gradients(out, x, weight):
    """The learner's (grad_x, grad_weight), checked for kind and shape; None stays None (the
    feedback then asks for a return)."""
    if out is None:
        return None
    if isinstance(out, torch.Tensor):
        raise TypeError(f"rms_norm_backward returned one tensor, of shape {tuple(out.shape)}: return the pair "
                        "(grad_x, grad_weight)")
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        length = f" of {len(out)}" if isinstance(out, (tuple, list)) else ""
        raise TypeError(f"rms_norm_backward returned {type(out).__name__}{length}: return the pair "
                        "(grad_x, grad_weight)")
    grad_x, grad_weight = out
    for name, g in (("grad_x", grad_x), ("grad_weight", grad_weight)):
        if not isinstance(g, torch.Tensor):
            raise TypeError(f"{name} is {'None' if g is None else type(g).__name__}, not a tensor")
    if grad_x.shape == weight.shape and grad_weight.shape == x.shape:
        raise TypeError(SWAPPED)
    if grad_x.shape != x.shape:
        raise TypeError(f"grad_x has shape {tuple(grad_x.shape)}, but x has {tuple(x.shape)}: grad_x has x's shape")
    if grad_weight.shape != weight.shape:
        raise TypeError(f"grad_weight has shape {tuple(grad_weight.shape)}, but weight has {tuple(weight.shape)}")
    return grad_x, grad_weight


def _backward_adapt(fn):
    """What the check calls: the learner's function with autograd switched off, its two gradients
    as one table."""
    if isinstance(fn, type) or not callable(fn):
        raise WrongKind(f"expected your function rms_norm_backward(x, weight, grad_out, eps), got {_kind(fn)}")
    wrong = signature_problem(fn, ("x", "weight", "grad_out", "eps"))
    if wrong:
        raise WrongKind(f"{wrong}; it should be rms_norm_backward(x, weight, grad_out, eps)")

    @functools.wraps(fn)
    def checked(x, weight, grad_out, eps):
        with _without_autograd():
            out = fn(x, weight, grad_out, eps)
        grads = _two_gradients(out, x, weight)
        return None if grads is None else _as_table(*grads)

    return checked


def _backward_inputs(seed: int, shape: tuple[int, ...], scale: float = 2.0, shift: float = 1.0,
                     eps: float = RMS_EPS, zero_token: bool = False):
    g = _gen(seed)
    x = scale * torch.randn(*shape, generator=g) + shift   # a mean away from 0: centring shows
    if zero_token:
        x[..., 0, :] = 0.0
    weight = 0.5 + torch.rand(shape[-1], generator=g)      # in [0.5, 1.5): not the identity
    grad_out = torch.randn(*shape, generator=g)            # not all ones: grad_out must be used
    return x, weight, grad_out, eps


_B51, _T51, _D51 = _drawn(51, 2, 5), _drawn(52, 3, 9), _drawn(53, 4, 33)

RMS_NORM_BACKWARD = Exercise(
    id="5.1",
    title="RMSNorm's backward pass by hand",
    function_name="rms_norm_backward",
    arg_names=("x", "weight", "grad_out", "eps"),
    signature=("rms_norm_backward(x: (..., d), weight: (d,), grad_out: (..., d), eps: float) "
               "-> (grad_x: (..., d), grad_weight: (d,))"),
    reference=_tabled(_autograd(rms_norm)),
    reference32=_tabled(rms_norm_backward),   # the formula in float32, as learners write it
    cases=(
        Case("a batch of 2 sequences of 3 tokens, d = 8", lambda: _backward_inputs(0, (2, 3, 8)), 2, "fixed"),
        Case(f"random size: ({_B51}, {_T51}, {_D51})", lambda: _backward_inputs(1, (_B51, _T51, _D51)), 2,
             "random"),
        Case("one sequence of 5 tokens, d = 64", lambda: _backward_inputs(2, (1, 5, 64), shift=-0.5), 2, "fixed"),
        Case("edge: tiny tokens (mean of x² about 1e-6, the size of eps)",
             lambda: _backward_inputs(3, (2, 4, 8), scale=1e-3, shift=2e-4), 1, "edge"),
        Case("edge: eps = 0.1", lambda: _backward_inputs(4, (2, 3, 8), scale=0.5, shift=0.2, eps=0.1), 1, "edge"),
        Case("edge: a token of zeros (its grad_x is weight · grad_out / √eps)",
             lambda: _backward_inputs(5, (2, 3, 8), zero_token=True), 1, "edge"),
        Case("edge: a 2-D input (tokens, d) with no batch axis", lambda: _backward_inputs(6, (6, 16)), 1, "edge"),
    ),
    mistakes=RMS_BACKWARD_MISTAKES,
    level=WARM_UP,
    adapt=_backward_adapt,
    error_hints=(
        ("grad_weight has shape", GRAD_WEIGHT_SHAPE),
        ("gradients are swapped", SWAPPED),
    ),
    hints=(
        "Two paths lead from x to the output y = weight · x / rms: x itself in the numerator, and rms, which "
        "depends on every feature of the token. grad_x gets a term from each: the first, ĝ / rms with "
        "ĝ = weight · grad_out, is what you would get if rms were a constant; the second comes from "
        "∂rms/∂x_i = x_i / (d · rms). weight has one path, and every token of every sequence uses it.",
        "With rms = √(mean(x²) + eps), x̂ = x / rms and ĝ = weight · grad_out, for each token: grad_x = "
        "(ĝ − x̂ · mean(ĝ · x̂)) / rms, the mean over the d features. grad_weight = the sum of grad_out · x̂ "
        "over every leading axis. Unlike LayerNorm's gradient, there is no −mean(ĝ) term: nothing was "
        "subtracted in the forward pass.",
        "rms: one reduction over the last axis, kept so that it broadcasts (..., 1). Then x̂, ĝ, the mean of "
        "their product over the last axis (kept as well), grad_x in one line. For grad_weight, flatten the "
        "leading axes of grad_out · x̂ into one, (rows, d), and sum over it. Return both, grad_x first.",
    ),
    nan_hint="a token of zeros has mean(x²) = 0: with eps inside the square root, rms = √eps and every "
             "division stays finite",
)


# --- 5.2 top_k_top_p_filter ----------------------------------------------------------------------

def _sorted_keep(probs, keep_rule):
    """Apply keep_rule to the probabilities sorted most likely first, and put the verdicts back in
    the tokens' own order."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    keep_sorted = keep_rule(sorted_probs)
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def _renormalised(probs, keep):
    kept = probs * keep
    return kept / kept.sum(dim=-1, keepdim=True)


def _top_k_rule(k, p, offset=0, on_original=False, inclusive=False):
    def rule(s):
        in_top_k = torch.arange(s.shape[-1]) < k + offset                # (vocab,)
        top = s * in_top_k
        if not on_original:
            top = top / top.sum(dim=-1, keepdim=True)                     # the k, renormalised
        before = top.cumsum(dim=-1) - top
        return in_top_k & ((top.cumsum(dim=-1) <= p) if inclusive else (before < p))
    return rule


def top_k_top_p_filter(probs, k, p):
    """Top-k, then top-p (as Hugging Face's samplers apply them): keep the k most likely tokens,
    renormalise them, keep the smallest set of those whose renormalised total reaches p, renormalise.

    probs: (..., vocab), rows summing to 1; k: int >= 1 (k >= vocab keeps every token); p in (0, 1].
    Returns (..., vocab), each probability at its own token's index, rows summing to 1.
    """
    return _renormalised(probs, _sorted_keep(probs, _top_k_rule(k, p)))


def _kp_on_original(probs, k, p):
    return _renormalised(probs, _sorted_keep(probs, _top_k_rule(k, p, on_original=True)))


def _kp_not_renormalised(probs, k, p):
    return probs * _sorted_keep(probs, _top_k_rule(k, p))


def _kp_off_by(offset):
    def wrong(probs, k, p):
        return _renormalised(probs, _sorted_keep(probs, _top_k_rule(k, p, offset=offset)))
    return wrong


def _kp_crossing_left_out(probs, k, p):
    return _renormalised(probs, _sorted_keep(probs, _top_k_rule(k, p, inclusive=True)))


def _kp_k_ignored(probs, k, p):
    return _renormalised(probs, _sorted_keep(probs, _top_k_rule(probs.shape[-1], p)))


def _kp_p_ignored(probs, k, p):
    return _renormalised(probs, _sorted_keep(probs, _top_k_rule(k, 1.0)))


def _kp_sorted(probs, k, p):
    s = probs.sort(dim=-1, descending=True).values
    return _renormalised(s, _top_k_rule(k, p)(s))


def _kp_least_likely(probs, k, p):
    s, order = probs.sort(dim=-1)  # ascending: the wrong end
    keep = torch.zeros_like(s, dtype=torch.bool).scatter(-1, order, _top_k_rule(k, p)(s))
    return _renormalised(probs, keep)


TOP_K_TOP_P_MISTAKES = (
    Mistake("top-p is measured on the original probabilities: renormalise the k kept tokens first, "
            "then cut at p", _kp_on_original, hint=2),
    Mistake("the kept probabilities are not renormalised", _kp_not_renormalised, hint=2, section=SAMPLING),
    Mistake("one token too many: top-k keeps k tokens, ranks 0 to k − 1", _kp_off_by(1), hint=3),
    Mistake("one token too few: top-k keeps k tokens, ranks 0 to k − 1", _kp_off_by(-1), hint=3),
    Mistake("the token that crosses p is left out: keep it", _kp_crossing_left_out, hint=2, section=SAMPLING),
    Mistake("k is not applied: only top-p cuts", _kp_k_ignored, hint=1),
    Mistake("p is not applied: only top-k cuts", _kp_p_ignored, hint=1),
    Mistake("the result is in sorted order: put each probability back at its token's index", _kp_sorted, hint=3),
    Mistake("the least likely tokens are kept: sort descending", _kp_least_likely, hint=3),
)


def _five_words(k, p):
    return torch.softmax(torch.tensor([3.0, 2.2, 1.5, 0.3, -1.0]), dim=-1), k, p


def _kp_random_rows(seed: int, rows: int, vocab: int, k: int, p: float, temperature: float = 1.0):
    logits = torch.randn(rows, vocab, generator=_gen(seed)) / temperature
    return torch.softmax(logits, dim=-1), k, p


_V52 = _drawn(81, 12, 40)
_K52 = _drawn(82, 3, 8)
_P52 = round(0.5 + 0.4 * float(torch.rand(1, generator=_gen(83))), 2)

TOP_K_TOP_P = Exercise(
    id="5.2",
    title="Top-k, then top-p",
    function_name="top_k_top_p_filter",
    arg_names=("probs", "k", "p"),
    signature="top_k_top_p_filter(probs: (..., vocab), k: int, p: float) -> (..., vocab)",
    reference=top_k_top_p_filter,
    cases=(
        Case("the chapter's five words, k = 3, p = 0.85", lambda: _five_words(3, 0.85), 2, "fixed"),
        Case(f"random: 4 rows of {_V52} tokens, k = {_K52}, p = {_P52}",
             lambda: _kp_random_rows(1, 4, _V52, _K52, _P52, 0.7), 2, "random"),
        Case("a batch (2, 3, 10), k = 4, p = 0.7",
             lambda: (_kp_random_rows(2, 6, 10, 4, 0.7, 0.6)[0].reshape(2, 3, 10), 4, 0.7), 2, "fixed"),
        Case("edge: k = 1 is greedy", lambda: _kp_random_rows(3, 3, 12, 1, 0.9), 1, "edge"),
        Case("edge: k larger than the vocabulary, only p cuts", lambda: _kp_random_rows(4, 3, 8, 50, 0.75),
             1, "edge"),
        Case("edge: p = 1, only k cuts", lambda: _kp_random_rows(5, 3, 10, 4, 1.0), 1, "edge"),
        Case("edge: a flat distribution, k = 6, p = 0.5", lambda: _kp_random_rows(6, 2, 16, 6, 0.5, 8.0), 1, "edge"),
    ),
    mistakes=TOP_K_TOP_P_MISTAKES,
    level=WARM_UP,
    hints=(
        "Two cuts, one after the other. Top-k keeps the k most likely tokens, whatever their mass. Top-p "
        "then works on what top-k left, as if those k tokens were the whole distribution.",
        "After top-k, renormalise the k kept probabilities so they sum to 1. On those, keep the smallest "
        "set of most likely tokens whose total reaches p: a token is kept when the total of the tokens "
        "ranked above it is still below p. Renormalise again at the end.",
        "Sort each row descending once (values and their indices). Work on the sorted row: a rank < k "
        "test, a renormalisation, a running total minus each entry, a < p test. Combine the two tests, "
        "scatter the verdicts back to the tokens' own indices, multiply, renormalise.",
    ),
)


# --- 5.3 DecoderBlock ----------------------------------------------------------------------------

class _RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = RMS_EPS, centre: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps, self.centre = eps, centre

    def forward(self, x):
        if self.centre:
            x = x - x.mean(dim=-1, keepdim=True)
        return self.weight * x / torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)


class _GeluFFN(nn.Module):
    def __init__(self, d: int, d_ff: int, activation=F.gelu):
        super().__init__()
        self.expand, self.contract = nn.Linear(d, d_ff), nn.Linear(d_ff, d)
        self.activation = activation

    def forward(self, x):
        return self.contract(self.activation(self.expand(x)))


class _SwiGLU(nn.Module):
    def __init__(self, d: int, d_ff: int, variant: str = "right"):
        super().__init__()
        self.gate = nn.Linear(d, d_ff, bias=False)
        self.up = nn.Linear(d, d_ff, bias=False)
        self.down = nn.Linear(d_ff, d, bias=False)
        self.variant = variant

    def forward(self, x):
        gate, up = self.gate(x), self.up(x)
        if self.variant == "swapped":
            gate, up = up, gate
        if self.variant == "gelu":
            return self.down(F.gelu(gate) * up)
        if self.variant == "no_gate":
            return self.down(F.silu(up))
        if self.variant == "sum":
            return self.down(F.silu(gate) + up)
        return self.down(F.silu(gate) * up)  # (batch, seq, d_ff) -> (batch, seq, d_model)


class _Block(nn.Module):
    """The reference decoder block, with switches that reproduce learners' mistakes."""

    def __init__(self, d_model, n_heads, d_ff, norm="layernorm", ffn="gelu", wrong=frozenset()):
        super().__init__()
        self.wrong = wrong

        def make_norm():
            if norm == "layernorm":
                return nn.LayerNorm(d_model)
            eps = 1.1920928955078125e-07 if "rms_default_eps" in wrong else RMS_EPS
            return _RMSNorm(d_model, eps, centre="rms_centred" in wrong)

        self.norm1, self.norm2 = make_norm(), make_norm()
        self.attention = MultiHeadAttention(d_model, n_heads)
        if ffn == "gelu":
            activation = (F.relu if "relu" in wrong else
                          functools.partial(F.gelu, approximate="tanh") if "gelu_tanh" in wrong else F.gelu)
            self.ffn = _GeluFFN(d_model, d_ff, activation)
        else:
            variant = next((v for v in ("swapped", "gelu", "no_gate", "sum") if f"swiglu_{v}" in wrong), "right")
            self.ffn = _SwiGLU(d_model, d_ff, variant)

    def attend(self, h):
        mask = None if "no_mask" in self.wrong else causal_mask(h.shape[-2])
        if "mask_flipped" in self.wrong:
            mask = ~causal_mask(h.shape[-2]) | torch.eye(h.shape[-2], dtype=torch.bool)
        return self.attention(h, mask=mask)[0]

    def forward(self, x):  # (batch, seq, d_model) -> (batch, seq, d_model)
        w = self.wrong
        if "post_ln" in w:
            x = self.norm1(x + self.attend(x))
            return self.norm2(x + self.ffn(x))
        if "parallel" in w:
            return x + self.attend(self.norm1(x)) + self.ffn(self.norm2(x))
        if "ffn_first" in w:
            x = x + self.ffn(self.norm2(x))
            return x + self.attend(self.norm1(x))
        h = self.norm1(x)
        attended = self.attend(h)
        x = attended if "no_attention_residual" in w else (h if "residual_from_normalised" in w else x) + attended
        h = (self.norm1 if "norm1_twice" in w else self.norm2)(x)
        out = self.ffn(h)
        x = out if "no_ffn_residual" in w else (h if "residual_from_normalised" in w else x) + out
        return self.final(x) if "output_normalised" in w else x

    def final(self, x):
        return self.norm2(x)


def _run_block(cls, config, state, x):
    block = cls(**config).to(x.dtype)
    block.load_state_dict(state)
    with torch.no_grad():
        return block(x)


def decoder_block(config, state, x):
    """The reference: the course's block built from ``config``, given ``state``, run on ``x``.

    config: d_model, n_heads, d_ff, norm ("layernorm" | "rmsnorm"), ffn ("gelu" | "swiglu");
    state: the block's state dict; x: (batch, seq, d_model) -> (batch, seq, d_model).
    """
    return _run_block(_Block, config, state, x)


def _block_mistake(*wrong):
    def run(config, state, x):
        return _run_block(functools.partial(_Block, wrong=frozenset(wrong)), config, state, x)
    return run


BLOCK_MISTAKES = (
    Mistake("attention sees later tokens: a decoder's self-attention needs the causal mask",
            _block_mistake("no_mask"), hint=3, section=DECODER),
    Mistake("the causal mask is the wrong way round: True means keep, key j ≤ query i",
            _block_mistake("mask_flipped"), hint=3, section=DECODER),
    Mistake("this is post-LN, norm(x + sublayer(x)): normalise the sub-layer's input instead",
            _block_mistake("post_ln"), hint=1, section=PREPOST),
    Mistake("the residual around attention is missing", _block_mistake("no_attention_residual"), hint=1,
            section=RESIDUAL),
    Mistake("the residual around the FFN is missing", _block_mistake("no_ffn_residual"), hint=1, section=RESIDUAL),
    Mistake("the residual adds norm(x): add the sub-layer's output to x itself",
            _block_mistake("residual_from_normalised"), hint=1, section=PREPOST),
    Mistake("the FFN reads the block's input, not x after attention", _block_mistake("parallel"), hint=1),
    Mistake("the FFN comes first: attention, then the FFN", _block_mistake("ffn_first"), hint=1),
    Mistake("norm1 is used twice: the FFN's input goes through norm2", _block_mistake("norm1_twice"), hint=3),
    Mistake("the output is normalised: a pre-LN block returns x as it is", _block_mistake("output_normalised"),
            hint=1, section=PREPOST),
    Mistake("RMSNorm subtracts the mean: it divides x itself by its root mean square",
            _block_mistake("rms_centred"), hint=2, section=RMSNORM),
    Mistake("RMSNorm's eps is not 1e-6 (nn.RMSNorm's default is float32's machine epsilon: pass eps=1e-6)",
            _block_mistake("rms_default_eps"), hint=2, section=RMSNORM),
    Mistake("SiLU is applied to up's output: it belongs on gate's, down(silu(gate(x)) · up(x))",
            _block_mistake("swiglu_swapped"), hint=2),
    Mistake("SwiGLU's gate uses SiLU, x · σ(x), not GELU", _block_mistake("swiglu_gelu"), hint=2),
    Mistake("the gate's product is missing: SwiGLU multiplies silu(gate(x)) by up(x)",
            _block_mistake("swiglu_no_gate"), hint=2),
    Mistake("the gate is added: SwiGLU multiplies silu(gate(x)) by up(x)", _block_mistake("swiglu_sum"), hint=2),
    Mistake("the FFN uses ReLU: this block's \"gelu\" FFN uses GELU", _block_mistake("relu"), hint=2, section=GELU),
    Mistake("GELU's tanh approximation: use the exact GELU, nn.GELU() or F.gelu with its defaults",
            _block_mistake("gelu_tanh"), hint=2, section=GELU),
)


def _block_inputs(seed: int, batch: int, seq: int, d_model: int, n_heads: int, d_ff: int, norm: str, ffn: str,
                  scale: float = 2.0):
    """A config, a state dict of fixed random weights (norm weights not 1, biases not 0), and x."""
    config = dict(d_model=d_model, n_heads=n_heads, d_ff=d_ff, norm=norm, ffn=ffn)
    with torch.random.fork_rng():  # reproducible weights; the learner's RNG is left alone
        torch.manual_seed(seed)
        block = _Block(**config)
        with torch.no_grad():
            for name, p in block.named_parameters():
                if name.startswith(("norm1", "norm2")):
                    p.add_(0.3 * torch.randn(p.shape))
                else:
                    p.add_(0.2 * torch.randn(p.shape))
        x = scale * torch.randn(batch, seq, d_model) + 0.3 * scale
    state = {name: t.detach().clone() for name, t in block.state_dict().items()}
    return config, state, x


_NORMS, _FFNS = ("layernorm", "rmsnorm"), ("gelu", "swiglu")
_B53, _T53, _H53 = _drawn(91, 1, 4), _drawn(92, 2, 10), 2 ** _drawn(93, 1, 3)
_D53, _F53 = _H53 * 4 * _drawn(94, 1, 4), 8 * _drawn(95, 2, 9)
_N53, _FF53 = _NORMS[_drawn(96, 0, 2)], _FFNS[_drawn(97, 0, 2)]

PARAMETER_NAMES = ("norm1.weight, norm1.bias (LayerNorm only), attention.q_proj/k_proj/v_proj/out_proj "
                   "(.weight and .bias), norm2.*, and ffn.expand/ffn.contract (gelu) or "
                   "ffn.gate/ffn.up/ffn.down (swiglu, no biases)")


def _block_adapt(obj):
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise WrongKind(f"expected your class DecoderBlock (a subclass of torch.nn.Module), got {_kind(obj)}")
    wrong = signature_problem(obj, ("d_model", "n_heads", "d_ff", "norm", "ffn"))
    if wrong:
        raise WrongKind(f"DecoderBlock: {wrong.replace('your function', 'your __init__')}; it should be "
                        "DecoderBlock(d_model, n_heads, d_ff, norm=\"layernorm\", ffn=\"gelu\")")

    def run(config, state, x):
        block = obj(**config)
        block = block.to(x.dtype)
        block.load_state_dict(state)
        with torch.no_grad():
            return block(x)
    run.__name__ = obj.__name__
    return run


def _kind(obj) -> str:
    if isinstance(obj, type):
        return f"the class {obj.__name__}"
    if isinstance(obj, nn.Module):
        return f"an instance of {type(obj).__name__}: hand in the class itself, without ()"
    if inspect.isfunction(obj):
        return f"the function {obj.__name__}"
    return type(obj).__name__


DECODER_BLOCK = Exercise(
    id="5.3",
    title="A decoder block with RMSNorm and SwiGLU options",
    function_name="DecoderBlock",
    arg_names=("config", "state", "x"),
    signature=("DecoderBlock(d_model, n_heads, d_ff, norm=\"layernorm\" | \"rmsnorm\", ffn=\"gelu\" | \"swiglu\")"
               "(x: (batch, seq, d_model)) -> (batch, seq, d_model)"),
    reference=decoder_block,
    cases=(
        Case("LayerNorm and GELU (the chapter's block), 2 × 5 tokens, d_model = 16",
             lambda: _block_inputs(0, 2, 5, 16, 2, 64, "layernorm", "gelu"), 3, "fixed"),
        Case("RMSNorm and SwiGLU (LLaMA's block), 2 × 6 tokens, d_model = 16, d_ff = 40",
             lambda: _block_inputs(1, 2, 6, 16, 4, 40, "rmsnorm", "swiglu"), 3, "fixed"),
        Case("RMSNorm and GELU, 1 × 7 tokens, d_model = 8", lambda: _block_inputs(2, 1, 7, 8, 2, 32, "rmsnorm", "gelu"),
             2, "fixed"),
        Case("LayerNorm and SwiGLU, 3 × 4 tokens, d_model = 12",
             lambda: _block_inputs(3, 3, 4, 12, 3, 24, "layernorm", "swiglu"), 2, "fixed"),
        Case(f"random: ({_B53}, {_T53}, {_D53}), {_H53} heads, d_ff = {_F53}, {_N53}, {_FF53}",
             lambda: _block_inputs(4, _B53, _T53, _D53, _H53, _F53, _N53, _FF53), 2, "random"),
        Case("edge: a single token", lambda: _block_inputs(5, 2, 1, 8, 2, 16, "rmsnorm", "swiglu"), 1, "edge"),
        Case("edge: tiny inputs (mean of x² about 1e-6), RMSNorm",
             lambda: _block_inputs(6, 1, 5, 8, 2, 24, "rmsnorm", "swiglu", scale=1e-3), 1, "edge"),
    ),
    mistakes=BLOCK_MISTAKES,
    level=BUILD,
    adapt=_block_adapt,
    hints=(
        "A pre-LN decoder block is two residual steps: x + attention(norm1(x)), then that plus "
        "ffn(norm2(that)). The norm and the FFN are chosen by name in __init__; forward does not change "
        "with them. The attention is causal self-attention: chapter 4's MultiHeadAttention with chapter "
        "2's causal_mask.",
        "RMSNorm: weight · x / √(mean(x²) + 1e-6), a weight and no bias (nn.RMSNorm(d, eps=1e-6), or the "
        "chapter's rms_norm, given with exercise 5.1, in a module). LayerNorm: nn.LayerNorm(d). GELU FFN: "
        "contract(gelu(expand(x))). SwiGLU FFN (Shazeer, 2020): down(silu(gate(x)) · up(x)), with "
        "silu(z) = z · σ(z) and three linear layers without biases.",
        "__init__ builds norm1, attention, norm2 and ffn with exactly the names in the exercise text (the "
        "check loads a state dict into them). forward: mask = causal_mask(seq); "
        "attention(norm1(x), mask=mask) returns (output, weights): add the output to x; then add "
        "ffn(norm2(x)) to x. Every tensor stays (batch, seq, d_model), d_ff inside the FFN.",
    ),
    error_hints=(
        ("Missing key(s)", f"your block's parameters must be named {PARAMETER_NAMES}"),
        ("Unexpected key(s)", f"your block's parameters must be named {PARAMETER_NAMES}"),
        ("size mismatch", "a layer has the wrong size: the FFN's hidden width is d_ff, not 4 · d_model"),
        ("unexpected keyword argument", "DecoderBlock's __init__ takes d_model, n_heads, d_ff, norm, ffn"),
    ),
)


# --- 5.4 train_reversal_lm -----------------------------------------------------------------------

BAR = 0.95
TRAIN_SEED = 0


class _ReferenceLM(nn.Module):
    """The reference solution's model: embeddings, learned positions, RMSNorm/SwiGLU blocks, a final
    RMSNorm and a linear read-out."""

    def __init__(self, max_len: int, d_model: int = 64, n_heads: int = 2, n_layers: int = 2):
        super().__init__()
        self.token_embedding = nn.Embedding(VOCAB_SIZE, d_model)
        self.position_embedding = nn.Embedding(max_len, d_model)
        self.blocks = nn.ModuleList(_Block(d_model, n_heads, 4 * d_model, "rmsnorm", "swiglu")
                                    for _ in range(n_layers))
        self.final_norm = _RMSNorm(d_model)
        self.lm_head = nn.Linear(d_model, VOCAB_SIZE)

    def forward(self, tokens):  # (batch, seq) -> (batch, seq, vocab)
        x = self.token_embedding(tokens) + self.position_embedding(torch.arange(tokens.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.final_norm(x))


def train_reversal_lm(task: Reversal, generator: torch.Generator) -> nn.Module:
    """The reference: an RMSNorm/SwiGLU decoder trained for 40 steps of 64 sequences."""
    model = _ReferenceLM(max_len=task.seq_len - 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):
        inputs, targets = task.inputs_and_targets(task.batch(64, generator))
        loss = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def _logits(model, tokens):
    out = model(tokens)
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        out = out[0]  # (logits, attentions), as the course's TinyDecoder returns
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"your model returned {type(out).__name__}: it should return the logits, "
                        "a tensor (batch, seq, vocab)")
    if out.dim() != 3 or out.shape[:2] != tokens.shape or out.shape[-1] < VOCAB_SIZE:
        raise ValueError(f"your model returned logits of shape {tuple(out.shape)} for tokens of shape "
                         f"{tuple(tokens.shape)}: expected (batch, seq, {VOCAB_SIZE})")
    return out


@torch.no_grad()
def greedy_exact_match(model: nn.Module, task: Reversal, sequences: torch.Tensor) -> float:
    """The fraction of sequences whose whole answer greedy generation gets right, one token at a
    time (a model that peeks at later tokens gets no help from them here)."""
    tokens = task.prompt(sequences)  # (batch, n_digits + 1)
    for _ in range(task.n_digits):
        next_token = _logits(model, tokens)[:, -1].argmax(dim=-1, keepdim=True)  # (batch, 1)
        tokens = torch.cat([tokens, next_token], dim=1)
    return (tokens[:, task.n_digits + 1:] == task.answer(sequences)).all(dim=1).float().mean().item()


@torch.no_grad()
def teacher_forced_exact_match(model: nn.Module, task: Reversal, sequences: torch.Tensor) -> float:
    """The same verdict as greedy generation for a causal model, in one forward pass (chapter 5's
    exact_match): every answer token must be the most likely one given the right tokens before it."""
    inputs, _ = task.inputs_and_targets(sequences)
    predicted = _logits(model, inputs).argmax(dim=-1)[:, task.n_digits:]  # (batch, n_digits)
    return (predicted == task.answer(sequences)).all(dim=1).float().mean().item()


@torch.no_grad()
def _peeks(model: nn.Module, task: Reversal, sequences: torch.Tensor) -> bool:
    """Whether the logits at the first positions change when the last input token changes."""
    inputs, _ = task.inputs_and_targets(sequences)
    changed = inputs.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 10
    a, b = _logits(model, inputs)[:, :-1], _logits(model, changed)[:, :-1]
    return not torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def _measure(model, task: Reversal) -> dict:
    """What the judge needs to know about a trained model."""
    from ... import model as course_model

    if not isinstance(model, nn.Module):
        return {"problem": f"your function returned {_kind(model) if model is not None else 'None'}: "
                           "it should return the trained model (an nn.Module)"}
    if any(isinstance(m, (course_model.TinyDecoder, course_model.Block)) for m in model.modules()):
        return {"problem": "this is the course's TinyDecoder: build your model from your DecoderBlock "
                           "(exercise 5.3) with norm=\"rmsnorm\" and ffn=\"swiglu\""}
    names = [name for name, _ in model.named_parameters()]
    if not any(name.endswith("ffn.gate.weight") for name in names) or any(
            isinstance(m, nn.LayerNorm) for m in model.modules()):
        return {"problem": "build your model's blocks with DecoderBlock(..., norm=\"rmsnorm\", ffn=\"swiglu\") "
                           "from exercise 5.3: no LayerNorm, and a SwiGLU FFN (ffn.gate, ffn.up, ffn.down)"}
    model.eval()
    test = task.held_out()
    if _peeks(model, task, test[:8]):  # teacher forcing would let it read the answer: generate instead
        return {"exact_match": greedy_exact_match(model, task, test[:200]), "peeks": True}
    return {"exact_match": teacher_forced_exact_match(model, task, test), "peeks": False}


def _train_adapt(obj):
    if isinstance(obj, type):
        raise WrongKind(f"expected your function train_reversal_lm(task, generator), got {_kind(obj)}; "
                        "the function builds your model, trains it and returns it")
    if not callable(obj):
        raise WrongKind(f"expected your function train_reversal_lm(task, generator), got {_kind(obj)}")
    wrong = signature_problem(obj, ("task", "generator"))
    if wrong:
        raise WrongKind(f"{wrong}; it should be train_reversal_lm(task, generator)")

    @functools.wraps(obj)
    def run(task):
        threads = torch.get_num_threads()
        with torch.random.fork_rng():  # the same start on every run; the learner's RNG is left alone
            torch.manual_seed(TRAIN_SEED)
            torch.set_num_threads(1)  # tiny matrices: one thread is fastest, and the result repeatable
            try:
                model = obj(task, torch.Generator().manual_seed(TRAIN_SEED))
                return _measure(model, task)
            finally:
                torch.set_num_threads(threads)
    return run


def _train_judge(value, task):
    if not isinstance(value, dict):
        return "the check could not read your model"
    if "problem" in value:
        return value["problem"]
    accuracy = value["exact_match"]
    if accuracy >= BAR and not value["peeks"]:
        return None
    if value["peeks"]:
        lines = [f"held-out exact match {accuracy:.1%} by greedy generation; the bar is {BAR:.0%}"]
        lines.append("your model's outputs change when a later token changes: it sees the future, which a "
                     "decoder must not (is the causal mask passed to attention?)")
    else:
        lines = [f"held-out exact match {accuracy:.1%}; the bar is {BAR:.0%}"]
        lines.append("train longer or with a larger learning rate, and check that the loss is on the "
                     "answer only (task.inputs_and_targets)")
    return "\n".join(lines)


def _train_inputs(n_digits: int):
    return (Reversal(n_digits=n_digits),)


POSITIONS_TOO_SHORT = ("the position table is shorter than this task's inputs: the tasks differ in length, "
                       "so give it task.seq_len − 1 rows")

_N54 = (5, 6, 7, 9, 10)[_drawn(101, 0, 5)]  # not the chapter's 8

TRAIN_REVERSAL = Exercise(
    id="5.4",
    title="Train your own decoder to reverse digits",
    function_name="train_reversal_lm",
    arg_names=("task",),
    signature="train_reversal_lm(task: Reversal, generator: torch.Generator) -> nn.Module",
    reference=lambda task: _measure(train_reversal_lm(task, torch.Generator().manual_seed(TRAIN_SEED)), task),
    cases=(
        Case("reverse 8 digits (the chapter's task): held-out exact match ≥ 95%", lambda: _train_inputs(8), 4,
             "fixed"),
        Case(f"random length: reverse {_N54} digits, exact match ≥ 95%", lambda: _train_inputs(_N54), 3, "random"),
        Case("edge: reverse 4 digits (9 tokens), exact match ≥ 95%", lambda: _train_inputs(4), 3, "edge"),
    ),
    level=BUILD,
    error_hints=(
        ("index out of range in self", POSITIONS_TOO_SHORT),
        ("must match the size of tensor", POSITIONS_TOO_SHORT, r"pos"),
    ),
    judge=_train_judge,
    adapt=_train_adapt,
    time_limit=20.0,
    hints=(
        "The model is the chapter's TinyDecoder with your block inside: a token embedding plus a learned "
        "position embedding, a stack of your DecoderBlocks (RMSNorm, SwiGLU), a final RMSNorm and a "
        "linear layer to the 11 token ids. The training loop is the chapter's. What changes from one "
        "task to the next is the sequence length: the position table must have task.seq_len − 1 rows.",
        "The loss is the cross-entropy between the logits (batch, seq, 11) and the targets from "
        "task.inputs_and_targets, which sets the prompt positions to −100 so only the answer counts. "
        "AdamW with a learning rate of about 3e-3 brings this model above 95% in well under 200 steps of "
        "64 sequences.",
        "ReversalLM.__init__(max_len): nn.Embedding(11, d), nn.Embedding(max_len, d), an nn.ModuleList of "
        "DecoderBlock(d, 2, 4 · d, norm=\"rmsnorm\", ffn=\"swiglu\"), an RMSNorm, nn.Linear(d, 11). "
        "forward(tokens (batch, seq)): embeddings plus positions arange(seq), the blocks in turn, norm, "
        "head. train_reversal_lm: build it, loop over steps drawing task.batch(64, generator), step the "
        "optimiser, return model.eval().",
    ),
)


# --- 5.5 best_single_head ------------------------------------------------------------------------

HEADS = ((0, 0), (0, 1), (1, 0), (1, 1))  # (layer, head) of the chapter's model


def _without_heads(model, removed, how="columns"):
    """A copy of the model in which each (layer, head) of ``removed`` contributes nothing: its slice
    of the concatenated head outputs is multiplied by zero in the output projection."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for layer, head in removed:
            attention = model.blocks[layer].attention
            cut = slice(head * attention.head_dim, (head + 1) * attention.head_dim)
            if how == "columns":
                attention.out_proj.weight[:, cut] = 0
            elif how == "rows":
                attention.out_proj.weight[cut, :] = 0
            elif how == "queries":  # uniform attention instead of none
                attention.q_proj.weight[cut, :] = 0
                attention.q_proj.bias[cut] = 0
    return model


@torch.no_grad()
def _teacher_forced(model, dtype=torch.float32):
    """Logits of the answer positions on the held-out set: (1000, n_digits, vocab)."""
    task = Reversal()
    inputs, _ = task.inputs_and_targets(task.held_out())
    logits, _ = model.to(dtype)(inputs)
    return logits[:, task.n_digits:]


def _accuracy(logits, per_token=False):
    answers = Reversal().answer(Reversal().held_out())
    right = logits.argmax(dim=-1) == answers
    return (right.float().mean() if per_token else right.all(dim=1).float().mean()).item()


@functools.lru_cache(maxsize=None)
def _single_heads(how="columns", per_token=False, keep_one=True):
    """The held-out exact match of the chapter's model for each head kept alone (the other three
    removed), or, with keep_one=False, each head removed alone."""
    from ...model import load_reversal_model

    model = load_reversal_model()
    scores = []
    for kept in HEADS:
        removed = [h for h in HEADS if h != kept] if keep_one else [kept]
        scores.append(_accuracy(_teacher_forced(_without_heads(model, removed, how)), per_token))
    return tuple(scores)


def best_single_head() -> float:
    """The reference: the best held-out exact match of one head kept alone."""
    return max(_single_heads())


@functools.lru_cache(maxsize=None)
def _head_tol() -> float:
    """Half a sequence, plus one sequence for each held-out sequence whose verdict float32 rounding
    could flip: one whose smallest margin between the two most likely tokens, at some answer
    position, is within SAFETY × the float32 error of the logits (measured against float64)."""
    from ...model import load_reversal_model

    model = load_reversal_model()
    fragile = 0
    for kept in HEADS:
        ablated = _without_heads(model, [h for h in HEADS if h != kept])
        l32 = _teacher_forced(copy.deepcopy(ablated))
        l64 = _teacher_forced(copy.deepcopy(ablated), torch.float64)
        error = float((l32.double() - l64).abs().max())
        top2 = l64.topk(2, dim=-1).values
        margin = (top2[..., 0] - top2[..., 1]).min(dim=1).values  # (1000,)
        fragile = max(fragile, int((margin <= 2 * SAFETY * error).sum()))
    return (fragile + 0.5) / len(margin)


HEAD_MISTAKES = (
    Mistake("that is the weakest head alone: the question asks for the best", lambda: min(_single_heads()), hint=3),
    Mistake("you removed one head and kept three: keep one and remove the other three",
            lambda: max(_single_heads(keep_one=False)), hint=1),
    Mistake("the answer counts tokens, not whole sequences: a sequence is right only if all 8 digits are",
            lambda: max(_single_heads(per_token=True)), hint=2, section=TRAINING),
    Mistake("the answer is a percentage: give it as a fraction between 0 and 1", lambda: 100 * best_single_head(),
            hint=3),
    Mistake("rows of out_proj.weight were zeroed: a head's output enters through its columns",
            lambda: max(_single_heads(how="rows")), hint=2),
    Mistake("the heads were made to attend uniformly (queries zeroed), not removed",
            lambda: max(_single_heads(how="queries")), hint=2),
)

BEST_SINGLE_HEAD = Exercise(
    id="5.5",
    title="Which head can reverse alone?",
    function_name="best_single_head",
    arg_names=(),
    signature="best_single_head() -> float",
    reference=best_single_head,
    cases=(Case("your answer", lambda: (), 4, "experiment"),),
    mistakes=HEAD_MISTAKES,
    level=EXPERIMENT,
    answer_tol=lambda truth: _head_tol(),
    time_limit=20.0,
    hints=(
        "The chapter's model has 2 layers of 2 heads, and each head alone draws the anti-diagonal. To "
        "see what one head can do by itself, remove the other three and measure held-out exact match; "
        "do it for each of the four heads and keep the best score.",
        "A head's output is its slice of head_dim features in the concatenation that out_proj reads: "
        "features h · head_dim to (h + 1) · head_dim − 1. Removing head h means those inputs of out_proj "
        "contribute nothing: out_proj.weight[:, slice] = 0 (columns are inputs), the bias untouched. "
        "exact_match(model, task, task.held_out()) counts whole sequences.",
        "For each kept (layer, head): copy.deepcopy(load_reversal_model()), zero the three other heads' "
        "columns under torch.no_grad(), measure exact_match. Return the largest of the four, as a "
        "fraction between 0 and 1, unrounded.",
    ),
)

EXERCISES = (RMS_NORM_BACKWARD, TOP_K_TOP_P, DECODER_BLOCK, TRAIN_REVERSAL, BEST_SINGLE_HEAD)
