"""Chapter 4 (head contributions, causal multi-head self-attention with GQA, mean pooling of key and
value heads, the mean attention entropy of all-MiniLM-L6-v2): learner code the grader has
not seen. 4.2's entries are classes, as learners hand in."""

from __future__ import annotations

import copy
import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from riverbank.grading.exercises.ch04 import ENTROPY_SENTENCES, pooling_setup


# --- 4.1 head_contributions: correct ---------------------------------------------------------------

def ch04_contrib_loop_stack(heads, w_o):
    d = heads.shape[-1]
    return torch.stack([heads[:, h] @ w_o[h * d:(h + 1) * d] for h in range(heads.shape[1])], dim=1)


def ch04_contrib_einsum(heads, w_o):
    b, n, s, d = heads.shape
    return torch.einsum("bnsd,nde->bnse", heads, w_o.view(n, d, -1))


def ch04_contrib_masked_concat(heads, w_o):  # zero every other head, then the full product
    b, n, s, d = heads.shape
    out = []
    for h in range(n):
        only = torch.zeros_like(heads)
        only[:, h] = heads[:, h]
        out.append(only.transpose(1, 2).reshape(b, s, n * d) @ w_o)
    return torch.stack(out, dim=1)


def ch04_contrib_float64(heads, w_o):
    n, d = heads.shape[1], heads.shape[-1]
    return (heads.double().unsqueeze(-1) * w_o.double().view(1, n, 1, d, -1)).sum(-2).to(heads.dtype)


# --- 4.1 head_contributions: wrong -----------------------------------------------------------------

def ch04_contrib_total(heads, w_o):
    b, n, s, d = heads.shape
    return heads.transpose(1, 2).reshape(b, s, n * d) @ w_o


def ch04_contrib_linear_layout(heads, w_o):
    d = heads.shape[-1]
    return torch.stack([heads[:, h] @ w_o.T[h * d:(h + 1) * d] for h in range(heads.shape[1])], dim=1)


def ch04_contrib_strided_rows(heads, w_o):
    n = heads.shape[1]
    return torch.stack([heads[:, h] @ w_o[h::n] for h in range(n)], dim=1)


def ch04_contrib_view_wrong_order(heads, w_o):  # (head_dim, n_heads, d_out): interleaved rows
    n, d = heads.shape[1], heads.shape[-1]
    return heads @ w_o.view(d, n, -1).transpose(0, 1)


def ch04_contrib_reversed(heads, w_o):
    d, n = heads.shape[-1], heads.shape[1]
    return torch.stack([heads[:, h] @ w_o[h * d:(h + 1) * d] for h in reversed(range(n))], dim=1)


def ch04_contrib_first_block_only(heads, w_o):
    d = heads.shape[-1]
    return torch.stack([heads[:, h] @ w_o[:d] for h in range(heads.shape[1])], dim=1)


# --- 4.2 CausalSelfAttention: correct --------------------------------------------------------------

class SdpaAttention(nn.Module):  # torch's fused attention, is_causal=True, kv heads expanded
    def __init__(self, d_model, n_heads, n_kv_heads=None):
        super().__init__()
        self.h, self.kv = n_heads, n_kv_heads or n_heads
        self.d = d_model // n_heads
        self.w_q = nn.Linear(d_model, d_model, bias=False)
        self.w_k = nn.Linear(d_model, self.kv * self.d, bias=False)
        self.w_v = nn.Linear(d_model, self.kv * self.d, bias=False)
        self.w_o = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x):
        b, s, _ = x.shape
        q = self.w_q(x).unflatten(-1, (self.h, self.d)).transpose(1, 2)
        k = self.w_k(x).unflatten(-1, (self.kv, self.d)).transpose(1, 2)
        v = self.w_v(x).unflatten(-1, (self.kv, self.d)).transpose(1, 2)
        r = self.h // self.kv
        k = k[:, :, None].expand(b, self.kv, r, s, self.d).reshape(b, self.h, s, self.d)
        v = v[:, :, None].expand(b, self.kv, r, s, self.d).reshape(b, self.h, s, self.d)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.w_o(out.transpose(1, 2).reshape(b, s, -1))


