"""Chapter 4 exercises: splitting into heads, merging heads, and a multi-head attention forward pass."""

from __future__ import annotations

import math

import torch

from ..spec import Case, Exercise, Mistake


def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _labels(batch: int, seq: int, width: int) -> torch.Tensor:
    """Entry (b, t, f) = 100 b + 10 t + f: a float tensor whose numbers say where they came from."""
    b, t, f = torch.meshgrid(torch.arange(batch), torch.arange(seq), torch.arange(width), indexing="ij")
    return (100 * b + 10 * t + f).float()


# --- 4.1 split_heads ----------------------------------------------------------------------------

def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(batch, seq, d_model) -> (batch, n_heads, seq, d_model // n_heads); head h gets features
    h · head_dim to (h + 1) · head_dim - 1 of every token."""
    batch, seq, d_model = x.shape
    return x.view(batch, seq, n_heads, d_model // n_heads).transpose(1, 2)


def _split_no_transpose(x, n_heads):
    batch, seq, d_model = x.shape
    return x.reshape(batch, n_heads, seq, d_model // n_heads)


def _split_interleaved(x, n_heads):
    batch, seq, d_model = x.shape
    return x.reshape(batch, seq, d_model // n_heads, n_heads).permute(0, 3, 1, 2)


def _split_head_axis_not_moved(x, n_heads):
    batch, seq, d_model = x.shape
    return x.reshape(batch, seq, n_heads, d_model // n_heads)


def _split_wrong_transpose(x, n_heads):
    batch, seq, d_model = x.shape
    return x.reshape(batch, seq, n_heads, d_model // n_heads).transpose(2, 3)


# Messages stay short: the feedback line "  Likely mistake: ..." must fit the page (76 columns).
NO_TRANSPOSE_SPLIT = "reshaped with no transpose(1, 2): heads mix tokens"
NOT_CONTIGUOUS = "view() needs a contiguous tensor: use reshape()"

SPLIT = Exercise(
    id="4.1",
    title="Split into heads",
    function_name="split_heads",
    arg_names=("x", "n_heads"),
    signature="split_heads(x: (batch, seq, d_model), n_heads: int) -> (batch, n_heads, seq, head_dim)",
    reference=split_heads,
    cases=(
        Case("labels (1, 3, 6), 2 heads", lambda: (_labels(1, 3, 6), 2), 2, "fixed"),
        Case("random (2, 5, 12), 3 heads", lambda: (_randn(41, 2, 5, 12), 3), 2, "random"),
        Case("random (3, 4, 16), 4 heads", lambda: (_randn(42, 3, 4, 16), 4), 2, "random"),
        Case("edge: 1 head, (2, 3, 5)", lambda: (_randn(43, 2, 3, 5), 1), 1, "edge"),
        Case("edge: head_dim 1, (2, 4, 4), 4 heads", lambda: (_labels(2, 4, 4), 4), 1, "edge"),
    ),
    mistakes=(
        Mistake(NO_TRANSPOSE_SPLIT, _split_no_transpose),
        Mistake("features interleaved: a head takes consecutive ones", _split_interleaved),
        Mistake("head axis not moved before seq: add transpose(1, 2)", _split_head_axis_not_moved),
        Mistake("transpose(2, 3) moves head_dim; use transpose(1, 2)", _split_wrong_transpose),
    ),
    error_hints=(("view size is not compatible", NOT_CONTIGUOUS),),
)


# --- 4.2 merge_heads ----------------------------------------------------------------------------

def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(batch, n_heads, seq, head_dim) -> (batch, seq, n_heads · head_dim), head 0's features first."""
    batch, n_heads, seq, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, seq, n_heads * head_dim)


def _merge_no_transpose(x):
    batch, n_heads, seq, head_dim = x.shape
    return x.reshape(batch, seq, n_heads * head_dim)


def _merge_interleaved(x):
    batch, n_heads, seq, head_dim = x.shape
    return x.permute(0, 2, 3, 1).reshape(batch, seq, n_heads * head_dim)


def _merge_reversed(x):
    return merge_heads(x.flip(1))


def _merge_not_flattened(x):
    return x.transpose(1, 2)


def _merge_sum(x):
    return x.sum(dim=1)


MERGE = Exercise(
    id="4.2",
    title="Merge the heads",
    function_name="merge_heads",
    arg_names=("x",),
    signature="merge_heads(x: (batch, n_heads, seq, head_dim)) -> (batch, seq, n_heads * head_dim)",
    reference=merge_heads,
    cases=(
        Case("labels split into 2 heads, (1, 2, 3, 3)", lambda: (split_heads(_labels(1, 3, 6), 2),), 2, "fixed"),
        Case("random (2, 3, 5, 4)", lambda: (_randn(44, 2, 3, 5, 4),), 2, "random"),
        Case("random (3, 4, 6, 2)", lambda: (_randn(45, 3, 4, 6, 2),), 2, "random"),
        Case("edge: 1 head, (2, 1, 4, 5)", lambda: (_randn(46, 2, 1, 4, 5),), 1, "edge"),
        Case("edge: head_dim 1, (2, 4, 3, 1)", lambda: (_randn(47, 2, 4, 3, 1),), 1, "edge"),
    ),
    mistakes=(
        Mistake("reshaped without transpose(1, 2): tokens and heads mix", _merge_no_transpose),
        Mistake("heads interleaved: put all of head 0 first, then head 1", _merge_interleaved),
        Mistake("heads concatenated last first: head 0 comes first", _merge_reversed),
        Mistake("the head axis is still there: flatten the last two axes", _merge_not_flattened),
        Mistake("heads added up instead of concatenated", _merge_sum),
    ),
    error_hints=(("view size is not compatible", NOT_CONTIGUOUS),),
)


