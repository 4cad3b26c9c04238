"""Chapter 7 exercises: merging attention over chunks of the cache (flash-decoding), a cached
attention layer inside the course's model, a rolling (sliding-window) cache, and the position
offset of cached generation, measured."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from ...cache import KVCache
from ...model import ModelConfig, TinyDecoder, generate, load_reversal_model
from ...tasks import Reversal
from ..spec import BUILD, EXPERIMENT, WARM_UP, Case, Exercise, Mistake, WrongKind


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _drawn(seed: int, low: int, high: int) -> int:
    """A whole number drawn from [low, high) with a fixed seed: random, but the same on every run."""
    return int(torch.randint(low, high, (1,), generator=_gen(seed)))


SECTION_CACHE = "chapter 7, section “The cache”"
SECTION_MASK = "chapter 7, section “The causal mask in a cached step”"
SECTION_GQA = "chapter 7, section “Multi-query and grouped-query attention”"
SECTION_SAME = "chapter 7, section “Same tokens, with and without the cache”"
SECTION_ONLINE = "chapter 6, section “Online softmax”"


# --- 7.1 merge_attention_chunks ----------------------------------------------------------------------

def merge_attention_chunks(outs, lses):
    """Attention over all keys from the results of each chunk of keys (flash-decoding).

    outs: (chunks, ..., n, d), each chunk's own softmax-weighted values; lses: (chunks, ..., n), the
    log-sum-exp of each chunk's scores, −inf for a chunk whose keys are all masked.
    -> (..., n, d). A query whose keys are masked in every chunk gets zeros.
    """
    total = torch.logsumexp(lses, dim=0)                         # (..., n), −inf if all are
    weights = torch.exp(lses - total).nan_to_num(0.0)            # (chunks, ..., n), sums to 1
    return (weights[..., None] * outs).sum(dim=0)                # (..., n, d)


def chunk_partials(q, k, v, sizes, keep=None):
    """Each chunk's attention output and log-sum-exp, the inputs of 7.1: what a GPU's blocks hand back.

    q: (..., n, d), k, v: (..., m, d), sizes: the chunks' lengths (summing to m), keep: None or
    bool (..., n, m), True = keep. Returns outs (chunks, ..., n, d) and lses (chunks, ..., n).
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])    # (..., n, m)
    if keep is not None:
        scores = scores.masked_fill(~keep, float("-inf"))
    outs, lses = [], []
    for s, v_chunk in zip(scores.split(list(sizes), dim=-1), v.split(list(sizes), dim=-2)):
        lse = torch.logsumexp(s, dim=-1)                         # (..., n)
        weights = torch.exp(s - lse[..., None]).nan_to_num(0.0)  # a fully masked chunk: zeros
        outs.append(weights @ v_chunk)
        lses.append(lse)
    return torch.stack(outs), torch.stack(lses)


def _merge_inputs(seed, shape_q, m, sizes, scale=1.0, masked_chunk=None, all_masked_row=False):
    g = _gen(seed)
    *lead, n, d = shape_q
    q = scale * torch.randn(*lead, n, d, generator=g)
    k = torch.randn(*lead, m, d, generator=g)
    v = torch.randn(*lead, m, d, generator=g)
    keep = None
    if masked_chunk is not None or all_masked_row:
        keep = torch.ones(*lead, n, m, dtype=torch.bool)
        if masked_chunk is not None:
            start = sum(sizes[:masked_chunk])
            keep[..., start:start + sizes[masked_chunk]] = False
        if all_masked_row:
            keep[..., 0, :] = False
    return chunk_partials(q, k, v, sizes, keep)


def _plain_average(outs, lses):
    return outs.mean(dim=0)


def _unnormalised(outs, lses):
    return (torch.exp(lses - lses.amax(dim=0)).nan_to_num(0.0)[..., None] * outs).sum(dim=0)


def _naive_exp(outs, lses):
    weights = torch.exp(lses) / torch.exp(lses).sum(dim=0)
    return (weights[..., None] * outs).sum(dim=0)


def _largest_chunk_only(outs, lses):
    best = lses.argmax(dim=0)                                    # (..., n)
    return torch.gather(outs, 0, best[None, ..., None].expand(1, *outs.shape[1:]))[0]


def _softmax_wrong_axis(outs, lses):
    weights = torch.softmax(lses, dim=-1).nan_to_num(0.0)       # over the queries
    return (weights[..., None] * outs).sum(dim=0)


