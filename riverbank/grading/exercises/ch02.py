"""Chapter 2 exercises: a masked softmax written by hand, attention with causal and padding masks
built from a flag and lengths, and two measurements: saturation at d_k = 64, overflow in float16."""

from __future__ import annotations

import functools
import math

import torch

from ..sandbox import signature_problem, switched_off
from ..spec import BUILD, EXPERIMENT, WARM_UP, Case, Exercise, Mistake, WrongKind

# Seed 003's "How Are You" embeddings, d_model = 4, as in chapter 2.
HOW_ARE_YOU = ((0.8, -1.8, 0.6, -0.5), (-1.6, 1.3, -1.9, 0.4), (-0.3, 0.7, -1.4, -0.9))

SOFTMAX = "chapter 2, section “Softmax: the example [2, 1, 0]”"
SCALE = "chapter 2, section “Why divide by √d_k?”"
MASKS = "chapter 2, section “Masks”"
CAUSAL = "chapter 2, section “The causal mask”"
PADDING = "chapter 2, section “The padding mask”"
CONVENTIONS = "chapter 2, section “Two opposite conventions”"
EMPTY_ROW = "chapter 2, section “A query that may attend to nothing”"
SATURATION = "chapter 2, section “What large scores do to the softmax”"


def _randn(seed: int, *shapes: tuple[int, ...], scale: float = 1.0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(scale * torch.randn(*shape, generator=g) for shape in shapes)


def _t(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-2, -1)


# --- torch's own softmax (and SDPA) is switched off while 2.1 and 2.2 are checked ----------------------------

_LIBRARY_SOFTMAXES = tuple((owner, name) for owner in (torch, torch.nn.functional, torch.Tensor, torch.special)
                           for name in ("softmax", "log_softmax") if hasattr(owner, name)) + (
    (torch.nn.functional, "scaled_dot_product_attention"),)
NO_LIBRARY_SOFTMAX = ("this exercise asks you to write the softmax yourself: torch's softmax, log_softmax and "
                      "scaled_dot_product_attention are switched off while it is checked")


def _without_library_softmax():
    return switched_off(_LIBRARY_SOFTMAXES, NO_LIBRARY_SOFTMAX)


def _own_softmax_only(exercise_id: str, arg_names: tuple[str, ...], signature: str):
    """``adapt`` for 2.1 and 2.2: the learner's function, called with torch's softmax switched off."""

    def adapt(fn):
        if not callable(fn) or isinstance(fn, type):
            raise WrongKind(f"expected a function, got {type(fn).__name__}")
        wrong = signature_problem(fn, arg_names)
        if wrong:
            raise WrongKind(f"{wrong}; it should be {signature}")

        @functools.wraps(fn)
        def checked(*args):
            with _without_library_softmax():
                return fn(*args)

        return checked

    return adapt


# --- 2.1 masked_softmax -------------------------------------------------------------------------

def masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax over the last axis, written out: masked entries get weight 0, a row with every entry
    masked is all zeros, and no exponent is ever positive (each row's largest kept score is
    subtracted first).

    scores: (..., m); mask: None or bool broadcastable to scores, True = keep -> scores' shape.
    """
    if mask is not None:
        mask = mask.expand_as(scores)
        scores = scores.masked_fill(~mask, float("-inf"))
    top = scores.amax(dim=-1, keepdim=True)  # (..., 1); -inf where every key is masked
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    e = torch.exp(scores - top)  # exactly 0 at masked entries
    total = e.sum(dim=-1, keepdim=True)  # (..., 1); 0 only in an all-masked row
    return e / torch.where(total > 0, total, torch.ones_like(total))


def _softmax(x, dim=-1):
    """The plain softmax, written out (the mistakes below must run where torch's is switched off)."""
    e = torch.exp(x - x.amax(dim=dim, keepdim=True))  # NaN in a row that is all −∞
    return e / e.sum(dim=dim, keepdim=True)


def _exact_softmax(scores, mask=None):
    return _softmax(scores if mask is None else scores.masked_fill(~mask, float("-inf")))


def _logsumexp_softmax(scores, mask=None):
    """exp(s − logsumexp(s)): right, and as learners often write it, but less exact in float32 than
    subtracting the maximum (s − lse loses the low bits of large scores). The tolerance allows it."""
    s = scores if mask is None else scores.masked_fill(~mask, float("-inf"))
    return torch.exp(s - torch.logsumexp(s, dim=-1, keepdim=True)).nan_to_num(0.0)


def _naive(scores, mask=None):
    e = torch.exp(scores)
    if mask is not None:
        e = e.masked_fill(~mask, 0.0)
    return e / e.sum(-1, keepdim=True)


def _naive_zero_rows(scores, mask=None):
    e = torch.exp(scores)
    if mask is not None:
        e = e.masked_fill(~mask, 0.0)
    total = e.sum(-1, keepdim=True)
    return e / torch.where(total > 0, total, torch.ones_like(total))


def _global_max(scores, mask=None):
    s = scores if mask is None else scores.masked_fill(~mask, float("-inf"))
    e = torch.exp(s - s[torch.isfinite(s)].max()) if torch.isfinite(s).any() else torch.exp(s)
    total = e.sum(-1, keepdim=True)
    return e / torch.where(total > 0, total, torch.ones_like(total))


def _max_before_masking(scores, mask=None):
    top = scores.amax(dim=-1, keepdim=True)  # masked keys' scores included
    e = torch.exp(scores - top)
    if mask is not None:
        e = e.masked_fill(~mask, 0.0)
    total = e.sum(-1, keepdim=True)
    return e / torch.where(total > 0, total, torch.ones_like(total))


def _finite_fill(scores, mask=None):
    return _softmax(scores if mask is None else scores.masked_fill(~mask, -1e9))


def _zero_fill(scores, mask=None):
    return _softmax(scores if mask is None else scores.masked_fill(~mask, 0.0))


def _inverted(scores, mask=None):
    return masked_softmax(scores, None if mask is None else ~mask)


def _zeroed_after(scores, mask=None):
    w = _softmax(scores)
    return w if mask is None else w.masked_fill(~mask, 0.0)


def _over_dim_minus_2(scores, mask=None):
    s = scores if mask is None else scores.masked_fill(~mask, float("-inf"))
    return _softmax(s, dim=-2).nan_to_num(0.0)


OVERFLOW = "without subtracting each row's maximum first, exp overflows on large scores (inf / inf = NaN)"
UNDERFLOW = ("one maximum for the whole tensor: rows far below it underflow to 0 / 0; "
             "subtract each row's own maximum")
MAX_BEFORE_MASK = ("the maximum is taken before masking: a masked key's large score makes the kept ones "
                   "underflow; take the maximum over the kept keys only")
NAN_ROWS = "a row with every entry masked gets NaN (0 / 0): return zeros there"
FINITE_FILL = "a finite fill (like −1e9) gives a fully masked row equal weights; it must be all zeros"
ZERO_FILL = "masked scores are filled with 0 instead of −∞: a masked key still gets weight"
INVERTED = "the mask is inverted: True means keep"
AFTER = "the masked weights are zeroed after a softmax over every key: the kept weights no longer sum to 1"
WRONG_AXIS = "the softmax runs over the wrong axis: it normalises over the last axis (the keys)"


def _row_scale_scores(seed):
    """Rows of very different sizes: around ±1000, ±1 and −1000 (all very negative)."""
    s, = _randn(seed, (3, 5))
    return (s * torch.tensor([[600.0], [1.0], [3.0]]) - torch.tensor([[0.0], [0.0], [1000.0]]),)


MASKED_SOFTMAX = Exercise(
    id="2.1",
    title="A masked softmax, written out",
    function_name="masked_softmax",
    arg_names=("scores", "mask"),
    signature="masked_softmax(scores: (.., m), mask: None or bool broadcastable to scores) -> scores' shape",
    reference=masked_softmax,
    reference32=_logsumexp_softmax,
    level=WARM_UP,
    adapt=_own_softmax_only("2.1", ("scores", "mask"), "masked_softmax(scores, mask=None)"),
    hints=(
        "Softmax does not change when every score of a row moves by the same amount, so subtract the "
        "row's largest kept score first: the largest exponent is then e⁰ = 1 and nothing overflows. A "
        "masked entry must get weight exactly 0, and a row with no kept entry has nothing to share out: "
        "it is all zeros.",
        "w_j = exp(s_j − M) / Σ_kept exp(s_k − M) for a kept entry j and w_j = 0 for a masked one, "
        "with M the largest kept score of the row. A row with nothing kept has an empty sum: its "
        "weights are 0, not 0 / 0.",
        "Set the masked scores to −∞ (exp(−∞) is exactly 0); take each row's maximum over the last axis, "
        "keeping that axis; where the maximum is −∞ (nothing kept) use 0 instead, so that −∞ − (−∞) "
        "never happens; exponentiate the difference; divide by the row sums, kept as (.., 1), using 1 "
        "where a sum is 0.",
    ),
    cases=(
        Case("the chapter's [2, 1, 0], and [1002, 1001, 1000]",
             lambda: (torch.tensor([[2.0, 1.0, 0.0], [1002.0, 1001.0, 1000.0]]), None), 2, "fixed"),
        Case("random (2, 3, 5, 5) scores, a causal mask (5, 5)",
             lambda: (*_randn(41, (2, 3, 5, 5), scale=3.0), torch.tril(torch.ones(5, 5, dtype=torch.bool))),
             2, "random"),
        Case("random (4, 6) scores, a (4, 6) mask with one row all False",
             lambda: (*_randn(42, (4, 6), scale=2.0),
                      torch.tensor([[1, 1, 0, 1, 0, 1], [0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0], [1] * 6]).bool()),
             2, "random"),
        Case("random (3, 4, 7) scores around ±100, padding mask (3, 1, 7)",
             lambda: (*_randn(43, (3, 4, 7), scale=100.0),
                      (torch.arange(7)[None, :] < torch.tensor([7, 3, 1])[:, None])[:, None, :]), 2, "random"),
        Case("edge: rows around ±1000, ±1 and all near −1000, no mask", lambda: (*_row_scale_scores(44), None),
             1, "edge"),
        Case("edge: the masked keys have the largest scores",
             lambda: (torch.tensor([[900.0, 0.5, 0.0, 1.0], [0.0, 800.0, 1.0, 2.0]]),
                      torch.tensor([[False, True, True, True], [True, False, True, True]])), 1, "edge"),
    ),
    mistakes=(
        Mistake(OVERFLOW, _naive, hint=1, section=SOFTMAX),
        Mistake(OVERFLOW, _naive_zero_rows, hint=1, section=SOFTMAX),
        Mistake(UNDERFLOW, _global_max, hint=2),
        Mistake(MAX_BEFORE_MASK, _max_before_masking, hint=3),
        Mistake(NAN_ROWS, _exact_softmax, hint=3, section=EMPTY_ROW),
        Mistake(FINITE_FILL, _finite_fill, hint=2, section=EMPTY_ROW),
        Mistake(ZERO_FILL, _zero_fill, hint=3, section=MASKS),
        Mistake(INVERTED, _inverted, section=CONVENTIONS),
        Mistake(AFTER, _zeroed_after, hint=2, section=MASKS),
        Mistake(WRONG_AXIS, _over_dim_minus_2, hint=2),
    ),
    error_hints=(
        (NO_LIBRARY_SOFTMAX, "write the softmax with torch.exp and a sum: hint(\"2.1\") shows how, step by step"),
        ("NoneType", "mask may be None: apply it only if mask is not None", r"mask"),
        ("masked_fill_ only supports boolean masks", "the mask is bool (True = keep): use ~mask to flip it"),
    ),
)


# --- 2.2 attention: causal and padding masks from a flag and lengths ------------------------------

def _keep_mask(q, k, causal, lengths, padding_side):
    """(.., n, m) bool, or None: what each query may attend to."""
    n, m = q.shape[-2], k.shape[-2]
    mask = None
    if causal:  # query i is at position m − n + i
        mask = torch.arange(m)[None, :] <= torch.arange(n)[:, None] + (m - n)  # (n, m)
    if lengths is not None:
        positions = torch.arange(m)[None, :]  # (1, m)
        real = (positions >= m - lengths[:, None]) if padding_side == "left" else (positions < lengths[:, None])
        real = real.reshape(real.shape[0], *([1] * (q.dim() - 2)), m)  # (batch, 1, .., 1, m)
        mask = real if mask is None else mask & real
    return mask


def attention(q, k, v, causal=False, lengths=None, padding_side="right"):
    """Scaled dot-product attention with the course's masks built in.

    q: (batch, .., n, d_k), k: (batch, .., m, d_k), v: (batch, .., m, d_v) -> (batch, .., n, d_v).
    causal: query i (at position m − n + i) sees keys 0 .. m − n + i. lengths: None, or (batch,) int,
    the number of real keys of each sequence, padded on padding_side ("right" or "left").
    A query with no key to attend to gets zeros.
    """
    scores = q @ _t(k) / math.sqrt(q.shape[-1])  # (batch, .., n, m)
    return masked_softmax(scores, _keep_mask(q, k, causal, lengths, padding_side)) @ v


def _with_mask(mask_fn, softmax=masked_softmax, scale=None):
    def fn(q, k, v, causal=False, lengths=None, padding_side="right"):
        d = q.shape[-1] if scale is None else scale(q, v)
        scores = q @ _t(k) / math.sqrt(d)
        return softmax(scores, mask_fn(q, k, causal, lengths, padding_side)) @ v
    return fn


def _causal_top_left(q, k, causal, lengths, padding_side):
    mask = _keep_mask(q, k, False, lengths, padding_side)
    if causal:
        tril = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
        mask = tril if mask is None else tril & mask
    return mask


def _causal_variant(diagonal_shift):
    def mask_fn(q, k, causal, lengths, padding_side):
        mask = _keep_mask(q, k, False, lengths, padding_side)
        if causal:
            n, m = q.shape[-2], k.shape[-2]
            c = torch.ones(n, m, dtype=torch.bool)
            c = c.tril(m - n + diagonal_shift) if diagonal_shift <= 0 else c.triu(m - n)
            mask = c if mask is None else c & mask
        return mask
    return mask_fn


def _padding_ignored_side(q, k, causal, lengths, padding_side):
    return _keep_mask(q, k, causal, lengths, "right")


def _padding_wrong_side(q, k, causal, lengths, padding_side):
    return _keep_mask(q, k, causal, lengths, "left" if padding_side == "right" else "right")


def _padding_on_queries(q, k, causal, lengths, padding_side):
    mask = _keep_mask(q, k, causal, None, padding_side)
    if lengths is not None and q.shape[-2] == k.shape[-2]:
        real = _keep_mask(q, k, False, lengths, padding_side)  # (batch, .., 1, m)
        real = _t(real)  # (batch, .., m, 1): the queries, not the keys
        mask = real if mask is None else mask & real
    return mask


def _padding_inverted(q, k, causal, lengths, padding_side):
    mask = _keep_mask(q, k, causal, None, padding_side)
    if lengths is not None:
        real = ~_keep_mask(q, k, False, lengths, padding_side)
        mask = real if mask is None else mask & real
    return mask


def _padding_off_by_one(q, k, causal, lengths, padding_side):
    return _keep_mask(q, k, causal, None if lengths is None else lengths + 1, padding_side)


def _padding_or(q, k, causal, lengths, padding_side):
    a = _keep_mask(q, k, causal, None, padding_side)
    b = _keep_mask(q, k, False, lengths, padding_side)
    return a if b is None else b if a is None else a | b


WRONG_TOP_LEFT = ("the causal mask is aligned to the first key: with m keys and n queries, the queries are "
                  "the last n positions, so query i sees keys up to m − n + i")
ATTENTION_MISTAKES = (
    Mistake(WRONG_TOP_LEFT, _with_mask(_causal_top_left), hint=2),
    Mistake("the causal mask excludes the diagonal: a token may attend to itself",
            _with_mask(_causal_variant(-1)), hint=2, section=CAUSAL),
    Mistake("the causal mask keeps the future (the upper triangle), not the past",
            _with_mask(_causal_variant(1)), hint=2, section=CAUSAL),
    Mistake("padding_side is ignored: with left padding the real keys are the last `length` positions",
            _with_mask(_padding_ignored_side), hint=2, section=EMPTY_ROW),
    Mistake("the padding sides are swapped: \"right\" means the padding comes after the real keys",
            _with_mask(_padding_wrong_side), hint=2, section=PADDING),
    Mistake("the padding mask is applied to the queries (rows) instead of the keys (columns)",
            _with_mask(_padding_on_queries), hint=3, section=PADDING),
    Mistake("the padding mask is inverted: True marks the real keys, which are kept",
            _with_mask(_padding_inverted), section=CONVENTIONS),
    Mistake("off by one: each sequence keeps one padding key too many",
            _with_mask(_padding_off_by_one), hint=2, section=PADDING),
    Mistake("the causal and padding masks are combined with 'or': a key must pass both, so combine with 'and'",
            _with_mask(_padding_or), hint=1),
    Mistake(NAN_ROWS, _with_mask(_keep_mask, softmax=_exact_softmax), section=EMPTY_ROW),
    Mistake(FINITE_FILL, _with_mask(_keep_mask, softmax=_finite_fill), section=EMPTY_ROW),
    Mistake(AFTER, _with_mask(_keep_mask, softmax=_zeroed_after), section=MASKS),
    Mistake("the scores are not divided by √d_k", _with_mask(_keep_mask, scale=lambda q, v: 1), section=SCALE),
    Mistake("the scores are divided by √d_v instead of √d_k",
            _with_mask(_keep_mask, scale=lambda q, v: v.shape[-1]), section=SCALE),
    Mistake(OVERFLOW, _with_mask(_keep_mask, softmax=_naive_zero_rows), section=SOFTMAX),
    Mistake(OVERFLOW, _with_mask(_keep_mask, softmax=_naive), section=SOFTMAX),
)

TRANSPOSE_HINT = "on a batched k, .T reverses every axis; swap only the last two, k.transpose(-2, -1)"
K_DOT_T = r"\b(k|K|key|keys)\.T\b"


def _case(seed, q_shape, m, d_v, causal, lengths, side, scale=1.0):
    def make():
        *lead, n, d_k = q_shape
        q, k, v = _randn(seed, tuple(q_shape), (*lead, m, d_k), (*lead, m, d_v), scale=scale)
        return q, k, v, causal, None if lengths is None else torch.tensor(lengths), side
    return make


def _how_are_you():
    x = torch.tensor(HOW_ARE_YOU)[None]  # (1, 3, 4): one sequence
    return x, x.clone(), x.clone(), True, None, "right"


ATTENTION = Exercise(
    id="2.2",
    title="Attention with causal and padding masks",
    function_name="attention",
    arg_names=("q", "k", "v", "causal", "lengths", "padding_side"),
    signature="attention(q: (batch, .., n, d_k), k: (batch, .., m, d_k), v: (batch, .., m, d_v), "
              "causal=False, lengths=None, padding_side=\"right\") -> (batch, .., n, d_v)",
    reference=attention,
    reference32=lambda *args: _with_mask(_keep_mask, softmax=_logsumexp_softmax)(*args),
    level=BUILD,
    adapt=_own_softmax_only("2.2", ("q", "k", "v", "causal", "lengths", "padding_side"),
                            "attention(q, k, v, causal=False, lengths=None, padding_side=\"right\")"),
    hints=(
        "Build one boolean mask, True where query i may attend to key j, from the two rules: the causal "
        "one (no key after the query's own position) and the padding one (no padding key). A key must "
        "pass both. Then: scores, your masked softmax from 2.1, values. With m keys and n queries, the "
        "queries are the last n positions of the sequence (as when a model generates with a cache).",
        "Causal: keep key j for query i when j ≤ i + (m − n). Padding, right: keep j < length; left: "
        "keep j ≥ m − length. Output = masked_softmax(q kᵀ / √d_k, mask) v, with d_k the last size of q.",
        "The causal part compares a column of query positions (n, 1) with a row of key positions (1, m): "
        "(n, m). The padding part compares the key positions (1, m) with the lengths as a column "
        "(batch, 1): (batch, m), then gets one axis of size 1 for every axis between batch and the keys: "
        "(batch, 1, .., 1, m). Combine them with &; with neither rule the mask stays None.",
    ),
    cases=(
        Case("How Are You, causal", _how_are_you, 2, "fixed"),
        Case("random (2 sequences, 3 heads, 5 tokens), lengths [5, 3], right padding",
             _case(51, (2, 3, 5, 8), 5, 8, False, [5, 3], "right"), 2, "random"),
        Case("random (2, 3, 5 tokens), causal, lengths [5, 2], right padding, d_v = 6",
             _case(52, (2, 3, 5, 8), 5, 6, True, [5, 2], "right", 1.5), 2, "random"),
        Case("random (3 sequences, 6 tokens), causal, lengths [6, 4, 1], left padding",
             _case(53, (3, 6, 4), 6, 4, True, [6, 4, 1], "left", 1.5), 2, "random"),
        Case("random: 2 new queries after 5 cached keys (n = 2, m = 7), causal, left padding [7, 4]",
             _case(54, (2, 2, 2, 8), 7, 3, True, [7, 4], "left", 1.5), 2, "random"),
        Case("random: 3 queries, 6 keys, causal only", _case(55, (2, 3, 4), 6, 5, True, None, "right"), 1, "random"),
        Case("edge: a sequence of length 0 (every key padding)",
             _case(56, (2, 4, 4), 4, 4, False, [4, 0], "right"), 1, "edge"),
        Case("edge: large scores, causal, right padding [4, 3]",
             _case(57, (2, 4, 16), 4, 3, True, [4, 3], "right", 10.0), 2, "edge"),
    ),
    mistakes=ATTENTION_MISTAKES,
    error_hints=(
        (NO_LIBRARY_SOFTMAX, "use your masked_softmax from exercise 2.1, not torch's softmax"),
        ("must match the size", TRANSPOSE_HINT, K_DOT_T),
        ("Expected size for first two dimensions of batch2", TRANSPOSE_HINT, K_DOT_T),
        ("expects a tensor with <= 2 dimensions", "k.t() is for 2-D tensors only; use k.transpose(-2, -1)"),
        ("NoneType", "lengths may be None: build the padding mask only when lengths are given", r"lengths"),
    ),
)


# --- 2.3 experiment: saturation at the original Transformer's d_k ---------------------------------

D_K, N_KEYS, BAR, N_QUERIES = 64, 16, 0.9, 10_000


@functools.lru_cache(maxsize=None)
def _scores(seed: int, n_queries: int, n_keys: int = N_KEYS, d_k: int = D_K) -> torch.Tensor:
    """Unscaled scores q · k_j of standard-normal queries and keys, (queries, keys), sampled cheaply:
    for a fixed q they are independent N(0, ‖q‖²), and ‖q‖ is the length of a standard-normal vector
    of d_k entries. So ‖q‖ z_j, with z_j standard normal, has exactly their distribution, without
    drawing the n_keys × d_k entries of the keys."""
    g = torch.Generator().manual_seed(seed)
    length = torch.randn(n_queries, d_k, generator=g, dtype=torch.float64).norm(dim=-1, keepdim=True)
    return length * torch.randn(n_queries, n_keys, generator=g, dtype=torch.float64)


def _measure(seed: int, n_queries: int, *, scaled=False, n_keys=N_KEYS, what="fraction") -> float:
    w = _softmax(_scores(seed, n_queries, n_keys) / (math.sqrt(D_K) if scaled else 1.0))
    top = w.amax(dim=-1)
    if what == "mean":
        return float(top.mean())
    if what == "all weights":
        return float((w > BAR).double().mean())
    return float((top > BAR).double().mean())


@functools.lru_cache(maxsize=None)
def saturated_fraction() -> float:
    """The fraction of queries whose largest unscaled weight exceeds 0.9 (d_k = 64, 16 keys),
    estimated on 200,000 queries."""
    return _measure(0, 200_000)


@functools.lru_cache(maxsize=None)
def _spread_tol(truth: float) -> float:
    """4 standard deviations of the estimate from N_QUERIES queries, over 12 draws."""
    draws = torch.tensor([_measure(seed, N_QUERIES) for seed in range(1, 13)], dtype=torch.float64)
    return 4.0 * float(draws.std())


SATURATED = Exercise(
    id="2.3",
    title="How often does the unscaled softmax saturate?",
    function_name="saturated_fraction",
    arg_names=(),
    signature="saturated_fraction() -> float",
    reference=saturated_fraction,
    level=EXPERIMENT,
    answer_tol=_spread_tol,
    time_limit=10.0,
    hints=(
        "Repeat chapter 2's saturation measurement in a new setting, and count instead of averaging: "
        "draw many random queries and 16 keys for each, compute the weights without the √d_k division, "
        "and count the queries whose largest weight is above 0.9.",
        "For each query: s_j = q · k_j (no division), w = softmax(s), saturated when max_j w_j > 0.9. "
        "The answer is (number of saturated queries) / (number of queries), for at least 10,000 queries "
        "with standard-normal entries and d_k = 64.",
        "Queries (N, 1, 64) and keys (N, 16, 64); the scores from one batched product are (N, 1, 16), "
        "squeezed to (N, 16); softmax along the keys; the largest weight per query (N,); compare with "
        "0.9 and take the mean of the result as a float.",
    ),
    cases=(Case("your answer", lambda: (), 4, "experiment"),),
    mistakes=(
        Mistake("that is the scaled softmax (divided by √d_k): the question is about the unscaled scores",
                lambda: _measure(0, 200_000, scaled=True), hint=2, section=SCALE),
        Mistake("that is the mean largest weight, not the fraction of queries above 0.9",
                lambda: _measure(0, 200_000, what="mean"), hint=2, section=SATURATION),
        Mistake("that counts every weight above 0.9 among all the weights; count queries instead",
                lambda: _measure(0, 200_000, what="all weights"), hint=3),
        Mistake("that is with 8 keys per query, the chapter's setting: this question has 16",
                lambda: _measure(1, 100_000, n_keys=8), hint=2),
    ),
)


# --- 2.4 experiment: where the unshifted softmax breaks in float16 --------------------------------

def _first_nan(dtype: torch.dtype) -> int:
    for s in range(1, 200):
        e = torch.exp(torch.tensor([float(s), 0.0], dtype=dtype))
        if torch.isnan(e / e.sum()).any():
            return s
    raise AssertionError("no overflow found")


def float16_overflow_score() -> int:
    """The smallest whole number s for which exp(x) / sum(exp(x)) of the float16 scores [s, 0] has NaN."""
    return _first_nan(torch.float16)


OVERFLOW_SCORE = Exercise(
    id="2.4",
    title="Where the softmax without its maximum breaks, in float16",
    function_name="float16_overflow_score",
    arg_names=(),
    signature="float16_overflow_score() -> int",
    reference=float16_overflow_score,
    level=EXPERIMENT,
    hints=(
        "Try it: for s = 1, 2, 3, …, compute exp(x) / sum(exp(x)) for the two scores [s, 0] in float16 "
        "and stop at the first s whose result has a NaN. Why NaN and not just a wrong number? Once "
        "exp(s) is too big for float16 it becomes inf, and inf / inf is NaN.",
        "float16's largest finite number is 65504, so exp(s) overflows once s > ln 65504. Measure it "
        "rather than computing it: the answer is the first whole s that fails.",
        "A loop over whole numbers; inside it, a float16 tensor of the two scores, its exponential, "
        "divided by its sum; torch.isnan(...).any() says whether it broke; return s as an int.",
    ),
    cases=(Case("your answer", lambda: (), 3, "experiment"),),
    mistakes=(
        Mistake("that is float32's limit: the question is about float16", lambda: _first_nan(torch.float32), hint=2),
        Mistake("that is the last score that still works: the question asks for the first that gives NaN",
                lambda: _first_nan(torch.float16) - 1, hint=1),
        Mistake("that is float16's largest number; the question asks for the score s",
                lambda: 65504, hint=2),
    ),
)

EXERCISES = (MASKED_SOFTMAX, ATTENTION, SATURATED, OVERFLOW_SCORE)
