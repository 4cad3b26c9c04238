"""Chapter 2 exercises: scaled dot-product attention with a mask, a causal mask, a padding mask."""

from __future__ import annotations

import math

import torch

from ..spec import Case, Exercise, Mistake

# Seed 003's "How Are You" embeddings, d_model = 4, as in chapter 2.
HOW_ARE_YOU = ((0.8, -1.8, 0.6, -0.5), (-1.6, 1.3, -1.9, 0.4), (-0.3, 0.7, -1.4, -0.9))


def _randn(seed: int, *shapes: tuple[int, ...], scale: float = 1.0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(scale * torch.randn(*shape, generator=g) for shape in shapes)


def _how_are_you() -> tuple[torch.Tensor, ...]:
    return tuple(torch.tensor(HOW_ARE_YOU) for _ in range(3))  # q = k = v, three separate tensors


def _tril(n: int, m: int | None = None) -> torch.Tensor:
    return torch.tril(torch.ones(n, n if m is None else m, dtype=torch.bool))


def _keep(lengths: list[int], max_len: int) -> torch.Tensor:
    return torch.arange(max_len)[None, :] < torch.tensor(lengths)[:, None]


# --- 2.1 scaled_dot_product_attention -----------------------------------------------------------

def _scores(q, k):
    return q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])


def _softmax_zero_empty_rows(scores, mask):
    weights = torch.softmax(scores, dim=-1)
    if mask is None:
        return weights
    return weights.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)


def scaled_dot_product_attention(q, k, v, mask=None):
    """softmax(q kᵀ / √d_k) v, masked keys excluded; a row with every key masked gives zeros.

    q: (..., seq_q, d_k), k: (..., seq_k, d_k), v: (..., seq_k, d_v),
    mask: None or bool broadcastable to (..., seq_q, seq_k), True = keep -> (..., seq_q, d_v).
    """
    scores = _scores(q, k)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return _softmax_zero_empty_rows(scores, mask) @ v


def _fill(scores, mask, value):
    return scores if mask is None else scores.masked_fill(~mask, value)


def _mask_inverted(q, k, v, mask=None):
    scores = _scores(q, k)
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
        return torch.softmax(scores, dim=-1).masked_fill(~(~mask).any(-1, keepdim=True), 0.0) @ v
    return torch.softmax(scores, dim=-1) @ v


def _mask_inverted_nan(q, k, v, mask=None):
    scores = _scores(q, k)
    return torch.softmax(scores if mask is None else scores.masked_fill(mask, float("-inf")), dim=-1) @ v


INVERTED = "the mask is inverted: True means keep, so fill where ~mask"


def _mask_after_softmax(q, k, v, mask=None):
    weights = torch.softmax(_scores(q, k), dim=-1)
    return (weights if mask is None else weights.masked_fill(~mask, 0.0)) @ v


def _renormalised_after_softmax(q, k, v, mask=None):
    # Right in exact arithmetic, but a kept key whose weight underflowed to 0 stays 0.
    weights = torch.softmax(_scores(q, k), dim=-1)
    if mask is None:
        return weights @ v
    weights = weights.masked_fill(~mask, 0.0)
    return (weights / weights.sum(-1, keepdim=True).clamp(min=1e-30)) @ v


def _mask_transposed(q, k, v, mask=None):
    return scaled_dot_product_attention(q, k, v, None if mask is None else mask.transpose(-2, -1))


def _filled_with_zero(q, k, v, mask=None):
    return torch.softmax(_fill(_scores(q, k), mask, 0.0), dim=-1) @ v


def _unscaled(q, k, v, mask=None):
    scores = _fill(q @ k.transpose(-2, -1), mask, float("-inf"))
    return _softmax_zero_empty_rows(scores, mask) @ v


def _scaled_by_d_v(q, k, v, mask=None):
    scores = _fill(q @ k.transpose(-2, -1) / math.sqrt(v.shape[-1]), mask, float("-inf"))
    return _softmax_zero_empty_rows(scores, mask) @ v


def _nan_rows(q, k, v, mask=None):
    return torch.softmax(_fill(_scores(q, k), mask, float("-inf")), dim=-1) @ v


def _finite_fill(q, k, v, mask=None):
    return torch.softmax(_fill(_scores(q, k), mask, -1e9), dim=-1) @ v


def _softmax_over_queries(q, k, v, mask=None):
    scores = _fill(_scores(q, k), mask, float("-inf"))
    return torch.softmax(scores, dim=-2).nan_to_num(0.0) @ v