def _weights_from_sum_of_exp(outs, lses):
    # exp(lse) adds up, but the weights were taken as lse / Σ lse (logs added as if they were sums)
    weights = lses / lses.sum(dim=0)
    return (weights[..., None] * outs).sum(dim=0)


def _nan_when_all_masked(outs, lses):
    weights = torch.softmax(lses, dim=0)
    return (weights[..., None] * outs).sum(dim=0)


MERGE_HINTS = (
    "Each chunk's output is already normalised by its own softmax denominator ℓ_i = exp(lse_i). "
    "The full softmax over all keys has the denominator Σ_i ℓ_i, so chunk i's output must be "
    "weighted by its share ℓ_i / Σ_j ℓ_j.",
    "With L = logsumexp over the chunks of lse_i, the weight of chunk i is exp(lse_i − L), and the "
    "result is Σ_i exp(lse_i − L) · out_i. Subtracting L keeps exp from overflowing, as in chapter 6's "
    "online softmax; where every lse_i is −inf there is nothing to attend to: zeros.",
    "torch.logsumexp over dim 0 gives L with shape (..., n); the weights have lses' shape "
    "(chunks, ..., n); give them a last axis of size 1 to multiply outs (chunks, ..., n, d), then sum "
    "over dim 0. Replace the NaN that −inf − (−inf) makes by 0.",
)

MERGE = Exercise(
    id="7.1",
    title="Merging attention over chunks of the cache",
    function_name="merge_attention_chunks",
    arg_names=("outs", "lses"),
    signature="merge_attention_chunks(outs: (chunks, ..., n, d), lses: (chunks, ..., n)) -> (..., n, d)",
    reference=merge_attention_chunks,
    cases=(
        Case("1 query, 8 cached keys in 2 chunks of 4",
             lambda: _merge_inputs(0, (1, 4), 8, (4, 4)), 2, "fixed"),
        Case("2 heads, 3 queries, 12 keys in chunks of 5, 5, 2",
             lambda: _merge_inputs(1, (2, 3, 4), 12, (5, 5, 2)), 2, "fixed"),
        Case(f"random: batch 2, 3 heads, {_drawn(71, 3, 7)} chunks of 6 keys",
             lambda: _merge_inputs(2, (2, 3, 1, 8), 6 * _drawn(71, 3, 7), (6,) * _drawn(71, 3, 7)), 2,
             "random"),
        Case("edge: one chunk (nothing to merge)", lambda: _merge_inputs(3, (2, 4), 5, (5,)), 1, "edge"),
        Case("edge: large scores (exp(lse) overflows float32)",
             lambda: _merge_inputs(4, (3, 4), 12, (4, 4, 4), scale=40.0), 1, "edge"),
        Case("edge: a chunk whose keys are all masked (lse = −inf)",
             lambda: _merge_inputs(5, (3, 4), 9, (3, 3, 3), masked_chunk=1), 1, "edge"),
        Case("edge: a query with every key masked (zeros)",
             lambda: _merge_inputs(6, (3, 4), 8, (4, 4), all_masked_row=True), 1, "edge"),
    ),
    mistakes=(
        Mistake("the chunks are averaged: weight by shares of exp(lse)", _plain_average,
                hint=1),
        Mistake("the weights exp(lse − max) are not divided by their sum", _unnormalised, hint=2),
        Mistake("exp(lse) overflows: subtract the logsumexp first", _naive_exp, hint=2,
                section=SECTION_ONLINE),
        Mistake("only the largest lse's chunk kept: weight them all", _largest_chunk_only,
                hint=1),
        Mistake("the softmax runs over the queries: the chunks are dim 0", _softmax_wrong_axis, hint=3),
        Mistake("lse / Σ lse is no share: weights are exp(lse_i − L)", _weights_from_sum_of_exp,
                hint=2),
        Mistake("a query with every key masked gets NaN: give zeros", _nan_when_all_masked,
                hint=3),
    ),
    error_hints=(("must match the size", "weights (chunks, ..., n) need a last axis: [..., None]"),),
    level=WARM_UP,
    hints=MERGE_HINTS,
    nan_hint="NaN where the scores are large or masked: subtract the logsumexp, and zero −inf rows",
)


# --- the model driver shared by 7.2 and 8.2 --------------------------------------------------------

