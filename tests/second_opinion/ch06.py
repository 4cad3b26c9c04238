"""Chapter 6 second opinions: online softmax, tiled attention, and the Triton kernel's inner step."""

import importlib.util
import math

import torch

LOG2E = math.log2(math.e)


# --- 6.1 online_softmax: correct ---------------------------------------------------------------

def ch06_softmax_running_logsumexp(x, block):
    lse = torch.full((x.shape[0],), -math.inf)        # log of the running sum, no separate max
    for start in range(0, x.shape[1], block):
        lse = torch.logaddexp(lse, torch.logsumexp(x[:, start:start + block], dim=1))
    return torch.exp(x - lse.unsqueeze(1))


def ch06_softmax_exp2_first_block_init(x, block):
    first = x[:, :block]
    m = first.max(dim=1).values                        # starts from the first block, not -inf
    l = torch.exp2((first - m[:, None]) * LOG2E).sum(dim=1)
    for start in range(block, x.shape[1], block):
        chunk = x[:, start:start + block]
        m_new = torch.max(m, chunk.max(dim=1).values)
        l = l * torch.exp2((m - m_new) * LOG2E) + torch.exp2((chunk - m_new[:, None]) * LOG2E).sum(dim=1)
        m = m_new
    return torch.exp2((x - m[:, None]) * LOG2E) / l[:, None]


def ch06_softmax_float64_row_loop(x, block):
    out = torch.empty_like(x)
    for r in range(x.shape[0]):
        row = x[r].double()
        m, l = -math.inf, 0.0
        for chunk in row.split(block):
            m_new = max(m, chunk.max().item())
            l = l * math.exp(m - m_new) + torch.exp(chunk - m_new).sum().item()
            m = m_new
        out[r] = (torch.exp(row - m) / l).to(x.dtype)
    return out


def ch06_softmax_where_first_block(x, block):
    m = torch.full(x.shape[:-1], float("-inf"))
    l = torch.zeros(x.shape[:-1])
    for chunk in torch.split(x, block, dim=-1):
        m_new = torch.maximum(m, chunk.amax(-1))
        alpha = torch.where(torch.isinf(m), torch.zeros_like(m), torch.exp(m - m_new))  # exp(-inf) spelled out
        l = alpha * l + torch.exp(chunk - m_new.unsqueeze(-1)).sum(-1)
        m = m_new
    return torch.exp(x - m.unsqueeze(-1)) / l.unsqueeze(-1)


# --- 6.1 online_softmax: wrong -----------------------------------------------------------------

def ch06_softmax_exp_with_old_max(x, block):
    m = torch.full((x.shape[0],), -math.inf)
    l = torch.zeros(x.shape[0])
    for start in range(0, x.shape[1], block):
        chunk = x[:, start:start + block]
        p = torch.exp(chunk - m[:, None])              # m is still the max before this block
        m_new = torch.maximum(m, chunk.amax(dim=1))
        l = l * torch.exp(m - m_new) + p.sum(dim=1)
        m = m_new
    return torch.exp(x - m[:, None]) / l[:, None]


def ch06_softmax_sum_starts_at_minus_inf(x, block):
    m = torch.full((x.shape[0],), -math.inf)
    l = torch.full((x.shape[0],), -math.inf)           # should start at 0
    for start in range(0, x.shape[1], block):
        chunk = x[:, start:start + block]
        m_new = torch.maximum(m, chunk.amax(dim=1))
        l = l * torch.exp(m - m_new) + torch.exp(chunk - m_new[:, None]).sum(dim=1)
        m = m_new
    return torch.exp(x - m[:, None]) / l[:, None]


def ch06_softmax_sum_never_rescaled(x, block):
    m = torch.full((x.shape[0],), -math.inf)
    sums = torch.zeros(x.shape[0])
    for chunk in x.split(block, dim=1):
        m = torch.max(m, chunk.max(1).values)
        sums = sums + (chunk - m[:, None]).exp().sum(1)
    return (x - m[:, None]).exp() / sums[:, None]


