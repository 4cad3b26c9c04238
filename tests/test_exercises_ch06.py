"""Chapter 6's graded exercises: full marks for right work, "not attempted" for stubs, named mistakes
for learners' typical bugs, and no crash on bad code, including in a Triton kernel."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from riverbank.grading import grade, render
from riverbank.grading.exercises import EXERCISES
from riverbank.grading.runner import COMPLETE, FAILED, NOT_ATTEMPTED

ROOT = Path(__file__).resolve().parents[1]


def graded(exercise_id, obj):
    result = grade(EXERCISES[exercise_id], obj)
    return result, render(result)


# --- what a learner hands in: right, unwritten, and wrong in ways that crash ---------------------

def online_logsumexp(s, block, causal):
    n = s.shape[0]
    m, l = torch.full((n,), -math.inf), torch.zeros(n)
    for start in range(0, s.shape[1], block):
        chunk = s[:, start:start + block]
        if causal:
            keys = torch.arange(start, start + chunk.shape[1])
            chunk = chunk.masked_fill(keys[None, :] > torch.arange(n)[:, None], -math.inf)
        m_new = torch.maximum(m, chunk.amax(-1))
        l = l * torch.exp(m - m_new) + torch.exp(chunk - m_new[:, None]).sum(-1)
        m = m_new
    return m + torch.log(l)


class FlashAttention(torch.autograd.Function):
    """The solution's shape: 16 × 16 tiles, causal tiles above the diagonal skipped."""

    @staticmethod
    def forward(ctx, q, k, v, causal=False):
        n, d = q.shape[-2:]
        o, lse = torch.empty_like(q), torch.empty(q.shape[:-1], dtype=q.dtype)
        for i in range(0, n, 16):
            qi = q[..., i:i + 16, :] / math.sqrt(d)
            rows = torch.arange(i, i + qi.shape[-2])
            m = torch.full(qi.shape[:-1], -math.inf, dtype=q.dtype)
            l, acc = torch.zeros_like(m), torch.zeros_like(qi)
            for j in range(0, rows[-1].item() + 1 if causal else n, 16):
                s = qi @ k[..., j:j + 16, :].transpose(-2, -1)
                if causal:
                    s = s.masked_fill(torch.arange(j, j + s.shape[-1]) > rows[:, None], -math.inf)
                m_new = torch.maximum(m, s.amax(-1))
                alpha, p = torch.exp(m - m_new), torch.exp(s - m_new[..., None])
                l, acc, m = alpha * l + p.sum(-1), alpha[..., None] * acc + p @ v[..., j:j + 16, :], m_new
            o[..., i:i + 16, :], lse[..., i:i + 16] = acc / l[..., None], m + torch.log(l)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal = causal
        return o


class FlashAttentionTrainable(FlashAttention):
    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, o, lse = ctx.saved_tensors
        n, d = q.shape[-2:]
        c = 1 / math.sqrt(d)
        big_d = (grad_out * o).sum(-1)
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for i in range(0, n, 16):
            rows = torch.arange(i, min(i + 16, n))
            for j in range(0, n, 16):
                s = q[..., i:i + 16, :] @ k[..., j:j + 16, :].transpose(-2, -1) * c
                if ctx.causal:
                    s = s.masked_fill(torch.arange(j, j + s.shape[-1]) > rows[:, None], -math.inf)
                p = torch.exp(s - lse[..., i:i + 16, None])
                dv[..., j:j + 16, :] += p.transpose(-2, -1) @ grad_out[..., i:i + 16, :]
                ds = p * (grad_out[..., i:i + 16, :] @ v[..., j:j + 16, :].transpose(-2, -1)
                          - big_d[..., i:i + 16, None])
                dq[..., i:i + 16, :] += ds @ k[..., j:j + 16, :] * c
                dk[..., j:j + 16, :] += ds.transpose(-2, -1) @ q[..., i:i + 16, :] * c
        return dq, dk, dv, None