class _Plug(nn.Module):
    """A learner's attention where TinyDecoder's blocks call theirs.

    Block calls ``attention(h, mask=..., cache=..., layer=..., rope_positions=...)`` and wants
    ``(out, weights)``; the learner's layer takes ``(x, cache, layer)`` and builds its own mask (and
    its own rotary positions, in chapter 8), so the model's are dropped here.
    """

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x, context=None, mask=None, cache=None, layer=0, rope_positions=None):
        return self.inner(x, cache, layer), None


def model_config(**overrides) -> dict:
    """A ModelConfig as a dict (a case's input)."""
    from dataclasses import asdict
    return asdict(ModelConfig(**overrides))


def _decoder(config: dict, state: dict) -> TinyDecoder:
    dtype = next(iter(state.values())).dtype
    model = TinyDecoder(ModelConfig(**config)).to(dtype)
    model.load_state_dict(state)
    return model.eval()


def run_cached(make_layer: Callable[[ModelConfig], nn.Module], config: dict, state: dict, prompt, chunks,
               n_new: int, what: str):
    """Greedy generation through TinyDecoder with every attention layer replaced by ``make_layer``'s.

    The prompt is fed in chunks of the given sizes (one chunk: an ordinary prefill), then one token
    per step, each call with ``start`` = the tokens fed so far and one fresh KVCache.
    what = "tokens": the (batch, n_new) ids generated; "logits": the logits of every fed position,
    (batch, prompt + n_new − 1, vocab); "no cache": the prompt in one call with cache=None.
    """
    model = _decoder(config, state)
    cfg = model.config
    dtype = next(iter(state.values())).dtype
    for block in model.blocks:
        layer = make_layer(cfg)
        if not isinstance(layer, nn.Module):
            raise WrongKind(f"the class made a {type(layer).__name__}, not an nn.Module")
        layer = layer.to(dtype)
        layer.load_state_dict(block.attention.state_dict())
        block.attention = _Plug(layer)
    model.eval()
    with torch.no_grad():
        if what == "no cache":
            return model(prompt)[0]
        cache = KVCache(len(model.blocks))
        tokens, logits, fed = prompt, [], 0
        for size in chunks:
            logits.append(model(prompt[:, fed:fed + size], start=fed, cache=cache)[0])
            fed += size
        for step in range(n_new):
            new = logits[-1][:, -1].argmax(dim=-1, keepdim=True)  # (batch, 1), greedy
            tokens = torch.cat([tokens, new], dim=1)
            if step < n_new - 1:
                logits.append(model(new, start=tokens.shape[1] - 1, cache=cache)[0])
    return tokens[:, prompt.shape[1]:] if what == "tokens" else torch.cat(logits, dim=1)


def run_uncached(config: dict, state: dict, prompt, chunks, n_new: int, what: str):
    """The same answers from the course's model without a cache: the reference of 7.2 and 8.2."""
    model = _decoder(config, state)
    with torch.no_grad():
        if what == "no cache":
            return model(prompt)[0]
        tokens = generate(model, prompt, n_new)
        return tokens[:, prompt.shape[1]:] if what == "tokens" else model(tokens[:, :-1])[0]


def adapter(make: Callable[[type, ModelConfig], nn.Module], name: str):
    """Exercise.adapt for a cached attention class: checks its kind, runs nothing."""
    def adapt(obj):
        if isinstance(obj, nn.Module):
            raise WrongKind(f"hand in the class itself, check(..., {type(obj).__name__}), not an instance")
        if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
            raise WrongKind(f"hand in a class {name}(nn.Module), not {type(obj).__name__}")

        def run(config, state, prompt, chunks, n_new, what):
            return run_cached(lambda cfg: make(obj, cfg), config, state, prompt, chunks, n_new, what)
        return run
    return adapt


def _reversal_state() -> dict:
    return {k: v.clone() for k, v in load_reversal_model().state_dict().items()}


def _random_state(seed: int, config: dict) -> dict:
    torch.manual_seed(seed)
    model = TinyDecoder(ModelConfig(**config))
    with torch.no_grad():  # larger weights than the default initialisation: the layers matter more
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() == 2:
                p.mul_(2.0)
    return {k: v.clone() for k, v in model.state_dict().items()}


# --- 7.2 CachedSelfAttention -------------------------------------------------------------------------