def ch06_softmax_max_of_last_block_only(x, block):
    m = torch.full((x.shape[0],), -math.inf)
    l = torch.zeros(x.shape[0])
    for start in range(0, x.shape[1], block):
        chunk = x[:, start:start + block]
        m_new = chunk.amax(dim=1)                      # not the max with the old m
        l = l * torch.exp(m - m_new) + torch.exp(chunk - m_new[:, None]).sum(dim=1)
        m = m_new
    return torch.exp(x - m[:, None]) / l[:, None]


def ch06_softmax_drops_short_last_block(x, block):
    m = torch.full((x.shape[0],), -math.inf)
    l = torch.zeros(x.shape[0])
    for i in range(x.shape[1] // block):                # the short last block is never read
        chunk = x[:, i * block:(i + 1) * block]
        m_new = torch.maximum(m, chunk.amax(dim=1))
        l = l * torch.exp(m - m_new) + torch.exp(chunk - m_new[:, None]).sum(dim=1)
        m = m_new
    return torch.exp(x - m[:, None]) / l[:, None]


def ch06_softmax_no_max_subtracted(x, block):
    total = 0
    for chunk in x.split(block, dim=-1):
        total = total + torch.exp(chunk).sum(-1, keepdim=True)
    return torch.exp(x) / total


def ch06_softmax_columns(x, block):
    m = torch.full((x.shape[1],), -math.inf)
    l = torch.zeros(x.shape[1])
    for start in range(0, x.shape[0], block):           # blocks of rows: a softmax down each column
        chunk = x[start:start + block]
        m_new = torch.maximum(m, chunk.amax(dim=0))
        l = l * torch.exp(m - m_new) + torch.exp(chunk - m_new).sum(dim=0)
        m = m_new
    return torch.exp(x - m) / l


# --- 6.2 tiled_attention: correct --------------------------------------------------------------

def ch06_tiled_einsum(q, k, v, block):
    n = q.shape[0]
    m = torch.full((n, 1), -math.inf)
    l = torch.zeros(n, 1)
    acc = torch.zeros(n, v.shape[1])
    for kb, vb in zip(k.split(block), v.split(block)):
        s = torch.einsum("id,jd->ij", q, kb) / math.sqrt(q.shape[1])
        m_new = torch.maximum(m, s.amax(dim=1, keepdim=True))
        alpha = torch.exp(m - m_new)
        p = torch.exp(s - m_new)
        l = alpha * l + p.sum(dim=1, keepdim=True)
        acc = alpha * acc + torch.einsum("ij,jd->id", p, vb)
        m = m_new
    return acc / l


def ch06_tiled_float64_inside(q, k, v, block):
    q64, k64, v64 = q.double(), k.double(), v.double()
    m = torch.full((q.shape[0],), -math.inf, dtype=torch.float64)
    l = torch.zeros(q.shape[0], dtype=torch.float64)
    acc = torch.zeros(q.shape[0], v.shape[1], dtype=torch.float64)
    for j in range(0, k.shape[0], block):
        s = q64 @ k64[j:j + block].T * q.shape[1] ** -0.5
        m_new = torch.maximum(m, s.max(dim=1).values)
        p = (s - m_new[:, None]).exp()
        alpha = (m - m_new).exp()
        l = l * alpha + p.sum(1)
        acc = acc * alpha[:, None] + p @ v64[j:j + block]
        m = m_new
    return (acc / l[:, None]).float()


def ch06_tiled_exp2_prescaled_q(q, k, v, block):
    qs = q * (LOG2E / math.sqrt(q.shape[-1]))          # scores come out in base 2
    m = torch.full((q.shape[0],), -math.inf)
    l = torch.zeros(q.shape[0])
    acc = torch.zeros(q.shape[0], v.shape[-1])
    for start in range(0, k.shape[0], block):
        s = qs @ k[start:start + block].transpose(0, 1)
        m_new = torch.maximum(m, s.amax(-1))
        alpha = torch.exp2(m - m_new)
        p = torch.exp2(s - m_new[:, None])
        l = l * alpha + p.sum(-1)
        acc = acc * alpha[:, None] + p @ v[start:start + block]
        m = m_new
    return acc / l[:, None]


def ch06_tiled_kept_normalised(q, k, v, block):
    """The output is kept divided by the sum at every step, with the old division undone: right."""
    m = torch.full((q.shape[0], 1), -math.inf)
    l = torch.zeros(q.shape[0], 1)
    out = torch.zeros(q.shape[0], v.shape[1])
    for start in range(0, k.shape[0], block):
        s = q @ k[start:start + block].T / math.sqrt(q.shape[1])
        m_new = torch.maximum(m, s.max(dim=1, keepdim=True).values)
        p = torch.exp(s - m_new)
        l_new = l * torch.exp(m - m_new) + p.sum(dim=1, keepdim=True)
        out = out * (l * torch.exp(m - m_new) / l_new) + (p @ v[start:start + block]) / l_new
        m, l = m_new, l_new
    return out


# --- 6.2 tiled_attention: wrong ----------------------------------------------------------------

def ch06_tiled_exp_with_old_max(q, k, v, block):
    m = torch.full((q.shape[0],), -math.inf)
    l = torch.zeros(q.shape[0])
    acc = torch.zeros(q.shape[0], v.shape[1])
    for start in range(0, k.shape[0], block):
        s = q @ k[start:start + block].T / math.sqrt(q.shape[1])
        p = torch.exp(s - m[:, None])                  # the max before this block
        m_new = torch.maximum(m, s.amax(dim=1))
        alpha = torch.exp(m - m_new)
        l = l * alpha + p.sum(dim=1)
        acc = acc * alpha[:, None] + p @ v[start:start + block]
        m = m_new
    return acc / l[:, None]


def ch06_tiled_sum_starts_at_minus_inf(q, k, v, block):
    m = torch.full((q.shape[0],), -math.inf)
    l = torch.full((q.shape[0],), -math.inf)
    acc = torch.zeros(q.shape[0], v.shape[1])
    for start in range(0, k.shape[0], block):
        s = q @ k[start:start + block].T / math.sqrt(q.shape[1])
        m_new = torch.maximum(m, s.amax(dim=1))
        alpha = torch.exp(m - m_new)
        p = torch.exp(s - m_new[:, None])
        l = l * alpha + p.sum(dim=1)
        acc = acc * alpha[:, None] + p @ v[start:start + block]
        m = m_new
    return acc / l[:, None]


def ch06_tiled_scaled_by_value_width(q, k, v, block):
    m = torch.full((q.shape[0],), -math.inf)
    l = torch.zeros(q.shape[0])
    acc = torch.zeros(q.shape[0], v.shape[1])
    for start in range(0, k.shape[0], block):
        s = q @ k[start:start + block].T / math.sqrt(v.shape[1])   # d_v, not d
        m_new = torch.maximum(m, s.amax(dim=1))
        alpha = torch.exp(m - m_new)
        p = torch.exp(s - m_new[:, None])
        l = l * alpha + p.sum(dim=1)
        acc = acc * alpha[:, None] + p @ v[start:start + block]
        m = m_new
    return acc / l[:, None]


def ch06_tiled_drops_short_last_block(q, k, v, block):
    m = torch.full((q.shape[0],), -math.inf)
    l = torch.zeros(q.shape[0])
    acc = torch.zeros(q.shape[0], v.shape[1])
    for start in range(0, k.shape[0] - block + 1, block):  # a short last block is skipped
        s = q @ k[start:start + block].T / math.sqrt(q.shape[1])
        m_new = torch.maximum(m, s.amax(dim=1))
        alpha = torch.exp(m - m_new)
        p = torch.exp(s - m_new[:, None])
        l = l * alpha + p.sum(dim=1)
        acc = acc * alpha[:, None] + p @ v[start:start + block]
        m = m_new
    return acc / l[:, None]


def ch06_tiled_sum_not_rescaled(q, k, v, block):
    m = torch.full((q.shape[0], 1), -math.inf)
    l = torch.zeros(q.shape[0], 1)
    acc = torch.zeros(q.shape[0], v.shape[1])
    for kb, vb in zip(k.split(block), v.split(block)):
        s = q @ kb.T / math.sqrt(q.shape[1])
        m_new = torch.maximum(m, s.amax(1, keepdim=True))
        p = torch.exp(s - m_new)
        acc = torch.exp(m - m_new) * acc + p @ vb
        l = l + p.sum(1, keepdim=True)                 # forgot l * exp(m - m_new)
        m = m_new
    return acc / l


def ch06_tiled_normalises_new_block_only(q, k, v, block):
    m = torch.full((q.shape[0],), -math.inf)
    l = torch.zeros(q.shape[0])
    out = torch.zeros(q.shape[0], v.shape[1])
    for start in range(0, k.shape[0], block):
        s = q @ k[start:start + block].T / math.sqrt(q.shape[1])
        m_new = torch.maximum(m, s.amax(dim=1))
        alpha = torch.exp(m - m_new)
        p = torch.exp(s - m_new[:, None])
        l = l * alpha + p.sum(dim=1)
        out = out * alpha[:, None] + (p @ v[start:start + block]) / l[:, None]
        m = m_new
    return out


def ch06_tiled_scores_divided_by_d(q, k, v, block):
    m = torch.full((q.shape[0],), -math.inf)
    l = torch.zeros(q.shape[0])
    acc = torch.zeros(q.shape[0], v.shape[1])
    for start in range(0, k.shape[0], block):
        s = q @ k[start:start + block].T / q.shape[1]  # d, not √d
        m_new = torch.maximum(m, s.amax(dim=1))
        alpha = torch.exp(m - m_new)
        p = torch.exp(s - m_new[:, None])
        l = l * alpha + p.sum(dim=1)
        acc = acc * alpha[:, None] + p @ v[start:start + block]
        m = m_new
    return acc / l[:, None]


def ch06_tiled_no_max(q, k, v, block):
    l = torch.zeros(q.shape[0], 1)
    acc = torch.zeros(q.shape[0], v.shape[1])
    for kb, vb in zip(k.split(block), v.split(block)):
        p = torch.exp(q @ kb.T / math.sqrt(q.shape[1]))  # overflows once a score passes 88
        l = l + p.sum(1, keepdim=True)
        acc = acc + p @ vb
    return acc / l


def ch06_tiled_max_of_this_block_only(q, k, v, block):
    m = torch.full((q.shape[0],), -math.inf)
    l = torch.zeros(q.shape[0])
    acc = torch.zeros(q.shape[0], v.shape[1])
    for start in range(0, k.shape[0], block):
        s = q @ k[start:start + block].T / math.sqrt(q.shape[1])
        m_new = s.amax(dim=1)                          # not torch.maximum(m, ...): right until exp overflows
        alpha = torch.exp(m - m_new)
        p = torch.exp(s - m_new[:, None])
        l = l * alpha + p.sum(dim=1)
        acc = acc * alpha[:, None] + p @ v[start:start + block]
        m = m_new
    return acc / l[:, None]


CORRECT = {
    "6.1": [ch06_softmax_running_logsumexp, ch06_softmax_exp2_first_block_init, ch06_softmax_float64_row_loop,
            ch06_softmax_where_first_block],
    "6.2": [ch06_tiled_einsum, ch06_tiled_float64_inside, ch06_tiled_exp2_prescaled_q, ch06_tiled_kept_normalised],
}
WRONG = {
    "6.1": [
        (ch06_softmax_exp_with_old_max, "old max"),
        (ch06_softmax_sum_starts_at_minus_inf, "NaN from block 1"),  # NaN on every check: the NaN hint
        (ch06_softmax_sum_never_rescaled, "running sum is not rescaled"),
        (ch06_softmax_max_of_last_block_only, None),    # right except where exp overflows
        (ch06_softmax_drops_short_last_block, None),
        (ch06_softmax_no_max_subtracted, "max is not subtracted"),
        (ch06_softmax_columns, "dim=0"),
    ],
    "6.2": [
        (ch06_tiled_exp_with_old_max, "NaN from block 1"),          # NaN on every check: the NaN hint
        (ch06_tiled_sum_starts_at_minus_inf, "NaN from block 1"),
        (ch06_tiled_scaled_by_value_width, None),
        (ch06_tiled_drops_short_last_block, None),
        (ch06_tiled_sum_not_rescaled, "running sum is not rescaled"),
        (ch06_tiled_normalises_new_block_only, "divided by l inside the loop"),
        (ch06_tiled_scores_divided_by_d, None),
        (ch06_tiled_no_max, "max is not subtracted"),
        (ch06_tiled_max_of_this_block_only, None),
    ],
}


# --- 6.3 attend_block: @triton.jit steps, run by the course's kernel ------------------------------

if importlib.util.find_spec("triton") is not None:
    from riverbank import triton_flash  # sets TRITON_INTERPRET before triton is imported

    import triton
    import triton.language as tl

    @triton.jit
    def ch06_step_exp2(q, k, v, m_i, l_i, acc, allowed):
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * 1.4426950408889634  # log2(e): base-2 scores
        s = tl.where(allowed, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_new = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        return m_new, l_new, acc

    @triton.jit
    def ch06_step_dot_accumulates(q, k, v, m_i, l_i, acc, allowed):
        kt = tl.trans(k)
        s = tl.where(allowed, tl.dot(q, kt, input_precision="ieee"), -float("inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        acc = tl.dot(p.to(v.dtype), v, acc=acc * alpha[:, None], input_precision="ieee")
        return m_new, alpha * l_i + tl.sum(p, 1), acc

    @triton.jit
    def ch06_step_where_on_p_v_upcast(q, k, v, m_i, l_i, acc, allowed):
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
        block_max = tl.max(tl.where(allowed, s, float("-inf")), 1)
        m_new = tl.maximum(m_i, block_max)
        p = tl.where(allowed, tl.exp(s - m_new[:, None]), 0.0)   # masked after the exp
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32), input_precision="ieee")  # v up, not p down
        return m_new, l_i, acc

    @triton.jit
    def ch06_step_returns_only_acc(q, k, v, m_i, l_i, acc, allowed):
        s = tl.where(allowed, tl.dot(q, tl.trans(k), input_precision="ieee"), float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        return acc

    @triton.jit
    def ch06_step_no_cast_for_float16(q, k, v, m_i, l_i, acc, allowed):
        s = tl.where(allowed, tl.dot(q, tl.trans(k), input_precision="ieee"), float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")  # p float32, v float16
        return m_new, l_i, acc

    @triton.jit
    def ch06_step_masked_to_zero(q, k, v, m_i, l_i, acc, allowed):
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
        s = tl.where(allowed, s, 0.0)                  # a score of 0 still gets exp(0 - m) weight
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        return m_new, l_i, acc

    @triton.jit
    def ch06_step_sum_over_queries(q, k, v, m_i, l_i, acc, allowed):
        s = tl.where(allowed, tl.dot(q, tl.trans(k), input_precision="ieee"), float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 0)               # axis 0: BLOCK_M == BLOCK_N, so it runs
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        return m_new, l_i, acc

    @triton.jit
    def ch06_step_sum_not_rescaled_exp2(q, k, v, m_i, l_i, acc, allowed):
        s = tl.where(allowed, tl.dot(q, tl.trans(k), input_precision="ieee") * 1.4426950408889634,
                     float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        acc = acc * tl.exp2(m_i - m_new)[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        return m_new, l_i + tl.sum(p, 1), acc

    @triton.jit
    def ch06_step_normalised_inside(q, k, v, m_i, l_i, acc, allowed):
        s = tl.where(allowed, tl.dot(q, tl.trans(k), input_precision="ieee"), float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_new = alpha * l_i + tl.sum(p, 1)
        acc = (alpha[:, None] * acc + tl.dot(p.to(v.dtype), v, input_precision="ieee")) / l_new[:, None]
        return m_new, l_new, acc

    CORRECT["6.3"] = [triton_flash.with_step(f) for f in (ch06_step_exp2, ch06_step_dot_accumulates,
                                                           ch06_step_where_on_p_v_upcast)]
    WRONG["6.3"] = [
        (triton_flash.with_step(ch06_step_returns_only_acc), None),  # a TypeError that says what to return
        (triton_flash.with_step(ch06_step_no_cast_for_float16), "p.to(v.dtype)"),
        (triton_flash.with_step(ch06_step_masked_to_zero), "0, not -inf"),
        (triton_flash.with_step(ch06_step_sum_over_queries), None),
        (triton_flash.with_step(ch06_step_sum_not_rescaled_exp2), "l_i is not rescaled"),
        (triton_flash.with_step(ch06_step_normalised_inside), "divided by l_i inside the step"),
    ]
