"""Chapter 6's graded exercises: learners' typical bugs are caught and named, including in a Triton step."""

from __future__ import annotations

import importlib.util
import math

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
    ("6.2", tiled_inverse_factor, "exp(m_new − m_old): inverted"),
]


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
        acc = acc + tl.dot(p, v, input_precision="ieee")
        return m_new, l_i, acc

    @triton.jit
    def forgot_mask(q, k, v, m_i, l_i, acc, allowed):
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        return m_new, l_i * alpha + tl.sum(p, 1), acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")

    @triton.jit
    def wrong_dot(q, k, v, m_i, l_i, acc, allowed):
        s = tl.dot(q, k)  # k is (BLOCK_N, D): it needs tl.trans
        return m_i, l_i, acc


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
