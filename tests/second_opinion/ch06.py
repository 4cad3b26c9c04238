"""Chapter 6 second opinions: a causal log-sum-exp, FlashAttention's forward and backward as
autograd.Functions, the Triton kernel from its scaffold, and the count of wasted scores."""

import importlib.util
import math

import torch

LOG2E = math.log2(math.e)


def _future(n, m=None):
    return torch.ones(n, n if m is None else m, dtype=torch.bool).triu(1)


# --- 6.1 online_logsumexp: correct ----------------------------------------------------------------

def ch06_lse_logaddexp(s, block, causal):
    out = torch.full((s.shape[0],), -math.inf)
    for start in range(0, s.shape[1], block):
        chunk = s[:, start:start + block]
        if causal:
            chunk = torch.where(_future(s.shape[0], s.shape[1])[:, start:start + block], -math.inf, chunk)
        out = torch.logaddexp(out, torch.logsumexp(chunk, dim=1))
    return out


def ch06_lse_float64_rows(s, block, causal):
    out = torch.empty(s.shape[0])
    for i in range(s.shape[0]):
        row = s[i].double()
        if causal:
            row = row[:i + 1]                        # the future is simply not read
        m, l = -math.inf, 0.0
        for chunk in row.split(block):
            m_new = max(m, chunk.max().item())
            l = l * math.exp(m - m_new) + torch.exp(chunk - m_new).sum().item()
            m = m_new
        out[i] = m + math.log(l)
    return out


def ch06_lse_exp2_additive_mask(s, block, causal):
    bias = torch.zeros_like(s).masked_fill(_future(*s.shape), -math.inf) if causal else torch.zeros_like(s)
    x = (s + bias) * LOG2E                           # base 2 throughout
    m = torch.full((s.shape[0],), -math.inf)
    l = torch.zeros(s.shape[0])
    for chunk in x.split(block, dim=1):
        m_new = torch.max(m, chunk.max(dim=1).values)
        l = l * torch.exp2(m - m_new) + torch.exp2(chunk - m_new[:, None]).sum(dim=1)
        m = m_new
    return (m + torch.log2(l)) / LOG2E


# --- 6.1 online_logsumexp: wrong -------------------------------------------------------------------

def _lse_loop(s, block, causal, rescale=True, add_m=True, start_l=0.0, keep=lambda j, i: j <= i):
    n = s.shape[0]
    m, l = torch.full((n,), -math.inf), torch.full((n,), start_l)
    for start in range(0, s.shape[1], block):
        chunk = s[:, start:start + block]
        if causal:
            j = torch.arange(start, start + chunk.shape[1])[None, :]
            chunk = chunk.masked_fill(~keep(j, torch.arange(n)[:, None]), -math.inf)
        m_new = torch.maximum(m, chunk.amax(1))
        l = (l * torch.exp(m - m_new) if rescale else l) + torch.exp(chunk - m_new[:, None]).sum(1)
        m = m_new
    return (m if add_m else 0) + torch.log(l)


def ch06_lse_not_rescaled(s, block, causal):
    return _lse_loop(s, block, causal, rescale=False)


def ch06_lse_log_l_only(s, block, causal):
    return _lse_loop(s, block, causal, add_m=False)


def ch06_lse_no_max(s, block, causal):
    s = s.masked_fill(_future(*s.shape), -math.inf) if causal else s
    return torch.log(sum(torch.exp(c).sum(1) for c in s.split(block, dim=1)))


def ch06_lse_ignores_causal(s, block, causal):
    return _lse_loop(s, block, False)


def ch06_lse_strict_past(s, block, causal):
    return _lse_loop(s, block, causal, keep=lambda j, i: j < i)


def ch06_lse_sum_starts_at_minus_inf(s, block, causal):
    return _lse_loop(s, block, causal, start_l=-math.inf)


def ch06_lse_drops_short_last_block(s, block, causal):
    usable = s.shape[1] // block * block or s.shape[1]
    return _lse_loop(s[:, :usable], block, causal)


# --- 6.2 and 6.3: FlashAttention as autograd.Functions --------------------------------------------