class CachedSelfAttention(nn.Module):
    """Causal multi-head self-attention with grouped-query heads and a KV cache (the reference of 7.2,
    and, with ``rope=True``, of 8.2). The keywords are the named mistakes."""

    def __init__(self, d_model, n_heads, n_kv_heads=None, *, rope=False, offset="layer", heads="interleave",
                 split="view", scale="head_dim", append=True, mask="causal", rope_offset=True,
                 rotate_values=False, rotate_cached=False, convention="interleaved"):
        super().__init__()
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads or n_heads
        self.head_dim = d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, self.n_kv_heads * self.head_dim)
        self.v_proj = nn.Linear(d_model, self.n_kv_heads * self.head_dim)
        self.out_proj = nn.Linear(d_model, d_model)
        self.rope, self.offset, self.heads, self.split, self.scale = rope, offset, heads, split, scale
        self.append, self.mask, self.rope_offset = append, mask, rope_offset
        self.rotate_values, self.rotate_cached, self.convention = rotate_values, rotate_cached, convention

    def _split(self, x, n):
        batch, seq, _ = x.shape
        if self.split == "reshape":  # the mistake: cuts the sequence, not the features
            return x.reshape(batch, n, seq, self.head_dim)
        return x.view(batch, seq, n, self.head_dim).transpose(1, 2)  # (batch, n, seq, head_dim)

    def forward(self, x, cache=None, layer=0):
        from ...positions import apply_rope
        batch, new, d_model = x.shape
        q = self._split(self.q_proj(x), self.n_heads)          # (batch, heads, new, head_dim)
        k = self._split(self.k_proj(x), self.n_kv_heads)       # (batch, kv_heads, new, head_dim)
        v = self._split(self.v_proj(x), self.n_kv_heads)
        past = 0 if cache is None or cache.keys[layer] is None else cache.keys[layer].shape[2]
        own_past = past
        if self.offset in ("seq_len", "seq_len_rope") and cache is not None:
            past = cache.seq_len  # layer 0's count: already includes this call's tokens in later layers
        if self.rope:
            start = past if self.rope_offset else 0
            positions = torch.arange(start, start + new)
            q, k = apply_rope(q, positions, self.convention), apply_rope(k, positions, self.convention)
            if self.rotate_values:
                v = apply_rope(v, positions, self.convention)
        if cache is not None and self.append:
            k, v = cache.update(layer, k, v)                   # (batch, kv_heads, past + new, head_dim)
        if self.rope and self.rotate_cached and k.shape[2] > new:  # every key turned again by position
            k = apply_rope(k, torch.arange(k.shape[2]), self.convention)
        group = self.n_heads // self.n_kv_heads
        if self.heads == "tile":
            k, v = k.repeat(1, group, 1, 1), v.repeat(1, group, 1, 1)
        else:
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        keys = k.shape[2]
        scores = q @ k.transpose(-2, -1)                       # (batch, heads, new, keys)
        scores = scores / {"head_dim": math.sqrt(self.head_dim), "d_model": math.sqrt(d_model),
                           "none": 1.0}[self.scale]
        if self.offset == "seq_len_rope":  # the wrong count used for the positions only
            past = own_past
        diagonal = {"causal": past if self.append else 0, "top_left": 0, "none": keys}[self.mask]
        keep = torch.ones(new, keys, dtype=torch.bool).tril(diagonal)
        weights = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(batch, new, d_model)  # (batch, new, d_model)
        return self.out_proj(out)


def _make_72(cls, cfg: ModelConfig):
    return cls(cfg.d_model, cfg.n_heads, cfg.n_kv_heads or cfg.n_heads)


run_72 = adapter(_make_72, "CachedSelfAttention")


def _mistake_72(**wrong):
    def function(config, state, prompt, chunks, n_new, what):
        return run_cached(lambda cfg: CachedSelfAttention(cfg.d_model, cfg.n_heads, cfg.n_kv_heads, **wrong),
                          config, state, prompt, chunks, n_new, what)
    return function


REVERSAL = model_config()  # the stored reversal model: 2 layers, 2 heads, learned positions
GQA = model_config(max_len=48, d_model=32, n_heads=4, n_kv_heads=2, n_layers=2, d_ff=64)
MQA = model_config(max_len=48, d_model=32, n_heads=4, n_kv_heads=1, n_layers=2, d_ff=64)


def _held_out_prompts(n: int, offset: int = 0):
    task = Reversal()
    return task.prompt(task.held_out()[offset:offset + n])   # (n, 9)


def _random_prompt(seed: int, batch: int, length: int):
    return torch.randint(0, 11, (batch, length), generator=_gen(seed))


