"""Chapter 6's graded exercises: learners' typical bugs are caught and named, including in a Triton step."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from riverbank.grading import grade, render
from riverbank.grading.exercises import EXERCISES
from riverbank.grading.runner import COMPLETE, NOT_ATTEMPTED


def graded(exercise_id, fn):
    result = grade(EXERCISES[exercise_id], fn)
    return result, render(result)


# --- 6.1 and 6.2, written the way learners write them ---------------------------------------------

def softmax_no_rescale(x, block):
    m = torch.full((x.shape[0],), -math.inf)
    total = torch.zeros(x.shape[0])
    for i in range(0, x.shape[1], block):
        m = torch.maximum(m, x[:, i:i + block].max(dim=1).values)
        total += torch.exp(x[:, i:i + block] - m[:, None]).sum(dim=1)  # forgot: total *= exp(old - new)
    return torch.exp(x - m[:, None]) / total[:, None]


def softmax_no_max(x, block):
    total = torch.zeros(x.shape[0])
    for i in range(0, x.shape[1], block):
        total = total + x[:, i:i + block].exp().sum(1)
    return x.exp() / total[:, None]


def tiled_acc_not_rescaled(q, k, v, block):
    s_scale = q.shape[1] ** -0.5
    m, l = torch.full((q.shape[0],), -math.inf), torch.zeros(q.shape[0])
    acc = torch.zeros(q.shape[0], v.shape[1])
    for j in range(0, k.shape[0], block):
        s = q @ k[j:j + block].T * s_scale
        m_new = torch.maximum(m, s.max(1).values)
        p = torch.exp(s - m_new[:, None])
        l = l * torch.exp(m - m_new) + p.sum(1)
        acc = acc + p @ v[j:j + block]  # forgot to rescale acc
        m = m_new
    return acc / l[:, None]


def tiled_divides_inside(q, k, v, block):
    m, l = torch.full((q.shape[0],), -math.inf), torch.zeros(q.shape[0])
    out = torch.zeros(q.shape[0], v.shape[1])
    for j in range(0, k.shape[0], block):
        s = q @ k[j:j + block].T / math.sqrt(q.shape[1])
        m_new = torch.maximum(m, s.max(1).values)
        p = torch.exp(s - m_new[:, None])
        alpha = torch.exp(m - m_new)
        l = alpha * l + p.sum(1)
        out = (alpha[:, None] * out + p @ v[j:j + block]) / l[:, None]  # normalised too early
        m = m_new
    return out


def tiled_inverse_factor(q, k, v, block):
    m, l = torch.full((q.shape[0],), -math.inf), torch.zeros(q.shape[0])
    acc = torch.zeros(q.shape[0], v.shape[1])
    for j in range(0, k.shape[0], block):
        s = q @ k[j:j + block].T / math.sqrt(q.shape[1])
        m_new = torch.maximum(m, s.max(1).values)
        p = torch.exp(s - m_new[:, None])
        l = l * torch.exp(m - m_new) + p.sum(1)
        acc = acc * torch.exp(m_new - m)[:, None] + p @ v[j:j + block]  # factor upside down
        m = m_new
    return acc / l[:, None]


LEARNER_BUGS = [
    ("6.1", softmax_no_rescale, "running sum is not rescaled"),
    ("6.1", softmax_no_max, "max is not subtracted"),
    ("6.2", tiled_acc_not_rescaled, "acc is not rescaled"),
    ("6.2", tiled_divides_inside, "divided by l inside the loop"),
]


def test_an_inverted_factor_gives_nan_everywhere_and_gets_the_nan_hint():
    """exp(m_new − m_old) meets m_old = −inf in the first block: 0 × inf, NaN in every entry, on every
    check. All-NaN outputs match no mistake (other bugs give all-NaN too); the exercise's NaN hint
    says where such NaN come from."""
    result, text = graded("6.2", tiled_inverse_factor)
    assert result.earned == 0 and result.mistakes == [EXERCISES["6.2"].nan_hint], text
    assert "NaN" in text, text


@pytest.mark.parametrize("exercise_id,fn,named", LEARNER_BUGS, ids=lambda x: getattr(x, "__name__", str(x)))
def test_learner_bugs_are_named_first(exercise_id, fn, named):
    result, text = graded(exercise_id, fn)
    assert result.earned < result.points
    assert result.mistakes and named in result.mistakes[0], text
    assert f"Likely mistake: {result.mistakes[0]}." in text


@pytest.mark.parametrize("exercise_id", ["6.1", "6.2", "6.3"])
def test_every_named_mistake_is_recognised_by_its_check(exercise_id):
    ex = EXERCISES[exercise_id]
    assert len(ex.mistakes) >= 4
    for mistake in ex.mistakes:
        result, text = graded(exercise_id, mistake.function)
        assert result.earned < ex.points, mistake.message
        assert mistake.message in text, text


# --- 6.3: a @triton.jit step, run by the course's kernel in the interpreter ------------------------

HAVE_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="needs triton")

if HAVE_TRITON:  # Triton needs `tl` among a jitted function's globals, so the steps live at module level.
    from riverbank import triton_flash  # sets the interpreter switch before triton is imported

    import triton
    import triton.language as tl

    @triton.jit
    def attend_block(q, k, v, m_i, l_i, acc, allowed):
        raise NotImplementedError

    @triton.jit
    def forgot_acc_rescale(q, k, v, m_i, l_i, acc, allowed):
        s = tl.where(allowed, tl.dot(q, tl.trans(k), input_precision="ieee"), float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * tl.exp(m_i - m_new) + tl.sum(p, 1)
        acc = acc + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        return m_new, l_i, acc

    @triton.jit
    def forgot_mask(q, k, v, m_i, l_i, acc, allowed):
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        return m_new, l_i * alpha + tl.sum(p, 1), acc

    @triton.jit
    def wrong_dot(q, k, v, m_i, l_i, acc, allowed):
        s = tl.dot(q, k)  # k is (BLOCK_N, D): it needs tl.trans
        return m_i, l_i, acc

    @triton.jit
    def returns_acc_only(q, k, v, m_i, l_i, acc, allowed):
        s = tl.where(allowed, tl.dot(q, tl.trans(k), input_precision="ieee"), float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp(s - m_new[:, None])
        return acc * tl.exp(m_i - m_new)[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")

    @triton.jit
    def returns_two(q, k, v, m_i, l_i, acc, allowed):
        return l_i, acc

    @triton.jit
    def returns_nothing(q, k, v, m_i, l_i, acc, allowed):
        s = tl.dot(q, tl.trans(k), input_precision="ieee")

    @triton.jit
    def no_cast(q, k, v, m_i, l_i, acc, allowed):
        s = tl.where(allowed, tl.dot(q, tl.trans(k), input_precision="ieee"), float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        return m_new, l_i * alpha + tl.sum(p, 1), acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")


@pytest.fixture(scope="module")
def steps():
    """Correct, unwritten and buggy inner-loop steps, each run by the course's kernel."""
    return {"reference": triton_flash.with_step(triton_flash.attend_block),
            "stub": triton_flash.with_step(attend_block),
            "acc": triton_flash.with_step(forgot_acc_rescale), "mask": triton_flash.with_step(forgot_mask),
            "dot": triton_flash.with_step(wrong_dot)}


