"""Chapter 7 exercises: appending to a KV cache, a cached attention step, and GQA's head repetition."""

from __future__ import annotations

import torch

from ...attention import causal_mask, scaled_dot_product_attention
from ..spec import Case, Exercise, Mistake


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _drawn(seed: int, low: int, high: int) -> int:
    """A whole number drawn from [low, high) with a fixed seed: random, but the same on every run."""
    return int(torch.randint(low, high, (1,), generator=_gen(seed)))


# Messages stay short enough that a feedback line fits the page (80 columns, a test keeps them so).
WRONG_AXIS = "wrong axis: append along seq, torch.cat(..., dim=2)"
CAT_HINTS = (("Sizes of tensors must match except in dimension", WRONG_AXIS),
             ("stack expects each tensor to be equal size", "torch.stack adds an axis: use torch.cat(..., dim=2)"))


# --- 7.1 append_to_cache ---------------------------------------------------------------------------

def append_to_cache(cache, new):
    """The cache with the new tokens' keys (or values) appended after the cached ones.

    cache: (batch, heads, seq, head_dim), new: (batch, heads, new, head_dim)
    -> (batch, heads, seq + new, head_dim).
    """
    return torch.cat([cache, new], dim=2)


APPEND_MISTAKES = (
    Mistake("returned the old cache: return the appended one", lambda cache, new: cache.clone()),
    Mistake("only the new tokens returned: keep the old ones too", lambda cache, new: new.clone()),
    Mistake("new tokens put in front: old ones first, then new",
            lambda cache, new: torch.cat([new, cache], dim=2)),
    Mistake("appended along head_dim: the seq axis is dim=2",
            lambda cache, new: torch.cat([cache, new], dim=-1)),
    Mistake("appended along the heads axis: the seq axis is dim=2",
            lambda cache, new: torch.cat([cache, new], dim=1)),
)


def _append_inputs(seed: int, batch: int, heads: int, seq: int, new: int, head_dim: int):
    g = _gen(seed)
    return (torch.randn(batch, heads, seq, head_dim, generator=g),
            torch.randn(batch, heads, new, head_dim, generator=g))


_S71, _H71 = _drawn(71, 3, 12), _drawn(72, 1, 5)

APPEND = Exercise(
    id="7.1",
    title="Appending to the KV cache",
    function_name="append_to_cache",
    arg_names=("cache", "new"),
    signature="append_to_cache(cache: (batch, heads, seq, head_dim), new: (batch, heads, new, head_dim)) "
              "-> (batch, heads, seq + new, head_dim)",
    reference=append_to_cache,
    cases=(
        Case("a cache of 5 tokens, 1 new token", lambda: _append_inputs(0, 1, 2, 5, 1, 4), 2, "fixed"),
        Case("a batch of 2, 4 heads, 3 new tokens", lambda: _append_inputs(1, 2, 4, 6, 3, 4), 1, "fixed"),
        Case(f"random: {_S71} cached tokens, {_H71} head{'s' * (_H71 != 1)}",
             lambda: _append_inputs(2, 2, _H71, _S71, 1, 4), 1, "random"),
        Case("edge: seq = new = heads = head_dim = 4 (any axis fits)",
             lambda: _append_inputs(3, 1, 4, 4, 4, 4), 1, "edge"),
        Case("edge: an empty cache (0 tokens) before the prompt",
             lambda: _append_inputs(4, 1, 2, 0, 3, 4), 1, "edge"),
    ),
    mistakes=APPEND_MISTAKES,
    error_hints=CAT_HINTS,
)


# --- 7.2 attend_with_cache -------------------------------------------------------------------------

def attend_with_cache(q, k_cache, v_cache, k_new, v_new):
    """One cached attention step: append the new keys and values, then attend causally.

    q, k_new, v_new: (batch, heads, new, head_dim), the new tokens; k_cache, v_cache:
    (batch, heads, past, head_dim). New token i sits at position past + i and may see keys
    0 .. past + i. Returns (batch, heads, new, head_dim).
    """
    k = torch.cat([k_cache, k_new], dim=2)   # (batch, heads, past + new, head_dim)
    v = torch.cat([v_cache, v_new], dim=2)
    new, keys = q.shape[2], k.shape[2]
    return scaled_dot_product_attention(q, k, v, causal_mask(new, keys))