def _tiles(n, size=16):
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def _flash_forward(q, k, v, causal, lse_kind="right", rescale=True, scale=True, skip=True):
    n, d = q.shape[-2:]
    o = torch.empty_like(q)
    lse = torch.empty(q.shape[:-1], dtype=q.dtype)
    qs = q * (d ** -0.5 if scale else 1.0)
    for a, b in _tiles(n):
        m = torch.full(q.shape[:-2] + (b - a,), -math.inf, dtype=q.dtype)
        l = torch.zeros_like(m)
        acc = torch.zeros(q.shape[:-2] + (b - a, v.shape[-1]), dtype=q.dtype)
        for c, e in _tiles(b if (causal and skip) else n):
            s = torch.einsum("...id,...jd->...ij", qs[..., a:b, :], k[..., c:e, :])
            if causal:
                s = torch.where(torch.arange(c, e)[None, :] > torch.arange(a, b)[:, None], -math.inf, s)
            m_new = torch.maximum(m, s.amax(-1))
            alpha = torch.exp(m - m_new)
            p = torch.exp(s - m_new.unsqueeze(-1))
            l = alpha * l + p.sum(-1)
            pv = torch.einsum("...ij,...jd->...id", p, v[..., c:e, :])
            acc = (alpha.unsqueeze(-1) if rescale else 1.0) * acc + pv
            m = m_new
        o[..., a:b, :] = acc / l.unsqueeze(-1)
        lse[..., a:b] = {"right": m + l.log(), "log l": l.log(), "m": m}[lse_kind]
    return o, lse


def _forward_class(**kw):
    class Forward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, causal=False):
            o, lse = _flash_forward(q, k, v, causal, **kw)
            ctx.save_for_backward(q, k, v, o, lse)
            ctx.causal = causal
            return o
    return Forward


class ch06_forward_einsum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal=False):
        o, lse = _flash_forward(q, k, v, causal)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal = causal
        return o


class ch06_forward_no_block_skipping(torch.autograd.Function):
    """Visits every key tile, causal or not: slower, but the mask alone makes it right."""
    @staticmethod
    def forward(ctx, q, k, v, causal=False):
        o, lse = _flash_forward(q, k, v, causal, skip=False)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal = causal
        return o


class ch06_forward_exp2_query_tiles_of_8(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal=False):
        n, d = q.shape[-2:]
        x = q * (LOG2E / math.sqrt(d))               # base-2 scores
        o, lse = torch.empty_like(q), torch.empty(q.shape[:-1], dtype=q.dtype)
        for a in range(0, n, 8):
            b = min(a + 8, n)
            m = torch.full(q.shape[:-2] + (b - a,), -math.inf, dtype=q.dtype)
            l = torch.zeros_like(m)
            acc = torch.zeros_like(q[..., a:b, :])
            for c in range(0, n, 32):
                e = min(c + 32, n)
                if causal and c > b - 1:
                    break
                s = x[..., a:b, :] @ k[..., c:e, :].transpose(-1, -2)
                if causal:
                    s = s.masked_fill(torch.arange(c, e) > torch.arange(a, b).unsqueeze(1), -math.inf)
                m_new = torch.max(m, s.max(-1).values)
                p = torch.exp2(s - m_new[..., None])
                alpha = torch.exp2(m - m_new)
                l, acc, m = alpha * l + p.sum(-1), alpha[..., None] * acc + p @ v[..., c:e, :], m_new
            o[..., a:b, :] = acc / l[..., None]
            lse[..., a:b] = (m + torch.log2(l)) / LOG2E
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal = causal
        return o


ch06_forward_acc_not_rescaled = _forward_class(rescale=False)
ch06_forward_saves_log_l = _forward_class(lse_kind="log l")
ch06_forward_saves_max = _forward_class(lse_kind="m")
ch06_forward_unscaled = _forward_class(scale=False)


class ch06_forward_ignores_causal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal=False):
        o, lse = _flash_forward(q, k, v, False)
        ctx.save_for_backward(q, k, v, o, lse)
        return o


class ch06_forward_returns_o_and_lse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal=False):
        o, lse = _flash_forward(q, k, v, causal)
        return o, lse


class ch06_forward_saves_no_lse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal=False):
        o, _ = _flash_forward(q, k, v, causal)
        ctx.save_for_backward(q, k, v, o)
        return o