@needs_triton
def test_the_kernels_own_step_scores_full_marks(steps):
    result, text = graded("6.3", steps["reference"])
    assert result.status == COMPLETE and result.earned == result.points, text


@needs_triton
def test_an_unwritten_step_is_not_attempted(steps):
    result, text = graded("6.3", steps["stub"])
    assert result.status == NOT_ATTEMPTED, text


@needs_triton
@pytest.mark.parametrize("bug,named", [("acc", "acc is not rescaled"), ("mask", "mask is not applied")])
def test_buggy_triton_steps_are_named(steps, bug, named):
    result, text = graded("6.3", steps[bug])
    assert result.earned < result.points
    assert result.mistakes and named in result.mistakes[0], text


@needs_triton
def test_a_step_that_crashes_shows_the_learners_line_not_the_interpreter(steps):
    _, text = graded("6.3", steps["dot"])
    assert "InterpreterError" not in text and "CompilationError" not in text, text
    assert "s = tl.dot(q, k)" in text, text  # the traceback's line here, the compiler's marked line on a GPU
    if triton_flash.INTERPRETED:
        assert "raised AssertionError" in text and "in wrong_dot: s = tl.dot(q, k)" in text


@needs_triton
@pytest.mark.parametrize("step,returned", [("returns_acc_only", "it returned 1 value, not a tuple"),
                                           ("returns_two", "it returned 2 values"),
                                           ("returns_nothing", "it returned nothing")])