class GroupedEinsumAttention(nn.Module):  # queries grouped under their kv head: no repeat at all
    def __init__(self, d_model, n_heads, n_kv_heads=None):
        super().__init__()
        self.n_heads, self.n_kv = n_heads, n_kv_heads if n_kv_heads is not None else n_heads
        self.hd = d_model // n_heads
        self.w_q = nn.Linear(d_model, d_model, bias=False)
        self.w_k = nn.Linear(d_model, self.n_kv * self.hd, bias=False)
        self.w_v = nn.Linear(d_model, self.n_kv * self.hd, bias=False)
        self.w_o = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x):
        b, s, d = x.shape
        g = self.n_heads // self.n_kv
        q = self.w_q(x).view(b, s, self.n_kv, g, self.hd)        # query heads grouped by kv head
        k = self.w_k(x).view(b, s, self.n_kv, self.hd)
        v = self.w_v(x).view(b, s, self.n_kv, self.hd)
        scores = torch.einsum("bqkgd,bskd->bkgqs", q, k) * self.hd ** -0.5
        future = torch.ones(s, s, dtype=torch.bool).triu(1)
        weights = scores.masked_fill(future, -math.inf).softmax(-1)
        out = torch.einsum("bkgqs,bskd->bqkgd", weights, v).reshape(b, s, d)
        return self.w_o(out)


class LoopOverHeads(nn.Module):  # one head at a time, a float mask added to the scores
    def __init__(self, d_model, n_heads, n_kv_heads=None):
        super().__init__()
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads or n_heads
        self.head_dim = d_model // n_heads
        self.w_q = nn.Linear(d_model, d_model, bias=False)
        self.w_k = nn.Linear(d_model, self.n_kv_heads * self.head_dim, bias=False)
        self.w_v = nn.Linear(d_model, self.n_kv_heads * self.head_dim, bias=False)
        self.w_o = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x):
        seq, hd = x.shape[1], self.head_dim
        q, k, v = self.w_q(x), self.w_k(x), self.w_v(x)
        bias = torch.full((seq, seq), float("-inf")).triu(1).to(x.dtype)
        outs = []
        for h in range(self.n_heads):
            kv = h * self.n_kv_heads // self.n_heads    # = h // group
            qh = q[..., h * hd:(h + 1) * hd]
            kh, vh = k[..., kv * hd:(kv + 1) * hd], v[..., kv * hd:(kv + 1) * hd]
            w = torch.softmax(qh @ kh.transpose(1, 2) / math.sqrt(hd) + bias, dim=-1)
            outs.append(w @ vh)
        return self.w_o(torch.cat(outs, dim=-1))


class Float64Inside(LoopOverHeads):  # the same loop, in float64, cast back at the end
    def forward(self, x):
        seq, hd = x.shape[1], self.head_dim
        xd = x.double()
        q, k, v = (xd @ lin.weight.double().T for lin in (self.w_q, self.w_k, self.w_v))
        future = torch.ones(seq, seq, dtype=torch.bool).triu(1)
        outs = []
        for h in range(self.n_heads):
            kv = h // (self.n_heads // self.n_kv_heads)
            scores = q[..., h * hd:(h + 1) * hd] @ k[..., kv * hd:(kv + 1) * hd].transpose(1, 2) / math.sqrt(hd)
            outs.append(scores.masked_fill(future, -math.inf).softmax(-1) @ v[..., kv * hd:(kv + 1) * hd])
        return (torch.cat(outs, dim=-1) @ self.w_o.weight.double().T).to(x.dtype)


# --- 4.2 CausalSelfAttention: wrong ----------------------------------------------------------------

class _Base(nn.Module):
    def __init__(self, d_model, n_heads, n_kv_heads=None):
        super().__init__()
        self.n_heads, self.n_kv = n_heads, n_kv_heads or n_heads
        self.hd = d_model // n_heads
        self.w_q = nn.Linear(d_model, d_model, bias=False)
        self.w_k = nn.Linear(d_model, self.n_kv * self.hd, bias=False)
        self.w_v = nn.Linear(d_model, self.n_kv * self.hd, bias=False)
        self.w_o = nn.Linear(d_model, d_model, bias=False)

    def heads(self, t, n):
        b, s, _ = t.shape
        return t.view(b, s, n, self.hd).transpose(1, 2)

    def attend(self, x, causal=True, expand="interleave", scale=None, project=True):
        b, s, d = x.shape
        q, k, v = self.heads(self.w_q(x), self.n_heads), self.heads(self.w_k(x), self.n_kv), self.heads(self.w_v(x), self.n_kv)
        r = self.n_heads // self.n_kv
        if expand == "interleave":
            k, v = k.repeat_interleave(r, 1), v.repeat_interleave(r, 1)
        else:
            k, v = k.repeat(1, r, 1, 1), v.repeat(1, r, 1, 1)
        scores = q @ k.transpose(-2, -1) / (scale or math.sqrt(self.hd))
        if causal:
            scores = scores.masked_fill(torch.triu(torch.ones(s, s, dtype=torch.bool), 1), float("-inf"))
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, d)
        return self.w_o(out) if project else out