# 6.3: the learner's backward runs after the course's forward, which saved (q, k, v, o, L).

def _grads(ctx, do, delta=True, scale_grads=True, transpose_p=True, overwrite=False, mask=True, size=16):
    q, k, v, o, lse = ctx.saved_tensors
    n, d = q.shape[-2:]
    c = d ** -0.5
    big_d = (do * o).sum(-1) if delta else torch.zeros_like(lse)
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for a, b in _tiles(n, size):
        for e0, e1 in _tiles(n, size):
            s = q[..., a:b, :] @ k[..., e0:e1, :].transpose(-2, -1) * c
            if ctx.causal and mask:
                s = s.masked_fill(torch.arange(e0, e1)[None, :] > torch.arange(a, b)[:, None], -math.inf)
            p = torch.exp(s - lse[..., a:b, None])
            dv_t = (p.transpose(-2, -1) if transpose_p else p) @ do[..., a:b, :]
            ds = p * (do[..., a:b, :] @ v[..., e0:e1, :].transpose(-2, -1) - big_d[..., a:b, None])
            g = c if scale_grads else 1.0
            dq[..., a:b, :] += ds @ k[..., e0:e1, :] * g
            dk_t = ds.transpose(-2, -1) @ q[..., a:b, :] * g
            if overwrite:
                dv[..., e0:e1, :], dk[..., e0:e1, :] = dv_t, dk_t
            else:
                dv[..., e0:e1, :] += dv_t
                dk[..., e0:e1, :] += dk_t
    return dq, dk, dv, None


def _backward_class(**kw):
    class Trainable(ch06_forward_einsum):
        @staticmethod
        def backward(ctx, grad_out):
            return _grads(ctx, grad_out, **kw)
    return Trainable


class ch06_backward_key_tiles_all_queries(ch06_forward_einsum):
    """The course package's layout: one loop over key tiles, all query rows at once."""
    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, o, lse = ctx.saved_tensors
        n, d = q.shape[-2:]
        big_d = torch.einsum("...id,...id->...i", grad_out, o)
        dq = torch.zeros_like(q)
        dks, dvs = [], []
        for c in range(0, n, 16):
            kt, vt = k[..., c:c + 16, :], v[..., c:c + 16, :]
            s = torch.einsum("...id,...jd->...ij", q, kt) / math.sqrt(d)
            if ctx.causal:
                s = s.masked_fill(torch.arange(c, c + kt.shape[-2]) > torch.arange(n)[:, None], -math.inf)
            p = (s - lse[..., None]).exp()
            ds = p * (torch.einsum("...id,...jd->...ij", grad_out, vt) - big_d[..., None])
            dvs.append(torch.einsum("...ij,...id->...jd", p, grad_out))
            dks.append(torch.einsum("...ij,...id->...jd", ds, q) / math.sqrt(d))
            dq = dq + torch.einsum("...ij,...jd->...id", ds, kt) / math.sqrt(d)
        return dq, torch.cat(dks, -2), torch.cat(dvs, -2), None


class ch06_backward_float64_tiles_of_8(ch06_forward_einsum):
    @staticmethod
    def backward(ctx, grad_out):
        dtype = grad_out.dtype

        class Ctx:
            saved_tensors = tuple(t.double() for t in ctx.saved_tensors)
            causal = ctx.causal
        dq, dk, dv, _ = _grads(Ctx, grad_out.double(), size=8)
        return dq.to(dtype), dk.to(dtype), dv.to(dtype), None