# --- 4.3 multi_head_attention -------------------------------------------------------------------

def _weights(seed: int, d_model: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(d_model, d_model, generator=g) / math.sqrt(d_model) for _ in range(4))


def _inputs(seed: int, batch: int, seq: int, d_model: int, n_heads: int, mask=None) -> tuple:
    x = 2.0 * _randn(seed, batch, seq, d_model)
    return (x, *_weights(seed + 1000, d_model), n_heads, mask)


def _tril(n: int) -> torch.Tensor:
    return torch.tril(torch.ones(n, n, dtype=torch.bool))


def _padding(lengths: list[int], seq: int) -> torch.Tensor:
    keep = torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]  # (batch, seq)
    return keep[:, None, None, :]  # (batch, 1, 1, seq): broadcasts over heads and queries


def _mha(x, w_q, w_k, w_v, w_o, n_heads, mask=None, *, scale_width=None, softmax_dim=-1,
         split=split_heads, merge=merge_heads, project=True, transposed=False, invert=False,
         fill=float("-inf"), use_mask=True):
    """Multi-head attention with one knob per known mistake; the defaults are the reference."""
    if transposed:
        w_q, w_k, w_v, w_o = w_q.T, w_k.T, w_v.T, w_o.T
    q, k, v = split(x @ w_q, n_heads), split(x @ w_k, n_heads), split(x @ w_v, n_heads)
    width = q.shape[-1] if scale_width is None else scale_width
    scores = q @ k.transpose(-2, -1) / math.sqrt(width)  # (batch, heads, seq, seq)
    if mask is not None and use_mask:
        scores = scores.masked_fill(mask if invert else ~mask, fill)
    heads = torch.softmax(scores, dim=softmax_dim) @ v  # (batch, heads, seq, head_dim)
    merged = merge(heads)  # (batch, seq, d_model)
    return merged @ w_o if project else merged


def multi_head_attention(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    """Concat(head_1, ..., head_h) W_O with head_i = softmax(q_i k_iᵀ / √head_dim) v_i.

    x: (batch, seq, d_model); w_q, w_k, w_v, w_o: (d_model, d_model), used as x @ w;
    mask: None or bool broadcastable to (batch, n_heads, seq, seq), True = keep.
    Returns (batch, seq, d_model).
    """
    return _mha(x, w_q, w_k, w_v, w_o, n_heads, mask)


def _variant(**knobs):
    def wrong(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
        return _mha(x, w_q, w_k, w_v, w_o, n_heads, mask, **knobs)
    return wrong


def _scaled_by_d_model(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return _mha(x, w_q, w_k, w_v, w_o, n_heads, mask, scale_width=x.shape[-1])


def _unscaled(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return _mha(x, w_q, w_k, w_v, w_o, n_heads, mask, scale_width=1)


MASK_INVERTED = "mask inverted: True means keep, so fill where ~mask"

MHA = Exercise(
    id="4.3",
    title="Multi-head attention, forward",
    function_name="multi_head_attention",
    arg_names=("x", "w_q", "w_k", "w_v", "w_o", "n_heads", "mask"),
    signature="multi_head_attention(x: (batch, seq, d_model), w_q, w_k, w_v, w_o: (d_model, d_model), "
              "n_heads: int, mask=None) -> (batch, seq, d_model)",
    reference=multi_head_attention,
    cases=(
        Case("(1, 3, 6), 2 heads, no mask", lambda: _inputs(51, 1, 3, 6, 2), 2, "fixed"),
        Case("random (2, 5, 16), 4 heads, no mask", lambda: _inputs(52, 2, 5, 16, 4), 2, "random"),
        Case("random (2, 6, 12), 3 heads, causal mask (6, 6)",
             lambda: _inputs(53, 2, 6, 12, 3, _tril(6)), 2, "random"),
        Case("random (3, 5, 8), 2 heads, padding mask (3, 1, 1, 5)",
             lambda: _inputs(54, 3, 5, 8, 2, _padding([5, 3, 1], 5)), 2, "random"),
        Case("edge: 1 head, (2, 4, 8), causal mask", lambda: _inputs(55, 2, 4, 8, 1, _tril(4)), 1, "edge"),
        Case("edge: head_dim 1, (1, 4, 4), 4 heads", lambda: _inputs(56, 1, 4, 4, 4), 1, "edge"),
    ),
    mistakes=(
        Mistake("scores divided by √d_model; divide by √head_dim", _scaled_by_d_model),
        Mistake("the scores are not divided by √head_dim", _unscaled),
        Mistake("the output projection is missing: multiply by w_o", _variant(project=False)),
        Mistake("softmax runs over the queries (dim=-2), not the keys", _variant(softmax_dim=-2)),
        Mistake("heads split on the wrong axis: transpose(1, 2) missing",
                _variant(split=_split_no_transpose)),
        Mistake("heads split by interleaving features, not by slices", _variant(split=_split_interleaved)),
        Mistake("heads merged in the wrong order: transpose(1, 2) first",
                _variant(merge=_merge_no_transpose)),
        Mistake("weights used transposed: q = x @ w_q, not x @ w_q.T", _variant(transposed=True)),
        # Twice: with -inf a fully masked row is NaN, with -1e9 (or finfo.min) it is uniform.
        Mistake(MASK_INVERTED, _variant(invert=True)),
        Mistake(MASK_INVERTED, _variant(invert=True, fill=-1e9)),
        Mistake("the mask is not applied (masked_fill is not in place)", _variant(use_mask=False)),
    ),
    error_hints=(
        ("view size is not compatible", NOT_CONTIGUOUS),
        ("masked_fill_ only supports boolean masks", "masked_fill needs a bool mask (True = keep)"),
    ),
)

EXERCISES = (SPLIT, MERGE, MHA)
