"""Chapter 6: FlashAttention's forward pass as a Triton kernel, compiled on a GPU, interpreted on a CPU.

This module is the one place that decides whether Triton runs compiled or in its CPU interpreter.
The switch, ``TRITON_INTERPRET``, is read when triton is first imported, so it is set here before
``import triton``: ``1`` (interpret) when torch sees no CUDA GPU, ``0`` (compile) when it does.
Import this module before anything else imports triton.

Rules that keep one kernel working in both places:

- Blocks are powers of two and at least 16: ``tl.arange`` needs powers of two, and ``tl.dot``
  needs at least 16 rows and columns to compile on a GPU (the interpreter would accept fewer).
- Inputs are made contiguous: the kernel computes every address as ``head·n·d + row·d + col``
  and is given no strides, so a strided view would be read wrongly, compiled on a GPU just as in
  the interpreter.
- bfloat16 is refused: the interpreter's bfloat16 arithmetic is silently wrong, and a Colab T4
  (compute capability 7.5) has no fast bfloat16 anyway. Use float32 to check, float16 for speed.
- On a GPU, float32 ``tl.dot`` rounds its inputs to TF32 unless told otherwise; ``precision="ieee"``
  (the default for float32) keeps exact float32 products, for checks against SDPA.

Shared memory: a Colab T4 offers 64 KB per block. Compiled on an H100 with one pipeline stage, the
default 64 × 64 blocks used 24 KB (float16, d = 64), 48 KB (float16, d = 128; float32, d = 64) and
96 KB (float32, d = 128); so on GPUs older than compute capability 8.0 the kernel is launched with
one stage, and float32 with d = 128 needs smaller blocks there.
"""

from __future__ import annotations

import math
import os
import re
import sys

import torch

if "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "0" if torch.cuda.is_available() else "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
if not INTERPRETED and not torch.cuda.is_available():
    raise ImportError("triton was imported before riverbank.triton_flash could set TRITON_INTERPRET=1, "
                      "and there is no GPU to compile for: restart the kernel and import "
                      "riverbank.triton_flash before anything that imports triton")
DEVICE = "cpu" if INTERPRETED else "cuda"
BLOCK_M = 64  # queries per program
BLOCK_N = 64  # keys per step of the inner loop
DTYPES = (torch.float32, torch.float16)