class ch06_backward_delta_from_p_and_dp(ch06_forward_einsum):
    """D_i = Σ_j P_ij dP_ij, which equals rowsum(dO ∘ O); computed from the tiles in a first pass."""
    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, o, lse = ctx.saved_tensors
        n, d = q.shape[-2:]
        scale = d ** -0.5

        def tile(a, b, c, e):
            s = q[..., a:b, :] @ k[..., c:e, :].transpose(-2, -1) * scale
            if ctx.causal:
                s = s.masked_fill(torch.arange(c, e)[None, :] > torch.arange(a, b)[:, None], -math.inf)
            return torch.exp(s - lse[..., a:b, None]), grad_out[..., a:b, :] @ v[..., c:e, :].transpose(-2, -1)

        big_d = torch.zeros_like(lse)
        for a, b in _tiles(n):
            for c, e in _tiles(n):
                p, dp = tile(a, b, c, e)
                big_d[..., a:b] += (p * dp).sum(-1)
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for a, b in _tiles(n):
            for c, e in _tiles(n):
                p, dp = tile(a, b, c, e)
                ds = p * (dp - big_d[..., a:b, None])
                dv[..., c:e, :] += p.transpose(-2, -1) @ grad_out[..., a:b, :]
                dq[..., a:b, :] += ds @ k[..., c:e, :] * scale
                dk[..., c:e, :] += ds.transpose(-2, -1) @ q[..., a:b, :] * scale
        return dq, dk, dv, None


ch06_backward_no_delta = _backward_class(delta=False)
ch06_backward_unscaled_grads = _backward_class(scale_grads=False)
ch06_backward_p_not_transposed = _backward_class(transpose_p=False)
ch06_backward_overwrites_tiles = _backward_class(overwrite=True)
ch06_backward_unmasked_p = _backward_class(mask=False)


class ch06_backward_three_gradients(ch06_forward_einsum):
    @staticmethod
    def backward(ctx, grad_out):
        return _grads(ctx, grad_out)[:3]


# --- 6.5 wasted_scores ----------------------------------------------------------------------------

N, BM, BN = 1000, 64, 128


