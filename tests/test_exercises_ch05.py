"""Chapter 5's graded exercises: the references score full marks, stubs are "not attempted", bad
code never crashes the grader, named mistakes are named and point to a hint, the training check
is repeatable and fits its time budget, and the experiment's tolerance comes from float32."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from riverbank.grading import grade, render
from riverbank.grading.exercises import EXERCISES, ch05
from riverbank.grading.runner import COMPLETE, FAILED, NOT_ATTEMPTED
from riverbank.grading.spec import BUILD, EXPERIMENT, WARM_UP
from riverbank.tasks import Reversal

RMS, TOP_KP, BLOCK, TRAIN, HEAD = (EXERCISES[f"5.{i}"] for i in range(1, 6))


def test_chapter_5_exercises_are_registered_with_levels_and_hints():
    assert [ex.id for ex in ch05.EXERCISES] == ["5.1", "5.2", "5.3", "5.4", "5.5"]
    assert [ex.level for ex in ch05.EXERCISES] == [WARM_UP, WARM_UP, BUILD, BUILD, EXPERIMENT]
    assert all(len(ex.hints) == 3 for ex in ch05.EXERCISES)
    for ex in ch05.EXERCISES:
        assert all(m.hint or m.section for m in ex.mistakes), ex.id
        kinds = {c.kind for c in ex.cases}
        assert kinds == {"experiment"} or {"fixed", "random", "edge"} <= kinds, ex.id


# --- references and stubs -----------------------------------------------------------------------------

class _StubBlock(nn.Module):
    def __init__(self, d_model, n_heads, d_ff, norm="layernorm", ffn="gelu"):
        super().__init__()
        raise NotImplementedError


class _StubForward(ch05._Block):
    def forward(self, x):
        raise NotImplementedError


def rms_norm_backward(x, weight, grad_out, eps):
    raise NotImplementedError


def top_k_top_p_filter(probs, k, p):
    raise NotImplementedError


def train_reversal_lm(task, generator):
    raise NotImplementedError


def best_single_head():
    raise NotImplementedError


@pytest.mark.parametrize("ex,fn", [(RMS, ch05.rms_norm_backward), (TOP_KP, ch05.top_k_top_p_filter),
                                   (BLOCK, ch05._Block), (HEAD, ch05.best_single_head)], ids=lambda x: str(x)[:20])
def test_the_reference_gets_full_marks(ex, fn):
    result = grade(ex, fn)
    assert result.status == COMPLETE and result.earned == ex.points, render(result)


@pytest.mark.parametrize("ex,fn", [(RMS, rms_norm_backward), (TOP_KP, top_k_top_p_filter), (BLOCK, _StubBlock),
                                   (BLOCK, _StubForward), (TRAIN, train_reversal_lm), (HEAD, best_single_head)])
def test_a_stub_is_not_attempted(ex, fn):
    assert grade(ex, fn).status == NOT_ATTEMPTED


# --- bad code never crashes the grader --------------------------------------------------------------

class _NoForward(ch05._Block):  # the right layers, and forward misspelt
    forward = nn.Module.forward

    def foward(self, x):
        return x


class _ReturnsNone(ch05._Block):
    def forward(self, x):
        return None


class _WrongInit(nn.Module):
    def __init__(self, config):
        super().__init__()


@pytest.mark.parametrize("fn,text", [
    (lambda config, state, x: x, "expected your class DecoderBlock"),
    (ch05._Block(8, 2, 16), "hand in the class itself"),
    (_NoForward, "no forward method"),
    (_ReturnsNone, "returned None"),
    (_WrongInit, "it should be DecoderBlock(d_model, n_heads, d_ff"),
])
def test_a_block_of_the_wrong_kind_is_explained(fn, text):
    result = grade(BLOCK, fn)
    assert result.earned == 0 and text in render(result), render(result)


@pytest.mark.parametrize("ex,fn", [
    (RMS, lambda x, weight, grad_out, eps: None), (RMS, lambda x, weight, grad_out, eps: (x[..., :1], weight)),
    (RMS, lambda x, weight, grad_out, eps: (x.double(), weight.double())),
    (RMS, lambda x, weight, grad_out, eps: 1 / 0), (RMS, lambda x, weight, grad_out, eps: (x, None)),
    (RMS, lambda x, weight, grad_out, eps: (x, weight, grad_out)), (RMS, lambda x, weight, grad_out, eps: "x"),
    (RMS, lambda x, weight, eps: x),
    (TOP_KP, lambda probs, k, p: probs.argmax(-1)), (TOP_KP, lambda probs, k, p: (probs, k)),
    (HEAD, lambda: "layer 1"), (HEAD, lambda: None), (HEAD, lambda: torch.ones(3)),
])
def test_bad_code_gets_feedback_not_a_crash(ex, fn):
    result = grade(ex, fn)
    assert result.earned < ex.points and render(result)


def test_the_training_check_explains_what_it_was_handed():
    assert "expected your function train_reversal_lm" in render(grade(TRAIN, ch05._ReferenceLM))
    assert "it should be train_reversal_lm(task, generator)" in render(grade(TRAIN, lambda task: None))
    result = grade(TRAIN, lambda task, generator: "a model")
    assert result.earned == 0 and "it should return the trained model" in render(result)


# --- named mistakes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("ex", [RMS, TOP_KP, BLOCK], ids=lambda ex: ex.id)
def test_every_named_mistake_is_named_when_handed_in(ex):
    for mistake in ex.mistakes:
        fn = mistake.function
        if ex is RMS:  # the learner's form, (grad_x, grad_weight), of the table the check compares
            fn = mistake.function.__wrapped__
        if ex is BLOCK:
            wrong = mistake.function

            class Handed(ch05._Block):  # a learner's class that computes the mistake
                def forward(self, x, wrong=wrong):
                    state = {k: v.clone() for k, v in self.state_dict().items()}
                    config = self.config
                    return wrong(config, state, x)

                def __init__(self, d_model, n_heads, d_ff, norm="layernorm", ffn="gelu"):
                    super().__init__(d_model, n_heads, d_ff, norm, ffn)
                    self.config = dict(d_model=d_model, n_heads=n_heads, d_ff=d_ff, norm=norm, ffn=ffn)
            fn = Handed
        result = grade(ex, fn)
        assert result.earned < ex.points, mistake.message
        assert result.mistakes and result.mistakes[0] == mistake.message, (mistake.message, render(result))


def test_a_named_mistake_points_to_its_hint_and_section():
    text = render(grade(RMS, RMS.mistakes[0].function.__wrapped__))
    assert "the root mean square is treated as a constant" in text
    assert 'Explained in hint("5.1", 1) and in chapter 5, section “RMSNorm”.' in text


# --- 5.1: the gradients against cases whose answer is known ------------------------------------------

def _float64(*shape, seed=0, eps=1e-6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64) + 0.5
    weight = 0.5 + torch.rand(shape[-1], generator=g, dtype=torch.float64)
    return x, weight, torch.randn(*shape, generator=g, dtype=torch.float64), eps


def test_one_feature_has_the_derivative_worked_by_hand():
    # d = 1: y = w x / √(x² + eps), so dy/dx = w · eps / (x² + eps)^(3/2), dy/dw = x / √(x² + eps)
    x, weight, grad_out = (torch.tensor([[0.3], [-2.0]], dtype=torch.float64), torch.tensor([1.5], dtype=torch.float64),
                           torch.tensor([[1.0], [0.5]], dtype=torch.float64))
    eps = 0.1
    grad_x, grad_weight = ch05.rms_norm_backward(x, weight, grad_out, eps)
    assert torch.allclose(grad_x, grad_out * 1.5 * eps / (x ** 2 + eps) ** 1.5, rtol=1e-12)
    assert torch.allclose(grad_weight, (grad_out * x / (x ** 2 + eps).sqrt()).sum(0), rtol=1e-12)


def test_the_gradient_along_x_is_what_scale_invariance_leaves():
    # Σ_i x_i ∂L/∂x_i = (1 − mean(x̂²)) Σ ĝ x̂ = eps / (mean(x²) + eps) · Σ ĝ x̂: zero when eps = 0
    for eps in (0.0, 1e-6, 0.1):
        x, weight, grad_out, _ = _float64(2, 3, 8, eps=eps)
        grad_x, _ = ch05.rms_norm_backward(x, weight, grad_out, eps)
        mean_square = x.pow(2).mean(-1)
        x_hat = x / (mean_square[..., None] + eps).sqrt()
        expected = eps / (mean_square + eps) * (weight * grad_out * x_hat).sum(-1)
        assert torch.allclose((x * grad_x).sum(-1), expected, atol=1e-12)


def test_a_token_of_zeros_gets_weight_times_grad_out_over_root_eps():
    x, weight, grad_out, eps = _float64(2, 3, 8)
    x[:, 0] = 0.0
    grad_x, _ = ch05.rms_norm_backward(x, weight, grad_out, eps)
    assert torch.allclose(grad_x[:, 0], weight * grad_out[:, 0] / eps ** 0.5, rtol=1e-12)


@pytest.mark.parametrize("shape", [(2, 3, 8), (6, 16), (1, 1, 1), (2, 2, 2, 5)])
def test_the_formula_equals_autograd_in_float64(shape):
    x, weight, grad_out, eps = _float64(*shape, seed=sum(shape))
    table = ch05._as_table(*ch05.rms_norm_backward(x, weight, grad_out, eps))
    assert torch.allclose(table, RMS.reference(x, weight, grad_out, eps), rtol=1e-12, atol=1e-12)
    assert table.shape == (x[..., 0].numel() + 1, shape[-1])


def test_each_wrong_variant_is_the_gradient_its_name_says():
    # the two that are written as the gradient of another forward pass: checked against autograd of it
    x, weight, grad_out, eps = _float64(2, 3, 8, eps=0.1)
    layer_norm = ch05._autograd(lambda x, w, eps: torch.nn.functional.layer_norm(x, x.shape[-1:], w, None, eps))
    eps_outside = ch05._autograd(lambda x, w, eps: w * x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps))
    for wrong, forward in (("layer_norm", layer_norm), ("eps_outside_exact", eps_outside)):
        mine = ch05._rms_backward(x, weight, grad_out, eps, frozenset({wrong}))
        for a, b in zip(mine, forward(x, weight, grad_out, eps)):
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-12), wrong


def test_autograd_is_switched_off_during_the_check_and_restored_after():
    before = (torch.autograd.grad, torch.autograd.backward, torch.Tensor.backward)

    def with_autograd(x, weight, grad_out, eps):
        x = x.clone().requires_grad_()
        (x * 2).sum().backward()
        raise AssertionError("backward() ran")

    text = render(grade(RMS, with_autograd))
    assert "autograd is switched off while this exercise is checked" in text and "backward() ran" not in text
    assert (torch.autograd.grad, torch.autograd.backward, torch.Tensor.backward) == before
    x = torch.ones(2, requires_grad=True)
    (x * 3).sum().backward()
    assert torch.equal(x.grad, torch.full((2,), 3.0))


def test_the_outputs_kind_and_shape_are_explained():
    def swapped(x, weight, grad_out, eps):
        grad_x, grad_weight = ch05.rms_norm_backward(x, weight, grad_out, eps)
        return grad_weight, grad_x

    def grad_weight_per_token(x, weight, grad_out, eps):
        grad_x, _ = ch05.rms_norm_backward(x, weight, grad_out, eps)
        return grad_x, grad_out * x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()

    result = grade(RMS, swapped)
    assert result.earned == 0 and result.mistakes == [ch05.SWAPPED], render(result)
    result = grade(RMS, grad_weight_per_token)
    assert result.earned == 0 and result.mistakes == [ch05.GRAD_WEIGHT_SHAPE], render(result)
    text = render(grade(RMS, lambda x, weight, grad_out, eps: x))
    assert "returned one tensor" in text and "return the pair (grad_x, grad_weight)" in text


def test_the_experiments_mistakes_are_named():
    for mistake in HEAD.mistakes:
        result = grade(HEAD, mistake.function)
        assert result.mistakes == [mistake.message], render(result)


def test_wrong_parameter_names_say_which_names_are_expected():
    class Renamed(ch05._Block):
        def __init__(self, d_model, n_heads, d_ff, norm="layernorm", ffn="gelu"):
            super().__init__(d_model, n_heads, d_ff, norm, ffn)
            self.mlp = self.ffn
            del self.ffn

        def forward(self, x):
            return x

    text = render(grade(BLOCK, Renamed))
    assert "ffn.gate/ffn.up/ffn.down" in text


# --- the training check -------------------------------------------------------------------------------

def test_the_training_check_passes_the_reference_the_same_way_twice_within_its_budget():
    started = time.perf_counter()
    first = grade(TRAIN, ch05.train_reversal_lm)
    seconds = time.perf_counter() - started
    assert first.status == COMPLETE, render(first)
    second = grade(TRAIN, ch05.train_reversal_lm)
    assert render(second) == render(first)
    # The graded submission runs every check twice: this one must stay well inside the 90 s budget.
    assert seconds < 20, seconds


def test_a_model_that_sees_the_future_fails_even_when_it_generates_well():
    class Peeking(nn.Module):  # the answer is right, but the first logits read the last token
        def forward(self, tokens):
            n = (tokens.shape[1] - 1) // 2
            logits = torch.zeros(*tokens.shape, 11)
            prompt = tokens[:, :n]
            for t in range(tokens.shape[1]):
                j = t - n
                if 0 <= j < n:
                    logits[torch.arange(len(tokens)), t, prompt[:, n - 1 - j]] = 1.0
            return logits + 1e-3 * tokens[:, -1:, None].float()

    task = Reversal(4)
    assert ch05._peeks(Peeking(), task, task.held_out()[:8])
    assert not ch05._peeks(ch05._ReferenceLM(task.seq_len - 1).eval(), task, task.held_out()[:8])
    verdict = ch05._train_judge({"exact_match": 1.0, "peeks": True}, task)
    assert "it sees the future" in verdict


def test_the_package_model_is_refused():
    from riverbank.model import TinyDecoder, ModelConfig

    value = ch05._measure(TinyDecoder(ModelConfig()), Reversal())
    assert "the course's TinyDecoder" in value["problem"]


# --- the experiment -----------------------------------------------------------------------------------

def test_the_best_single_head_is_well_inside_the_range_and_its_tolerance_is_below_one_sequence_per_flip():
    truth = ch05.best_single_head()
    assert 0.5 < truth < 0.95                  # not guessable from "all heads draw the anti-diagonal"
    tol = ch05._head_tol()
    assert 0.5 / 1000 <= tol < 0.01
    others = [m.function() for m in HEAD.mistakes]
    assert all(abs(o - truth) > 2 * tol for o in others)