@triton.jit
def attend_block(q, k, v, m_i, l_i, acc, allowed):
    """Fold one block of keys and values into the running state.

    q: (BLOCK_M, D), already times 1/√d; k, v: (BLOCK_N, D);
    m_i, l_i: (BLOCK_M,) running max and sum; acc: (BLOCK_M, D);
    allowed: (BLOCK_M, BLOCK_N), True where query i may see key j.
    """
    s = tl.dot(q, tl.trans(k), input_precision="ieee")  # scores
    s = tl.where(allowed, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp(m_i - m_new)  # rescales the old sums
    p = tl.exp(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    p_v = tl.dot(p.to(v.dtype), v, input_precision="ieee")  # (BLOCK_M, D)
    acc = acc * alpha[:, None] + p_v
    return m_new, l_i, acc


@triton.jit
def attend_block_fast(q, k, v, m_i, l_i, acc, allowed):
    """``attend_block`` with TF32 products for float32 inputs (float16 inputs are unaffected)."""
    s = tl.dot(q, tl.trans(k))
    s = tl.where(allowed, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp(m_i - m_new)
    p = tl.exp(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
def flash_forward_kernel(Q, K, V, O, LSE, n, d, scale,
                         CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_D: tl.constexpr, STEP: tl.constexpr):
    """One program computes BLOCK_M rows of the output of one (batch, head).

    Q, K, V, O: contiguous (batch·heads, n, d); LSE: (batch·heads, n) float32.
    BLOCK_D is d rounded up to a power of two; the extra columns are loaded as zeros.
    STEP is the jitted function that folds one key/value block into the running state.
    """
    start_m = tl.program_id(0) * BLOCK_M
    head = tl.program_id(1).to(tl.int64)
    base = head * n * d
    rows = start_m + tl.arange(0, BLOCK_M)  # query positions
    cols = tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < n
    dim_ok = dims < d
    q = tl.load(Q + base + rows[:, None] * d + dims[None, :],
                mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
    q = (q * scale).to(q.dtype)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    # Causal: keys after this block's last query are never needed, so the loop stops early.
    end = tl.minimum(start_m + BLOCK_M, n) if CAUSAL else n
    for start_n in range(0, end, BLOCK_N):
        keys = start_n + cols
        key_ok = keys < n
        kv_offsets = base + keys[:, None] * d + dims[None, :]
        kv_mask = key_ok[:, None] & dim_ok[None, :]
        k = tl.load(K + kv_offsets, mask=kv_mask, other=0.0)
        v = tl.load(V + kv_offsets, mask=kv_mask, other=0.0)
        # Padding rows (beyond n) hold zeros and are never stored; they may see every real key.
        allowed = key_ok[None, :] & (rows[:, None] >= 0)  # (BLOCK_M, BLOCK_N)
        if CAUSAL:
            allowed = allowed & (keys[None, :] <= rows[:, None])
        m_i, l_i, acc = STEP(q, k, v, m_i, l_i, acc, allowed)
    out = acc / l_i[:, None]
    tl.store(O + base + rows[:, None] * d + dims[None, :], out.to(O.dtype.element_ty),
             mask=row_ok[:, None] & dim_ok[None, :])
    tl.store(LSE + head * n + rows, m_i + tl.log(l_i), mask=row_ok)


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"q, k and v must have one shape (..., n, d); got {q.shape}, {k.shape}, {v.shape}")
    if q.dtype == torch.bfloat16:
        raise TypeError("bfloat16 is not offered: Triton's CPU interpreter computes it wrongly, "
                        "and a Colab T4 has no fast bfloat16; use float16 or float32")
    if q.dtype not in DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k and v must all be float32 or float16; got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.device.type != DEVICE:
        where = "the CPU (Triton runs in its interpreter here)" if INTERPRETED else "a CUDA GPU"
        raise ValueError(f"the tensors are on {q.device}; this kernel runs on {where}")


def triton_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                             block_m: int = BLOCK_M, block_n: int = BLOCK_N, precision: str = "ieee",
                             step=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the kernel. (..., n, d) -> output (..., n, d) in q's dtype, lse (..., n) in float32.

    ``precision="ieee"`` keeps float32 products exact; ``"tf32"`` lets a GPU use TF32 for speed.
    ``step`` replaces the inner-loop function (``attend_block``): chapter 6's exercise uses it.
    """
    _check_inputs(q, k, v)
    for name, block in (("block_m", block_m), ("block_n", block_n)):
        if block < 16 or block & (block - 1):
            raise ValueError(f"{name} = {block}: blocks must be powers of two and at least 16, "
                             "or the kernel would not compile on a GPU")
    if step is None:
        step = attend_block if precision == "ieee" else attend_block_fast
    *batch, n, d = q.shape
    heads = math.prod(batch)
    q3, k3, v3 = (t.reshape(heads, n, d).contiguous() for t in (q, k, v))  # (batch·heads, n, d)
    out = torch.empty_like(q3)
    lse = torch.empty((heads, n), dtype=torch.float32, device=q.device)
    grid = (triton.cdiv(n, block_m), heads)
    options = {}
    if not INTERPRETED and torch.cuda.get_device_capability(q.device) < (8, 0):
        options["num_stages"] = 1  # a T4: no asynchronous copies to pipeline, and 64 KB of shared memory
    flash_forward_kernel[grid](q3, k3, v3, out, lse, n, d, 1.0 / math.sqrt(d),
                               CAUSAL=causal, BLOCK_M=block_m, BLOCK_N=block_n,
                               BLOCK_D=max(16, triton.next_power_of_2(d)), STEP=step, **options)
    return out.reshape(q.shape), lse.reshape(*batch, n)


def triton_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                     block_m: int = BLOCK_M, block_n: int = BLOCK_N, precision: str = "ieee",
                     step=None) -> torch.Tensor:
    """The kernel's output alone. (..., n, d) -> (..., n, d)."""
    return triton_attention_forward(q, k, v, causal, block_m, block_n, precision, step)[0]


RETURNS = "must return three values: `return m_i, l_i, acc`"
_TUPLES = (tuple, list, getattr(tl, "tuple", tuple))  # tl.tuple: a step may build one


def _returned(value) -> str:
    """How many values a step returned, in words, for the message when it is not three."""
    if value is None:
        return "nothing (no `return`?)"
    if isinstance(value, _TUPLES):
        return f"{len(value)} value" + ("" if len(value) == 1 else "s")
    return "1 value, not a tuple"


class _CheckedStep:
    """The learner's step, called by the interpreted kernel, with its return checked: three values.

    Interpreted, the kernel's ``m_i, l_i, acc = STEP(...)`` would otherwise fail with Python's own
    unpacking error (``'int' object is not iterable`` for one tensor), which names no step.
    """

    def __init__(self, step):
        self.step = step
        self.__name__ = getattr(step, "__name__", "step")

    def __call__(self, *args):
        value = self.step(*args)
        if not (isinstance(value, _TUPLES) and len(value) == 3):
            raise TypeError(f"{self.__name__} {RETURNS}; it returned {_returned(value)}")
        return value


def _original_error(error: BaseException, step_name: str = "attend_block") -> BaseException:
    """The learner's own error inside Triton's wrapping, so that feedback names it.

    The interpreter raises ``InterpreterError`` from the learner's exception; the compiler raises
    ``CompilationError``s whose message points at a line of source. An unwritten step (``raise
    NotImplementedError``) becomes a plain NotImplementedError either way. Compiled, a step that
    does not return three values fails at the kernel's ``m_i, l_i, acc = STEP(...)`` line (Triton
    3.9's words: ``cannot unpack non-iterable value``, ``not enough values to unpack (expected 3,
    got 2)``); that becomes a TypeError that says what the step must return.
    """
    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__ or error.__context__
    if any(isinstance(e, NotImplementedError) or "NotImplementedError" in str(e) for e in chain):
        return NotImplementedError()
    own = [e for e in chain if type(e).__name__ not in ("InterpreterError", "CompilationError")]
    compiled = [e for e in chain if type(e).__name__ == "CompilationError"]
    if not compiled:
        return own[-1] if own else chain[-1]
    # "at 3:8:\n<source>\n        ^\n<what went wrong>": keep the marked line and the reason.
    lines = str(compiled[-1]).splitlines()
    code = next((lines[i - 1].strip() for i, line in enumerate(lines) if i and line.strip() == "^"), "")
    if "= STEP(" in code:  # the kernel's own line: the step returned something else than three values
        said = re.sub(r"^\w+\('(.*)'\)$", r"\1", lines[-1].strip())  # "TypeError('...')" -> "..."
        return TypeError(f"{step_name} {RETURNS} (compiling `m_i, l_i, acc = STEP(...)`: {said[:80]})")
    reason = str(own[-1]).strip().splitlines()[0] if own and str(own[-1]).strip() else lines[-1].strip()
    kind = type(own[-1]) if own else RuntimeError
    try:
        return kind(f"{reason} (at `{code}`)")
    except Exception:  # noqa: BLE001 - an exception type that needs other arguments
        return RuntimeError(f"{kind.__name__}: {reason} (at `{code}`)")


def with_step(step):
    """``triton_attention(q, k, v, causal)`` with ``step`` as the inner loop, for graded exercises.

    Inputs may live on the CPU; they are moved to where the kernel runs and the output comes
    back. The function carries ``step``'s name, and re-raises the step's own exception rather
    than the interpreter's wrapper, so that feedback points at the learner's line. A step that
    does not return the three values ``m_i, l_i, acc`` raises a TypeError that says so.
    """
    name = getattr(step, "__name__", "step")
    kernel_step = _CheckedStep(step) if INTERPRETED else step  # compiled, STEP must stay a JITFunction

    def run(q, k, v, causal):
        try:
            out = triton_attention(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), causal, step=kernel_step)
        except Exception as error:  # noqa: BLE001 - unwrapped and re-raised for the grader
            raise _original_error(error, name) from None
        return out.to(q.device)

    run.__name__ = run.__qualname__ = name
    return run