class NotCausal(_Base):
    def forward(self, x):
        return self.attend(x, causal=False)


class TiledKvHeads(_Base):  # repeat, not repeat_interleave
    def forward(self, x):
        return self.attend(x, expand="tile")


class ScaledByDModel(_Base):
    def forward(self, x):
        return self.attend(x, scale=math.sqrt(x.shape[-1]))


class TrilFilledWithMinusInf(_Base):  # masked_fill(keep, -inf): fills what it should keep
    def forward(self, x):
        b, s, d = x.shape
        q, k, v = self.heads(self.w_q(x), self.n_heads), self.heads(self.w_k(x), self.n_kv), self.heads(self.w_v(x), self.n_kv)
        r = self.n_heads // self.n_kv
        k, v = k.repeat_interleave(r, 1), v.repeat_interleave(r, 1)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.hd)
        scores = scores.masked_fill(torch.tril(torch.ones(s, s, dtype=torch.bool)), float("-inf"))
        return self.w_o((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, d))


class MergedWithoutTranspose(_Base):
    def forward(self, x):
        b, s, d = x.shape
        q, k, v = self.heads(self.w_q(x), self.n_heads), self.heads(self.w_k(x), self.n_kv), self.heads(self.w_v(x), self.n_kv)
        r = self.n_heads // self.n_kv
        k, v = k.repeat_interleave(r, 1), v.repeat_interleave(r, 1)
        scores = (q @ k.transpose(-2, -1) / math.sqrt(self.hd)).masked_fill(
            torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf"))
        return self.w_o((scores.softmax(-1) @ v).reshape(b, s, d))


class NoOutputProjection(_Base):
    def forward(self, x):
        return self.attend(x, project=False)


class WithBiases(nn.Module):  # nn.Linear's default bias=True: the state dict does not fit
    def __init__(self, d_model, n_heads, n_kv_heads=None):
        super().__init__()
        kv = (n_kv_heads or n_heads) * (d_model // n_heads)
        self.w_q, self.w_o = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
        self.w_k, self.w_v = nn.Linear(d_model, kv), nn.Linear(d_model, kv)

    def forward(self, x):
        return x


class SeedNames(nn.Module):  # the chapter's class names Q, K, V, O
    def __init__(self, d_model, n_heads, n_kv_heads=None):
        super().__init__()
        self.Q = nn.Linear(d_model, d_model, bias=False)
        self.K = nn.Linear(d_model, d_model, bias=False)
        self.V = nn.Linear(d_model, d_model, bias=False)
        self.O = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x):
        return self.O(self.V(x))


# --- 4.3 gqa_pooling_error: correct ----------------------------------------------------------------

_STATE, _X = pooling_setup()


def _run(cls, state, n_kv, causal=True, x=_X):
    m = cls(32, 8, n_kv) if causal else NotCausal(32, 8, n_kv)
    m.load_state_dict(state)
    with torch.no_grad():
        return m(x)


def _pooled(how="mean"):
    out = dict(_STATE)
    for name in ("w_k.weight", "w_v.weight"):
        heads = _STATE[name].view(8, 4, 32)        # (heads, head_dim, d_model)
        if how == "mean":
            out[name] = torch.stack([heads[4 * g:4 * g + 4].mean(0) for g in range(2)]).reshape(8, 32)
        elif how == "strided":
            out[name] = torch.stack([heads[g::2].mean(0) for g in range(2)]).reshape(8, 32)
        elif how == "sum":
            out[name] = torch.stack([heads[4 * g:4 * g + 4].sum(0) for g in range(2)]).reshape(8, 32)
        elif how == "first":
            out[name] = heads[0::4].reshape(8, 32)
    return out


def ch04_pool_with_loop_attention():
    before, after = _run(LoopOverHeads, _STATE, None), _run(LoopOverHeads, _pooled(), 2)
    return float(torch.linalg.norm(after - before) / torch.linalg.norm(before))


def ch04_pool_sdpa_float64():
    state = {k: v.double() for k, v in _STATE.items()}
    pooled = {k: v.double() for k, v in _pooled().items()}
    mha, gqa = SdpaAttention(32, 8).double(), SdpaAttention(32, 8, 2).double()
    mha.load_state_dict(state)
    gqa.load_state_dict(pooled)
    with torch.no_grad():
        b, a = mha(_X.double()), gqa(_X.double())
    return ((a - b).pow(2).sum().sqrt() / b.pow(2).sum().sqrt()).item()


def ch04_pool_expanded_mha():  # GQA written as an 8-head layer whose key/value heads repeat
    pooled = _pooled()
    expanded = dict(pooled)
    for name in ("w_k.weight", "w_v.weight"):
        expanded[name] = pooled[name].view(2, 4, 32).repeat_interleave(4, dim=0).reshape(32, 32)
    before, after = _run(GroupedEinsumAttention, _STATE, None), _run(GroupedEinsumAttention, expanded, None)
    return ((after - before).flatten().norm() / before.flatten().norm()).item()


# --- 4.3 gqa_pooling_error: wrong ------------------------------------------------------------------

def _relative(after, before):
    return ((after - before).norm() / before.norm()).item()


def ch04_pool_strided_groups():
    return _relative(_run(LoopOverHeads, _pooled("strided"), 2), _run(LoopOverHeads, _STATE, None))


def ch04_pool_summed():
    return _relative(_run(LoopOverHeads, _pooled("sum"), 2), _run(LoopOverHeads, _STATE, None))


def ch04_pool_first_head():
    return _relative(_run(LoopOverHeads, _pooled("first"), 2), _run(LoopOverHeads, _STATE, None))


def ch04_pool_absolute():
    return (_run(LoopOverHeads, _pooled(), 2) - _run(LoopOverHeads, _STATE, None)).norm().item()


def ch04_pool_not_causal():
    return _relative(_run(None, _pooled(), 2, causal=False), _run(None, _STATE, None, causal=False))


def ch04_pool_rounded():
    return round(ch04_pool_with_loop_attention(), 2)


def ch04_pool_error_of_keys_only():  # values kept from head 0 of each group, keys pooled
    state = _pooled()
    state["w_v.weight"] = _pooled("first")["w_v.weight"]
    return _relative(_run(LoopOverHeads, state, 2), _run(LoopOverHeads, _STATE, None))



# --- 4.4 mean_attention_entropy: correct -----------------------------------------------------------

@functools.cache
def _model():  # what the notebook's setup cell loads: float32, on the CPU
    from riverbank.pretrained import load_minilm
    return load_minilm("cpu")


def _maps(sentences=ENTROPY_SENTENCES):
    """One (layers, heads, n, n) tensor per sentence."""
    tokenizer, model = _model()
    with torch.no_grad():
        return [torch.cat(model(**tokenizer(s, return_tensors="pt"), output_attentions=True).attentions)
                for s in sentences]


def ch04_entropy_padded_batch():  # one padded batch, [PAD] rows and 0 · ln 0 handled
    tokenizer, model = _model()
    encoded = tokenizer(list(ENTROPY_SENTENCES), return_tensors="pt", padding=True)
    with torch.no_grad():
        a = torch.stack(model(**encoded, output_attentions=True).attentions, dim=1)  # (batch, 6, 12, n, n)
    plogp = torch.where(a > 0, a * torch.log(a.clamp_min(1e-30)), torch.zeros_like(a))
    entropy = -plogp.sum(-1)                                    # (batch, 6, 12, n)
    ids = encoded["input_ids"]
    words = (encoded["attention_mask"] == 1) & (ids != tokenizer.cls_token_id) & (ids != tokenizer.sep_token_id)
    return entropy.permute(0, 3, 1, 2)[words].mean().item()   # rows: (word tokens, 6, 12)


def ch04_entropy_categorical_float64():
    tokenizer, model = _model()
    model64 = copy.deepcopy(model).double()
    total, count = 0.0, 0
    with torch.no_grad():
        for sentence in ENTROPY_SENTENCES:
            out = model64(**tokenizer(sentence, return_tensors="pt"), output_attentions=True)
            for layer in out.attentions:
                h = torch.distributions.Categorical(probs=layer[0, :, 1:-1]).entropy()  # (12, n - 2)
                total, count = total + h.sum().item(), count + h.numel()
    return total / count


def ch04_entropy_weighted_sentence_means():  # each sentence's mean, weighted by its word tokens
    means, weights = [], []
    for a in _maps():
        h = -(a * a.log()).sum(-1)[..., 1:-1]                    # no zeros without padding
        means.append(h.mean())
        weights.append(h.shape[-1])
    w = torch.tensor(weights, dtype=torch.float64)
    return float((torch.stack(means).double() * w).sum() / w.sum())


# --- 4.4 mean_attention_entropy: wrong -------------------------------------------------------------

def _word_entropies(log=torch.log, queries=slice(1, -1)):
    return torch.cat([(-(a * log(a)).sum(-1))[..., queries].flatten() for a in _maps()])


def ch04_entropy_bits():
    return _word_entropies(log=torch.log2).mean().item()


def ch04_entropy_all_queries():
    return _word_entropies(queries=slice(None)).mean().item()


def ch04_entropy_word_keys_only():
    return torch.cat([(-(a[..., 1:-1] * a[..., 1:-1].log()).sum(-1))[..., 1:-1].flatten()
                      for a in _maps()]).mean().item()


def ch04_entropy_mean_of_sentence_means():
    return sum((-(a * a.log()).sum(-1))[..., 1:-1].mean().item() for a in _maps()) / len(ENTROPY_SENTENCES)


def ch04_entropy_normalised():
    return torch.cat([((-(a * a.log()).sum(-1)) / math.log(a.shape[-1]))[..., 1:-1].flatten()
                      for a in _maps()]).mean().item()


def ch04_entropy_pad_rows_kept():  # special tokens dropped by id, [PAD] forgotten
    tokenizer, model = _model()
    encoded = tokenizer(list(ENTROPY_SENTENCES), return_tensors="pt", padding=True)
    with torch.no_grad():
        a = torch.stack(model(**encoded, output_attentions=True).attentions, dim=1)
    entropy = -torch.special.xlogy(a, a).sum(-1).permute(0, 3, 1, 2)   # (batch, n, 6, 12)
    ids = encoded["input_ids"]
    return entropy[(ids != tokenizer.cls_token_id) & (ids != tokenizer.sep_token_id)].mean().item()


def ch04_entropy_padded_nan():  # a · ln a on a padded batch: 0 · (−inf) is NaN
    tokenizer, model = _model()
    encoded = tokenizer(list(ENTROPY_SENTENCES), return_tensors="pt", padding=True)
    with torch.no_grad():
        a = torch.stack(model(**encoded, output_attentions=True).attentions, dim=1)
    return (-(a * a.log()).sum(-1))[..., 1:-1].mean().item()


def ch04_entropy_rounded():
    return round(ch04_entropy_weighted_sentence_means(), 3)


def ch04_entropy_last_layer_only():
    return torch.cat([(-(a[-1:] * a[-1:].log()).sum(-1))[..., 1:-1].flatten() for a in _maps()]).mean().item()


CORRECT = {
    "4.1": [ch04_contrib_loop_stack, ch04_contrib_einsum, ch04_contrib_masked_concat, ch04_contrib_float64],
    "4.2": [SdpaAttention, GroupedEinsumAttention, LoopOverHeads, Float64Inside],
    "4.3": [ch04_pool_with_loop_attention, ch04_pool_sdpa_float64, ch04_pool_expanded_mha],
    "4.4": [ch04_entropy_padded_batch, ch04_entropy_categorical_float64, ch04_entropy_weighted_sentence_means],
}

WRONG = {
    "4.1": [
        (ch04_contrib_total, "the heads are summed"),
        (ch04_contrib_linear_layout, "nn.Linear's weight"),
        (ch04_contrib_strided_rows, "rows of w_o are consecutive"),
        (ch04_contrib_view_wrong_order, "rows of w_o are consecutive"),
        (ch04_contrib_reversed, "reverse order"),
        (ch04_contrib_first_block_only, "head 0's rows"),
    ],
    "4.2": [
        (NotCausal, "not causal"),
        (TiledKvHeads, "kv heads tiled"),
        (ScaledByDModel, "√d_model"),
        (TrilFilledWithMinusInf, "mask inverted"),
        (MergedWithoutTranspose, "merged without transpose"),
        (NoOutputProjection, "w_o is missing"),
        (WithBiases, "no biases"),
        (SeedNames, "name the layers w_q, w_k, w_v, w_o"),
    ],
    "4.3": [
        (ch04_pool_strided_groups, "a group is consecutive heads"),
        (ch04_pool_summed, "the heads were summed"),
        (ch04_pool_first_head, "first head"),
        (ch04_pool_absolute, "relative"),
        (ch04_pool_not_causal, "both layers are causal"),
        (ch04_pool_rounded, None),
        (ch04_pool_error_of_keys_only, None),
    ],
    "4.4": [
        (ch04_entropy_bits, "natural log"),
        (ch04_entropy_all_queries, "[CLS] and [SEP] rows counted"),
        (ch04_entropy_word_keys_only, "sum over every key"),
        (ch04_entropy_mean_of_sentence_means, "each word token counts once"),
        (ch04_entropy_normalised, "fraction of ln n"),
        (ch04_entropy_pad_rows_kept, "[PAD] rows counted"),
        (ch04_entropy_padded_nan, None),
        (ch04_entropy_rounded, None),
        (ch04_entropy_last_layer_only, None),
    ],
}
