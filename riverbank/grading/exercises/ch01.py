"""Chapter 1 exercises: every query's weights at once, attention from embeddings and learned
projections, a matrix of cosine similarities, and how attention moves "bank" towards "river"."""

from __future__ import annotations

import functools
import math

import torch

from ..spec import BUILD, EXPERIMENT, FLOOR_ULPS, SAFETY, WARM_UP, Case, Exercise, Mistake

# The toy example of chapter 1: "bank" and "river", Q = 1.2·E, K = 0.9·E, V = E.
TOY_E = ((0.8, -0.2, 0.1), (0.1, 0.7, -0.3))

STEP_2 = "chapter 1, section “Step 2: scores”"
STEP_3 = "chapter 1, section “Step 3: softmax turns scores into weights”"
STEP_4 = "chapter 1, section “Step 4: the blended vector”"
ASYMMETRY = "chapter 1, section “Learned projections break the symmetry”"
DRIFT = "chapter 1, section “Does bank drift apart?”"


def _toy() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    E = torch.tensor(TOY_E)
    return 1.2 * E, 0.9 * E, E.clone()


def _randn(seed: int, *shapes: tuple[int, ...], scale: float = 1.0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(scale * torch.randn(*shape, generator=g) for shape in shapes)


def _t(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-2, -1)


# --- 1.1 attention_weights: every query of every sentence at once -------------------------------

def attention_weights(Q: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """softmax(Q Kᵀ / √d_k) over the key axis. Q: (..., n, d_k), K: (..., m, d_k) -> (..., n, m)."""
    return torch.softmax(Q @ _t(K) / math.sqrt(Q.shape[-1]), dim=-1)


def _large_scores(seed: int, q_shape: tuple[int, ...], k_shape: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """Scores around 100 that differ by a few units, and one query per sentence whose scores are
    around −20.

    Every query and key is 20 times the same unit vector plus noise of size 0.5, so the scaled scores
    are about 20 · 20 / √d_k = 100 (d_k = 16), spread by a few units: the right weights are far from
    one-hot (largest 0.4 to 0.8), without the √d_k the spread is four times larger and the weights
    nearly one-hot, and torch.exp(100) overflows float32 (its largest value is e^88.7). The last query
    of each sentence is scaled by −0.2, so its scores are about −20: a softmax without the maximum
    subtracted is finite on that row and names itself, and one that subtracts the maximum of the
    whole matrix (about 104) underflows there to 0 / 0."""
    g = torch.Generator().manual_seed(seed)
    d_k = q_shape[-1]
    direction = torch.ones(d_k) / math.sqrt(d_k)
    Q = 20.0 * direction + 0.5 * torch.randn(*q_shape, generator=g)  # (.., n, d_k)
    K = 20.0 * direction + 0.5 * torch.randn(*k_shape, generator=g)  # (.., m, d_k)
    Q[..., -1, :] *= -0.2
    return Q, K


def _naive_softmax(scores: torch.Tensor, dim: int = -1) -> torch.Tensor:
    e = torch.exp(scores)
    return e / e.sum(dim=dim, keepdim=True)


OVERFLOWS = "softmax overflows on large scores: subtract each row's maximum before torch.exp (or use torch.softmax)"
NOT_TRANSPOSED = "K is not transposed: the scores are Q times K transposed, (.., n, d_k) @ (.., d_k, m)"
BATCH_T = ("on a batched K, .T reverses every axis (the batch axis too): "
           "swap only the last two axes, K.transpose(-2, -1)")
WRONG_AXIS = "softmax runs over the wrong axis: every query's weights over the keys (the last axis, dim=-1) sum to 1"


def _scaled(Q, K):
    return Q @ _t(K) / math.sqrt(Q.shape[-1])


WEIGHT_MISTAKES = (
    Mistake("the scores are not divided by √d_k", lambda Q, K: torch.softmax(Q @ _t(K), dim=-1),
            hint=2, section=STEP_2),
    Mistake("the scores are divided by d_k instead of √d_k",
            lambda Q, K: torch.softmax(Q @ _t(K) / Q.shape[-1], dim=-1), hint=2, section=STEP_2),
    Mistake(WRONG_AXIS, lambda Q, K: torch.softmax(_scaled(Q, K), dim=-2), hint=2, section=STEP_3),
    Mistake(WRONG_AXIS, lambda Q, K: torch.softmax(_scaled(Q, K), dim=0), hint=2, section=STEP_3),
    Mistake(WRONG_AXIS, lambda Q, K: torch.softmax(_scaled(Q, K), dim=1), hint=2, section=STEP_3),
    Mistake(NOT_TRANSPOSED, lambda Q, K: torch.softmax(Q @ K / math.sqrt(Q.shape[-1]), dim=-1), hint=3),
    Mistake("softmax is missing: these are the scaled scores, not weights that sum to 1",
            _scaled, hint=2, section=STEP_3),
    Mistake(OVERFLOWS, lambda Q, K: _naive_softmax(_scaled(Q, K)), hint=2),
    # One maximum for the whole matrix: the rows far below it underflow to 0 / 0.
    Mistake(OVERFLOWS, lambda Q, K: _naive_softmax((lambda s: s - s.max())(_scaled(Q, K))), hint=2),
)

K_DOT_T = r"\b(K|k|keys?)\.T\b"

WEIGHTS = Exercise(
    id="1.1",
    title="Every word's weights at once",
    function_name="attention_weights",
    arg_names=("Q", "K"),
    signature="attention_weights(Q: (.., n, d_k), K: (.., m, d_k)) -> (.., n, m)",
    reference=attention_weights,
    level=WARM_UP,
    hints=(
        "Chapter 1 worked out bank's row: one dot product of bank's query with each key, scaled, then "
        "a softmax. Every other query does the same with its own query vector, and every sentence of a "
        "batch does the same on its own, so the whole computation is one batched matrix product "
        "followed by one softmax.",
        "A = softmax(Q Kᵀ / √d_k), where Kᵀ swaps only the last two axes of K (the batch axes stay "
        "where they are), d_k is the last size of Q, and the softmax runs along the last axis, the "
        "keys, so that each row sums to 1.",
        "Q (.., n, d_k) times K with its last two axes swapped, (.., d_k, m), gives the scores "
        "(.., n, m); divide them by the square root of d_k; softmax along the last axis. On a 3-D "
        "tensor .T reverses all three axes, so name the two axes to swap.",
    ),
    cases=(
        Case("the toy example: bank's and river's rows", lambda: _toy()[:2], 2, "fixed"),
        Case("random: 3 sentences, 4 queries × 6 keys, d_k = 8", lambda: _randn(1, (3, 4, 8), (3, 6, 8)), 2, "random"),
        Case("random: 2 sentences, 5 queries × 5 keys, d_k = 5", lambda: _randn(11, (2, 5, 5), (2, 5, 5)), 2, "random"),
        Case("random: (2, 3) leading axes, 3 queries × 7 keys, d_k = 64",
             lambda: _randn(6, (2, 3, 3, 64), (2, 3, 7, 64)), 1, "random"),
        Case("edge: one sentence of one word", lambda: _randn(4, (1, 1, 4), (1, 1, 4)), 1, "edge"),
        Case("edge: large scores (around 100; one query's around −20)",
             lambda: _large_scores(0, (2, 3, 16), (2, 4, 16)), 2, "edge"),
    ),
    mistakes=WEIGHT_MISTAKES,
    error_hints=(
        ("must match the size", BATCH_T, K_DOT_T),
        ("Expected size for first two dimensions of batch2", BATCH_T, K_DOT_T),
        ("expects a tensor with <= 2 dimensions", BATCH_T),
        ("cannot be multiplied", NOT_TRANSPOSED),
        ("must match the size", NOT_TRANSPOSED),
    ),
)


# --- 1.2 self_attention: from embeddings and learned projections --------------------------------

def _project(E, W):
    """nn.Linear's rule: x Wᵀ for a weight stored as (out, in)."""
    return E @ W.T


def self_attention(E, W_Q, W_K, W_V):
    """Attention of a sentence's words over each other, from their embeddings.

    E: (.., n, d_model); W_Q, W_K: (d_k, d_model); W_V: (d_v, d_model), stored as nn.Linear stores
    its weight. Returns (.., n, d_v).
    """
    Q, K, V = _project(E, W_Q), _project(E, W_K), _project(E, W_V)  # (.., n, d_k), (.., n, d_k), (.., n, d_v)
    return attention_weights(Q, K) @ V  # (.., n, n) @ (.., n, d_v)


def _attend_with(scores_fn, weights_fn=None):
    def fn(E, W_Q, W_K, W_V):
        Q, K, V = _project(E, W_Q), _project(E, W_K), _project(E, W_V)
        w = torch.softmax(scores_fn(Q, K, V), dim=-1) if weights_fn is None else weights_fn(Q, K)
        return w @ V
    return fn


def _not_transposed(E, W_Q, W_K, W_V):
    return attention_weights(E @ W_Q, E @ W_K) @ (E @ W_V)


def _by_d_model(E, W_Q, W_K, W_V):
    Q, K, V = _project(E, W_Q), _project(E, W_K), _project(E, W_V)
    return torch.softmax(Q @ _t(K) / math.sqrt(E.shape[-1]), dim=-1) @ V


def _swapped(E, W_Q, W_K, W_V):
    return self_attention(E, W_K, W_Q, W_V)


def _raw_values(E, W_Q, W_K, W_V):
    return attention_weights(_project(E, W_Q), _project(E, W_K)) @ E


def _weights_transposed(E, W_Q, W_K, W_V):
    return _t(attention_weights(_project(E, W_Q), _project(E, W_K))) @ _project(E, W_V)


LINEAR_LAYOUT = ("the weights are used as (d_model, d_out), but they are stored as nn.Linear stores them, "
                 "(d_out, d_model): multiply the embeddings by their transpose")
SWAPPED = "queries and keys are swapped: the scores come out transposed, key by query"

SELF_ATTENTION = Exercise(
    id="1.2",
    title="Attention from embeddings and learned projections",
    function_name="self_attention",
    arg_names=("E", "W_Q", "W_K", "W_V"),
    signature="self_attention(E: (.., n, d_model), W_Q: (d_k, d_model), W_K: (d_k, d_model), "
              "W_V: (d_v, d_model)) -> (.., n, d_v)",
    reference=self_attention,
    level=BUILD,
    hints=(
        "Three stages: make every word's query, key and value from its embedding with the three "
        "matrices; compute every query's weights over the keys (your 1.1 does this); blend the values "
        "with those weights. The queries come from W_Q and the keys from W_K: which is which matters, "
        "because the scores are not symmetric any more.",
        "Q = E W_Qᵀ, K = E W_Kᵀ, V = E W_Vᵀ (nn.Linear keeps each matrix as (out, in) and computes "
        "x Wᵀ). Then output = softmax(Q Kᵀ / √d_k) V, with d_k the length of a query or key, which "
        "need not be d_model.",
        "E (.., n, d_model) times a transposed weight (d_model, d_out) gives (.., n, d_out): Q and K "
        "are (.., n, d_k) and V is (.., n, d_v). The weights are (.., n, n), one row per query, and "
        "the output (.., n, d_v). The 2-D weight matrices broadcast over E's leading axes.",
    ),
    cases=(
        Case("the toy example: W_Q = 1.2·I, W_K = 0.9·I, W_V = I",
             lambda: (torch.tensor(TOY_E), 1.2 * torch.eye(3), 0.9 * torch.eye(3), torch.eye(3)), 2, "fixed"),
        Case("random: 5 words, d_model = 6, d_k = 4, d_v = 3",
             lambda: _randn(21, (5, 6), (4, 6), (4, 6), (3, 6)), 2, "random"),
        Case("random: 2 sentences of 4 words, d_model = d_k = d_v = 8",
             lambda: _randn(22, (2, 4, 8), (8, 8), (8, 8), (8, 8)), 2, "random"),
        Case("random: (3, 2) sentences of 5 words, d_model = 4, d_k = 16, d_v = 2",
             lambda: _randn(23, (3, 2, 5, 4), (16, 4), (16, 4), (2, 4)), 2, "random"),
        Case("edge: a one-word sentence (its output is its own value)",
             lambda: _randn(24, (1, 4), (3, 4), (3, 4), (5, 4)), 1, "edge"),
        Case("edge: large embeddings (scores in the thousands)",
             lambda: _randn(25, (2, 6, 8), (8, 8), (8, 8), (3, 8), scale=8.0), 1, "edge"),
    ),
    mistakes=(
        Mistake(LINEAR_LAYOUT, _not_transposed, hint=2),
        Mistake(SWAPPED, _swapped, hint=1, section=ASYMMETRY),
        Mistake("the scores are divided by √d_model instead of √d_k (the length of a query)",
                _by_d_model, hint=2),
        Mistake("the scores are not divided by √d_k", _attend_with(lambda Q, K, V: Q @ _t(K)), hint=2,
                section=STEP_2),
        Mistake("the scores are divided by √d_v instead of √d_k",
                _attend_with(lambda Q, K, V: Q @ _t(K) / math.sqrt(V.shape[-1])), hint=2),
        Mistake(WRONG_AXIS, _attend_with(None, lambda Q, K: torch.softmax(_scaled(Q, K), dim=-2)),
                hint=2, section=STEP_3),
        Mistake("the values are the raw embeddings: project them with W_V first", _raw_values, hint=2),
        Mistake("the weights are transposed: the output is weights @ V, with one row of weights per query",
                _weights_transposed, hint=3, section=STEP_4),
    ),
    error_hints=(
        ("cannot be multiplied", LINEAR_LAYOUT, r"W_[QKV]\b(?!\s*\.\s*(T|t\(\)|transpose))"),
        ("Expected size for first two dimensions of batch2", BATCH_T, K_DOT_T),
        ("must match the size", BATCH_T, K_DOT_T),
        ("cannot be multiplied", LINEAR_LAYOUT),
    ),
)


# --- 1.3 cosine_similarity: every pair at once --------------------------------------------------

def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every row of a with every row of b. a: (n, d), b: (m, d) -> (n, m)."""
    return (a @ b.T) / (a.norm(dim=-1)[:, None] * b.norm(dim=-1)[None, :])


COSINE = Exercise(
    id="1.3",
    title="A matrix of cosine similarities",
    function_name="cosine_similarity",
    arg_names=("a", "b"),
    signature="cosine_similarity(a: (n, d), b: (m, d)) -> (n, m)",
    reference=cosine_similarity,
    level=WARM_UP,
    hints=(
        "The cosine does not care how long the vectors are. Make every row of a and of b a vector "
        "of length 1 first; then the dot products of those unit rows are the cosines, and all of "
        "them at once form one matrix product.",
        "cos(a_i, b_j) = a_i · b_j / (‖a_i‖ ‖b_j‖): the matrix a bᵀ, with entry (i, j) divided by the "
        "length of row i of a times the length of row j of b.",
        "The row lengths are norms over the last axis, one per row: keep them as columns, (n, 1) and "
        "(m, 1), so that dividing a (n, d) and b (m, d) by them broadcasts; then one matrix product "
        "of (n, d) with (d, m).",
    ),
    cases=(
        Case("parallel, opposite and orthogonal rows",
             lambda: (torch.tensor([[1.0, 2.0], [1.0, 0.0], [0.0, 3.0]]),
                      torch.tensor([[2.0, 4.0], [-5.0, 0.0], [2.0, 1.0]])), 2, "fixed"),
        Case("random: 6 rows against 4, d = 384 (the size of MiniLM's vectors)",
             lambda: _randn(31, (6, 384), (4, 384)), 2, "random"),
        Case("random rows of very different lengths, 4 against 4",
             lambda: (_randn(32, (4, 16))[0] * torch.tensor([[0.1], [1.0], [10.0], [100.0]]),
                      _randn(33, (4, 16))[0] * torch.tensor([[3.0], [0.2], [1.0], [50.0]])), 2, "random"),
        Case("edge: a single row against a single row, d = 1",
             lambda: (torch.tensor([[-3.0]]), torch.tensor([[2.0]])), 1, "edge"),
    ),
    mistakes=(
        Mistake("the vectors are not normalised: this is the plain dot product", lambda a, b: a @ b.T,
                hint=2, section=DRIFT),
        Mistake("only the rows of a are normalised: divide by the lengths of both",
                lambda a, b: (a @ b.T) / a.norm(dim=-1)[:, None], hint=2),
        Mistake("only the rows of b are normalised: divide by the lengths of both",
                lambda a, b: (a @ b.T) / b.norm(dim=-1)[None, :], hint=2),
        Mistake("the lengths are squared norms: divide by the norms themselves (take the square root)",
                lambda a, b: (a @ b.T) / ((a * a).sum(-1)[:, None] * (b * b).sum(-1)[None, :]), hint=2),
        Mistake("the lengths are divided the wrong way round: entry (i, j) needs the length of a's row i "
                "and of b's row j", lambda a, b: (a @ b.T) / (a.norm(dim=-1)[None, :] * b.norm(dim=-1)[:, None]),
                hint=3),
        Mistake("the lengths are taken over the wrong axis: one length per row, over the last axis (d)",
                lambda a, b: (a / a.norm(dim=0, keepdim=True)) @ (b / b.norm(dim=0, keepdim=True)).T, hint=3),
    ),
)


# --- 1.4 experiment: how much closer does attention bring bank and river? -----------------------

TEMPERATURE = 0.25


def _toy_similarity(temperature: float, dtype: torch.dtype = torch.float64, *, scale=None, inputs=False,
                    against_input=False) -> float:
    E = torch.tensor(TOY_E, dtype=dtype)
    Q, K, V = 1.2 * E, 0.9 * E, E
    if inputs:
        a, b = E[0], E[1]
    else:
        d = math.sqrt(3) if scale is None else scale
        out = torch.softmax(Q @ K.T / (d * temperature), dim=-1) @ V
        a, b = out[0], (E[1] if against_input else out[1])
    return float(torch.dot(a, b) / (a.norm() * b.norm()))


def bank_river_similarity() -> float:
    """cos(bank, river) after chapter 1's toy attention with the scores divided by T·√d_k, T = 0.25."""
    return _toy_similarity(TEMPERATURE)


@functools.lru_cache(maxsize=None)
def _answer_tol(truth: float) -> float:
    """float32's own error on the measurement, by the grader's rule."""
    error = abs(_toy_similarity(TEMPERATURE, torch.float32) - truth)
    return SAFETY * error + FLOOR_ULPS * torch.finfo(torch.float32).eps * max(abs(truth), 1.0)


SIMILARITY = Exercise(
    id="1.4",
    title="How close does attention bring bank and river?",
    function_name="bank_river_similarity",
    arg_names=(),
    signature="bank_river_similarity() -> float",
    reference=bank_river_similarity,
    level=EXPERIMENT,
    answer_tol=_answer_tol,
    hints=(
        "A temperature T divides the scores before the softmax: T below 1 sharpens the weights, so "
        "every word keeps more of its own value; T above 1 flattens them towards a plain average. "
        "Run chapter 1's toy attention at T = 0.25, then compare the two blended vectors.",
        "weights = softmax(Q Kᵀ / (T √d_k)) with Q = 1.2 E, K = 0.9 E, V = E and d_k = 3; outputs = "
        "weights V; the answer is cos(output of bank, output of river). Dividing the scores by T is the "
        "same as dividing Q by T.",
        "E is the 2 × 3 tensor of the chapter (bank in row 0, river in row 1). Your attention_weights on "
        "Q / T and K gives the 2 × 2 weights; times V gives the 2 × 3 outputs; your cosine_similarity on "
        "row 0 and row 1, each kept as a 1 × 3 tensor, gives a 1 × 1 tensor: return the number it holds.",
    ),
    cases=(Case("your answer", lambda: (), 4, "experiment"),),
    mistakes=(
        Mistake("that is the similarity at T = 1, the chapter's softmax: divide the scores by T = 0.25 too",
                lambda: _toy_similarity(1.0), hint=1),
        Mistake("the temperature multiplies the scores: it divides them (T = 0.25 makes them 4 times larger)",
                lambda: _toy_similarity(1 / TEMPERATURE), hint=2),
        Mistake("that is the similarity before attention, of the embeddings themselves",
                lambda: _toy_similarity(TEMPERATURE, inputs=True), hint=1),
        Mistake("the scores are not divided by √d_k, only by T", lambda: _toy_similarity(TEMPERATURE, scale=1.0),
                hint=2, section=STEP_2),
        Mistake("that compares bank's output with river's embedding: compare the two outputs",
                lambda: _toy_similarity(TEMPERATURE, against_input=True), hint=2),
    ),
)

EXERCISES = (WEIGHTS, SELF_ATTENTION, COSINE, SIMILARITY)