TRANSPOSE_HINT = "if you used k.T: on a batched tensor it reverses every dimension; use k.transpose(-2, -1)"
K_DOT_T = r"\b(k|K|key|keys)\.T\b"  # the hint is only for a failing line that transposes k with .T
MASK_SHAPE_HINT = "the mask must broadcast to the scores, (.., seq_q, seq_k)"
AFTER_SOFTMAX = "the mask is applied after the softmax: mask the scores before it"

SDPA = Exercise(
    id="2.1",
    title="Scaled dot-product attention with a mask",
    function_name="scaled_dot_product_attention",
    arg_names=("q", "k", "v", "mask"),
    signature="scaled_dot_product_attention(q: (.., n, d_k), k: (.., m, d_k), v: (.., m, d_v), mask=None)"
              " -> (.., n, d_v)",
    reference=scaled_dot_product_attention,
    cases=(
        Case("How Are You, no mask", lambda: (*_how_are_you(), None), 2, "fixed"),
        Case("How Are You, causal mask", lambda: (*_how_are_you(), _tril(3)), 2, "fixed"),
        Case("random (2, 3, 5, 8), no mask",
             lambda: (*_randn(31, (2, 3, 5, 8), (2, 3, 5, 8), (2, 3, 5, 8)), None), 2, "random"),
        Case("random (2, 6, 4), causal mask (6, 6)",
             lambda: (*_randn(32, (2, 6, 4), (2, 6, 4), (2, 6, 4), scale=2.0), _tril(6)), 2, "random"),
        Case("random (3, 5, 4), padding mask (3, 1, 5)",
             lambda: (*_randn(33, (3, 5, 4), (3, 5, 4), (3, 5, 4), scale=2.0),
                      _keep([5, 2, 4], 5)[:, None, :]), 2, "random"),
        Case("cross-attention: 3 queries, 7 keys, d_v = 6",
             lambda: (*_randn(34, (3, 4), (7, 4), (7, 6), scale=2.0), _keep([7, 4, 2], 7)), 2, "random"),
        Case("edge: a query with every key masked",
             lambda: (*_randn(35, (3, 4), (3, 4), (3, 4)),
                      torch.tensor([[True, False, True], [False, False, False], [True, True, True]])), 1, "edge"),
        # Seed 38: some kept keys' softmax weights underflow to 0 when the masked keys are not
        # excluded first, so masking after the softmax (even renormalised) is caught.
        Case("edge: large scores, causal mask",
             lambda: (*_randn(38, (4, 16), (4, 16), (4, 3), scale=10.0), _tril(4)), 1, "edge"),
    ),
    mistakes=(
        Mistake(INVERTED, _mask_inverted),
        Mistake(INVERTED, _mask_inverted_nan),
        Mistake(AFTER_SOFTMAX, _mask_after_softmax),
        Mistake(AFTER_SOFTMAX, _renormalised_after_softmax),
        Mistake("the mask is transposed: rows are queries, columns are keys", _mask_transposed),
        Mistake("masked scores are filled with 0 instead of −∞", _filled_with_zero),
        Mistake("the scores are not divided by √d_k", _unscaled),
        Mistake("the scores are divided by √d_v instead of √d_k", _scaled_by_d_v),
        Mistake("a query with every key masked gets NaN: return zeros there", _nan_rows),
        Mistake("a finite fill (like −1e9) averages the values where all keys are masked; "
                "return zeros there", _finite_fill),
        Mistake("softmax runs over the queries (dim=-2), not the keys (dim=-1)", _softmax_over_queries),
    ),
    error_hints=(
        ("must match the size", TRANSPOSE_HINT, K_DOT_T),
        ("cannot be multiplied", TRANSPOSE_HINT, K_DOT_T),
        ("Expected size for first two dimensions of batch2", TRANSPOSE_HINT, K_DOT_T),
        ("expects a tensor with <= 2 dimensions", "k.t() is for 2-D tensors only; use k.transpose(-2, -1)"),
        ("must match the size", MASK_SHAPE_HINT, r"mask"),
        ("NoneType", "mask may be None: apply it only if mask is not None", r"mask"),
        ("masked_fill_ only supports boolean masks", "masked_fill needs a bool mask (True = keep)"),
    ),
)


# --- 2.2 causal_mask ----------------------------------------------------------------------------

RANDOM_N = tuple(torch.randint(5, 17, (2,), generator=torch.Generator().manual_seed(41)).tolist())