def ch06_wasted_closed_form():
    total = 0
    for a in range(0, N, BM):
        last = min(a + BM, N) - 1
        end = min(-(-(last + 1) // BN) * BN, N)     # the visited keys end with the last key block
        total += sum(end - 1 - i for i in range(a, last + 1))
    return total


def ch06_wasted_from_visited_tiles():
    from riverbank import flash
    rows = torch.arange(N)[:, None]
    total = 0
    for i, j in flash.visited_tiles(N, BM, BN, causal=True):
        keys = torch.arange(j * BN, min(j * BN + BN, N))[None, :]
        total += int((keys > rows[i * BM:(i + 1) * BM]).sum())
    return total


def ch06_wasted_as_a_mask():
    visited = torch.zeros(N, N, dtype=torch.bool)
    for a in range(0, N, BM):
        visited[a:a + BM, :min(a + BM, N)] = True  # up to this block's last query
        end = -(-min(a + BM, N) // BN) * BN
        visited[a:a + BM, :end] = True             # ... rounded up to whole key blocks
    return int((visited & _future(N)).sum())


def ch06_wasted_all_future_pairs():
    return N * (N - 1) // 2


def ch06_wasted_including_diagonal():
    return ch06_wasted_closed_form() + N


def ch06_wasted_with_padding():
    from riverbank.grading.exercises.ch06 import _wasted
    return _wasted(N, BM, BN, padding=True)


def ch06_wasted_square_64():
    from riverbank.grading.exercises.ch06 import _wasted
    return _wasted(N, 64, 64)


def ch06_wasted_counts_tiles():
    from riverbank import flash
    return len(flash.visited_tiles(N, BM, BN, causal=True))


CORRECT = {
    "6.1": [ch06_lse_logaddexp, ch06_lse_float64_rows, ch06_lse_exp2_additive_mask],
    "6.2": [ch06_forward_einsum, ch06_forward_no_block_skipping, ch06_forward_exp2_query_tiles_of_8],
    "6.3": [ch06_backward_key_tiles_all_queries, ch06_backward_float64_tiles_of_8,
            ch06_backward_delta_from_p_and_dp],
    "6.5": [ch06_wasted_closed_form, ch06_wasted_from_visited_tiles, ch06_wasted_as_a_mask],
}
WRONG = {
    "6.1": [
        (ch06_lse_not_rescaled, "running sum is not rescaled"),
        (ch06_lse_log_l_only, "missing the max"),
        (ch06_lse_no_max, "max is not subtracted"),
        (ch06_lse_ignores_causal, "causal mask is ignored"),
        (ch06_lse_strict_past, "removes the diagonal"),
        (ch06_lse_sum_starts_at_minus_inf, "NaN from block 1"),
        (ch06_lse_drops_short_last_block, None),
    ],
    "6.2": [
        (ch06_forward_acc_not_rescaled, "acc is not rescaled"),
        (ch06_forward_saves_log_l, "without m"),
        (ch06_forward_saves_max, "the running max m alone"),
        (ch06_forward_unscaled, "not divided by √d"),
        (ch06_forward_ignores_causal, "causal flag is ignored"),
        (ch06_forward_returns_o_and_lse, "forward returns o alone"),
        (ch06_forward_saves_no_lse, "save the log-sum-exp"),
    ],
    "6.3": [
        (ch06_backward_no_delta, "D is left out"),
        (ch06_backward_unscaled_grads, "not multiplied by 1/√d"),
        (ch06_backward_p_not_transposed, "dv = P dO"),
        (ch06_backward_overwrites_tiles, "overwritten by each query tile"),
        (ch06_backward_unmasked_p, "not causally masked"),
        (ch06_backward_three_gradients, "one gradient per input"),
    ],
    "6.5": [
        (ch06_wasted_all_future_pairs, "every future pair"),
        (ch06_wasted_including_diagonal, "diagonal"),
        (ch06_wasted_with_padding, "padding"),
        (ch06_wasted_square_64, "square 64 × 64"),
        (ch06_wasted_counts_tiles, None),
    ],
}


# --- 6.4 flash_kernel: @triton.jit kernels, launched by the check --------------------------------

if importlib.util.find_spec("triton") is not None:
    from riverbank import triton_flash  # noqa: F401 - sets TRITON_INTERPRET before triton is imported

    import triton
    import triton.language as tl
    from riverbank.triton_flash import attend_block

    @triton.jit
    def ch06_kernel_own_step_exp2(Q, K, V, O, Visits, n, d, scale, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
                                  BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        pid = tl.program_id(0)
        h = tl.program_id(1).to(tl.int64)
        r = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        c = tl.arange(0, BLOCK_D)
        io_mask = (r[:, None] < n) & (c[None, :] < d)
        q = tl.load(Q + h * n * d + r[:, None] * d + c[None, :], mask=io_mask, other=0.0)
        q = q * (scale * 1.4426950408889634)                 # base 2
        m = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        l = tl.zeros((BLOCK_M,), tl.float32)
        acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
        visits = 0
        hi = n
        if CAUSAL:
            hi = tl.minimum(pid * BLOCK_M + BLOCK_M, n)
        for j in range(0, hi, BLOCK_N):
            kk = j + tl.arange(0, BLOCK_N)
            kv_mask = (kk[:, None] < n) & (c[None, :] < d)
            k = tl.load(K + h * n * d + kk[:, None] * d + c[None, :], mask=kv_mask, other=0.0)
            v = tl.load(V + h * n * d + kk[:, None] * d + c[None, :], mask=kv_mask, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
            ok = kk[None, :] < n
            if CAUSAL:
                ok = ok & (kk[None, :] <= r[:, None])
            s = tl.where(ok, s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, 1))
            p = tl.exp2(s - m_new[:, None])
            alpha = tl.exp2(m - m_new)
            l = l * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
            m = m_new
            visits += 1
        tl.store(O + h * n * d + r[:, None] * d + c[None, :], (acc / l[:, None]).to(O.dtype.element_ty),
                 mask=io_mask)
        tl.store(Visits + h * tl.num_programs(0) + pid, visits)

    @triton.jit
    def ch06_kernel_block_count(Q, K, V, O, Visits, n, d, scale, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
                                BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        start_m = tl.program_id(0) * BLOCK_M
        Qh = Q + tl.program_id(1).to(tl.int64) * n * d      # this head's first element
        Kh = K + tl.program_id(1).to(tl.int64) * n * d
        Vh = V + tl.program_id(1).to(tl.int64) * n * d
        Oh = O + tl.program_id(1).to(tl.int64) * n * d
        rows = start_m + tl.arange(0, BLOCK_M)
        dims = tl.arange(0, BLOCK_D)
        q = tl.load(Qh + rows[:, None] * d + dims[None, :], mask=(rows < n)[:, None] & (dims < d)[None, :],
                    other=0.0)
        q = (q * scale).to(q.dtype)
        m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_M,), tl.float32)
        acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
        visits = 0
        if CAUSAL:
            blocks = tl.cdiv(tl.minimum(start_m + BLOCK_M, n), BLOCK_N)
        else:
            blocks = tl.cdiv(n, BLOCK_N)
        for b in range(0, blocks):
            keys = b * BLOCK_N + tl.arange(0, BLOCK_N)
            k = tl.load(Kh + keys[:, None] * d + dims[None, :], mask=(keys < n)[:, None] & (dims < d)[None, :],
                        other=0.0)
            v = tl.load(Vh + keys[:, None] * d + dims[None, :], mask=(keys < n)[:, None] & (dims < d)[None, :],
                        other=0.0)
            allowed = (keys[None, :] < n) & (keys[None, :] <= (rows[:, None] if CAUSAL else n))
            m_i, l_i, acc = attend_block(q, k, v, m_i, l_i, acc, allowed)
            visits += 1
        tl.store(Oh + rows[:, None] * d + dims[None, :], (acc / l_i[:, None]).to(O.dtype.element_ty),
                 mask=(rows < n)[:, None] & (dims < d)[None, :])
        tl.store(Visits + tl.program_id(1) * tl.num_programs(0) + tl.program_id(0), visits)

    @triton.jit
    def ch06_kernel_where_instead_of_load_masks(Q, K, V, O, Visits, n, d, scale, CAUSAL: tl.constexpr,
                                                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                                                BLOCK_D: tl.constexpr):
        start_m = tl.program_id(0) * BLOCK_M
        base = tl.program_id(1).to(tl.int64) * n * d
        rows = start_m + tl.arange(0, BLOCK_M)
        dims = tl.arange(0, BLOCK_D)
        # clamp the offsets into range, then zero what lies outside: no out-of-range address is formed
        r_in = tl.minimum(rows, n - 1)
        c_in = tl.minimum(dims, d - 1)
        q_ok = (rows[:, None] < n) & (dims[None, :] < d)
        q = tl.where(q_ok, tl.load(Q + base + r_in[:, None] * d + c_in[None, :]), 0.0)
        q = (q * scale).to(q.dtype)
        m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_M,), tl.float32)
        acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
        visits = 0
        end = n
        if CAUSAL:
            end = tl.minimum(start_m + BLOCK_M, n)
        for start_n in range(0, end, BLOCK_N):
            keys = start_n + tl.arange(0, BLOCK_N)
            k_in = tl.minimum(keys, n - 1)
            kv_ok = (keys[:, None] < n) & (dims[None, :] < d)
            k = tl.where(kv_ok, tl.load(K + base + k_in[:, None] * d + c_in[None, :]), 0.0)
            v = tl.where(kv_ok, tl.load(V + base + k_in[:, None] * d + c_in[None, :]), 0.0)
            allowed = tl.broadcast_to(keys[None, :] < n, (BLOCK_M, BLOCK_N))
            if CAUSAL:
                allowed = allowed & (keys[None, :] - rows[:, None] <= 0)
            m_i, l_i, acc = attend_block(q, k, v, m_i, l_i, acc, allowed)
            visits += 1
        tl.store(O + base + rows[:, None] * d + dims[None, :], (acc / l_i[:, None]).to(O.dtype.element_ty),
                 mask=q_ok)
        tl.store(Visits + tl.program_id(1) * tl.num_programs(0) + tl.program_id(0), visits)

    @triton.jit
    def _wrong_kernel(Q, K, V, O, Visits, n, d, scale, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BOUND: tl.constexpr, KEY_MASK: tl.constexpr,
                      CAUSAL_MASK: tl.constexpr, SCALE: tl.constexpr):
        start_m = tl.program_id(0) * BLOCK_M
        base = tl.program_id(1).to(tl.int64) * n * d
        rows = start_m + tl.arange(0, BLOCK_M)
        dims = tl.arange(0, BLOCK_D)
        io = (rows[:, None] < n) & (dims[None, :] < d)
        q = tl.load(Q + base + rows[:, None] * d + dims[None, :], mask=io, other=0.0)
        if SCALE:
            q = (q * scale).to(q.dtype)
        m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_M,), tl.float32)
        acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
        visits = 0
        end = n
        if CAUSAL:
            if BOUND == 0:
                end = tl.minimum(start_m + BLOCK_M, n)
            elif BOUND == 1:
                end = start_m                                # stops before the diagonal block
            elif BOUND == 2:
                end = tl.minimum(start_m + BLOCK_N, n)       # BLOCK_N where BLOCK_M belongs
        for start_n in range(0, end, BLOCK_N):
            keys = start_n + tl.arange(0, BLOCK_N)
            kv = (keys[:, None] < n) & (dims[None, :] < d)
            k = tl.load(K + base + keys[:, None] * d + dims[None, :], mask=kv, other=0.0)
            v = tl.load(V + base + keys[:, None] * d + dims[None, :], mask=kv, other=0.0)
            allowed = rows[:, None] >= 0
            if KEY_MASK:
                allowed = allowed & (keys[None, :] < n)
            if CAUSAL and CAUSAL_MASK:
                allowed = allowed & (keys[None, :] <= rows[:, None])
            m_i, l_i, acc = attend_block(q, k, v, m_i, l_i, acc, allowed)
            visits += 1
        tl.store(O + base + rows[:, None] * d + dims[None, :], (acc / l_i[:, None]).to(O.dtype.element_ty), mask=io)
        tl.store(Visits + tl.program_id(1) * tl.num_programs(0) + tl.program_id(0), visits)

    # A learner's kernel takes exactly the scaffold's parameters: each wrong variant binds its switches.
    @triton.jit
    def ch06_kernel_no_causal_skip(Q, K, V, O, Visits, n, d, scale, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
                                   BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        _wrong_kernel(Q, K, V, O, Visits, n, d, scale, CAUSAL, BLOCK_M, BLOCK_N, BLOCK_D, 3, True, True, True)

    @triton.jit
    def ch06_kernel_stops_before_diagonal(Q, K, V, O, Visits, n, d, scale, CAUSAL: tl.constexpr,
                                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        _wrong_kernel(Q, K, V, O, Visits, n, d, scale, CAUSAL, BLOCK_M, BLOCK_N, BLOCK_D, 1, True, True, True)

    @triton.jit
    def ch06_kernel_bound_with_block_n(Q, K, V, O, Visits, n, d, scale, CAUSAL: tl.constexpr,
                                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        _wrong_kernel(Q, K, V, O, Visits, n, d, scale, CAUSAL, BLOCK_M, BLOCK_N, BLOCK_D, 2, True, True, True)

    @triton.jit
    def ch06_kernel_padding_keys_allowed(Q, K, V, O, Visits, n, d, scale, CAUSAL: tl.constexpr,
                                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        _wrong_kernel(Q, K, V, O, Visits, n, d, scale, CAUSAL, BLOCK_M, BLOCK_N, BLOCK_D, 0, False, True, True)

    @triton.jit
    def ch06_kernel_no_future_mask(Q, K, V, O, Visits, n, d, scale, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
                                   BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        _wrong_kernel(Q, K, V, O, Visits, n, d, scale, CAUSAL, BLOCK_M, BLOCK_N, BLOCK_D, 0, True, False, True)

    @triton.jit
    def ch06_kernel_unscaled(Q, K, V, O, Visits, n, d, scale, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
                             BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        _wrong_kernel(Q, K, V, O, Visits, n, d, scale, CAUSAL, BLOCK_M, BLOCK_N, BLOCK_D, 0, True, True, False)

    CORRECT["6.4"] = [ch06_kernel_own_step_exp2, ch06_kernel_block_count, ch06_kernel_where_instead_of_load_masks]
    WRONG["6.4"] = [
        (ch06_kernel_no_causal_skip, "does not stop at the diagonal"),
        (ch06_kernel_stops_before_diagonal, "stops before the diagonal block"),
        (ch06_kernel_bound_with_block_n, "uses BLOCK_N"),
        (ch06_kernel_padding_keys_allowed, "keys past n are not masked"),
        (ch06_kernel_no_future_mask, "future keys are not masked"),
        (ch06_kernel_unscaled, "q is not multiplied by scale"),
    ]