def _stale(q, k_cache, v_cache, k_new, v_new):
    return scaled_dot_product_attention(q, k_cache, v_cache)


def _only_new(q, k_cache, v_cache, k_new, v_new):
    return scaled_dot_product_attention(q, k_new, v_new, causal_mask(q.shape[2]))


def _offset_ignored(q, k_cache, v_cache, k_new, v_new):
    k, v = torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)
    mask = torch.tril(torch.ones(q.shape[2], k.shape[2], dtype=torch.bool))  # top-left diagonal
    return scaled_dot_product_attention(q, k, v, mask)


def _no_mask(q, k_cache, v_cache, k_new, v_new):
    k, v = torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)
    return scaled_dot_product_attention(q, k, v)


def _new_first(q, k_cache, v_cache, k_new, v_new):
    k, v = torch.cat([k_new, k_cache], dim=2), torch.cat([v_new, v_cache], dim=2)
    return scaled_dot_product_attention(q, k, v, causal_mask(q.shape[2], k.shape[2]))


def _diagonal_shifted(shift: int, keep_empty_rows_nan: bool):
    """The causal mask's diagonal moved by ``shift``: −1, a token does not see itself; +1, it sees the next.

    A row left with no key at all is NaN with masked_fill(−inf) and softmax, and zeros with torch's
    scaled_dot_product_attention and a boolean mask: both are the same mistake.
    """
    def wrong(q, k_cache, v_cache, k_new, v_new):
        k, v = torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)
        new, keys = q.shape[2], k.shape[2]
        mask = torch.ones(new, keys, dtype=torch.bool).tril(diagonal=keys - new + shift)
        if not keep_empty_rows_nan:
            return scaled_dot_product_attention(q, k, v, mask)
        scores = (q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5).masked_fill(~mask, float("-inf"))
        return torch.softmax(scores, dim=-1) @ v
    return wrong


SELF_UNSEEN = "mask off by one: each token must also see its own key"
ONE_AHEAD = "mask off by one: token i sees keys up to past + i only"

ATTEND_MISTAKES = (
    Mistake("stale cache: append k_new, v_new before attending", _stale),
    Mistake("cache ignored: attend to the cached keys too", _only_new),
    Mistake("offset ignored: use causal_mask(new, past + new)", _offset_ignored),
    Mistake("no causal mask: new tokens see later new tokens", _no_mask),
    Mistake("new keys put before the cached ones: old first", _new_first),
    Mistake(SELF_UNSEEN, _diagonal_shifted(-1, keep_empty_rows_nan=True)),
    Mistake(SELF_UNSEEN, _diagonal_shifted(-1, keep_empty_rows_nan=False)),
    Mistake(ONE_AHEAD, _diagonal_shifted(+1, keep_empty_rows_nan=False)),
)


def _attend_inputs(seed: int, batch: int, heads: int, past: int, new: int, head_dim: int):
    g = _gen(seed)

    def r(n):
        return torch.randn(batch, heads, n, head_dim, generator=g)

    return r(new), r(past), r(past), r(new), r(new)


_P72, _N72 = _drawn(73, 3, 10), _drawn(74, 2, 5)

ATTEND = Exercise(
    id="7.2",
    title="A cached attention step",
    function_name="attend_with_cache",
    arg_names=("q", "k_cache", "v_cache", "k_new", "v_new"),
    signature="attend_with_cache(q: (batch, heads, new, head_dim), k_cache, v_cache: (batch, heads, past, "
              "head_dim), k_new, v_new: (batch, heads, new, head_dim)) -> (batch, heads, new, head_dim)",
    reference=attend_with_cache,
    cases=(
        Case("one new token after 5 cached ones", lambda: _attend_inputs(0, 1, 2, 5, 1, 4), 2, "fixed"),
        Case("a chunk of 3 new tokens after 4 cached ones",
             lambda: _attend_inputs(1, 1, 2, 4, 3, 4), 3, "fixed"),
        Case(f"random: {_N72} new tokens after {_P72}, batch 2",
             lambda: _attend_inputs(2, 2, 3, _P72, _N72, 4), 2, "random"),
        Case("edge: an empty cache (a 4-token prompt's prefill)",
             lambda: _attend_inputs(3, 1, 2, 0, 4, 4), 1, "edge"),
        Case("edge: one cached token, one new token", lambda: _attend_inputs(4, 2, 1, 1, 1, 4), 1, "edge"),
    ),
    mistakes=ATTEND_MISTAKES,
    error_hints=CAT_HINTS + (("must match the size", "shapes: k, v are (batch, heads, seq, head_dim)"),),
)