def causal_mask(n: int) -> torch.Tensor:
    """(n, n) bool: True where key j ≤ query i (a token sees itself and the past)."""
    return torch.tril(torch.ones(n, n, dtype=torch.bool))


CAUSAL = Exercise(
    id="2.2",
    title="A causal mask",
    function_name="causal_mask",
    arg_names=("n",),
    signature="causal_mask(n: int) -> (n, n) bool, True = keep",
    reference=causal_mask,
    cases=(
        Case("n = 4", lambda: (4,), 2, "fixed"),
        Case(f"random size n = {RANDOM_N[0]}", lambda: (RANDOM_N[0],), 2, "random"),
        Case(f"random size n = {RANDOM_N[1]}", lambda: (RANDOM_N[1],), 2, "random"),
        Case("edge: n = 1", lambda: (1,), 1, "edge"),
        Case("edge: n = 2", lambda: (2,), 1, "edge"),
    ),
    mistakes=(
        Mistake("the mask keeps the upper triangle (the future): use torch.tril",
                lambda n: torch.triu(torch.ones(n, n, dtype=torch.bool))),
        Mistake("True marks the future (nn.MultiheadAttention's convention); here True = keep",
                lambda n: torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)),
        Mistake("the diagonal is excluded: a token may attend to itself",
                lambda n: torch.tril(torch.ones(n, n, dtype=torch.bool), diagonal=-1)),
        *(Mistake("the mask holds 1s and 0s, not bool: use dtype=torch.bool",
                  lambda n, dtype=dtype: torch.tril(torch.ones(n, n, dtype=dtype)))
          for dtype in (torch.float32, torch.float64, torch.int64, torch.int32, torch.uint8)),
        Mistake("the mask is additive (0 and −∞), not bool: True = keep",
                lambda n: torch.zeros(n, n).masked_fill(~torch.tril(torch.ones(n, n, dtype=torch.bool)),
                                                        float("-inf"))),
    ),
)


# --- 2.3 padding_mask ---------------------------------------------------------------------------

NOT_BOOL = "the mask is a float or integer tensor, not bool: use a comparison"

def padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(batch, max_len) bool: True at the first lengths[b] positions of row b (real tokens)."""
    return torch.arange(max_len)[None, :] < lengths[:, None]


PADDING = Exercise(
    id="2.3",
    title="A padding mask from lengths",
    function_name="padding_mask",
    arg_names=("lengths", "max_len"),
    signature="padding_mask(lengths: (batch,) int, max_len: int) -> (batch, max_len) bool, True = keep",
    reference=padding_mask,
    cases=(
        Case("lengths [3, 1, 4], max_len 4", lambda: (torch.tensor([3, 1, 4]), 4), 2, "fixed"),
        Case("random: 6 lengths up to 10, max_len 10",
             lambda: (torch.randint(1, 11, (6,), generator=torch.Generator().manual_seed(42)), 10), 2, "random"),
        Case("random: 4 lengths up to 5, max_len 8 (every row padded)",
             lambda: (torch.randint(1, 6, (4,), generator=torch.Generator().manual_seed(43)), 8), 2, "random"),
        Case("edge: a length of 0 and a full row", lambda: (torch.tensor([0, 5]), 5), 1, "edge"),
        Case("edge: a single sequence of length 1", lambda: (torch.tensor([1]), 1), 1, "edge"),
    ),
    mistakes=(
        Mistake("off by one: each row keeps one position too many (use <, not <=)",
                lambda lengths, max_len: torch.arange(max_len)[None, :] <= lengths[:, None]),
        Mistake("off by one: each row keeps one position too few",
                lambda lengths, max_len: torch.arange(max_len)[None, :] < lengths[:, None] - 1),
        Mistake("True marks the padding (key_padding_mask's convention); here True = keep",
                lambda lengths, max_len: torch.arange(max_len)[None, :] >= lengths[:, None]),
        Mistake("the mask is transposed: it should be (batch, max_len)",
                lambda lengths, max_len: (torch.arange(max_len)[None, :] < lengths[:, None]).T),
        *(Mistake(NOT_BOOL, lambda lengths, max_len, dtype=dtype:
                  (torch.arange(max_len)[None, :] < lengths[:, None]).to(dtype))
          for dtype in (torch.float32, torch.float64, torch.int64, torch.int32, torch.uint8)),
    ),
    error_hints=(
        ("must match the size", "compare lengths[:, None] with the positions arange(max_len)"),
    ),
)

EXERCISES = (SDPA, CAUSAL, PADDING)
