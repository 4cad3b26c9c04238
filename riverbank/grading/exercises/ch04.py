"""Chapter 4 exercises: each head's contribution through W_O, a causal multi-head self-attention
module with grouped-query attention, what mean-pooling key and value heads costs, and how focused
all-MiniLM-L6-v2's heads are (their mean attention entropy)."""

from __future__ import annotations

import copy
import functools
import math

import torch
from torch import nn

from ..spec import BUILD, EXPERIMENT, FLOOR_ULPS, SAFETY, WARM_UP, Case, Exercise, Mistake, WrongKind

SPLIT = "chapter 4, section “Step 1: split into heads”"
ATTEND = "chapter 4, section “Step 2: attend, in every head at once”"
MERGE = "chapter 4, section “Step 3: concatenate the heads”"
PROJECT = "chapter 4, section “Step 4: the output projection W_O”"
GQA = "chapter 7, section “Multi-query and grouped-query attention”"
CAUSAL = "chapter 2, section “Masks”"
MEASURE = "chapter 4, section “Finding heads by measurement”"


def _randn(seed: int, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- 4.1 head_contributions -----------------------------------------------------------------------

def head_contributions(heads: torch.Tensor, w_o: torch.Tensor) -> torch.Tensor:
    """Head h's share of Concat(heads) @ w_o: heads[:, h] @ w_o[h·head_dim:(h+1)·head_dim].

    heads: (batch, n_heads, seq, head_dim); w_o: (n_heads · head_dim, d_out), used as concat @ w_o.
    Returns (batch, n_heads, seq, d_out); its sum over dim 1 is Concat(heads) @ w_o.
    """
    batch, n_heads, seq, head_dim = heads.shape
    blocks = w_o.reshape(n_heads, head_dim, w_o.shape[-1])  # (n_heads, head_dim, d_out)
    return heads @ blocks  # (batch, n_heads, seq, d_out)


def _contributions_rows(heads, w_o, rows):
    """Head h multiplies the rows rows(h, n_heads, head_dim) of w_o."""
    n_heads, head_dim = heads.shape[1], heads.shape[-1]
    return torch.stack([heads[:, h] @ w_o[rows(h, n_heads, head_dim)] for h in range(n_heads)], dim=1)


def _summed(heads, w_o):
    return head_contributions(heads, w_o).sum(dim=1)


def _transposed_w_o(heads, w_o):  # nn.Linear's layout: weight is (d_out, d_in)
    n_heads, head_dim = heads.shape[1], heads.shape[-1]
    return torch.stack([heads[:, h] @ w_o[:, h * head_dim:(h + 1) * head_dim].T for h in range(n_heads)], dim=1)


CONTRIBUTIONS = Exercise(
    id="4.1",
    title="Each head's contribution to the output",
    function_name="head_contributions",
    arg_names=("heads", "w_o"),
    signature="head_contributions(heads: (batch, n_heads, seq, head_dim), w_o: (n_heads * head_dim, d_out))"
              " -> (batch, n_heads, seq, d_out)",
    reference=head_contributions,
    level=WARM_UP,
    cases=(
        Case("(1, 2, 3, 3), w_o (6, 6)", lambda: (_randn(401, 1, 2, 3, 3), _randn(402, 6, 6)), 2, "fixed"),
        Case("random (2, 4, 5, 3), w_o (12, 12)",
             lambda: (_randn(403, 2, 4, 5, 3), _randn(404, 12, 12, scale=0.3)), 2, "random"),
        Case("random (3, 3, 4, 2), w_o (6, 6)", lambda: (_randn(405, 3, 3, 4, 2), _randn(406, 6, 6)), 2, "random"),
        Case("random (2, 2, 4, 4), d_out = 5: w_o (8, 5)",
             lambda: (_randn(407, 2, 2, 4, 4), _randn(408, 8, 5)), 1, "random"),
        Case("edge: 1 head, (2, 1, 3, 4)", lambda: (_randn(409, 2, 1, 3, 4), _randn(410, 4, 4)), 1, "edge"),
        Case("edge: head_dim 1, (1, 4, 3, 1)", lambda: (_randn(411, 1, 4, 3, 1), _randn(412, 4, 4)), 1, "edge"),
    ),
    mistakes=(
        Mistake("the heads are summed: keep one contribution per head", _summed, hint=3),
        Mistake("w_o is used as nn.Linear's weight; here use its rows", _transposed_w_o,
                hint=2, section=PROJECT),
        Mistake("head h's rows of w_o are consecutive, from h·head_dim",
                lambda heads, w_o: _contributions_rows(heads, w_o, lambda h, n, d: slice(h, n * d, n)),
                hint=2, section=MERGE),
        Mistake("the heads are in reverse order: head 0 comes first",
                lambda heads, w_o: head_contributions(heads, w_o).flip(1), hint=2),
        Mistake("every head used head 0's rows of w_o",
                lambda heads, w_o: _contributions_rows(heads, w_o, lambda h, n, d: slice(0, d)), hint=2),
    ),
    hints=(
        "Concat(head_0, …, head_{h−1}) W_O is one sum per output feature, and its terms come in blocks: head h's "
        "features only ever meet one block of rows of W_O. So the output is a sum of one term per head, and each "
        "term is that head's contribution.",
        "contribution_h = heads[:, h] @ w_o[h·head_dim:(h+1)·head_dim], a (batch, seq, head_dim) @ "
        "(head_dim, d_out) product; the sum over h equals the merged heads times w_o.",
        "Either loop over the heads and torch.stack the (batch, seq, d_out) terms along dim 1, or reshape w_o to "
        "(n_heads, head_dim, d_out) and multiply all heads at once: (batch, n_heads, seq, head_dim) @ "
        "(n_heads, head_dim, d_out) broadcasts over the batch.",
    ),
    error_hints=(("cannot be multiplied", "w_o is (n_heads·head_dim, d_out): slice rows per head"),),
)


# --- 4.2 CausalSelfAttention ----------------------------------------------------------------------

PARAMETERS = ("w_q", "w_k", "w_v", "w_o")


def _attention(config: dict, state: dict, x: torch.Tensor, *, causal=True, keep=None, fill=float("-inf"),
               scale=None, softmax_dim=-1, kv_index=None, split_transpose=True, merge_transpose=True,
               project=True, weight_t=False) -> torch.Tensor:
    """Causal multi-head self-attention with grouped-query heads; one knob per known mistake."""
    d_model, n_heads = config["d_model"], config["n_heads"]
    n_kv = config.get("n_kv_heads") or n_heads
    head_dim = d_model // n_heads
    batch, seq, _ = x.shape
    w = {name: state[f"{name}.weight"] for name in PARAMETERS}
    if weight_t:
        w = {name: m.T for name, m in w.items()}

    def split(t, heads):  # (batch, seq, heads · head_dim) -> (batch, heads, seq, head_dim)
        if split_transpose:
            return t.reshape(batch, seq, heads, head_dim).transpose(1, 2)
        return t.reshape(batch, heads, seq, head_dim)

    q = split(x @ w["w_q"].T, n_heads)  # (batch, n_heads, seq, head_dim)
    k = split(x @ w["w_k"].T, n_kv)  # (batch, n_kv, seq, head_dim)
    v = split(x @ w["w_v"].T, n_kv)
    index = (kv_index or (lambda h, n_heads, n_kv: h // (n_heads // n_kv)))
    which = torch.tensor([index(h, n_heads, n_kv) for h in range(n_heads)])
    k, v = k[:, which], v[:, which]  # (batch, n_heads, seq, head_dim): query head h's kv head
    scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim if scale is None else scale(config))
    if causal:
        allowed = torch.tril(torch.ones(seq, seq, dtype=torch.bool)) if keep is None else keep(seq)
        scores = scores.masked_fill(~allowed, fill)
    out = torch.softmax(scores, dim=softmax_dim) @ v  # (batch, n_heads, seq, head_dim)
    out = out.transpose(1, 2).reshape(batch, seq, d_model) if merge_transpose else out.reshape(batch, seq, d_model)
    return out @ w["w_o"].T if project else out


def causal_self_attention(config: dict, state: dict, x: torch.Tensor) -> torch.Tensor:
    """What ``CausalSelfAttention(**config)`` with weights ``state`` computes on x (batch, seq, d_model)."""
    return _attention(config, state, x)


def _state(seed: int, d_model: int, n_heads: int, n_kv_heads: int | None = None) -> dict:
    kv_width = (n_kv_heads or n_heads) * (d_model // n_heads)
    g = torch.Generator().manual_seed(seed)
    shapes = {"w_q": (d_model, d_model), "w_k": (kv_width, d_model), "w_v": (kv_width, d_model),
              "w_o": (d_model, d_model)}
    return {f"{name}.weight": torch.randn(*shape, generator=g) / math.sqrt(d_model) for name, shape in shapes.items()}


def _case(seed: int, batch: int, seq: int, d_model: int, n_heads: int, n_kv_heads: int | None = None,
          explicit: bool = False) -> tuple:
    config = {"d_model": d_model, "n_heads": n_heads}
    if n_kv_heads is not None or explicit:
        config["n_kv_heads"] = n_kv_heads if n_kv_heads is not None else n_heads
    return config, _state(seed, d_model, n_heads, n_kv_heads), _randn(seed + 1, batch, seq, d_model, scale=2.0)


def _adapt_module(cls):
    """The learner's class as a function of a case's (config, state, x): built, loaded, called."""
    if not isinstance(cls, type):
        raise WrongKind(f"expected a class (check(\"4.2\", CausalSelfAttention)), got {type(cls).__name__}; "
                        "pass the class itself, not an instance or a function")
    if not issubclass(cls, nn.Module):
        raise WrongKind(f"{cls.__name__} is not an nn.Module: write class {cls.__name__}(nn.Module)")
    from ...heads import MultiHeadAttention
    if issubclass(cls, MultiHeadAttention):
        raise WrongKind("this class is built on the course's MultiHeadAttention: write the layer yourself")

    def run(config, state, x):
        module = cls(**config).to(x.dtype)
        module.load_state_dict(state)
        with torch.no_grad():
            return module(x)
    return run


def _variant(**knobs):
    def wrong(config, state, x):
        return _attention(config, state, x, **knobs)
    return wrong


MASK_INVERTED = "mask inverted: keep key j ≤ query i, fill the rest"
MISSING_KEYS = "name the layers w_q, w_k, w_v, w_o; bias=False"

MODULE = Exercise(
    id="4.2",
    title="Causal multi-head self-attention, with grouped-query heads",
    function_name="CausalSelfAttention",
    arg_names=("config", "state", "x"),
    signature="CausalSelfAttention(d_model, n_heads, n_kv_heads=None); forward(x: (batch, seq, d_model))"
              " -> (batch, seq, d_model)",
    reference=causal_self_attention,
    level=BUILD,
    adapt=_adapt_module,
    cases=(
        Case("d_model 6, 2 heads, (1, 3, 6)", lambda: _case(420, 1, 3, 6, 2), 2, "fixed"),
        Case("random: d_model 16, 4 heads, (2, 7, 16)", lambda: _case(421, 2, 7, 16, 4), 2, "random"),
        Case("random GQA: 4 heads, 2 kv heads, (2, 6, 16)", lambda: _case(422, 2, 6, 16, 4, 2), 3, "random"),
        Case("random GQA: 6 heads, 2 kv heads, (2, 8, 24)", lambda: _case(423, 2, 8, 24, 6, 2), 2, "random"),
        Case("random MQA: 3 heads, 1 kv head, (1, 5, 12)", lambda: _case(424, 1, 5, 12, 3, 1), 2, "random"),
        Case("edge: one token, (2, 1, 8), 2 heads", lambda: _case(425, 2, 1, 8, 2), 1, "edge"),
        Case("edge: head_dim 1, 4 heads, 2 kv heads, (1, 4, 4)", lambda: _case(426, 1, 4, 4, 4, 2), 1, "edge"),
        Case("edge: n_kv_heads = n_heads given, (1, 5, 8)", lambda: _case(427, 1, 5, 8, 2, explicit=True), 1, "edge"),
    ),
    mistakes=(
        Mistake("the layer is not causal: mask the keys after each query", _variant(causal=False),
                hint=2, section=CAUSAL),
        Mistake(MASK_INVERTED, _variant(keep=lambda s: torch.triu(torch.ones(s, s, dtype=torch.bool), 1)),
                hint=2, section=CAUSAL),
        Mistake(MASK_INVERTED, _variant(keep=lambda s: torch.triu(torch.ones(s, s, dtype=torch.bool), 1),
                                        fill=-1e9), hint=2, section=CAUSAL),
        Mistake("the diagonal is masked: a token attends to itself too",
                _variant(keep=lambda s: torch.tril(torch.ones(s, s, dtype=torch.bool), -1), fill=-1e9),
                hint=2, section=CAUSAL),
        Mistake("kv heads tiled: query head h uses kv head h // group", _variant(
            kv_index=lambda h, n_heads, n_kv: h % n_kv), hint=2, section=GQA),
        Mistake("scores divided by √d_model; divide by √head_dim",
                _variant(scale=lambda c: c["d_model"]), hint=2, section=ATTEND),
        Mistake("the scores are not divided by √head_dim", _variant(scale=lambda c: 1), hint=2, section=ATTEND),
        Mistake("softmax runs over the queries (dim=-2), not the keys", _variant(softmax_dim=-2), hint=3),
        Mistake("heads split without transpose(1, 2): heads mix tokens", _variant(split_transpose=False),
                hint=3, section=SPLIT),
        Mistake("heads merged without transpose(1, 2) first", _variant(merge_transpose=False),
                hint=3, section=MERGE),
        Mistake("the output projection w_o is missing", _variant(project=False), hint=1, section=PROJECT),
        Mistake("x @ w.weight uses it transposed: call the layer, w_q(x)", _variant(weight_t=True), hint=3),
    ),
    hints=(
        "Four steps, as in chapter 4: project x with w_q, w_k and w_v; split into heads; attend in every head at "
        "once, with a causal mask; merge the heads and project with w_o. With grouped-query attention the keys "
        "and values have only n_kv_heads heads, and each is shared by a group of n_heads // n_kv_heads "
        "consecutive query heads.",
        "head_dim = d_model // n_heads; per head, scores = q kᵀ / √head_dim; query i keeps key j when j ≤ i, and "
        "the other scores become −∞ before the softmax; query head h uses key/value head h // (n_heads // "
        "n_kv_heads).",
        "Shapes: q (batch, n_heads, seq, head_dim); k and v (batch, n_kv_heads, seq, head_dim), each kv head "
        "repeated in place along dim 1 (repeat_interleave) to n_heads; scores (batch, n_heads, seq, seq), softmax "
        "over the last axis; a (seq, seq) lower-triangular bool mask broadcasts over batch and heads; merge to "
        "(batch, seq, d_model) with transpose(1, 2) then reshape, then w_o.",
    ),
    error_hints=(
        ('.bias"', "no biases: nn.Linear(d_model, ..., bias=False)"),
        ("Missing key(s)", MISSING_KEYS),
        ("Unexpected key(s)", "define all four layers: w_q, w_k, w_v, w_o"),
        ("size mismatch", "w_k, w_v: nn.Linear(d_model, n_kv_heads * head_dim)"),
        ("unexpected keyword argument 'n_kv_heads'", "__init__ takes n_kv_heads=None (GQA)"),
        ("must match the size", "with GQA, repeat each kv head for its query heads"),
        ("view size is not compatible", "view() needs a contiguous tensor: use reshape()"),
    ),
)


# --- 4.3 gqa_pooling_error ------------------------------------------------------------------------
# The exercise notebook builds the same 8-head layer and tokens, from the same generator.

POOL_D, POOL_HEADS, POOL_KV, POOL_SEED = 32, 8, 2, 2023


def pooling_setup(dtype: torch.dtype = torch.float32):
    """The exercise's 8-head weights (a state dict for CausalSelfAttention) and tokens x (2, 10, 32)."""
    g = torch.Generator().manual_seed(POOL_SEED)
    state = {f"{name}.weight": torch.randn(POOL_D, POOL_D, generator=g) / math.sqrt(POOL_D) for name in PARAMETERS}
    x = torch.randn(2, 10, POOL_D, generator=g)
    return {k: v.to(dtype) for k, v in state.items()}, x.to(dtype)


def _pool(weight: torch.Tensor, how: str) -> torch.Tensor:
    """(n_heads · head_dim, d_model) rows of key or value heads -> (n_kv · head_dim, d_model)."""
    head_dim, group = POOL_D // POOL_HEADS, POOL_HEADS // POOL_KV
    if how == "strided":  # kv head g from heads g, g + n_kv, ...
        heads = weight.reshape(group, POOL_KV, head_dim, POOL_D).transpose(0, 1)
    else:
        heads = weight.reshape(POOL_KV, group, head_dim, POOL_D)  # (n_kv, group, head_dim, d_model)
    pooled = {"mean": heads.mean(1), "strided": heads.mean(1), "sum": heads.sum(1), "first": heads[:, 0]}[how]
    return pooled.reshape(POOL_KV * head_dim, POOL_D)


@functools.cache
def _pooling_error(dtype=torch.float64, how="mean", causal=True, measure="relative") -> float:
    state, x = pooling_setup(dtype)
    mha = {"d_model": POOL_D, "n_heads": POOL_HEADS}
    gqa = {**mha, "n_kv_heads": POOL_KV}
    pooled = {**state, "w_k.weight": _pool(state["w_k.weight"], how), "w_v.weight": _pool(state["w_v.weight"], how)}
    before = _attention(mha, state, x, causal=causal)
    after = _attention(gqa, pooled, x, causal=causal)
    if measure == "absolute":
        return (after - before).norm().item()
    if measure == "largest":
        return ((after - before).abs().max() / before.abs().max()).item()
    return ((after - before).norm() / before.norm()).item()


def gqa_pooling_error() -> float:
    """‖GQA(x) − MHA(x)‖ / ‖MHA(x)‖ for the 8-head layer mean-pooled to 2 key/value heads."""
    return _pooling_error()


def _pooling_tol(truth: float) -> float:
    error = abs(_pooling_error(torch.float32) - _pooling_error(torch.float64))
    return SAFETY * error + FLOOR_ULPS * torch.finfo(torch.float32).eps * abs(truth)


POOLING = Exercise(
    id="4.3",
    title="What mean-pooling key and value heads costs",
    function_name="gqa_pooling_error",
    arg_names=(),
    signature="gqa_pooling_error() -> float",
    reference=gqa_pooling_error,
    level=EXPERIMENT,
    cases=(Case("your answer", lambda: (), 4, "experiment"),),
    mistakes=(
        Mistake("a group is consecutive heads: kv head g pools 4g–4g+3",
                lambda: _pooling_error(how="strided"), hint=2, section=GQA),
        Mistake("the heads were summed: mean pooling averages them", lambda: _pooling_error(how="sum"), hint=2),
        Mistake("this keeps each group's first head: average all four", lambda: _pooling_error(how="first"), hint=1),
        Mistake("the error must be relative: divide by ‖MHA(x)‖", lambda: _pooling_error(measure="absolute"),
                hint=2),
        Mistake("use the norm of all entries, not the largest one", lambda: _pooling_error(measure="largest"),
                hint=2),
        Mistake("both layers are causal, as in exercise 4.2", lambda: _pooling_error(causal=False), hint=3),
    ),
    hints=(
        "Ainslie et al. (2023) turn a trained multi-head layer into a grouped-query one by mean pooling: the "
        "key projection of kv head g is the average of the key projections of the query heads in group g, and "
        "the same for the values; w_q and w_o stay as they are. Build both layers and compare their outputs.",
        "Rows h·head_dim to (h+1)·head_dim − 1 of w_k.weight are key head h; with 8 heads and 2 kv heads, group g "
        "is heads 4g to 4g+3. The answer is ‖GQA(x) − MHA(x)‖ / ‖MHA(x)‖, norms over every entry (torch.linalg."
        "norm of the flattened difference, or .norm()).",
        "Reshape w_k.weight (32, 32) to (2 groups, 4 heads, head_dim 4, 32), average over the heads axis, reshape "
        "to (8, 32); the same for w_v. Load the pooled state into CausalSelfAttention(32, 8, n_kv_heads=2) and "
        "the original into CausalSelfAttention(32, 8), run both on x under torch.no_grad(), and return the ratio "
        "as a Python float.",
    ),
    answer_tol=_pooling_tol,
    time_limit=10.0,
)



# --- 4.4 mean_attention_entropy -------------------------------------------------------------------
# The exercise notebook lists the same sentences and loads the same model on the CPU.

ENTROPY_SENTENCES = (
    "The fisherman pushed his boat off the bank of the river.",
    "After the storm, the bank of the swollen river gave way.",
    "She opened an account at the bank near the station.",
    "The children threw stones into the river from the bridge.",
    "Our bank lends money to small farms along the valley.",
    "A heron waited on the muddy bank for a fish.",
)


@functools.cache
def _minilm(dtype: torch.dtype = torch.float32):
    """all-MiniLM-L6-v2 on the CPU, in float32 (as the learner runs it) or float64 (the truth)."""
    if dtype != torch.float32:
        tokenizer, model = _minilm()
        return tokenizer, copy.deepcopy(model).to(dtype)
    from ...pretrained import load_minilm
    return load_minilm("cpu")


@functools.cache
def _entropies(dtype: torch.dtype = torch.float64, log=torch.log, keys="all", batched=False) -> tuple:
    """Per sentence: (entropy (layers, heads, seq), input ids (seq,), kept queries (seq,) bool).

    keys="words" drops the [CLS] and [SEP] columns from the sum (without renormalising); batched=True
    runs the sentences as one padded batch, whose [PAD] rows are kept as queries (the mistake)."""
    tokenizer, model = _minilm(dtype)
    special = torch.tensor([tokenizer.cls_token_id, tokenizer.sep_token_id])
    groups = [list(ENTROPY_SENTENCES)] if batched else [[s] for s in ENTROPY_SENTENCES]
    out = []
    with torch.no_grad():
        for group in groups:
            encoded = tokenizer(group, return_tensors="pt", padding=True)
            attentions = torch.stack(model(**encoded, output_attentions=True).attentions, dim=1)
            for a, ids in zip(attentions, encoded["input_ids"]):  # a: (layers, heads, seq, seq)
                words = ~torch.isin(ids, special)  # [PAD] counts as a word here: the batched mistake
                if keys == "words":
                    a = a[..., words]
                terms = torch.where(a > 0, a * log(a.clamp_min(torch.finfo(a.dtype).tiny)), 0.0)
                out.append((-terms.sum(-1), ids, words))
    return tuple(out)


@functools.cache
def _mean_entropy(dtype: torch.dtype = torch.float64, how: str = "right") -> float:
    """The mean, over layers, heads and word-token queries, of the attention entropy in nats."""
    rows = _entropies(dtype, log=torch.log2 if how == "bits" else torch.log,
                      keys="words" if how == "word_keys" else "all", batched=how == "padded_queries")
    kept = []
    for entropy, ids, words in rows:
        keep = torch.ones_like(words) if how == "special_queries" else words
        value = entropy[..., keep]  # (layers, heads, kept queries)
        if how == "normalised":
            value = value / math.log(len(ids))
        kept.append(value.mean() if how == "per_sentence" else value.flatten())
    return (torch.stack(kept) if how == "per_sentence" else torch.cat(kept)).mean().item()


def mean_attention_entropy() -> float:
    """all-MiniLM-L6-v2's attention entropy (nats), averaged over its 72 heads and the word tokens of
    ENTROPY_SENTENCES, each word token of each sentence counted once."""
    return _mean_entropy()


def _entropy_tol(truth: float) -> float:
    error = abs(_mean_entropy(torch.float32) - _mean_entropy(torch.float64))
    return SAFETY * error + FLOOR_ULPS * torch.finfo(torch.float32).eps * abs(truth)


ENTROPY = Exercise(
    id="4.4",
    title="How focused are the heads? Mean attention entropy",
    function_name="mean_attention_entropy",
    arg_names=(),
    signature="mean_attention_entropy() -> float",
    reference=mean_attention_entropy,
    level=EXPERIMENT,
    cases=(Case("your answer", lambda: (), 3, "experiment"),),
    mistakes=(
        Mistake("entropy in nats: use the natural log, not log2", lambda: _mean_entropy(how="bits"), hint=2),
        Mistake("[CLS] and [SEP] rows counted: average word tokens only",
                lambda: _mean_entropy(how="special_queries"), hint=2, section=MEASURE),
        Mistake("sum over every key, [CLS] and [SEP] included", lambda: _mean_entropy(how="word_keys"),
                hint=2),
        Mistake("each word token counts once, not each sentence", lambda: _mean_entropy(how="per_sentence"),
                hint=2),
        Mistake("the answer is in nats, not a fraction of ln n", lambda: _mean_entropy(how="normalised"),
                hint=1),
        Mistake("[PAD] rows counted: drop the padded queries", lambda: _mean_entropy(how="padded_queries"),
                hint=3),
    ),
    hints=(
        "One query's attention weights are a probability distribution over the keys, and its entropy "
        "H = −Σ_j a_j ln a_j measures how spread out it is: 0 when all the weight is on one key, ln n when it "
        "is even over n keys. Run the model on each sentence with output_attentions=True and average H over "
        "every layer, every head and every word-token query.",
        "H(query i) = −Σ_j a_ij ln a_ij, natural log, the sum over all n keys ([CLS] and [SEP] included). "
        "Queries: the word tokens only, positions 1 to n − 2 of each sentence. The answer is the plain mean of "
        "all 6 · 12 · (number of word tokens) values, so a longer sentence weighs more.",
        "Per sentence, torch.cat(attentions) is (6 layers, 12 heads, n, n); the entropy over the last axis is "
        "(6, 12, n); keep [..., 1:-1] and flatten. Concatenate the sentences' values, take .mean(), and return "
        "it with .item(). One sentence at a time is simplest: a padded batch has [PAD] rows to drop, and "
        "weights of exactly 0, for which 0 · ln 0 must count as 0 (torch.special.xlogy).",
    ),
    answer_tol=_entropy_tol,
    time_limit=10.0,
)

EXERCISES = (CONTRIBUTIONS, MODULE, POOLING, ENTROPY)
