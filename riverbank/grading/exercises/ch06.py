"""Chapter 6 exercises: a causal log-sum-exp in one pass, FlashAttention's forward and backward as a
``torch.autograd.Function``, the Triton kernel written from a scaffold, and counting wasted scores."""

from __future__ import annotations

import math

import torch

from ..spec import BUILD, EXPERIMENT, WARM_UP, Case, Exercise, Mistake, WrongKind

SECTION_ONLINE = "chapter 6, section “Online softmax”"
SECTION_TILED = "chapter 6, section “Tiled attention in PyTorch”"
SECTION_TILES = "chapter 6, section “Which tiles a kernel visits”"
SECTION_TRITON = "chapter 6, section “The same loop as a Triton kernel”"
SECTION_BACKWARD = "chapter 6, section “The backward pass: recompute instead of store”"


def _randn(seed: int, *shapes: tuple[int, ...], scale: float = 1.0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(scale * torch.randn(*shape, generator=g) for shape in shapes)


def _future(n_q: int, n_k: int, device=None) -> torch.Tensor:
    """True where key j lies in query i's future (j > i)."""
    return torch.ones(n_q, n_k, dtype=torch.bool, device=device).triu(1)


# --- 6.1 online_logsumexp -----------------------------------------------------------------------

def online_logsumexp(s: torch.Tensor, block: int, causal: bool) -> torch.Tensor:
    """L_i = log Σ_j exp(s_ij) over the keys query i may see. s: (n, m) -> (n,). The reference need
    not stream: only the value is checked."""
    if causal:
        s = s.masked_fill(_future(*s.shape[-2:], s.device), float("-inf"))
    return torch.logsumexp(s, dim=-1)


def _online_lse(s, block, causal, rescale=True, add_max=True, subtract_max=True, mask="future"):
    """The one-pass log-sum-exp, with a switch for each mistake the checks name."""
    n, m_keys = s.shape
    rows = torch.arange(n)[:, None]
    m = torch.full((n,), float("-inf"), dtype=s.dtype)
    l = torch.zeros(n, dtype=s.dtype)
    for start in range(0, m_keys, block):
        chunk = s[:, start:start + block]
        keys = torch.arange(start, min(start + block, m_keys))[None, :]
        if causal and mask == "future":
            chunk = chunk.masked_fill(keys > rows, float("-inf"))
        elif causal and mask == "diagonal too":
            chunk = chunk.masked_fill(keys >= rows, float("-inf"))
        elif causal and mask == "past":
            chunk = chunk.masked_fill(keys < rows, float("-inf"))
        if not subtract_max:
            l = l + torch.exp(chunk).sum(-1)
            continue
        m_new = torch.maximum(m, chunk.amax(-1))
        alpha = torch.exp(m - m_new) if rescale else torch.ones_like(m)
        l = l * alpha + torch.exp(chunk - m_new[:, None]).sum(-1)
        m = m_new
    if not subtract_max:
        return torch.log(l)
    return (m if add_max else 0.0) + torch.log(l)


def _square_scores(seed: int, n: int, scale: float) -> torch.Tensor:
    return _randn(seed, (n, n), scale=scale)[0]


NO_RESCALE = "the running sum is not rescaled by exp(m − m′) when the max grows"
# exp(m_new − m_old), or a sum that starts at −inf, meet m_old = −inf in the first block: NaN everywhere.
FIRST_BLOCK_NAN = "NaN from block 1: start l at 0 and m at −∞; rescale by exp(m_old − m_new)"

ONLINE_LSE = Exercise(
    id="6.1",
    title="A causal log-sum-exp in one pass",
    function_name="online_logsumexp",
    arg_names=("s", "block", "causal"),
    signature="online_logsumexp(s: (n, m), block: int, causal: bool) -> (n,)",
    reference=online_logsumexp,
    cases=(
        Case("6 × 6 scores, blocks of 2, causal", lambda: (_square_scores(1, 6, 3.0), 2, True), 2, "fixed"),
        Case("random 5 × 11, blocks of 3, not causal",
             lambda: (*_randn(2, (5, 11), scale=3.0), 3, False), 1, "random"),
        Case("random 13 × 13, blocks of 4, causal", lambda: (_square_scores(3, 13, 3.0), 4, True), 2, "random"),
        Case("edge: blocks of 1, causal", lambda: (_square_scores(4, 5, 3.0), 1, True), 1, "edge"),
        Case("edge: one block longer than the row, causal",
             lambda: (_square_scores(5, 7, 2.0), 64, True), 1, "edge"),
        Case("edge: large scores (values around 100), causal",
             lambda: (_square_scores(6, 9, 100.0), 4, True), 1, "edge"),
    ),
    mistakes=(
        Mistake(NO_RESCALE, lambda s, block, causal: _online_lse(s, block, causal, rescale=False), hint=2,
                section=SECTION_ONLINE),
        Mistake("L is missing the max: L = m + log ℓ, not log ℓ",
                lambda s, block, causal: _online_lse(s, block, causal, add_max=False), hint=2,
                section=SECTION_BACKWARD),
        Mistake("the max is not subtracted, so exp overflows for large scores",
                lambda s, block, causal: _online_lse(s, block, causal, subtract_max=False), hint=1,
                section=SECTION_ONLINE),
        Mistake("the causal mask is ignored: query i may only see keys j ≤ i",
                lambda s, block, causal: _online_lse(s, block, False), hint=3),
        Mistake("the mask also removes the diagonal: query i sees key i",
                lambda s, block, causal: _online_lse(s, block, causal, mask="diagonal too"), hint=3),
        Mistake("the mask is the wrong way round: it keeps the future (j > i) and drops the past",
                lambda s, block, causal: _online_lse(s, block, causal, mask="past"), hint=3),
        Mistake("the log-sum-exp runs over the queries (dim 0), not along each row",
                lambda s, block, causal: online_logsumexp(s.T, block, causal), hint=3),
    ),
    nan_hint=FIRST_BLOCK_NAN,
    level=WARM_UP,
    hints=(
        "The chapter's online softmax keeps a running max m and a running sum ℓ per row; the log-sum-exp "
        "is what they add up to, without the final division. Masked scores are −∞, so they add e^−∞ = 0.",
        "Per block: m′ = max(m, the block's max); ℓ ← ℓ·e^(m − m′) + Σ_block e^(s − m′). At the end "
        "L = m + log ℓ. With causal=True, the score s_ij counts only where j ≤ i.",
        "m = −∞ and ℓ = 0, both of shape (n,); loop over the starts of the column blocks; in each, build "
        "a (n, block) boolean mask from the row and column positions (torch.arange) and fill the future "
        "with −∞ before taking the block's max.",
    ),
)


# --- 6.2 FlashAttention forward: a torch.autograd.Function ---------------------------------------
# The learner's Function saves (q, k, v, o, L) and returns o; the check reads L back from the
# output's grad_fn and compares torch.cat([L[..., None], o], -1) with the reference.

BLOCK_Q = BLOCK_K = 16  # the tile sizes the notebook asks for


def _scores(q, k, causal, scale=True):
    s = q @ k.transpose(-2, -1) / (math.sqrt(q.shape[-1]) if scale else 1.0)
    if causal:
        s = s.masked_fill(_future(*s.shape[-2:], s.device), float("-inf"))
    return s


def _out_and_lse(o: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """What the check compares: each row is L, then that row of o (so feedback shows L first)."""
    return torch.cat([lse[..., None], o], dim=-1)


def flash_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """Reference: [L, o] with L = logsumexp(s) per row and o = softmax(s) v. -> (..., n, 1 + d)."""
    s = _scores(q, k, causal)
    return _out_and_lse(torch.softmax(s, dim=-1) @ v, torch.logsumexp(s, dim=-1))


def _tiled_forward(q, k, v, causal, lse="right", rescale=True, scale=True, mask="future"):
    """FlashAttention's forward in 16 × 16 tiles, with a switch for each mistake the checks name."""
    n, d = q.shape[-2:]
    q = q / (math.sqrt(d) if scale else 1.0)
    out = torch.zeros_like(q)
    lse_out = torch.zeros(q.shape[:-1], dtype=q.dtype)
    for qs in range(0, n, BLOCK_Q):
        rows = torch.arange(qs, min(qs + BLOCK_Q, n))
        m = torch.full((*q.shape[:-2], len(rows)), float("-inf"), dtype=q.dtype)
        l = torch.zeros_like(m)
        acc = torch.zeros(*q.shape[:-2], len(rows), v.shape[-1], dtype=q.dtype)
        for ks in range(0, (rows[-1].item() + 1) if causal else n, BLOCK_K):
            keys = torch.arange(ks, min(ks + BLOCK_K, n))
            s = q[..., rows, :] @ k[..., keys, :].transpose(-2, -1)
            if causal and mask == "future":
                s = s.masked_fill(keys[None, :] > rows[:, None], float("-inf"))
            elif causal and mask == "diagonal too":
                s = s.masked_fill(keys[None, :] >= rows[:, None], float("-inf"))
            m_new = torch.maximum(m, s.amax(-1))
            alpha = torch.exp(m - m_new)
            p = torch.exp(s - m_new[..., None])
            l = l * alpha + p.sum(-1)
            acc = acc * (alpha[..., None] if rescale else 1.0) + p @ v[..., keys, :]
            m = m_new
        out[..., rows, :] = acc / l[..., None]
        lse_out[..., rows] = {"right": m + torch.log(l), "log l": torch.log(l), "m": m, "l": l}[lse]
    return _out_and_lse(out, lse_out)


def _is_function_class(obj) -> bool:
    return isinstance(obj, type) and issubclass(obj, torch.autograd.Function)


def _wrong_kind_unless_function(obj, what: str) -> None:
    if isinstance(obj, torch.autograd.Function):
        raise WrongKind(f"pass the class {type(obj).__name__} itself, not an instance of it")
    if not _is_function_class(obj):
        kind = "a function" if callable(obj) else type(obj).__name__
        raise WrongKind(f"expected {what}, a subclass of torch.autograd.Function; got {kind}")


SAVE_CONVENTION = "save the log-sum-exp with ctx.save_for_backward(q, k, v, o, L), L of shape (..., n)"


def _saved_lse(out: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """L, read back from what the learner's forward saved: the saved tensor of shape q.shape[:-1]."""
    if out.grad_fn is None:
        raise ValueError("the output has no grad_fn: return the output tensor from forward, "
                         "and " + SAVE_CONVENTION)
    try:
        saved = out.grad_fn.saved_tensors
    except RuntimeError as error:  # saved, then changed in place
        raise ValueError(f"the saved tensors cannot be read back ({str(error)[:80]})") from None
    found = [t for t in saved if isinstance(t, torch.Tensor) and t.shape == q.shape[:-1]]
    if not found:
        raise ValueError(f"no saved tensor has shape {tuple(q.shape[:-1])}: " + SAVE_CONVENTION)
    return found[-1]


def adapt_forward(cls):
    """What the check calls: the learner's Function applied to (q, k, v, causal), and its saved L."""
    _wrong_kind_unless_function(cls, "your FlashAttention class")

    def forward(q, k, v, causal):
        q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
        out = cls.apply(q, k, v, causal)
        if isinstance(out, (tuple, list)):
            raise TypeError(f"forward returned {len(out)} values: return the output o alone, and "
                            + SAVE_CONVENTION)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"forward returned {type(out).__name__}, not the output tensor o")
        return _out_and_lse(out.detach(), _saved_lse(out, q).detach())

    return forward


def _qkv(seed: int, *batch_n_d: int, scale: float = 1.0):
    return _randn(seed, batch_n_d, batch_n_d, batch_n_d, scale=scale)


LSE_RULE = "L must be m + log ℓ, the log of the row's softmax denominator"

FORWARD = Exercise(
    id="6.2",
    title="FlashAttention's forward pass as an autograd.Function",
    function_name="FlashAttention",
    arg_names=("q", "k", "v", "causal"),
    signature="class FlashAttention(torch.autograd.Function): forward(ctx, q, k, v, causal) -> o, "
              "saving (q, k, v, o, L)",
    reference=flash_forward,
    cases=(
        Case("1 head, n = 32, d = 16: 2 × 2 tiles", lambda: (*_qkv(11, 1, 32, 16, scale=1.5), False), 2, "fixed"),
        Case("causal, (2, 3) heads, n = 37, d = 16: a short last tile",
             lambda: (*_qkv(12, 2, 3, 37, 16, scale=1.5), True), 2, "random"),
        Case("not causal, 2 heads, n = 50, d = 8", lambda: (*_qkv(13, 2, 50, 8, scale=1.5), False), 2, "random"),
        Case("causal, 1 head, n = 48, d = 32: the diagonal tiles",
             lambda: (*_qkv(14, 1, 48, 32, scale=1.5), True), 1, "random"),
        Case("edge: n = 1, causal", lambda: (*_qkv(15, 2, 1, 8), True), 1, "edge"),
        Case("edge: large scores (values around 100), causal",
             lambda: (*_qkv(16, 1, 40, 16, scale=5.0), True), 2, "edge"),
    ),
    mistakes=(
        Mistake("acc is not rescaled by exp(m − m′) when the max grows",
                lambda q, k, v, causal: _tiled_forward(q, k, v, causal, rescale=False), hint=2,
                section=SECTION_TILED),
        Mistake(LSE_RULE + "; yours is log ℓ, without m",
                lambda q, k, v, causal: _tiled_forward(q, k, v, causal, lse="log l"), hint=2,
                section=SECTION_BACKWARD),
        Mistake(LSE_RULE + "; yours is the running max m alone",
                lambda q, k, v, causal: _tiled_forward(q, k, v, causal, lse="m"), hint=2,
                section=SECTION_BACKWARD),
        Mistake(LSE_RULE + "; yours is ℓ, not its log plus m",
                lambda q, k, v, causal: _tiled_forward(q, k, v, causal, lse="l"), hint=2,
                section=SECTION_BACKWARD),
        Mistake("the scores are not divided by √d",
                lambda q, k, v, causal: _tiled_forward(q, k, v, causal, scale=False), section=SECTION_TILED),
        Mistake("the causal flag is ignored: mask the future keys (j > i) when causal is True",
                lambda q, k, v, causal: _tiled_forward(q, k, v, False), hint=3, section=SECTION_TILES),
        Mistake("the mask also removes the diagonal: query i sees key i",
                lambda q, k, v, causal: _tiled_forward(q, k, v, causal, mask="diagonal too"), hint=3),
    ),
    error_hints=(
        ("no saved tensor has shape", SAVE_CONVENTION),
        ("has no grad_fn", SAVE_CONVENTION),
        ("forward returned", "forward returns o alone; L goes to ctx.save_for_backward"),
    ),
    nan_hint="NaN: a tile where a row sees no key yet has m = −∞; start l at 0, and take m′ before the exp",
    level=BUILD,
    hints=(
        "Two loops: the outer one over tiles of 16 queries, the inner one over tiles of 16 keys, with a "
        "running max m, sum ℓ and accumulator per query row of the tile. With causal=True the inner loop "
        "can stop after the tile that holds the diagonal: later key tiles are all in the future.",
        "Per key tile: s = q_tile k_tileᵀ/√d (future keys −∞), m′ = max(m, rowmax s), α = e^(m − m′), "
        "p = e^(s − m′), ℓ ← αℓ + rowsum p, acc ← α·acc + p v_tile. After the loop: o = acc/ℓ and "
        "L = m + log ℓ.",
        "forward(ctx, q, k, v, causal): allocate o like q and L of shape q.shape[:-1]; fill each query "
        "tile's rows of both; then ctx.save_for_backward(q, k, v, o, L), ctx.causal = causal, return o.",
    ),
    adapt=adapt_forward,
)


# --- 6.3 the tiled backward ----------------------------------------------------------------------
# The check runs the learner's backward after the course's own forward (so a slip in 6.2 costs
# nothing here), which saves (q, k, v, o, L) and sets ctx.causal, and returns dq, dk, dv stacked.

def flash_grads(q, k, v, causal, grad_out):
    """Reference: autograd through plain attention. -> stack([dq, dk, dv]): (3, ..., n, d)."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    o = torch.softmax(_scores(q, k, causal), dim=-1) @ v
    return torch.stack(torch.autograd.grad(o, (q, k, v), grad_out))


def _tiled_backward(q, k, v, causal, grad_out, delta="right", scale_grads=True, transpose_p=True,
                    transpose_ds=True, accumulate=True, mask=True, p_scaled=True):
    """The tiled backward in 16 × 16 tiles from the saved L, with a switch for each named mistake."""
    n, d = q.shape[-2:]
    scale = 1.0 / math.sqrt(d)
    s_full = q @ k.transpose(-2, -1) * scale
    if causal:
        s_full = s_full.masked_fill(_future(n, n), float("-inf"))
    lse = torch.logsumexp(s_full, -1)
    o = torch.softmax(s_full, -1) @ v
    big_d = (grad_out * o).sum(-1) if delta == "right" else torch.zeros(q.shape[:-1], dtype=q.dtype)
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for qs in range(0, n, BLOCK_Q):
        rows = torch.arange(qs, min(qs + BLOCK_Q, n))
        for ks in range(0, n, BLOCK_K):
            keys = torch.arange(ks, min(ks + BLOCK_K, n))
            s = q[..., rows, :] @ k[..., keys, :].transpose(-2, -1) * (scale if p_scaled else 1.0)
            if causal and mask:
                s = s.masked_fill(keys[None, :] > rows[:, None], float("-inf"))
            p = torch.exp(s - lse[..., rows, None])
            do = grad_out[..., rows, :]
            dv_tile = (p.transpose(-2, -1) if transpose_p else p) @ do
            dp = do @ v[..., keys, :].transpose(-2, -1)
            ds = p * (dp - big_d[..., rows, None])
            g = scale if scale_grads else 1.0
            dq[..., rows, :] += ds @ k[..., keys, :] * g
            dk_tile = (ds.transpose(-2, -1) if transpose_ds else ds) @ q[..., rows, :] * g
            if accumulate:
                dv[..., keys, :] += dv_tile
                dk[..., keys, :] += dk_tile
            else:
                dv[..., keys, :] = dv_tile
                dk[..., keys, :] = dk_tile
    return torch.stack([dq, dk, dv])


def _course_forward_with(learner_backward):
    """An autograd.Function: the course's tiled forward (saving q, k, v, o, L), the learner's backward."""
    from ...flash import tiled_attention_forward

    class Graded(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, causal):
            o, lse = tiled_attention_forward(q, k, v, causal, BLOCK_K)
            ctx.save_for_backward(q, k, v, o, lse)
            ctx.causal = causal
            return o

        backward = staticmethod(learner_backward)

    return Graded


def adapt_backward(cls):
    """What the check calls: the learner's backward on the course's forward; dq, dk, dv stacked."""
    _wrong_kind_unless_function(cls, "your class with a backward")
    backward = cls.backward  # the plain function: staticmethod, or the base Function's (not written)
    graded = _course_forward_with(backward)

    def backward_check(q, k, v, causal, grad_out):
        q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
        o = graded.apply(q, k, v, causal)
        grads = torch.autograd.grad(o, (q, k, v), grad_out, allow_unused=True)
        for name, g, t in zip("qkv", grads, (q, k, v)):
            if g is None:
                raise TypeError(f"backward returned None for d{name}: return dq, dk, dv, None")
            if g.shape != t.shape:
                raise TypeError(f"d{name} has shape {tuple(g.shape)}, but {name} has {tuple(t.shape)}")
        return torch.stack(grads)

    backward_check.__name__ = "backward"
    return backward_check


def _qkv_do(seed: int, *shape: int, scale: float = 1.0):
    q, k, v, do = _randn(seed, shape, shape, shape, shape, scale=scale)
    return q, k, v, do


def _backward_case(seed, *shape, causal, scale=1.0):
    def make():
        q, k, v, do = _qkv_do(seed, *shape, scale=scale)
        return q, k, v, causal, do
    return make


BACKWARD = Exercise(
    id="6.3",
    title="The tiled backward pass",
    function_name="FlashAttentionTrainable",
    arg_names=("q", "k", "v", "causal", "grad_out"),
    signature="class FlashAttentionTrainable(FlashAttention): backward(ctx, grad_out) -> dq, dk, dv, None",
    reference=flash_grads,
    cases=(
        Case("1 head, n = 32, d = 16: 2 × 2 tiles", _backward_case(21, 1, 32, 16, causal=False), 2, "fixed"),
        Case("causal, (2, 2) heads, n = 37, d = 16", _backward_case(22, 2, 2, 37, 16, causal=True), 3, "random"),
        Case("not causal, 2 heads, n = 40, d = 8", _backward_case(23, 2, 40, 8, causal=False), 2, "random"),
        Case("edge: n = 1, causal", _backward_case(24, 2, 1, 8, causal=True), 1, "edge"),
        # Not causal: unmasked future scores would make the wrong gradients ~1e10 and too far off to match.
        Case("edge: large scores (values around 30)",
             _backward_case(25, 1, 24, 16, causal=False, scale=2.5), 2, "edge"),
    ),
    mistakes=(
        Mistake("D is left out: dS = P ∘ (dP − D), with D = rowsum(dO ∘ O)",
                lambda q, k, v, causal, do: _tiled_backward(q, k, v, causal, do, delta="none"), hint=2,
                section=SECTION_BACKWARD),
        Mistake("dq and dk are not multiplied by 1/√d",
                lambda q, k, v, causal, do: _tiled_backward(q, k, v, causal, do, scale_grads=False), hint=2),
        Mistake("P is recomputed from scores that are not divided by √d",
                lambda q, k, v, causal, do: _tiled_backward(q, k, v, causal, do, p_scaled=False), hint=1),
        Mistake("dv = P dO: it is Pᵀ dO (keys are the columns of P)",
                lambda q, k, v, causal, do: _tiled_backward(q, k, v, causal, do, transpose_p=False), hint=2),
        Mistake("dk = dS q: it is dSᵀ q/√d",
                lambda q, k, v, causal, do: _tiled_backward(q, k, v, causal, do, transpose_ds=False), hint=2),
        Mistake("dk and dv are overwritten by each query tile: add every query tile's share",
                lambda q, k, v, causal, do: _tiled_backward(q, k, v, causal, do, accumulate=False), hint=3),
        Mistake("the recomputed P is not causally masked: future keys get weight",
                lambda q, k, v, causal, do: _tiled_backward(q, k, v, causal, do, mask=False), hint=1,
                section=SECTION_BACKWARD),
    ),
    error_hints=(
        ("returned an incorrect number of gradients",
         "backward returns one gradient per input of forward: dq, dk, dv, None (None for causal)"),
        ("returned None for d", "backward returns dq, dk, dv, None"),
        ("returned an invalid gradient at index", "dq, dk, dv have the shapes of q, k, v (index 0 is dq)"),
        ("not enough values to unpack", "ctx.saved_tensors holds (q, k, v, o, L), in that order"),
        ("too many values to unpack", "ctx.saved_tensors holds (q, k, v, o, L), in that order"),
    ),
    level=BUILD,
    hints=(
        "Nothing N × N was saved: rebuild each tile of P from the saved L, P_tile = exp(s_tile − L_rows), "
        "with s_tile = q_tile k_tileᵀ/√d and the future masked to −∞ when ctx.causal.",
        "D = rowsum(dO ∘ O), once, before the loops. Per tile: dV_tile += P_tileᵀ dO_rows, "
        "dP = dO_rows V_tileᵀ, dS = P_tile ∘ (dP − D_rows), dQ_rows += dS K_tile/√d, "
        "dK_tile += dS_tᵀ Q_rows/√d.",
        "q, k, v, o, L = ctx.saved_tensors; dq, dk, dv start as zeros; a loop over query tiles of 16 and, "
        "inside, over key tiles of 16; every tile adds into its slices (+=); return dq, dk, dv, None.",
    ),
    adapt=adapt_backward,
)


# --- 6.4 the Triton kernel, from a scaffold -----------------------------------------------------
# The learner writes a @triton.jit kernel with the signature below; the check launches it on
# (heads, n, d) tensors with 32-query by 16-key blocks (rectangular, so that a loop bound that
# confuses BLOCK_M and BLOCK_N shows) and reads back the output or the key blocks each program
# visited. Interpreted on a CPU, compiled on a GPU (riverbank.triton_flash decides).

KERNEL_BLOCK_M, KERNEL_BLOCK_N = 32, 16


def _kernel_like(q, k, v, causal, returned, bound="right", key_mask=True, causal_mask=True, scale=True):
    """The kernel's blocks in PyTorch (zero-padded keys past n), with a switch for each mistake."""
    heads, n, d = q.shape
    bm, bn = KERNEL_BLOCK_M, KERNEL_BLOCK_N
    programs = -(-n // bm)
    visits = torch.zeros(heads, programs, dtype=torch.int32)
    padded = -(-n // bn) * bn + bm
    pad = lambda t: torch.cat([t, t.new_zeros(heads, padded - n, d)], dim=1)  # noqa: E731
    kp, vp = pad(k), pad(v)
    qs = q * (1.0 / math.sqrt(d) if scale else 1.0)
    out = torch.zeros_like(q)
    for pid in range(programs):
        start_m = pid * bm
        rows = torch.arange(start_m, min(start_m + bm, n))
        end = {"right": min(start_m + bm, n), "no skip": n, "before diagonal": start_m,
               "block_n": min(start_m + bn, n)}[bound] if causal else n
        m = torch.full((heads, len(rows)), float("-inf"), dtype=q.dtype)
        l = torch.zeros(heads, len(rows), dtype=q.dtype)
        acc = torch.zeros(heads, len(rows), d, dtype=q.dtype)
        for start_n in range(0, end, bn):
            visits[:, pid] += 1
            keys = torch.arange(start_n, start_n + bn)
            s = qs[:, rows] @ kp[:, keys].transpose(1, 2)
            allowed = torch.ones(len(rows), bn, dtype=torch.bool)
            if key_mask:
                allowed &= keys[None, :] < n
            if causal and causal_mask:
                allowed &= keys[None, :] <= rows[:, None]
            s = s.masked_fill(~allowed, float("-inf"))
            m_new = torch.maximum(m, s.amax(-1))
            alpha = torch.exp(m - m_new)
            p = torch.exp(s - m_new[..., None])
            l = l * alpha + p.sum(-1)
            acc = acc * alpha[..., None] + p @ vp[:, keys]
            m = m_new
        out[:, rows] = acc / l[..., None]
    return visits if returned == "visits" else out


def kernel_attention(q, k, v, causal, returned):
    """Reference: SDPA's output, or the number of key blocks each program must visit."""
    heads, n, d = q.shape
    if returned == "visits":
        programs = -(-n // KERNEL_BLOCK_M)
        ends = [min((i + 1) * KERNEL_BLOCK_M, n) if causal else n for i in range(programs)]
        return torch.tensor([[-(-e // KERNEL_BLOCK_N) for e in ends]] * heads, dtype=torch.int32)
    import torch.nn.functional as F
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def adapt_kernel(kernel):
    """Launch the learner's kernel like the course's: one program per (query block, head)."""
    from ... import triton_flash

    name = type(kernel).__name__
    if isinstance(kernel, type) or not (name in ("JITFunction", "InterpretedFunction") or hasattr(kernel, "fn")
                                        and hasattr(kernel, "__getitem__")):
        raise WrongKind(f"expected your @triton.jit kernel, got {'a plain function' if callable(kernel) else name}: "
                        "put @triton.jit above def flash_kernel")
    return _launcher(kernel, triton_flash)


def _launcher(kernel, triton_flash):
    """flash_kernel(q, k, v, causal, returned): the learner's kernel run on (heads, n, d) tensors.

    Each tensor is handed over as a flat buffer with zeros after its data, so that a load or store
    a little past the end (a missing mask) reads zeros or writes nowhere that matters instead of
    touching other memory. Compiled on a GPU, interpreted on a CPU, as triton_flash decides."""
    import triton

    def flash_kernel(q, k, v, causal, returned):
        heads, n, d = q.shape
        dev, block_d = triton_flash.DEVICE, max(16, triton.next_power_of_2(d))
        slack = 2 * (KERNEL_BLOCK_M + KERNEL_BLOCK_N) * block_d

        def flat(t):
            buffer = torch.zeros(t.numel() + slack, dtype=t.dtype, device=dev)
            buffer[:t.numel()] = t.reshape(-1).to(dev)
            return buffer

        qf, kf, vf = flat(q), flat(k), flat(v)
        of = torch.zeros_like(qf)
        programs = triton.cdiv(n, KERNEL_BLOCK_M)
        visits = torch.zeros(heads * programs + slack, dtype=torch.int32, device=dev)
        try:
            kernel[(programs, heads)](qf, kf, vf, of, visits, n, d, 1.0 / math.sqrt(d), CAUSAL=bool(causal),
                                      BLOCK_M=KERNEL_BLOCK_M, BLOCK_N=KERNEL_BLOCK_N, BLOCK_D=block_d)
        except Exception as error:  # noqa: BLE001 - unwrapped and re-raised for the grader
            raise triton_flash._original_error(error, "flash_kernel") from None
        if returned == "visits":
            return visits[:heads * programs].reshape(heads, programs).cpu()
        return of[:q.numel()].reshape(q.shape).to(q.device)

    return flash_kernel


def _kernel_case(seed, heads, n, d, causal, returned, scale=1.5):
    return lambda: (*_randn(seed, (heads, n, d), (heads, n, d), (heads, n, d), scale=scale), causal, returned)


KERNEL = Exercise(
    id="6.4",
    title="The Triton kernel, from a scaffold",
    function_name="flash_kernel",
    arg_names=("q", "k", "v", "causal", "returned"),
    signature="@triton.jit flash_kernel(Q, K, V, O, Visits, n, d, scale, CAUSAL, BLOCK_M, BLOCK_N, BLOCK_D)",
    reference=kernel_attention,
    cases=(
        Case("2 heads, n = 32, d = 16: one query block", _kernel_case(31, 2, 32, 16, False, "output"), 2, "fixed"),
        Case("2 heads, n = 70, d = 16: short last blocks", _kernel_case(32, 2, 70, 16, False, "output"), 2,
             "random"),
        Case("causal, 2 heads, n = 75, d = 16", _kernel_case(33, 2, 75, 16, True, "output"), 2, "random"),
        Case("causal, 1 head, n = 40, d = 40 (padded to 64)", _kernel_case(34, 1, 40, 40, True, "output"), 1,
             "random"),
        Case("causal, n = 75: key blocks visited per program", _kernel_case(35, 2, 75, 16, True, "visits"), 2,
             "fixed"),
        Case("edge: n = 10, fewer keys than a block", _kernel_case(36, 2, 10, 16, False, "output"), 1, "edge"),
    ),
    mistakes=(
        Mistake("the causal loop does not stop at the diagonal: blocks wholly in the future are still visited",
                lambda q, k, v, causal, r: _kernel_like(q, k, v, causal, r, bound="no skip"), hint=2,
                section=SECTION_TILES),
        Mistake("the causal loop stops before the diagonal block: end at min(start_m + BLOCK_M, n)",
                lambda q, k, v, causal, r: _kernel_like(q, k, v, causal, r, bound="before diagonal"), hint=2,
                section=SECTION_TILES),
        Mistake("the causal loop bound uses BLOCK_N; a program's last query is start_m + BLOCK_M − 1",
                lambda q, k, v, causal, r: _kernel_like(q, k, v, causal, r, bound="block_n"), hint=2),
        Mistake("keys past n are not masked out of allowed: the zero padding gets weight",
                lambda q, k, v, causal, r: _kernel_like(q, k, v, causal, r, key_mask=False), hint=3,
                section=SECTION_TRITON),
        Mistake("future keys are not masked out of allowed in the diagonal block",
                lambda q, k, v, causal, r: _kernel_like(q, k, v, causal, r, causal_mask=False), hint=3),
        Mistake("q is not multiplied by scale (1/√d)",
                lambda q, k, v, causal, r: _kernel_like(q, k, v, causal, r, scale=False), hint=1),
    ),
    time_limit=30.0,  # the CPU interpreter runs each program in Python
    error_hints=(
        ("Both operands must be same dtype", "tl.dot's operands differ in dtype"),
        ("arange's range must be a power of 2", "tl.arange needs a power of two: use BLOCK_D, not d"),
        ("incompatible", "shapes: rows[:, None] and dims[None, :] make a (BLOCK_M, BLOCK_D) block of offsets"),
    ),
    nan_hint="NaN: some query rows saw no key at all (l = 0): check the loop bound and the mask",
    level=BUILD,
    hints=(
        "Program (i, h) owns queries i·BLOCK_M … i·BLOCK_M + BLOCK_M − 1 of head h (program ids along "
        "axes 0 and 1). Every load and store is a block of offsets with a mask for what lies past n "
        "(rows, keys) or past d (columns), and masked-off entries load as 0.",
        "Element (row r, column c) of head h sits at offset h·n·d + r·d + c. Causal: a program's last "
        "query is start_m + BLOCK_M − 1, so no key beyond it (or beyond n − 1) is needed, and the loop "
        "over key blocks can end there; otherwise it covers all n keys.",
        "In order: start_m and the head from the program ids; rows, key columns and dims as aranges with "
        "their masks; q loaded as a (BLOCK_M, BLOCK_D) block and scaled; the loop's end; k and v loaded as "
        "(BLOCK_N, BLOCK_D) blocks; allowed, a (BLOCK_M, BLOCK_N) bool block (real keys, and no future "
        "key when CAUSAL); the store with q's mask.",
    ),
    adapt=adapt_kernel,
)


# --- 6.5 experiment: scores computed only to be masked ------------------------------------------

EXPERIMENT_N, EXPERIMENT_BM, EXPERIMENT_BN = 1000, 64, 128


def _wasted(n, bm, bn, diagonal=False, padding=False, skip=True):
    """Scores (i, j), i, j < n, inside the tiles a causal kernel visits, that the mask discards."""
    total = 0
    for start_m in range(0, n, bm):
        rows = range(start_m, min(start_m + bm, n))
        end = min(start_m + bm, n) if skip else n
        for start_n in range(0, end, bn):
            if padding:
                keys = range(start_n, start_n + bn)
                total += sum(1 for i in range(start_m, start_m + bm) for j in keys
                             if j > i or i >= n or j >= n)
                continue
            keys = range(start_n, min(start_n + bn, n))
            total += sum(max(0, keys.stop - max(keys.start, i + (0 if diagonal else 1))) for i in rows)
    return total


def wasted_scores() -> int:
    """Reference: the count for N = 1000, BLOCK_M = 64, BLOCK_N = 128."""
    return _wasted(EXPERIMENT_N, EXPERIMENT_BM, EXPERIMENT_BN)


WASTED = Exercise(
    id="6.5",
    title="Scores a causal kernel computes only to mask",
    function_name="wasted_scores",
    arg_names=(),
    signature="wasted_scores() -> int",
    reference=wasted_scores,
    cases=(Case("your answer", lambda: (), 4, "experiment"),),
    mistakes=(
        Mistake("that counts every future pair (j > i): the kernel skips the tiles wholly above the diagonal",
                lambda: _wasted(EXPERIMENT_N, EXPERIMENT_BM, EXPERIMENT_BN, skip=False), hint=1,
                section=SECTION_TILES),
        Mistake("that counts the diagonal (j = i) too: query i sees key i",
                lambda: _wasted(EXPERIMENT_N, EXPERIMENT_BM, EXPERIMENT_BN, diagonal=True), hint=2),
        Mistake("that counts the padding past N too: count only scores with i, j < N",
                lambda: _wasted(EXPERIMENT_N, EXPERIMENT_BM, EXPERIMENT_BN, padding=True), hint=2),
        Mistake("that is the count for square 64 × 64 tiles; the kernel here has BLOCK_N = 128",
                lambda: _wasted(EXPERIMENT_N, 64, 64), hint=3),
    ),
    level=EXPERIMENT,
    hints=(
        "A program computes every score of every tile it visits, and only then does the mask set the "
        "future ones to −∞. The tiles wholly above the diagonal are skipped, so they cost nothing.",
        "Count, over the visited tiles only, the pairs (i, j) with i, j < N and j > i. Query block b "
        "covers rows b·BLOCK_M … and visits key blocks up to the one holding its last query.",
        "Two loops like the kernel's (query blocks, then key blocks up to min(start_m + BLOCK_M, N)); in "
        "each tile, count the future pairs; the sum is an int. flash.visited_tiles lists the tiles.",
    ),
)

EXERCISES = (ONLINE_LSE, FORWARD, BACKWARD, KERNEL, WASTED)