# --- 7.3 expand_kv_heads ---------------------------------------------------------------------------

def expand_kv_heads(kv, n_heads):
    """Give each of n_heads query heads its group's key/value head (grouped-query attention).

    kv: (batch, n_kv_heads, seq, head_dim) -> (batch, n_heads, seq, head_dim); query head h uses
    kv head h // (n_heads // n_kv_heads).
    """
    return kv.repeat_interleave(n_heads // kv.shape[1], dim=1)


EXPAND_MISTAKES = (
    Mistake("heads tiled 0, 1, 0, 1 (repeat): use repeat_interleave",
            lambda kv, n_heads: kv.repeat(1, n_heads // kv.shape[1], 1, 1)),
    Mistake("repeated n_kv_heads times, not n_heads // n_kv_heads",
            lambda kv, n_heads: kv.repeat_interleave(kv.shape[1], dim=1)),
    Mistake("repeated n_heads times, not n_heads // n_kv_heads",
            lambda kv, n_heads: kv.repeat_interleave(n_heads, dim=1)),
    Mistake("wrong axis repeated: the heads are dim=1",
            lambda kv, n_heads: kv.repeat_interleave(n_heads // kv.shape[1], dim=2)),
)


def _expand_inputs(seed: int, batch: int, n_kv: int, seq: int, head_dim: int, n_heads: int):
    return torch.randn(batch, n_kv, seq, head_dim, generator=_gen(seed)), n_heads


_KV73 = _drawn(75, 2, 5)

EXPAND = Exercise(
    id="7.3",
    title="Grouped-query attention: one kv head per group",
    function_name="expand_kv_heads",
    arg_names=("kv", "n_heads"),
    signature="expand_kv_heads(kv: (batch, n_kv_heads, seq, head_dim), n_heads: int) "
              "-> (batch, n_heads, seq, head_dim)",
    reference=expand_kv_heads,
    cases=(
        Case("2 kv heads for 8 query heads", lambda: _expand_inputs(0, 1, 2, 5, 4, 8), 2, "fixed"),
        Case("3 kv heads for 6 query heads, batch 2", lambda: _expand_inputs(1, 2, 3, 4, 4, 6), 1, "fixed"),
        Case(f"random: {_KV73} kv heads, 3 query heads each",
             lambda: _expand_inputs(2, 2, _KV73, 3, 4, 3 * _KV73), 1, "random"),
        Case("edge: n_kv_heads = n_heads (MHA: nothing to repeat)",
             lambda: _expand_inputs(3, 1, 4, 3, 4, 4), 1, "edge"),
        Case("edge: one kv head for 4 query heads (MQA)", lambda: _expand_inputs(4, 1, 1, 3, 4, 4), 1, "edge"),
    ),
    mistakes=EXPAND_MISTAKES,
    # kv[:, torch.arange(n_heads) // n_kv_heads]: an index past the last kv head
    error_hints=(("is out of bounds for dimension", "query head h uses kv head h // (n_heads // n_kv_heads)"),),
)


# --- 7.4 kv_cache_bytes ----------------------------------------------------------------------------

COLUMNS = ("n_layers", "batch", "n_heads", "n_kv_heads", "seq", "head_dim", "bytes_per_value")


def kv_cache_bytes(configs):
    """The bytes a KV cache holds, for each configuration (one per row).

    configs: (n, 7) int64, columns n_layers, batch, n_heads, n_kv_heads, seq, head_dim,
    bytes_per_value -> (n,) int64: 2 (K and V) · layers · batch · kv heads · seq · head_dim · bytes.
    """
    layers, batch, heads, kv_heads, seq, head_dim, nbytes = configs.unbind(dim=1)
    return 2 * layers * batch * kv_heads * seq * head_dim * nbytes


def _without(*dropped, factor=2, heads_column=3):
    def wrong(configs):
        keep = [i for i in (0, 1, heads_column, 4, 5, 6) if i not in dropped]
        return factor * configs[:, keep].prod(dim=1)
    return wrong


def _group_size_as_kv_heads(configs):
    layers, batch, heads, kv_heads, seq, head_dim, nbytes = configs.unbind(dim=1)
    return 2 * layers * batch * (heads // kv_heads) * seq * head_dim * nbytes


def _int32_overflow(configs):
    """int32 arithmetic: the exact count wrapped to [−2^31, 2^31), whatever the order of the products."""
    return (kv_cache_bytes(configs) + 2**31) % 2**32 - 2**31


BYTES_MISTAKES = (
    Mistake("factor 2 missing: the cache holds keys and values", _without(factor=1)),
    Mistake("n_heads used: the cache holds n_kv_heads heads", _without(heads_column=2)),
    Mistake("bytes_per_value missing: that counts numbers, not bytes", _without(6)),
    Mistake("batch missing: every sequence has its own cache", _without(1)),
    Mistake("n_layers missing: every layer has its own cache", _without(0)),
    Mistake("n_heads // n_kv_heads is the group size: use n_kv_heads", _group_size_as_kv_heads),
    Mistake("int32 overflow past 2^31 bytes: compute in int64", _int32_overflow),
)

LLAMA_2_7B = [32, 1, 32, 32, 1, 128, 4]      # one token, float32
LLAMA_3_8B = [32, 1, 32, 8, 8192, 128, 2]    # a full 8192-token context
# Past 2^31 and 2^32 bytes, where int32 arithmetic wraps around. Qwen2.5-14B: 48 layers, 40 query
# heads, 8 kv heads of 128 dimensions; n_layers, n_heads, n_kv_heads, their ratio and the batch all
# differ, so each named mistake gives its own number.
LLAMA_3_8B_BATCH_3 = [32, 3, 32, 8, 8192, 128, 2]     # 3 GiB
QWEN_2_5_14B_BATCH_4 = [48, 4, 40, 8, 8192, 128, 2]   # 6 GiB


def _configs(rows):
    return (torch.tensor(rows, dtype=torch.int64),)


def _random_configs(seed: int, n: int):
    g = _gen(seed)
    kv = 2 ** torch.randint(0, 3, (n,), generator=g)          # 1, 2 or 4 kv heads
    heads = kv * 2 ** torch.randint(1, 3, (n,), generator=g)  # 2 or 4 query heads per group
    rows = torch.stack([torch.randint(1, 9, (n,), generator=g), torch.randint(1, 5, (n,), generator=g),
                        heads, kv, torch.randint(1, 600, (n,), generator=g),
                        2 ** torch.randint(3, 8, (n,), generator=g), 2 ** torch.randint(0, 3, (n,), generator=g)],
                       dim=1)
    return (rows,)


BYTES = Exercise(
    id="7.4",
    title="The size of the KV cache",
    function_name="kv_cache_bytes",
    arg_names=("configs",),
    signature="kv_cache_bytes(configs: (n, 7) int64) -> (n,) int64",
    reference=kv_cache_bytes,
    cases=(
        Case("Llama-2-7B, one token in float32 (MHA)", lambda: _configs([LLAMA_2_7B]), 1, "fixed"),
        Case("Llama-3-8B, 8192 tokens in 16-bit (GQA)", lambda: _configs([LLAMA_3_8B]), 1, "fixed"),
        Case("Llama-3-8B, batch 3: 3 GiB, past 2^31", lambda: _configs([LLAMA_3_8B_BATCH_3]), 1, "fixed"),
        Case("Qwen2.5-14B, batch 4: 6 GiB, past 2^32", lambda: _configs([QWEN_2_5_14B_BATCH_4]), 1, "fixed"),
        Case("3 random configurations", lambda: _random_configs(76, 3), 1, "random"),
        Case("edge: MQA, one kv head, batch 8 in float32",
             lambda: _configs([[2, 8, 4, 1, 100, 16, 4]]), 1, "edge"),
        Case("edge: an empty cache (seq = 0)", lambda: _configs([[2, 1, 4, 2, 0, 16, 4]]), 1, "edge"),
    ),
    mistakes=BYTES_MISTAKES,
)


EXERCISES = (APPEND, ATTEND, EXPAND, BYTES)