class UnwrittenForward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal=False):
        raise NotImplementedError


class UnwrittenBackward(UnwrittenForward):
    @staticmethod
    def backward(ctx, grad_out):
        raise NotImplementedError


class NoBackwardYet(FlashAttention):
    """A class with the 6.2 forward and no backward at all: torch's own NotImplementedError."""


class ForwardReturnsNone(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal=False):
        return None


class ForwardRaises(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal=False):
        return q @ k  # (n, d) @ (n, d): the shapes do not fit


class ForwardWithoutCausal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v):
        return q


class BackwardWrongShape(FlashAttention):
    @staticmethod
    def backward(ctx, grad_out):
        return grad_out.sum(-1), grad_out, grad_out, None


class BackwardReturnsNone(FlashAttention):
    @staticmethod
    def backward(ctx, grad_out):
        return None


class ModuleNotFunction(torch.nn.Module):
    def forward(self, q, k, v, causal=False):
        return q


def wasted_scores():
    total = 0
    for a in range(0, 1000, 64):
        rows = torch.arange(a, min(a + 64, 1000))[:, None]
        for b in range(0, min(a + 64, 1000), 128):
            total += int((torch.arange(b, min(b + 128, 1000))[None, :] > rows).sum())
    return total


def test_right_work_gets_full_marks_on_every_exercise_but_the_kernel():
    for ex_id, obj in [("6.1", online_logsumexp), ("6.2", FlashAttention), ("6.3", FlashAttentionTrainable),
                       ("6.2", FlashAttentionTrainable), ("6.5", wasted_scores)]:
        result, text = graded(ex_id, obj)
        assert result.status == COMPLETE and result.earned == result.points, text


@pytest.mark.parametrize("ex_id,obj", [("6.2", UnwrittenForward), ("6.3", UnwrittenBackward),
                                       ("6.3", NoBackwardYet)], ids=lambda x: getattr(x, "__name__", x))
def test_an_unwritten_method_is_not_attempted(ex_id, obj):
    result, text = graded(ex_id, obj)
    assert result.status == NOT_ATTEMPTED, text


def test_a_stub_function_is_not_attempted():
    def online_logsumexp(s, block, causal):
        raise NotImplementedError

    def wasted_scores():
        raise NotImplementedError
    for ex_id, fn in (("6.1", online_logsumexp), ("6.5", wasted_scores)):
        result, text = graded(ex_id, fn)
        assert result.status == NOT_ATTEMPTED, text


@pytest.mark.parametrize("ex_id,obj,said", [
    ("6.2", online_logsumexp, "subclass of torch.autograd.Function; got a function"),
    ("6.2", FlashAttention(), "not an instance"),
    ("6.2", ModuleNotFunction, "subclass of torch.autograd.Function"),
    ("6.2", None, "subclass of torch.autograd.Function; got NoneType"),
    ("6.3", online_logsumexp, "subclass of torch.autograd.Function"),
], ids=lambda x: getattr(x, "__name__", str(x)[:20]))
def test_the_wrong_kind_of_object_is_told_what_to_hand_in(ex_id, obj, said):
    result, text = graded(ex_id, obj)
    assert result.status == FAILED and result.earned == 0, text
    assert said in text, text


@pytest.mark.parametrize("ex_id,obj,said", [
    ("6.2", ForwardReturnsNone, "forward returned NoneType"),
    ("6.2", ForwardRaises, "raised RuntimeError"),
    ("6.2", ForwardWithoutCausal, "raised TypeError"),
    ("6.3", BackwardWrongShape, "dq, dk, dv have the shapes of q, k, v"),
    ("6.3", BackwardReturnsNone, "raised"),
], ids=lambda x: getattr(x, "__name__", str(x)[:20]))
def test_bad_code_is_feedback_not_a_crash(ex_id, obj, said):
    result, text = graded(ex_id, obj)
    assert result.earned == 0 and result.status == FAILED, text
    assert said in text, text