def _inputs_reversal(what, chunks=(9,), n=4, offset=0):
    return lambda: (REVERSAL, _reversal_state(), _held_out_prompts(n, offset), chunks, 8, what)


def _inputs_random(config, seed, what, chunks, n_new, batch=2):
    return lambda: (config, _random_state(seed, config), _random_prompt(seed, batch, sum(chunks)), chunks,
                    n_new, what)


_C72 = (_drawn(72, 2, 6), _drawn(73, 2, 6))

ATTENTION_HINTS = (
    "The layer computes this call's queries, keys and values, appends the keys and values to its "
    "layer of the cache (cache.update(layer, k, v) returns everything cached so far), and attends "
    "from the new queries to all of it. The cached tokens come first, so new token i sits at position "
    "past + i, where past is how many keys this layer held before the call.",
    "Shapes: q (batch, n_heads, new, head_dim), k and v (batch, n_kv_heads, past + new, head_dim); "
    "query head h uses kv head h // (n_heads // n_kv_heads). Scores q·kᵀ / √head_dim; new token i may "
    "see keys 0 .. past + i: a lower-triangular mask of shape (new, past + new) whose diagonal is "
    "moved past columns to the right. With cache None, past is 0.",
    "In order: project (q_proj, k_proj, v_proj); split heads with view(batch, new, heads, head_dim) "
    "then transpose(1, 2); read past from this layer's cache before updating it; update; "
    "repeat_interleave the kv heads along dim 1; scores, mask, softmax over the keys, times v; "
    "transpose back, reshape to (batch, new, d_model); out_proj.",
)

NAMES_HINT = "name the layers q_proj, k_proj, v_proj, out_proj"

ATTENTION = Exercise(
    id="7.2",
    title="A cached attention layer in the model",
    function_name="CachedSelfAttention",
    arg_names=("config", "state", "prompt", "chunks", "n_new", "what"),
    signature="class CachedSelfAttention(nn.Module): __init__(d_model, n_heads, n_kv_heads); "
              "forward(x: (batch, new, d_model), cache: KVCache | None, layer: int) -> (batch, new, d_model)",
    reference=run_uncached,
    cases=(
        Case("reversal model, 4 prompts: the 8 generated tokens", _inputs_reversal("tokens"), 3, "fixed"),
        Case("reversal model, 4 prompts: logits at every step", _inputs_reversal("logits"), 2, "fixed"),
        Case("reversal model, the prompt fed in chunks of 4 and 5: logits",
             _inputs_reversal("logits", chunks=(4, 5), offset=4), 2, "fixed"),
        Case(f"GQA (4 heads, 2 kv heads): prompt in chunks {_C72[0]}, {_C72[1]}, 10 new: logits",
             _inputs_random(GQA, 7, "logits", _C72, 10), 2, "random"),
        Case(f"GQA (4 heads, 2 kv heads): prompt in chunks {_C72[0]}, {_C72[1]}, 10 new: tokens",
             _inputs_random(GQA, 7, "tokens", _C72, 10), 1, "random"),
        Case("edge: MQA (one kv head), a one-token prompt, 12 new: logits",
             _inputs_random(MQA, 8, "logits", (1,), 12), 1, "edge"),
        Case("edge: no cache (cache=None), the whole prompt at once",
             _inputs_random(GQA, 9, "no cache", (14,), 0), 1, "edge"),
    ),
    mistakes=(
        Mistake("mask aligned top-left: new token i sees keys 0..past+i", _mistake_72(mask="top_left"),
                hint=2, section=SECTION_MASK),
        Mistake("no causal mask: new tokens see later new tokens", _mistake_72(mask="none"), hint=2,
                section=SECTION_MASK),
        Mistake("cache.seq_len counts layer 0: count this layer's keys",
                _mistake_72(offset="seq_len"), hint=3),
        Mistake("heads tiled 0, 1, 0, 1 (repeat): use repeat_interleave", _mistake_72(heads="tile"),
                hint=2, section=SECTION_GQA),
        Mistake("heads split by reshape: view, then transpose(1, 2)",
                _mistake_72(split="reshape"), hint=3),
        Mistake("scores divided by √d_model: scale by √head_dim", _mistake_72(scale="d_model"), hint=2),
        Mistake("scores not divided by √head_dim", _mistake_72(scale="none"), hint=2),
        Mistake("cache unused: update it, attend to all it holds", _mistake_72(append=False),
                hint=1, section=SECTION_CACHE),
    ),
    error_hints=(
        ("Missing key(s)", NAMES_HINT),
        ("Unexpected key(s)", NAMES_HINT),
        ("size mismatch", NAMES_HINT),
        ("must match the size", "q (b, heads, new, hd), k (b, heads, past + new, hd)"),
        ("'NoneType' object has no attribute", "cache may be None: then attend over x alone"),
    ),
    time_limit=10.0,
    level=BUILD,
    hints=ATTENTION_HINTS,
    adapt=run_72,
)


