"""Chapter 5 (RMSNorm's backward pass, top-k with top-p, a configurable decoder block, a trained reversal model, the
best single head): learner code the grader has not seen."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from riverbank.attention import causal_mask
from riverbank.heads import MultiHeadAttention
from riverbank.model import exact_match, load_reversal_model, train_reversal
from riverbank.tasks import Reversal


# --- 5.1 rms_norm_backward: correct ----------------------------------------------------------------

def ch05_rmsb_rsqrt_and_sum(x, weight, grad_out, eps):
    d = x.shape[-1]
    inv = torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)     # 1 / rms
    wg = grad_out * weight
    dx = inv * wg - x * inv ** 3 * (wg * x).sum(-1, keepdim=True) / d
    dw = (grad_out * x * inv).sum(dim=tuple(range(x.dim() - 1)))
    return dx, dw


def ch05_rmsb_jacobian(x, weight, grad_out, eps):
    d = x.shape[-1]
    r = (x.pow(2).sum(-1, keepdim=True) / d + eps).sqrt()          # (..., 1)
    eye = torch.eye(d, dtype=x.dtype)
    # J[i, j] = dy_i/dx_j = w_i (δ_ij / r − x_i x_j / (d r³))
    jac = weight[:, None] * (eye / r[..., None] - x[..., :, None] * x[..., None, :] / (d * r[..., None] ** 3))
    dx = torch.einsum("...i,...ij->...j", grad_out, jac)
    dw = (grad_out * x / r).flatten(0, -2).sum(0)
    return dx, dw


def ch05_rmsb_step_by_step(x, weight, grad_out, eps):
    # forward, one operation at a time
    d = x.shape[-1]
    ms = (x * x).mean(-1, keepdim=True)
    r = torch.sqrt(ms + eps)
    inv = 1.0 / r
    # backward through the same operations, in reverse
    d_inv = (grad_out * weight * x).sum(-1, keepdim=True)
    d_r = -d_inv / r ** 2
    d_ms = d_r / (2 * r)
    dx = grad_out * weight * inv + d_ms * 2 * x / d
    dw = (grad_out * x * inv).reshape(-1, d).sum(0)
    return dx, dw


def ch05_rmsb_float64_inside(x, weight, grad_out, eps):
    xd, wd, gd = x.double(), weight.double(), grad_out.double()
    r = (xd.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    xh = xd / r
    gh = wd * gd
    dx = (gh - xh * (gh * xh).mean(-1, keepdim=True)) / r
    dw = (gd * xh).reshape(-1, x.shape[-1]).sum(0)
    return dx.to(x.dtype), dw.to(weight.dtype)


# --- 5.1 rms_norm_backward: wrong ------------------------------------------------------------------

def ch05_rmsb_rms_as_constant(x, weight, grad_out, eps):
    rms = (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    return weight * grad_out / rms, (grad_out * x / rms).reshape(-1, x.shape[-1]).sum(0)


def ch05_rmsb_eps_outside(x, weight, grad_out, eps):
    rms = x.pow(2).mean(-1, keepdim=True).sqrt() + eps
    xh, gh = x / rms, weight * grad_out
    return (gh - xh * (gh * xh).mean(-1, keepdim=True)) / rms, (grad_out * xh).reshape(-1, x.shape[-1]).sum(0)


def ch05_rmsb_layer_norm_formula(x, weight, grad_out, eps):  # LayerNorm's backward, as textbooks give it
    mu = x.mean(-1, keepdim=True)
    sigma = ((x - mu).pow(2).mean(-1, keepdim=True) + eps).sqrt()
    xh, gh = (x - mu) / sigma, weight * grad_out
    dx = (gh - gh.mean(-1, keepdim=True) - xh * (gh * xh).mean(-1, keepdim=True)) / sigma
    return dx, (grad_out * xh).reshape(-1, x.shape[-1]).sum(0)


def ch05_rmsb_weight_summed_over_batch_only(x, weight, grad_out, eps):
    rms = torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    xh, gh = x / rms, weight * grad_out
    return (gh - xh * (gh * xh).mean(-1, keepdim=True)) / rms, (grad_out * xh).sum(0)


def ch05_rmsb_no_one_over_d(x, weight, grad_out, eps):
    rms = torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    xh, gh = x / rms, weight * grad_out
    return (gh - xh * (gh * xh).sum(-1, keepdim=True)) / rms, (grad_out * xh).reshape(-1, x.shape[-1]).sum(0)


def ch05_rmsb_hardcoded_eps(x, weight, grad_out, eps):
    return ch05_rmsb_rsqrt_and_sum(x, weight, grad_out, 1e-6)


def ch05_rmsb_autograd(x, weight, grad_out, eps):  # not by hand: autograd is switched off in the check
    x, weight = x.clone().requires_grad_(), weight.clone().requires_grad_()
    y = weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return torch.autograd.grad(y, (x, weight), grad_out)


def ch05_rmsb_returns_grad_x_only(x, weight, grad_out, eps):
    return ch05_rmsb_rsqrt_and_sum(x, weight, grad_out, eps)[0]


# --- 5.2 top_k_top_p_filter: correct ---------------------------------------------------------------

def ch05_kp_topk_then_loop(probs, k, p):
    flat = probs.reshape(-1, probs.shape[-1])
    out = torch.zeros_like(flat)
    for r in range(flat.shape[0]):
        values, index = flat[r].topk(min(k, flat.shape[-1]))
        values = values / values.sum()
        total = 0.0
        for v, i in zip(values.tolist(), index.tolist()):
            out[r, i] = flat[r, i]
            total += v
            if total >= p:
                break
        out[r] /= out[r].sum()
    return out.reshape(probs.shape)


def ch05_kp_hugging_face_logits(probs, k, p):
    logits = probs.log()
    kth = logits.topk(min(k, logits.shape[-1]), dim=-1).values[..., -1:]
    logits = logits.masked_fill(logits < kth, float("-inf"))
    sorted_logits, idx = logits.sort(dim=-1, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= 1 - p
    remove[..., -1] = False
    logits = logits.masked_fill(remove.scatter(-1, idx, remove), float("-inf"))
    return logits.softmax(dim=-1)


def ch05_kp_two_steps(probs, k, p):
    kth = probs.topk(min(k, probs.shape[-1]), dim=-1).values[..., -1:]
    top = torch.where(probs >= kth, probs, torch.zeros_like(probs))
    top = top / top.sum(-1, keepdim=True)
    s, idx = top.sort(-1, descending=True)
    keep = (s.cumsum(-1) - s) < p
    keep = keep & (s > 0)
    out = torch.zeros_like(top).scatter(-1, idx, s * keep)
    return out / out.sum(-1, keepdim=True)


# --- 5.2 top_k_top_p_filter: wrong -----------------------------------------------------------------

def _chapter_top_p(probs, p):
    s, order = probs.sort(dim=-1, descending=True)
    keep = torch.zeros_like(s, dtype=torch.bool).scatter(-1, order, s.cumsum(-1) - s < p)
    kept = probs * keep
    return kept / kept.sum(-1, keepdim=True)


def ch05_kp_intersection(probs, k, p):  # the chapter's top_p_filter on the original probs, then top-k
    nucleus = _chapter_top_p(probs, p)
    kth = probs.topk(min(k, probs.shape[-1]), dim=-1).values[..., -1:]
    kept = nucleus * (probs >= kth)
    return kept / kept.sum(-1, keepdim=True)


def ch05_kp_no_final_renormalise(probs, k, p):
    s, idx = probs.sort(-1, descending=True)
    top = s * (torch.arange(s.shape[-1]) < k)
    top = top / top.sum(-1, keepdim=True)
    keep = (top.cumsum(-1) - top < p) & (top > 0)
    return probs * torch.zeros_like(keep).scatter(-1, idx, keep)


def ch05_kp_k_plus_one(probs, k, p):  # "<= k"
    s, idx = probs.sort(-1, descending=True)
    in_k = torch.arange(s.shape[-1]) <= k
    top = s * in_k
    top = top / top.sum(-1, keepdim=True)
    keep = in_k & (top.cumsum(-1) - top < p)
    kept = probs * torch.zeros_like(keep).scatter(-1, idx, keep)
    return kept / kept.sum(-1, keepdim=True)


def ch05_kp_only_top_p(probs, k, p):
    return _chapter_top_p(probs, p)


def ch05_kp_cumsum_at_most_p(probs, k, p):
    s, idx = probs.sort(-1, descending=True)
    in_k = torch.arange(s.shape[-1]) < k
    top = s * in_k
    top = top / top.sum(-1, keepdim=True)
    keep = in_k & (top.cumsum(-1) <= p)
    kept = probs * torch.zeros_like(keep).scatter(-1, idx, keep)
    return kept / kept.sum(-1, keepdim=True)


def ch05_kp_left_sorted(probs, k, p):
    s = probs.sort(-1, descending=True).values
    in_k = torch.arange(s.shape[-1]) < k
    top = s * in_k
    top = top / top.sum(-1, keepdim=True)
    kept = top * (in_k & (top.cumsum(-1) - top < p))
    return kept / kept.sum(-1, keepdim=True)


# --- 5.3 DecoderBlock: helpers learners write ------------------------------------------------------

class _Rms(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


class _Gelu(nn.Module):
    def __init__(self, d, f, act=nn.GELU()):
        super().__init__()
        self.expand, self.contract = nn.Linear(d, f), nn.Linear(f, d)
        self.act = act

    def forward(self, x):
        return self.contract(self.act(self.expand(x)))


class _Swiglu(nn.Module):
    def __init__(self, d, f):
        super().__init__()
        self.gate = nn.Linear(d, f, bias=False)
        self.up = nn.Linear(d, f, bias=False)
        self.down = nn.Linear(f, d, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


def _norm(kind, d, eps=1e-6):
    return nn.LayerNorm(d) if kind == "layernorm" else nn.RMSNorm(d, eps=eps)


# --- 5.3 DecoderBlock: correct ---------------------------------------------------------------------

class ch05_block_torch_rmsnorm(nn.Module):
    """nn.RMSNorm with eps=1e-6, nn.GELU, the FFN built inline."""

    def __init__(self, d_model, n_heads, d_ff, norm="layernorm", ffn="gelu"):
        super().__init__()
        self.norm1, self.norm2 = _norm(norm, d_model), _norm(norm, d_model)
        self.attention = MultiHeadAttention(d_model, n_heads)
        self.ffn = _Gelu(d_model, d_ff) if ffn == "gelu" else _Swiglu(d_model, d_ff)

    def forward(self, x):
        attended, _ = self.attention(self.norm1(x), mask=causal_mask(x.size(1)))
        h = x + attended
        return h + self.ffn(self.norm2(h))


class ch05_block_own_rms_and_sigmoid(nn.Module):
    """Its own RMSNorm, SiLU written as z · sigmoid(z), a lower-triangular mask."""

    def __init__(self, d_model, n_heads, d_ff, norm="layernorm", ffn="gelu"):
        super().__init__()
        make = (lambda: nn.LayerNorm(d_model)) if norm == "layernorm" else (lambda: _Rms(d_model))
        self.norm1 = make()
        self.attention = MultiHeadAttention(d_model, n_heads)
        self.norm2 = make()
        self.kind = ffn
        self.ffn = nn.Module()
        if ffn == "gelu":
            self.ffn.expand, self.ffn.contract = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)
        else:
            self.ffn.gate = nn.Linear(d_model, d_ff, bias=False)
            self.ffn.up = nn.Linear(d_model, d_ff, bias=False)
            self.ffn.down = nn.Linear(d_ff, d_model, bias=False)

    def feed_forward(self, h):
        f = self.ffn
        if self.kind == "gelu":
            return f.contract(F.gelu(f.expand(h)))
        g = f.gate(h)
        return f.down(g * torch.sigmoid(g) * f.up(h))

    def forward(self, x):
        seq = x.shape[1]
        mask = torch.tril(torch.ones(seq, seq, dtype=torch.bool))
        x = x + self.attention(self.norm1(x), mask=mask)[0]
        return x + self.feed_forward(self.norm2(x))


class ch05_block_float64_inside(nn.Module):
    """Runs the whole block in float64 and hands back float32."""

    def __init__(self, d_model, n_heads, d_ff, norm="layernorm", ffn="gelu"):
        super().__init__()
        self.norm1, self.norm2 = _norm(norm, d_model), _norm(norm, d_model)
        self.attention = MultiHeadAttention(d_model, n_heads)
        self.ffn = _Gelu(d_model, d_ff) if ffn == "gelu" else _Swiglu(d_model, d_ff)

    def forward(self, x):
        twin = copy.deepcopy(self).double()
        h = x.double()
        h = h + twin.attention(twin.norm1(h), mask=causal_mask(h.shape[1]))[0]
        return (h + twin.ffn(twin.norm2(h))).to(x.dtype)


# --- 5.3 DecoderBlock: wrong -----------------------------------------------------------------------

class _Wrongable(nn.Module):
    def __init__(self, d_model, n_heads, d_ff, norm="layernorm", ffn="gelu"):
        super().__init__()
        self.norm1, self.norm2 = _norm(norm, d_model), _norm(norm, d_model)
        self.attention = MultiHeadAttention(d_model, n_heads)
        self.ffn = _Gelu(d_model, d_ff) if ffn == "gelu" else _Swiglu(d_model, d_ff)


class ch05_block_no_mask(_Wrongable):
    def forward(self, x):
        x = x + self.attention(self.norm1(x))[0]
        return x + self.ffn(self.norm2(x))


class ch05_block_post_ln(_Wrongable):
    def forward(self, x):
        mask = causal_mask(x.shape[1])
        x = self.norm1(x + self.attention(x, mask=mask)[0])
        return self.norm2(x + self.ffn(x))


class ch05_block_default_rms_eps(_Wrongable):
    def __init__(self, d_model, n_heads, d_ff, norm="layernorm", ffn="gelu"):
        super().__init__(d_model, n_heads, d_ff, norm, ffn)
        if norm == "rmsnorm":
            self.norm1, self.norm2 = nn.RMSNorm(d_model), nn.RMSNorm(d_model)

    def forward(self, x):
        x = x + self.attention(self.norm1(x), mask=causal_mask(x.shape[1]))[0]
        return x + self.ffn(self.norm2(x))


class ch05_block_silu_on_up(_Wrongable):
    def forward(self, x):
        x = x + self.attention(self.norm1(x), mask=causal_mask(x.shape[1]))[0]
        h = self.norm2(x)
        if isinstance(self.ffn, _Swiglu):
            return x + self.ffn.down(self.ffn.gate(h) * F.silu(self.ffn.up(h)))
        return x + self.ffn(h)


class ch05_block_relu(_Wrongable):
    def __init__(self, d_model, n_heads, d_ff, norm="layernorm", ffn="gelu"):
        super().__init__(d_model, n_heads, d_ff, norm, ffn)
        if ffn == "gelu":
            self.ffn = _Gelu(d_model, d_ff, nn.ReLU())

    def forward(self, x):
        x = x + self.attention(self.norm1(x), mask=causal_mask(x.shape[1]))[0]
        return x + self.ffn(self.norm2(x))


class ch05_block_no_ffn_residual(_Wrongable):
    def forward(self, x):
        x = x + self.attention(self.norm1(x), mask=causal_mask(x.shape[1]))[0]
        return self.ffn(self.norm2(x))


class ch05_block_wrong_names(nn.Module):
    def __init__(self, d_model, n_heads, d_ff, norm="layernorm", ffn="gelu"):
        super().__init__()
        self.ln1, self.ln2 = _norm(norm, d_model), _norm(norm, d_model)
        self.attn = MultiHeadAttention(d_model, n_heads)
        self.mlp = _Gelu(d_model, d_ff) if ffn == "gelu" else _Swiglu(d_model, d_ff)

    def forward(self, x):
        x = x + self.attn(self.ln1(x), mask=causal_mask(x.shape[1]))[0]
        return x + self.mlp(self.ln2(x))


class ch05_block_returns_tuple(_Wrongable):
    def forward(self, x):
        attended, weights = self.attention(self.norm1(x), mask=causal_mask(x.shape[1]))
        x = x + attended
        return x + self.ffn(self.norm2(x)), weights


# --- 5.4 train_reversal_lm: correct ----------------------------------------------------------------

class _LM(nn.Module):
    def __init__(self, max_len, block, d=64, heads=2, layers=2):
        super().__init__()
        self.tok = nn.Embedding(11, d)
        self.pos = nn.Parameter(torch.randn(max_len, d))  # as nn.Embedding starts
        self.layers = nn.Sequential(*(block(d, heads, 4 * d, norm="rmsnorm", ffn="swiglu") for _ in range(layers)))
        self.norm = _Rms(d)
        self.head = nn.Linear(d, 11, bias=False)

    def forward(self, tokens):
        return self.head(self.norm(self.layers(self.tok(tokens) + self.pos[: tokens.shape[1]])))


def _train(model, task, generator, steps, batch, lr, returns_tuple=False):
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(steps):
        inputs, targets = task.inputs_and_targets(task.batch(batch, generator))
        loss = F.cross_entropy(model(inputs).reshape(-1, 11), targets.reshape(-1), ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


def ch05_train_sequential_blocks(task, generator):
    return _train(_LM(task.seq_len - 1, ch05_block_torch_rmsnorm), task, generator, 80, 64, 3e-3)


def ch05_train_narrow_deeper_model(task, generator):  # a position table of 32 rows, enough for all
    model = _LM(32, ch05_block_own_rms_and_sigmoid, d=32, heads=4, layers=3)
    return _train(model, task, generator, 60, 96, 5e-3)


def ch05_train_three_layers_adam(task, generator):
    model = _LM(task.seq_len, ch05_block_torch_rmsnorm, d=48, layers=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(70):
        seqs = task.batch(64, generator)
        logits = model(seqs[:, :-1])
        answer_logits = logits[:, task.n_digits:]                 # from the separator on
        loss = F.cross_entropy(answer_logits.transpose(1, 2), seqs[:, task.n_digits + 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


# --- 5.4 train_reversal_lm: wrong ------------------------------------------------------------------

def ch05_train_without_mask(task, generator):  # the model copies the next token it can see
    return _train(_LM(task.seq_len - 1, ch05_block_no_mask), task, generator, 60, 64, 3e-3)


def ch05_train_far_too_few_steps(task, generator):
    return _train(_LM(task.seq_len - 1, ch05_block_torch_rmsnorm), task, generator, 5, 64, 3e-3)


def ch05_train_positions_for_8_digits(task, generator):  # max_len fixed: too short past 4 digits
    return _train(_LM(8, ch05_block_torch_rmsnorm), task, generator, 60, 64, 3e-3)


def ch05_train_the_package_model(task, generator):
    model, _ = train_reversal(task=task, steps=60)
    return model


def ch05_train_returns_nothing(task, generator):
    _train(_LM(task.seq_len - 1, ch05_block_torch_rmsnorm), task, generator, 5, 64, 3e-3)


def ch05_train_targets_not_shifted(task, generator):  # predicts the token it is given
    model = _LM(task.seq_len, ch05_block_torch_rmsnorm)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):
        seqs = task.batch(64, generator)
        loss = F.cross_entropy(model(seqs).reshape(-1, 11), seqs.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


# --- 5.5 best_single_head: correct -----------------------------------------------------------------

def _keep_only(model, kept, zero):
    model = copy.deepcopy(model)
    with torch.no_grad():
        for layer, block in enumerate(model.blocks):
            attention = block.attention
            for head in range(attention.n_heads):
                if (layer, head) != kept:
                    zero(attention, head)
    return model


def _zero_columns(attention, head):
    d = attention.head_dim
    attention.out_proj.weight[:, head * d:(head + 1) * d] = 0


def ch05_head_by_column_mask(task=None):
    model, task = load_reversal_model(), Reversal()
    scores = [exact_match(_keep_only(model, (l, h), _zero_columns), task, task.held_out())
              for l in range(2) for h in range(2)]
    return max(scores)


def ch05_head_by_hook():
    """Zero the head's slice of out_proj's input with a forward pre-hook."""
    model, task = load_reversal_model(), Reversal()
    best = 0.0
    for kept in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        handles = []
        for layer, block in enumerate(model.blocks):
            d = block.attention.head_dim
            gate = torch.ones(block.attention.d_model)
            for head in range(2):
                if (layer, head) != kept:
                    gate[head * d:(head + 1) * d] = 0
            handles.append(block.attention.out_proj.register_forward_pre_hook(
                lambda module, args, gate=gate: (args[0] * gate,)))
        best = max(best, exact_match(model, task, task.held_out()))
        for handle in handles:
            handle.remove()
    return best


def ch05_head_by_generation():
    """Greedy generation, token by token, instead of one teacher-forced pass; returns a tensor."""
    from riverbank.model import generate

    model, task = load_reversal_model(), Reversal()
    test = task.held_out()
    scores = []
    for kept in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        ablated = _keep_only(model, kept, _zero_columns)
        out = generate(ablated, task.prompt(test), task.n_digits)
        scores.append((out[:, task.n_digits + 1:] == task.answer(test)).all(dim=1).double().mean())
    return torch.stack(scores).max()


# --- 5.5 best_single_head: wrong -------------------------------------------------------------------

def ch05_head_weakest():
    model, task = load_reversal_model(), Reversal()
    return min(exact_match(_keep_only(model, (l, h), _zero_columns), task, task.held_out())
               for l in range(2) for h in range(2))


def ch05_head_removed_one():
    model, task = load_reversal_model(), Reversal()
    best = 0.0
    for l in range(2):
        for h in range(2):
            ablated = copy.deepcopy(model)
            with torch.no_grad():
                _zero_columns(ablated.blocks[l].attention, h)
            best = max(best, exact_match(ablated, task, task.held_out()))
    return best


def ch05_head_zeroed_rows():
    def rows(attention, head):
        d = attention.head_dim
        attention.out_proj.weight[head * d:(head + 1) * d, :] = 0

    model, task = load_reversal_model(), Reversal()
    return max(exact_match(_keep_only(model, (l, h), rows), task, task.held_out()) for l in range(2) for h in range(2))


def ch05_head_percent():
    return 100 * ch05_head_by_column_mask()


def ch05_head_per_token():
    model, task = load_reversal_model(), Reversal()
    test = task.held_out()
    inputs, _ = task.inputs_and_targets(test)
    best = 0.0
    for l in range(2):
        for h in range(2):
            with torch.no_grad():
                logits, _ = _keep_only(model, (l, h), _zero_columns)(inputs)
            right = logits.argmax(-1)[:, task.n_digits:] == task.answer(test)
            best = max(best, right.float().mean().item())
    return best


def ch05_head_rounded():
    return round(ch05_head_by_column_mask(), 2)


CORRECT = {
    "5.1": [ch05_rmsb_rsqrt_and_sum, ch05_rmsb_jacobian, ch05_rmsb_step_by_step, ch05_rmsb_float64_inside],
    "5.2": [ch05_kp_topk_then_loop, ch05_kp_hugging_face_logits, ch05_kp_two_steps],
    "5.3": [ch05_block_torch_rmsnorm, ch05_block_own_rms_and_sigmoid, ch05_block_float64_inside],
    "5.4": [ch05_train_sequential_blocks, ch05_train_narrow_deeper_model, ch05_train_three_layers_adam],
    "5.5": [ch05_head_by_column_mask, ch05_head_by_hook, ch05_head_by_generation],
}

WRONG = {
    "5.1": [
        (ch05_rmsb_rms_as_constant, "the root mean square is treated as a constant"),
        (ch05_rmsb_eps_outside, "eps is added after the square root"),
        (ch05_rmsb_layer_norm_formula, "this is LayerNorm's gradient"),
        (ch05_rmsb_weight_summed_over_batch_only, "grad_weight is not summed over every leading axis"),
        (ch05_rmsb_no_one_over_d, "grad_x's second term sums over the features"),
        (ch05_rmsb_hardcoded_eps, "the eps argument is not used"),
        (ch05_rmsb_autograd, None),
        (ch05_rmsb_returns_grad_x_only, None),
    ],
    "5.2": [
        (ch05_kp_intersection, "top-p is measured on the original probabilities"),
        (ch05_kp_no_final_renormalise, "not renormalised"),
        (ch05_kp_k_plus_one, "one token too many"),
        (ch05_kp_only_top_p, "k is not applied"),
        (ch05_kp_cumsum_at_most_p, "the token that crosses p is left out"),
        (ch05_kp_left_sorted, "the result is in sorted order"),
    ],
    "5.3": [
        (ch05_block_no_mask, "attention sees later tokens"),
        (ch05_block_post_ln, "this is post-LN"),
        (ch05_block_default_rms_eps, "RMSNorm's eps is not 1e-6"),
        (ch05_block_silu_on_up, "SiLU is applied to up's output"),
        (ch05_block_relu, "the FFN uses ReLU"),
        (ch05_block_no_ffn_residual, "the residual around the FFN is missing"),
        (ch05_block_wrong_names, "your block's parameters must be named"),
        (ch05_block_returns_tuple, None),
    ],
    # judged against a bar: the feedback explains, and only a crash's error hint is named
    "5.4": [
        (ch05_train_without_mask, None),
        (ch05_train_far_too_few_steps, None),
        (ch05_train_positions_for_8_digits, "the position table is shorter"),
        (ch05_train_the_package_model, None),
        (ch05_train_returns_nothing, None),
        (ch05_train_targets_not_shifted, None),
    ],
    "5.5": [
        (ch05_head_weakest, "the weakest head"),
        (ch05_head_removed_one, "you removed one head and kept three"),
        (ch05_head_zeroed_rows, "rows of out_proj.weight were zeroed"),
        (ch05_head_percent, "the answer is a percentage"),
        (ch05_head_per_token, "the answer counts tokens"),
        (ch05_head_rounded, None),
    ],
}
