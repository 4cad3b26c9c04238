"""Chapter 1 exercises: attention weights, attending, and cosine similarity of contextual vectors."""

from __future__ import annotations

import math

import torch

from ..spec import Case, Exercise, Mistake

# The toy example of chapter 1: "bank" and "river", Q = 1.2·E, K = 0.9·E, V = E.
TOY_E = ((0.8, -0.2, 0.1), (0.1, 0.7, -0.3))


def _toy() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    E = torch.tensor(TOY_E)
    return 1.2 * E, 0.9 * E, E.clone()


def _randn(seed: int, *shapes: tuple[int, ...], scale: float = 1.0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(scale * torch.randn(*shape, generator=g) for shape in shapes)


# --- 1.1 attention_weights ----------------------------------------------------------------------

def attention_weights(Q: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """softmax(Q Kᵀ / √d_k) over the key axis. Q: (n, d_k), K: (m, d_k) -> (n, m)."""
    return torch.softmax(Q @ K.T / math.sqrt(Q.shape[-1]), dim=-1)


def _large_scores(seed: int, *shapes: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """Values around 100, but the last query around 0.1: the other rows' scores reach ~10^4 and
    overflow torch.exp, while the last row's stay below ~20 and give a finite blend. A softmax without
    the max subtracted then has NaN rows next to a finite row that names it."""
    Q, *rest = _randn(seed, *shapes, scale=100.0)
    return (Q * torch.tensor([[1.0]] * (len(Q) - 1) + [[0.001]]), *rest)


def _naive_softmax(scores: torch.Tensor, dim: int = -1) -> torch.Tensor:
    e = torch.exp(scores)
    return e / e.sum(dim=dim, keepdim=True)


OVERFLOWS = "softmax overflows on large scores: subtract each row's maximum before torch.exp (or use torch.softmax)"
NOT_TRANSPOSED = "K is not transposed: Q is (n, d_k) and K is (m, d_k), so the scores are Q @ K.T"

WEIGHT_MISTAKES = (
    Mistake("the scores are not divided by √d_k", lambda Q, K: torch.softmax(Q @ K.T, dim=-1)),
    Mistake("the scores are divided by d_k instead of √d_k",
            lambda Q, K: torch.softmax(Q @ K.T / Q.shape[-1], dim=-1)),
    Mistake("softmax runs over the query axis (dim=0) instead of the key axis (dim=-1)",
            lambda Q, K: torch.softmax(Q @ K.T / math.sqrt(Q.shape[-1]), dim=0)),
    Mistake(NOT_TRANSPOSED,
            lambda Q, K: torch.softmax(Q @ K / math.sqrt(Q.shape[-1]), dim=-1)),
    Mistake("softmax is missing: these are the scaled scores, not weights that sum to 1",
            lambda Q, K: Q @ K.T / math.sqrt(Q.shape[-1])),
    Mistake(OVERFLOWS, lambda Q, K: _naive_softmax(Q @ K.T / math.sqrt(Q.shape[-1]))),
    # One maximum for the whole matrix: the rows far below it underflow to 0 / 0.
    Mistake(OVERFLOWS, lambda Q, K: _naive_softmax((lambda s: s - s.max())(Q @ K.T / math.sqrt(Q.shape[-1])))),
)

MATMUL_HINT = ("cannot be multiplied", NOT_TRANSPOSED)
WEIGHTS_TRANSPOSED = "the weights are transposed: the output is weights @ V, with weights of shape (n, m)"

WEIGHTS = Exercise(
    id="1.1",
    title="Attention weights",
    function_name="attention_weights",
    arg_names=("Q", "K"),
    signature="attention_weights(Q: (n, d_k), K: (m, d_k)) -> (n, m)",
    reference=attention_weights,
    cases=(
        Case("the toy example: bank and river", lambda: _toy()[:2], 2, "fixed"),
        Case("random, 4 queries × 6 keys, d_k = 8", lambda: _randn(1, (4, 8), (6, 8)), 2, "random"),
        Case("random, 5 queries × 5 keys, d_k = 5", lambda: _randn(11, (5, 5), (5, 5)), 2, "random"),
        Case("random, 3 queries × 7 keys, d_k = 64", lambda: _randn(6, (3, 64), (7, 64)), 1, "random"),
        Case("edge: one query and one key", lambda: _randn(4, (1, 4), (1, 4)), 1, "edge"),
        Case("edge: large scores (values around 100, one small query)",
             lambda: _large_scores(5, (3, 16), (4, 16)), 2, "edge"),
    ),
    mistakes=WEIGHT_MISTAKES,
    error_hints=(MATMUL_HINT,),
)


# --- 1.2 attend ---------------------------------------------------------------------------------

def attend(Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """Each query's weighted sum of values. Q: (n, d_k), K: (m, d_k), V: (m, d_v) -> (n, d_v)."""
    return attention_weights(Q, K) @ V


ATTEND = Exercise(
    id="1.2",
    title="Blend the values",
    function_name="attend",
    arg_names=("Q", "K", "V"),
    signature="attend(Q: (n, d_k), K: (m, d_k), V: (m, d_v)) -> (n, d_v)",
    reference=attend,
    cases=(
        Case("the toy example: the blended bank and river vectors", _toy, 3, "fixed"),
        Case("random, 4 queries × 6 keys, d_k = 8, d_v = 3", lambda: _randn(11, (4, 8), (6, 8), (6, 3)), 2, "random"),
        Case("random, 5 queries × 5 keys, d_k = 4, d_v = 5", lambda: _randn(12, (5, 4), (5, 4), (5, 5)), 2, "random"),
        Case("edge: a single key (every weight is 1)", lambda: _randn(13, (3, 4), (1, 4), (1, 2)), 1, "edge"),
        Case("edge: large scores (values around 100, one small query)",
             lambda: _large_scores(14, (3, 16), (4, 16), (4, 2)), 2, "edge"),
    ),
    mistakes=(
        Mistake(WEIGHTS_TRANSPOSED,
                lambda Q, K, V: attention_weights(Q, K).T @ V),
        Mistake("the output is the plain average of the values: the attention weights are not used",
                lambda Q, K, V: V.mean(dim=0, keepdim=True).expand(Q.shape[0], -1).contiguous()),
        Mistake("the function returns the attention weights, not the weighted sum of the values",
                lambda Q, K, V: attention_weights(Q, K)),
        *(Mistake(m.message, lambda Q, K, V, f=m.function: f(Q, K) @ V) for m in WEIGHT_MISTAKES),
    ),
    # A failing line `weights.T @ V` is the weights' fault, not K's; any other is K's.
    error_hints=(("cannot be multiplied", WEIGHTS_TRANSPOSED, r"\.(T|t\(\))\s*@\s*V\b"), MATMUL_HINT),
)


# --- 1.3 cosine_similarity ----------------------------------------------------------------------

def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity. a, b: (n, d) -> (n,)."""
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


COSINE = Exercise(
    id="1.3",
    title="Cosine similarity of contextual vectors",
    function_name="cosine_similarity",
    arg_names=("a", "b"),
    signature="cosine_similarity(a: (n, d), b: (n, d)) -> (n,)",
    reference=cosine_similarity,
    cases=(
        Case("parallel, opposite and orthogonal rows",
             lambda: (torch.tensor([[1.0, 2.0], [1.0, 0.0], [0.0, 3.0]]),
                      torch.tensor([[2.0, 4.0], [-5.0, 0.0], [2.0, 0.0]])), 2, "fixed"),
        Case("random, 6 rows, d = 384 (the size of MiniLM's vectors)", lambda: _randn(21, (6, 384), (6, 384)), 2, "random"),
        Case("random rows of different lengths", lambda: (_randn(22, (4, 16))[0] * torch.tensor([[0.1], [1.0], [10.0], [100.0]]),
                                                          _randn(23, (4, 16))[0]), 2, "random"),
        Case("edge: a single row, d = 1", lambda: (torch.tensor([[-3.0]]), torch.tensor([[2.0]])), 1, "edge"),
    ),
    mistakes=(
        Mistake("the vectors are not normalised: this is the plain dot product",
                lambda a, b: (a * b).sum(-1)),
        Mistake("only one of the two vectors is normalised: divide by both lengths",
                lambda a, b: (a * b).sum(-1) / a.norm(dim=-1)),
        Mistake("only one of the two vectors is normalised: divide by both lengths",
                lambda a, b: (a * b).sum(-1) / b.norm(dim=-1)),
        Mistake("the lengths are squared norms: divide by the norms themselves (take the square root)",
                lambda a, b: (a * b).sum(-1) / ((a * a).sum(-1) * (b * b).sum(-1))),
        Mistake("the similarity is taken over the wrong axis: reduce over the last dimension (d), one value per row",
                lambda a, b: (a * b).sum(0) / (a.norm(dim=0) * b.norm(dim=0))),
    ),
)

EXERCISES = (WEIGHTS, ATTEND, COSINE)