def test_bad_answers_to_the_experiment_are_feedback():
    for answer in (None, "many", float("nan"), torch.tensor(3), wasted_scores() + 0.5):
        result, text = graded("6.5", lambda answer=answer: answer)
        assert result.earned == 0 and result.status == FAILED, text


@pytest.mark.parametrize("exercise_id", ["6.1", "6.2", "6.3", "6.4", "6.5"])
def test_every_named_mistake_is_recognised_by_its_check(exercise_id):
    """Each mistake's own function, graded as if a learner handed it in (adapt bypassed): it loses
    points and its message is the headline."""
    ex = dataclasses.replace(EXERCISES[exercise_id], adapt=None)
    assert len(ex.mistakes) >= 4
    for mistake in ex.mistakes:
        result = grade(ex, mistake.function)
        text = render(result)
        assert result.earned < ex.points, mistake.message
        assert result.mistakes and result.mistakes[0] == mistake.message, text


def test_the_experiment_answer_is_printed_nowhere():
    import nbformat
    answer = str(EXERCISES["6.5"].reference())
    for folder in ("chapters", "solutions", "exercises"):
        nb = nbformat.read(ROOT / folder / "06_flash_attention.ipynb", as_version=4)
        for cell in nb.cells:
            texts = [cell.source] + [str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                                     for o in cell.get("outputs", [])]
            assert not any(answer in t for t in texts), (folder, cell.get("id"))


# --- 6.4: a @triton.jit kernel, launched by the check ---------------------------------------------

HAVE_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="needs triton")

