"""Chapter 6 exercises: online softmax, tiled attention in PyTorch, and the Triton kernel's inner loop."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..spec import Case, Exercise, Mistake


def _randn(seed: int, *shapes: tuple[int, ...], scale: float = 1.0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(scale * torch.randn(*shape, generator=g) for shape in shapes)


# --- 6.1 online_softmax -------------------------------------------------------------------------

def online_softmax(x: torch.Tensor, block: int) -> torch.Tensor:
    """Softmax over the last axis of x (rows, n). The reference need not stream: only the value is checked."""
    return torch.softmax(x, dim=-1)


def _online(x: torch.Tensor, block: int, rescale_sum: str = "right", subtract_max: bool = True,
            exp_max: str = "new") -> torch.Tensor:
    """The one-pass softmax, with a switch for each mistake the checks name."""
    m = torch.full(x.shape[:-1], float("-inf"))
    l = torch.zeros(x.shape[:-1])
    for start in range(0, x.shape[-1], block):
        chunk = x[..., start:start + block]
        if not subtract_max:
            l = l + torch.exp(chunk).sum(-1)
            continue
        m_new = torch.maximum(m, chunk.amax(-1))
        factor = {"right": torch.exp(m - m_new), "none": torch.ones_like(m)}[rescale_sum]
        l = l * factor + torch.exp(chunk - (m_new if exp_max == "new" else m)[..., None]).sum(-1)
        m = m_new
    if not subtract_max:
        return torch.exp(x) / l[..., None]
    return torch.exp(x - m[..., None]) / l[..., None]


# The max grows from block to block in row 0 and shrinks in row 1.
GROWING = ((1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0), (7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0))

def _large_scores() -> torch.Tensor:
    """Three random rows of scale 100, where exp(x) overflows, and a row −3…4 whose max grows in
    every block. Only finite entries of a learner's output are matched against mistakes, and the
    big rows are almost one-hot (zeros that every mistake reproduces); in the last row a softmax
    without the max is right, one that keeps the last block's max is right, and an unrescaled sum
    is wrong, so those mistakes are told apart."""
    return torch.cat([_randn(5, (3, 8), scale=100.0)[0], torch.arange(-3.0, 5.0)[None]])


NO_RESCALE = "the running sum is not rescaled when the max grows"
# A sum that starts at −inf, or the factor exp(m_new − m_old), is NaN from the first block on, where
# m_old = −inf: 0 · inf. No check can give finite numbers for them, so they are named from the NaN.
FIRST_BLOCK_NAN = "NaN from block 1: start l at 0; rescale by exp(m_old − m_new)"
# Not named as mistakes: a factor exp(m_new − m_old) (inverted), a sum that starts at −inf, or 6.2's
# p = exp(s − m_old) give NaN in every entry (the first block meets m = −inf: 0 × inf), and all-NaN
# outputs match nothing; the NaN hint speaks to them.
NO_MAX = "the max is not subtracted, so exp overflows"

ONLINE_SOFTMAX = Exercise(
    id="6.1",
    title="Online softmax",
    function_name="online_softmax",
    arg_names=("x", "block"),
    signature="online_softmax(x: (rows, n), block: int) -> (rows, n)",
    reference=online_softmax,
    cases=(
        Case("rows 1…7 and 7…1, blocks of 2", lambda: (torch.tensor(GROWING), 2), 2, "fixed"),
        Case("random, 4 rows × 10, blocks of 3", lambda: (*_randn(1, (4, 10), scale=3.0), 3), 2, "random"),
        Case("random, 3 rows × 16, blocks of 4", lambda: (*_randn(2, (3, 16), scale=3.0), 4), 2, "random"),
        Case("edge: blocks of 1", lambda: (*_randn(3, (2, 6), scale=3.0), 1), 1, "edge"),
        Case("edge: one block longer than the row", lambda: (*_randn(4, (2, 5)), 32), 1, "edge"),
        Case("edge: large scores (values around 100)", lambda: (_large_scores(), 3), 2, "edge"),
    ),
    mistakes=(
        Mistake(NO_RESCALE, lambda x, block: _online(x, block, rescale_sum="none")),
        Mistake(NO_MAX, lambda x, block: _online(x, block, subtract_max=False)),
        Mistake("softmax over the rows (dim=0), not along each row",
                lambda x, block: torch.softmax(x, dim=0)),
        # The first block then meets m = −inf: exp(x − m) = inf, the sum is inf, and every output 0.
        Mistake("a block's exp uses the old max m, not the new m′",
                lambda x, block: _online(x, block, exp_max="old")),
    ),
    nan_hint=FIRST_BLOCK_NAN,
)


# --- 6.2 tiled_attention ------------------------------------------------------------------------

def tiled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int) -> torch.Tensor:
    """softmax(q kᵀ/√d) v. q: (n, d), k: (m, d), v: (m, d_v) -> (n, d_v)."""
    return torch.softmax(q @ k.T / math.sqrt(q.shape[-1]), dim=-1) @ v


def _tiled(q, k, v, block, acc_factor="right", sum_factor="right", divide="end", scale=True, subtract_max=True):
    """Tiled attention over key blocks, with a switch for each mistake the checks name."""
    s_all = q @ k.T / (math.sqrt(q.shape[-1]) if scale else 1.0)  # (n, m)
    m = torch.full((q.shape[0],), float("-inf"))
    l = torch.zeros(q.shape[0])
    acc = torch.zeros(q.shape[0], v.shape[-1])
    for start in range(0, k.shape[0], block):
        s = s_all[:, start:start + block]
        if subtract_max:
            m_new = torch.maximum(m, s.amax(-1))
            alpha = torch.exp(m - m_new)
        else:  # p = exp(s): no max, so nothing to rescale
            m_new, alpha = torch.zeros_like(m), torch.ones_like(m)
        factors = {"right": alpha, "none": torch.ones_like(alpha)}
        p = torch.exp(s - m_new[:, None])
        l = l * factors[sum_factor] + p.sum(-1)
        pv = p @ v[start:start + block]
        if divide == "inside":  # acc is kept divided by the sum, but the old division is not undone
            acc = (acc * factors[acc_factor][:, None] + pv) / l[:, None]
        elif divide == "inside, new block only":
            acc = acc * factors[acc_factor][:, None] + pv / l[:, None]
        else:
            acc = acc * factors[acc_factor][:, None] + pv
        m = m_new
    return acc if divide != "end" else acc / l[:, None]


DIVIDE_INSIDE = "acc is divided by l inside the loop, not once at the end"

TILED = Exercise(
    id="6.2",
    title="Tiled attention in PyTorch",
    function_name="tiled_attention",
    arg_names=("q", "k", "v", "block"),
    signature="tiled_attention(q: (n, d), k: (m, d), v: (m, d_v), block: int) -> (n, d_v)",
    reference=tiled_attention,
    cases=(
        Case("random, 6 queries × 8 keys, d = 4, blocks of 2",
             lambda: (*_randn(11, (6, 4), (8, 4), (8, 4), scale=2.0), 2), 3, "fixed"),
        Case("random, 10 queries × 13 keys, blocks of 4",
             lambda: (*_randn(12, (10, 8), (13, 8), (13, 3), scale=2.0), 4), 2, "random"),
        Case("random, 5 queries × 32 keys, d = 16, blocks of 8",
             lambda: (*_randn(13, (5, 16), (32, 16), (32, 16), scale=2.0), 8), 2, "random"),
        Case("edge: blocks of 1", lambda: (*_randn(14, (3, 4), (5, 4), (5, 2), scale=2.0), 1), 1, "edge"),
        Case("edge: one block holds every key", lambda: (*_randn(15, (4, 8), (6, 8), (6, 8)), 64), 1, "edge"),
        # Scores up to 126, where exp(s) overflows: seed 16 at scale 5 reached only 54.
        Case("edge: large scores (values around 100)",
             lambda: (*_randn(24, (4, 16), (12, 16), (12, 4), scale=7.0), 4), 1, "edge"),
    ),
    mistakes=(
        Mistake("acc is not rescaled when the max grows",
                lambda q, k, v, block: _tiled(q, k, v, block, acc_factor="none")),
        Mistake(DIVIDE_INSIDE, lambda q, k, v, block: _tiled(q, k, v, block, divide="inside")),
        Mistake(DIVIDE_INSIDE, lambda q, k, v, block: _tiled(q, k, v, block, divide="inside, new block only")),
        Mistake(NO_RESCALE, lambda q, k, v, block: _tiled(q, k, v, block, sum_factor="none")),
        Mistake("the scores are not divided by √d", lambda q, k, v, block: _tiled(q, k, v, block, scale=False)),
        Mistake(NO_MAX, lambda q, k, v, block: _tiled(q, k, v, block, subtract_max=False)),
    ),
    nan_hint=FIRST_BLOCK_NAN,
)


# --- 6.3 attend_block: the Triton kernel's inner loop --------------------------------------------
# The learner writes a @triton.jit function; riverbank.triton_flash.with_step(attend_block) runs the
# course's kernel around it, on (heads, n, d) tensors. The mistakes below redo the kernel's exact
# block structure (64 queries by 64 keys, zero-padded keys past n) in PyTorch, so that a wrong step
# gives the same numbers here as in the kernel.

KERNEL_BLOCK = 64


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """Reference: SDPA. q, k, v: (heads, n, d) -> (heads, n, d)."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def _kernel_like(q, k, v, causal, step="right"):
    """The kernel's arithmetic in PyTorch: float32 state, and for float16 inputs the same roundings
    (q times 1/√d rounded to float16, p cast to float16 before p·v); the output in q's dtype."""
    heads, n, d = q.shape
    dtype, work = q.dtype, torch.promote_types(q.dtype, torch.float32)
    padded = -(-n // KERNEL_BLOCK) * KERNEL_BLOCK
    pad = lambda t: torch.cat([t, t.new_zeros(heads, padded - n, d)], dim=1)  # noqa: E731
    k, v = pad(k).to(work), pad(v).to(work)  # the kernel loads zeros past n
    q = (q * (1.0 / math.sqrt(d))).to(dtype).to(work)
    out = torch.empty(heads, n, d, dtype=work)
    for start_m in range(0, n, KERNEL_BLOCK):
        rows = torch.arange(start_m, min(start_m + KERNEL_BLOCK, n))
        m = torch.full((heads, len(rows)), float("-inf"), dtype=work)
        l = torch.zeros(heads, len(rows), dtype=work)
        acc = torch.zeros(heads, len(rows), d, dtype=work)
        end = min(start_m + KERNEL_BLOCK, n) if causal else n
        for start_n in range(0, end, KERNEL_BLOCK):
            keys = torch.arange(start_n, start_n + KERNEL_BLOCK)
            s = q[:, rows] @ k[:, keys].transpose(1, 2)  # (heads, rows, 64)
            allowed = (keys[None, :] < n) & (~torch.tensor(causal) | (keys[None, :] <= rows[:, None]))
            if step == "masked to 0":
                s = s.masked_fill(~allowed, 0.0)
            elif step != "no mask":
                s = s.masked_fill(~allowed, float("-inf"))
            if step == "no max":
                p = torch.exp(s)
                l, acc = l + p.sum(-1), acc + p.to(dtype).to(work) @ v[:, keys]
                continue
            m_new = torch.maximum(m, s.amax(-1))
            alpha = torch.exp(m - m_new)
            p = torch.exp(s - m_new[..., None])
            l_new = l * (1.0 if step == "sum not rescaled" else alpha) + p.sum(-1)
            acc_alpha = 1.0 if step == "acc not rescaled" else alpha[..., None]
            acc = acc * acc_alpha + p.to(dtype).to(work) @ v[:, keys]
            if step == "divide inside":
                acc = acc / l_new[..., None]
            m, l = m_new, l_new
        out[:, rows] = acc / l[..., None]
    return out.to(dtype)


def _qkv(seed: int, heads: int, n: int, d: int, scale: float = 1.0):
    return _randn(seed, (heads, n, d), (heads, n, d), (heads, n, d), scale=scale)


ATTEND_BLOCK = Exercise(
    id="6.3",
    title="The Triton kernel's inner loop",
    function_name="attend_block",
    arg_names=("q", "k", "v", "causal"),
    signature="attend_block(q, k, v, m_i, l_i, acc, allowed) -> (m_i, l_i, acc), run by with_step(attend_block)",
    reference=attention,
    cases=(
        Case("2 heads, n = 64, d = 16: one block", lambda: (*_qkv(21, 2, 64, 16, 1.5), False), 2, "fixed"),
        Case("2 heads, n = 160, d = 32: a short last block",
             lambda: (*_qkv(22, 2, 160, 32, 1.5), False), 2, "random"),
        Case("causal, 2 heads, n = 130, d = 16", lambda: (*_qkv(23, 2, 130, 16, 1.5), True), 2, "random"),
        # float16: the notebook asks for a kernel that works in float16, where tl.dot(p, v) needs p cast.
        Case("float16, causal, 1 head, n = 96, d = 64",
             lambda: (*(t.half() for t in _qkv(24, 1, 96, 64, 1.5)), True), 2, "random"),
        Case("edge: n = 20, fewer keys than a block", lambda: (*_qkv(25, 2, 20, 16), False), 1, "edge"),
        Case("edge: large scores (values around 100)", lambda: (*_qkv(26, 1, 80, 16, 5.0), False), 1, "edge"),
    ),
    mistakes=(
        Mistake("acc is not rescaled by alpha when the max grows",
                lambda q, k, v, causal: _kernel_like(q, k, v, causal, "acc not rescaled")),
        Mistake("l_i is not rescaled by alpha when the max grows",
                lambda q, k, v, causal: _kernel_like(q, k, v, causal, "sum not rescaled")),
        Mistake("the mask is not applied: use tl.where(allowed, ...)",
                lambda q, k, v, causal: _kernel_like(q, k, v, causal, "no mask")),
        Mistake("masked scores are set to 0, not -inf",
                lambda q, k, v, causal: _kernel_like(q, k, v, causal, "masked to 0")),
        Mistake("acc is divided by l_i inside the step",
                lambda q, k, v, causal: _kernel_like(q, k, v, causal, "divide inside")),
        Mistake("the max is not subtracted, so tl.exp overflows",
                lambda q, k, v, causal: _kernel_like(q, k, v, causal, "no max")),
    ),
    time_limit=30.0,  # the CPU interpreter runs each program in Python
    # tl.dot(p, v) with p float32 and v float16, or p cast to float16 with v float32: both the
    # interpreter and the compiler assert "Both operands must be same dtype. Got fp32 and fp16".
    error_hints=(("Both operands must be same dtype", "tl.dot's operands differ in dtype: use p.to(v.dtype)"),),
)

EXERCISES = (ONLINE_SOFTMAX, TILED, ATTEND_BLOCK)