def test_a_step_that_returns_other_than_three_values_is_told_what_to_return(step, returned):
    """Python's own unpacking error ("'int' object is not iterable") would name neither the step nor
    what it must return."""
    result, text = graded("6.3", triton_flash.with_step(globals()[step]))
    assert result.earned == 0, text
    assert f"raised TypeError: {step} must return three values: `return m_i, l_i, acc`; {returned}" in text, text
    assert "not iterable" not in text, text


@needs_triton
def test_a_step_without_the_cast_to_v_dtype_loses_the_float16_check_and_is_told_why():
    result, text = graded("6.3", triton_flash.with_step(no_cast))
    float16 = [c for c in result.checks if "float16" in c.name]
    assert float16 and all(not c.passed for c in float16), text
    assert all(c.passed for c in result.checks if "float16" not in c.name), text
    assert "Both operands must be same dtype" in text, text
    assert result.mistakes and "p.to(v.dtype)" in result.mistakes[0], text


COMPILE_WRONG_STEPS = """
import os, sys
os.environ["TRITON_INTERPRET"] = "0"
import torch
torch.cuda.is_available = lambda: True  # compile only: the front end needs no GPU
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from riverbank import triton_flash

@triton.jit
def returns_acc_only(q, k, v, m_i, l_i, acc, allowed):
    return acc + tl.dot(tl.exp(tl.dot(q, tl.trans(k))).to(v.dtype), v)

@triton.jit
def returns_two(q, k, v, m_i, l_i, acc, allowed):
    return l_i, acc

@triton.jit
def no_cast(q, k, v, m_i, l_i, acc, allowed):
    return m_i, l_i, acc + tl.dot(tl.exp(tl.dot(q, tl.trans(k))), v)

for step in (returns_acc_only, returns_two, no_cast):
    sig = {"Q": "*fp16", "K": "*fp16", "V": "*fp16", "O": "*fp16", "LSE": "*fp32", "n": "i32", "d": "i32",
           "scale": "fp32", "CAUSAL": "constexpr", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr",
           "BLOCK_D": "constexpr", "STEP": "constexpr"}
    constants = {"CAUSAL": False, "BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_D": 16, "STEP": step}
    try:
        triton.compile(ASTSource(triton_flash.flash_forward_kernel, sig, constexprs=constants),
                       target=GPUTarget("cuda", 80, 32))
        print(step.__name__, "compiled")
    except Exception as error:
        own = triton_flash._original_error(error, step.__name__)
        print(step.__name__, type(own).__name__, str(own))
"""


@needs_triton
def test_compiled_for_a_gpu_a_wrong_step_gets_the_same_words(tmp_path):
    """On a GPU the kernel is compiled: a wrong return fails at the kernel's own line, which
    _original_error turns into the same message. Triton's front end runs without a GPU, so this is
    checked here by compiling for an sm_80 target in a fresh process (TRITON_INTERPRET=0)."""
    script = tmp_path / "compile_wrong_steps.py"
    script.write_text(COMPILE_WRONG_STEPS)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    if "returns_acc_only" not in done.stdout:
        pytest.skip(f"Triton's GPU front end is not usable here: {done.stderr.strip()[-300:]}")
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert lines["returns_acc_only"].startswith("TypeError returns_acc_only must return three values"), lines
    assert lines["returns_two"].startswith("TypeError returns_two must return three values"), lines
    assert lines["no_cast"].startswith("AssertionError Both operands must be same dtype"), lines