if HAVE_TRITON:  # Triton needs `tl` among a jitted function's globals, so the kernels live at module level.
    from riverbank import triton_flash  # sets the interpreter switch before triton is imported

    import triton
    import triton.language as tl
    from riverbank.triton_flash import attend_block

    @triton.jit
    def flash_kernel(Q, K, V, O, Visits, n, d, scale, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        start_m = tl.program_id(0) * BLOCK_M
        base = tl.program_id(1).to(tl.int64) * n * d
        rows = start_m + tl.arange(0, BLOCK_M)
        dims = tl.arange(0, BLOCK_D)
        io = (rows[:, None] < n) & (dims[None, :] < d)
        q = tl.load(Q + base + rows[:, None] * d + dims[None, :], mask=io, other=0.0)
        q = (q * scale).to(q.dtype)
        m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_M,), tl.float32)
        acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
        visits = 0
        end = tl.minimum(start_m + BLOCK_M, n) if CAUSAL else n
        for start_n in range(0, end, BLOCK_N):
            keys = start_n + tl.arange(0, BLOCK_N)
            kv = (keys[:, None] < n) & (dims[None, :] < d)
            k = tl.load(K + base + keys[:, None] * d + dims[None, :], mask=kv, other=0.0)
            v = tl.load(V + base + keys[:, None] * d + dims[None, :], mask=kv, other=0.0)
            allowed = (keys[None, :] < n) & (rows[:, None] >= 0)
            if CAUSAL:
                allowed = allowed & (keys[None, :] <= rows[:, None])
            m_i, l_i, acc = attend_block(q, k, v, m_i, l_i, acc, allowed)
            visits += 1
        tl.store(O + base + rows[:, None] * d + dims[None, :], (acc / l_i[:, None]).to(O.dtype.element_ty), mask=io)
        tl.store(Visits + tl.program_id(1) * tl.num_programs(0) + tl.program_id(0), visits)

    @triton.jit
    def unwritten_kernel(Q, K, V, O, Visits, n, d, scale, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        raise NotImplementedError

    @triton.jit
    def kernel_with_bad_arange(Q, K, V, O, Visits, n, d, scale, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
                               BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        dims = tl.arange(0, d)  # d is not a constexpr power of two
        tl.store(O + dims, tl.zeros((BLOCK_D,), tl.float32))

    @triton.jit
    def kernel_without_visits(Q, K, V, O, Visits, n, d, scale, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
                              BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        tl.store(O + rows, tl.zeros((BLOCK_M,), tl.float32), mask=rows < n)

    def plain_function(Q, K, V, O, Visits, n, d, scale, CAUSAL, BLOCK_M, BLOCK_N, BLOCK_D):
        return None


@needs_triton
def test_the_solution_kernel_scores_full_marks_within_the_time_limit():
    ex = EXERCISES["6.4"]
    start = time.perf_counter()
    result, text = graded("6.4", flash_kernel)
    assert result.status == COMPLETE and result.earned == result.points, text
    # every check, twice over (the instructor grader re-checks), inside one check's limit
    assert 2 * (time.perf_counter() - start) < ex.time_limit, time.perf_counter() - start


@needs_triton
def test_an_unwritten_kernel_is_not_attempted():
    result, text = graded("6.4", unwritten_kernel)
    assert result.status == NOT_ATTEMPTED, text


@needs_triton
@pytest.mark.parametrize("kernel,said", [
    ("plain_function", "put @triton.jit above"),
    ("kernel_with_bad_arange", "raised"),
    ("kernel_without_visits", "values differ"),
])
def test_a_bad_kernel_is_feedback_not_a_crash(kernel, said):
    result, text = graded("6.4", globals()[kernel])
    assert result.earned < result.points, text
    assert said in text, text
    assert "InterpreterError" not in text and "CompilationError" not in text, text


@needs_triton
def test_the_launcher_pads_every_buffer_so_a_missing_mask_reads_zeros():
    """A kernel whose loads and stores lack their masks runs past the end of each tensor; the check
    hands over buffers with zeros after the data, so this is a wrong answer, not a crash."""
    ex = EXERCISES["6.4"]
    run = ex.adapt(flash_kernel)
    q, k, v, causal, returned = ex.cases[1].make_inputs()
    out = run(q, k, v, causal, returned)
    assert out.shape == q.shape and torch.isfinite(out).all()


COMPILE_SOLUTION = """
import os
os.environ["TRITON_INTERPRET"] = "0"
import torch
torch.cuda.is_available = lambda: True  # compile only: the front end needs no GPU
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import test_exercises_ch06 as t

for dtype in ("fp32", "fp16"):
    for causal in (False, True):
        sig = {"Q": f"*{dtype}", "K": f"*{dtype}", "V": f"*{dtype}", "O": f"*{dtype}", "Visits": "*i32",
               "n": "i32", "d": "i32", "scale": "fp32", "CAUSAL": "constexpr", "BLOCK_M": "constexpr",
               "BLOCK_N": "constexpr", "BLOCK_D": "constexpr"}
        constants = {"CAUSAL": causal, "BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_D": 64}
        try:
            triton.compile(ASTSource(t.flash_kernel, sig, constexprs=constants), target=GPUTarget("cuda", 80, 32))
            print(dtype, causal, "compiled")
        except Exception as error:
            print(dtype, causal, "failed", type(error).__name__, str(error)[:300].replace("\\n", " "))
"""


@needs_triton
def test_the_scaffolds_solution_compiles_for_a_gpu(tmp_path):
    """On a GPU the check compiles the learner's kernel instead of interpreting it. Triton's front end
    runs without a GPU, so the solution kernel (the scaffold filled in) is compiled here for an sm_80
    target, float32 and float16, causal and not, in a fresh process (TRITON_INTERPRET=0)."""
    script = tmp_path / "compile_solution.py"
    script.write_text(COMPILE_SOLUTION)
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    if "fp32" not in done.stdout:
        pytest.skip(f"Triton's GPU front end is not usable here: {done.stderr.strip()[-300:]}")
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 4 and all(line.endswith("compiled") for line in lines), done.stdout