# --- 7.3 RollingCacheAttention -----------------------------------------------------------------------

def band_attention(q, k, v, window):
    """Causal attention where token t sees only tokens t − window + 1 .. t (the reference of 7.3).

    q, k, v: (batch, heads, seq, head_dim) of a whole sequence -> (batch, heads, seq, head_dim).
    """
    seq = q.shape[-2]
    t = torch.arange(seq)
    keep = (t[None, :] <= t[:, None]) & (t[None, :] > t[:, None] - window)  # (seq, seq), a band
    scores = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(~keep, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def _reference_73(window, chunks, q, k, v):
    return band_attention(q, k, v, window)


class RollingCacheAttention:
    """Attention with a cache of the last ``window`` tokens' keys and values (7.3's course version).

    ``step(q, k, v)``: the new tokens' queries, keys and values, (batch, heads, new, head_dim), any
    number of them; returns their outputs (batch, heads, new, head_dim). ``keys``, ``values``: the
    cache, (batch, heads, kept ≤ window, head_dim), None before the first step. The keywords are
    the named mistakes.
    """

    def __init__(self, window, *, trim="after", band=True, causal=True, extra=0, keep_first=False,
                 empty_rows_zero=False):
        self.window, self.keys, self.values = window, None, None
        self.trim, self.band, self.causal, self.extra, self.keep_first = trim, band, causal, extra, keep_first
        self.empty_rows_zero = empty_rows_zero  # a row with no key: NaN (softmax) or 0 (torch's sdpa)

    def _cut(self, t):
        return t[:, :, :self.window] if self.keep_first else t[:, :, -self.window:]

    def step(self, q, k, v):
        new = q.shape[2]
        if self.keys is not None:
            k, v = torch.cat([self.keys, k], dim=2), torch.cat([self.values, v], dim=2)
        if self.trim == "before":  # the mistake: the chunk's first tokens lose keys they may see
            k, v = self._cut(k), self._cut(v)
        keys = k.shape[2]
        kpos = torch.arange(keys)                          # positions relative to the oldest key kept
        qpos = torch.arange(keys - new, keys)
        keep = torch.ones(new, keys, dtype=torch.bool)
        if self.causal:
            keep &= kpos[None, :] <= qpos[:, None]
        if self.band:
            keep &= kpos[None, :] > qpos[:, None] - self.window - self.extra
        scores = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(~keep, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        out = (weights.nan_to_num(0.0) if self.empty_rows_zero else weights) @ v
        if self.trim == "after":
            k, v = self._cut(k), self._cut(v)
        self.keys, self.values = k, v
        return out


class CacheTooLong(ValueError):
    """The learner's rolling cache kept more than its window."""


def run_rolling(make: Callable[[int], object], window, chunks, q, k, v):
    """Feed a sequence to a rolling-cache attention in chunks; the outputs, (batch, heads, seq, d)."""
    layer = make(window)
    outs, fed = [], 0
    for size in chunks:
        outs.append(layer.step(q[:, :, fed:fed + size], k[:, :, fed:fed + size], v[:, :, fed:fed + size]))
        fed += size
        kept = getattr(layer, "keys", None)
        if kept is None or not isinstance(kept, torch.Tensor):
            raise CacheTooLong(f"after a step, self.keys is {type(kept).__name__}, not the cache tensor")
        if kept.shape[2] > window:
            raise CacheTooLong(f"after {fed} tokens the cache holds {kept.shape[2]} keys, "
                               f"more than the window of {window}")
        if not isinstance(outs[-1], torch.Tensor):
            return outs[-1]  # None, or another wrong kind: the grader says what it is
    return torch.cat(outs, dim=2)


def _adapt_73(obj):
    if not isinstance(obj, type):
        raise WrongKind(f"hand in the class RollingCacheAttention itself, not {type(obj).__name__}")
    if not callable(getattr(obj, "step", None)):
        raise WrongKind(f"{obj.__name__} has no method step(q, k, v)")
    return lambda window, chunks, q, k, v: run_rolling(obj, window, chunks, q, k, v)


def _mistake_73(**wrong):
    return lambda window, chunks, q, k, v: run_rolling(lambda w: RollingCacheAttention(w, **wrong),
                                                       window, chunks, q, k, v)


def _rolling_inputs(seed, window, chunks, batch=1, heads=2, head_dim=8):
    g = _gen(seed)
    seq = sum(chunks)
    q, k, v = (torch.randn(batch, heads, seq, head_dim, generator=g) for _ in range(3))
    return window, tuple(chunks), q, k, v


_W73 = _drawn(74, 3, 7)
_CH73 = tuple(int(c) for c in torch.randint(1, 2 * _W73, (6,), generator=_gen(75)))

ROLLING_HINTS = (
    "Token t may see tokens t − window + 1 .. t: window keys at most, itself included. So the cache "
    "never needs more than the last window keys and values. A chunk of several new tokens is attended "
    "before the cache is cut: its first token may still need keys that its last one no longer does.",
    "Join cache and new keys: the new tokens are the last `new` of the `keys` keys. Number them "
    "relative to the oldest key kept: key j and new token i at position keys − new + i. Keep key j "
    "for token i when j ≤ keys − new + i and j > keys − new + i − window. After attending, keep the "
    "last window keys and values.",
    "step: concatenate self.keys with k along dim 2 (the same for values; None at the first step); "
    "build the (new, keys) band mask from two aranges; scores / √head_dim, masked with −inf, softmax "
    "over the keys, times v; then store [:, :, -window:] of keys and values in self.keys, self.values.",
)

CUT_FIRST = "cut before attending: a chunk's first tokens lose keys"

ROLLING = Exercise(
    id="7.3",
    title="A rolling cache for sliding-window attention",
    function_name="RollingCacheAttention",
    arg_names=("window", "chunks", "q", "k", "v"),
    signature="class RollingCacheAttention: __init__(window); step(q, k, v: (batch, heads, new, head_dim)) "
              "-> (batch, heads, new, head_dim); attributes keys, values",
    reference=_reference_73,
    cases=(
        Case("window 4, 10 tokens one at a time", lambda: _rolling_inputs(0, 4, (1,) * 10), 2, "fixed"),
        Case("window 4, a 6-token prompt, then 6 tokens one at a time",
             lambda: _rolling_inputs(1, 4, (6,) + (1,) * 6), 2, "fixed"),
        Case("window 3, chunks of 2, 3, 1, 4 tokens, batch 2",
             lambda: _rolling_inputs(2, 3, (2, 3, 1, 4), batch=2), 2, "fixed"),
        Case(f"random: window {_W73}, chunks {', '.join(map(str, _CH73))}",
             lambda: _rolling_inputs(3, _W73, _CH73, heads=3), 2, "random"),
        Case("edge: a window longer than the sequence (full causal attention)",
             lambda: _rolling_inputs(4, 32, (5, 1, 1, 3)), 1, "edge"),
        Case("edge: window 1 (each token sees itself only)", lambda: _rolling_inputs(5, 1, (3, 1, 2)), 1,
             "edge"),
    ),
    mistakes=(
        Mistake(CUT_FIRST, _mistake_73(trim="before"), hint=1),
        Mistake(CUT_FIRST, _mistake_73(trim="before", empty_rows_zero=True), hint=1),
        Mistake("no band in a chunk: token t sees t − window + 1 .. t",
                _mistake_73(band=False), hint=2),
        Mistake("no causal mask inside a chunk", _mistake_73(causal=False), hint=2, section=SECTION_MASK),
        Mistake("window off by one: window keys, itself included", _mistake_73(extra=1),
                hint=2),
        Mistake("the first tokens kept: keep the last window keys", _mistake_73(keep_first=True), hint=3),
        Mistake("a key too few: a token sees window keys with itself",
                _mistake_73(extra=-1), hint=1),
    ),
    error_hints=(
        ("more than the window", "keep only the last window keys and values"),
        ("not the cache tensor", "store the cache in self.keys and self.values"),
        ("'NoneType' object", "self.keys is None at first: start the cache there"),
        ("must match the size", "the band mask is (new, cached + new)"),
    ),
    level=BUILD,
    hints=ROLLING_HINTS,
    adapt=_adapt_73,
)


# --- 7.4 the forgotten offset, measured --------------------------------------------------------------

def _generate_without_offset(model, prompts, n_digits, offset=False):
    """Greedy cached generation, each decode step called with start=0 (or the right offset):
    the digits (batch, n_digits) and each step's last logits (batch, n_digits, vocab)."""
    cache = KVCache(len(model.blocks))
    with torch.no_grad():
        logits, _ = model(prompts, start=0, cache=cache)         # the prefill: right either way
        steps = [logits[:, -1]]
        for _ in range(n_digits - 1):
            new = steps[-1].argmax(dim=-1, keepdim=True)
            logits, _ = model(new, start=cache.seq_len if offset else 0, cache=cache)
            steps.append(logits[:, -1])
    steps = torch.stack(steps, dim=1)
    return steps.argmax(dim=-1), steps


def digit_accuracy_without_offset(dtype=torch.float32, offset=False, whole=False, skip_first=False):
    """The share of answer digits right on the 1000 held-out reversal prompts when every decode step
    is called with start=0. The keywords are the named mistakes."""
    task = Reversal()
    test = task.held_out()
    digits, _ = _generate_without_offset(load_reversal_model().to(dtype), task.prompt(test), task.n_digits,
                                         offset)
    right = digits == task.answer(test)                          # (1000, 8)
    if whole:
        return right.all(dim=1).float().mean().item()
    if skip_first:
        right = right[:, 1:]
    return right.float().mean().item()


DECIMALS = 4  # the answer is asked for to 4 decimals


def _answer_74():
    return round(digit_accuracy_without_offset(), DECIMALS)


def _answer_tol_74(truth: float) -> float:
    """The measurement's own variability: a digit whose two best logits are closer than float32's
    error on them (measured against float64) may flip, and with it the digits after it; plus half
    a unit of the last decimal asked for."""
    task = Reversal()
    test = task.held_out()
    prompts = task.prompt(test)
    model = load_reversal_model()
    digits32, logits32 = _generate_without_offset(model, prompts, task.n_digits)
    digits64, logits64 = _generate_without_offset(model.double(), prompts, task.n_digits)
    same = (digits32 == digits64).all(dim=1)                     # the sequences both runs agree on
    error = (logits32.double() - logits64)[same].abs().max().item() if same.any() else float("inf")
    top2 = logits64.topk(2, dim=-1).values
    close = int(((top2[..., 0] - top2[..., 1]) < 8 * error).sum()) + int((~same).sum())
    return close * task.n_digits / digits32.numel() + 0.5 * 10 ** -DECIMALS


OFFSET_HINTS = (
    "Write cached greedy generation yourself: one KVCache, the prompt fed once with start=0 (the "
    "prefill), then each new token alone, with the cache. The bug to measure: every decode step is "
    "called with start=0 instead of the number of tokens cached.",
    "There are 1000 prompts of 9 tokens and 8 answer digits each, 8000 digits in all. The answer is "
    "(right digits) / 8000, a fraction between 0 and 1, with every one of the 8 digits counted (the "
    "first comes from the prefill).",
    "load_reversal_model(); task = Reversal(); prompts = task.prompt(task.held_out()); the prefill's "
    "last row of logits gives the first digit by argmax; 7 more calls model(new, start=0, cache=cache); "
    "compare the 8 digits, concatenated, with task.answer(task.held_out()) and take the mean.",
)

OFFSET = Exercise(
    id="7.4",
    title="The forgotten position offset, measured",
    function_name="accuracy_without_offset",
    arg_names=(),
    signature="accuracy_without_offset() -> float, the share of answer digits right",
    reference=_answer_74,
    cases=(Case("your answer", lambda: (), 4, "experiment"),),
    mistakes=(
        Mistake("that is with the offset: pass start=0 at each step",
                lambda: round(digit_accuracy_without_offset(offset=True), DECIMALS), hint=1),
        Mistake("that is whole sequences right: count single digits",
                lambda: round(digit_accuracy_without_offset(whole=True), DECIMALS), hint=2),
        Mistake("the prefill's digit is left out: count all 8",
                lambda: round(digit_accuracy_without_offset(skip_first=True), DECIMALS), hint=2),
        Mistake("a percentage: give a fraction between 0 and 1",
                lambda: round(100 * digit_accuracy_without_offset(), 2), hint=2),
    ),
    level=EXPERIMENT,
    hints=OFFSET_HINTS,
    answer_tol=_answer_tol_74,
    time_limit=20.0,
)


EXERCISES = (MERGE, ATTENTION, ROLLING, OFFSET)
