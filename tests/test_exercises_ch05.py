"""Chapter 5's graded exercises: the reference scores full marks, every named mistake is caught and
named, learners' own correct variants pass, and their usual bugs are named."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from riverbank.grading import grade, render
from riverbank.grading.exercises import EXERCISES
from riverbank.grading.exercises import ch05
from riverbank.grading.runner import COMPLETE

LAYER_NORM, BLOCK, TOP_P = EXERCISES["5.1"], EXERCISES["5.2"], EXERCISES["5.3"]
ALL = (LAYER_NORM, BLOCK, TOP_P)


def name(x):
    return getattr(x, "id", None) or getattr(x, "__name__", None) or str(x)


def test_chapter_5_exercises_are_registered():
    assert [ex.id for ex in ch05.EXERCISES] == ["5.1", "5.2", "5.3"]
    assert LAYER_NORM is ch05.LAYER_NORM and BLOCK is ch05.PRE_LN_BLOCK and TOP_P is ch05.TOP_P




def test_top_p_cases_sit_away_from_the_knife_edge():
    # a running total within float error of p would make "keep the crossing token" ambiguous; the
    # one case that sits on it on purpose is exactly on it, in float32 and float64 alike
    for case in TOP_P.cases:
        probs, p = case.make_inputs()
        for dtype in (torch.float32, torch.float64):
            s = probs.to(dtype).sort(dim=-1, descending=True).values
            before = (s.cumsum(-1) - s)[s > 1e-6]
            if "exactly" in case.name:
                assert (before == p).sum() == probs.shape[0], case.name  # one exact tie per row
                assert (before - p)[before != p].abs().min() > 1e-3, case.name
                assert all(len(set(row)) == len(row) for row in probs.tolist())  # no tied tokens either
            else:
                assert (before - p).abs().min() > 1e-3, case.name


def test_top_p_exact_tie_stops_at_the_token_that_reaches_p():
    probs, p = next(c for c in TOP_P.cases if "exactly" in c.name).make_inputs()
    kept = TOP_P.reference(probs, p) > 0
    assert kept.sum(-1).tolist() == [2, 3]
    assert ((probs * kept).sum(-1) == p).all()


def test_block_inputs_are_reproducible_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = BLOCK.cases[1].make_inputs()
    assert torch.equal(torch.rand(1), expected_next)
    b = BLOCK.cases[1].make_inputs()
    with torch.no_grad():
        assert torch.equal(BLOCK.reference(*a), BLOCK.reference(*b))


# --- learners' own code ---------------------------------------------------------------------------

def ln_with_var_correction0(x, weight, bias):
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, keepdim=True, correction=0)
    return (x - mean) / (var + 1e-5).sqrt() * weight + bias


def ln_functional(x, weight, bias):
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps=1e-5)


def ln_with_eps_argument(x, weight, bias, eps=1e-5):
    centred = x - x.mean(dim=-1, keepdim=True)
    return weight * centred * torch.rsqrt(centred.pow(2).mean(dim=-1, keepdim=True) + eps) + bias


def block_with_names(x, attention, ffn, norm1, norm2):
    attended = attention(norm1(x))
    h = x + attended
    transformed = ffn(norm2(h))
    return h + transformed


def top_p_hugging_face_style(probs, p):
    sorted_probs, sorted_idx = torch.sort(probs, descending=True)
    cumulative = torch.cumsum(sorted_probs, dim=-1)
    remove = cumulative > p
    remove[..., 1:] = remove[..., :-1].clone()
    remove[..., 0] = False
    remove = remove.scatter(-1, sorted_idx, remove)
    out = probs.masked_fill(remove, 0.0)
    return out / out.sum(-1, keepdim=True)


def top_p_loops(probs, p):
    flat = probs.reshape(-1, probs.shape[-1])
    out = torch.zeros_like(flat)
    for r in range(flat.shape[0]):
        total = 0.0
        for i in torch.argsort(flat[r], descending=True).tolist():
            out[r, i] = flat[r, i]
            total += float(flat[r, i])
            if total >= p:
                break
        out[r] /= out[r].sum()
    return out.reshape(probs.shape)


@pytest.mark.parametrize("ex,fn", [(LAYER_NORM, ln_with_var_correction0), (LAYER_NORM, ln_functional),
                                   (LAYER_NORM, ln_with_eps_argument), (BLOCK, block_with_names),
                                   (TOP_P, top_p_loops)], ids=name)
def test_correct_learner_variants_get_full_marks(ex, fn):
    result = grade(ex, fn)
    assert result.status == COMPLETE and result.earned == ex.points, render(result)


def ln_std_default(x, weight, bias):  # Tensor.std divides by d - 1
    return weight * (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) ** 2 + 1e-5).sqrt() + bias


def ln_eps_after_sqrt(x, weight, bias):
    mu = x.mean(-1, keepdim=True)
    sigma = torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True))
    return weight * (x - mu) / (sigma + 1e-5) + bias


def ln_over_sequence(x, weight, bias):
    mu = x.mean(-2, keepdim=True)
    var = ((x - mu) ** 2).mean(-2, keepdim=True)
    return weight * (x - mu) / torch.sqrt(var + 1e-5) + bias


def block_post_ln(x, attention, ffn, norm1, norm2):
    x = norm1(x + attention(x))
    x = norm2(x + ffn(x))
    return x


def block_forgot_residual(x, attention, ffn, norm1, norm2):
    h = attention(norm1(x))
    return h + ffn(norm2(h))


def top_p_cumsum_at_most_p(probs, p):  # keeps only tokens whose running total stays <= p
    s, idx = probs.sort(descending=True)
    keep = (s.cumsum(-1) <= p).scatter(-1, idx, s.cumsum(-1) <= p)
    out = probs * keep
    return out / out.sum(-1, keepdim=True)


def top_p_without_renormalising(probs, p):
    s, idx = probs.sort(descending=True)
    keep = (s.cumsum(-1) - s < p)
    return probs * keep.scatter(-1, idx, keep)


@pytest.mark.parametrize("ex,fn,message", [
    (LAYER_NORM, ln_std_default, ch05.LAYER_NORM_MISTAKES[0].message),
    (LAYER_NORM, ln_eps_after_sqrt, ch05.LAYER_NORM_MISTAKES[1].message),
    (LAYER_NORM, ln_over_sequence, ch05.LAYER_NORM_MISTAKES[3].message),
    (BLOCK, block_post_ln, ch05.BLOCK_MISTAKES[0].message),
    (BLOCK, block_forgot_residual, ch05.BLOCK_MISTAKES[1].message),
    (TOP_P, top_p_cumsum_at_most_p, "the token that crosses p is left out: keep it"),
    (TOP_P, top_p_without_renormalising, "the kept probabilities are not renormalised"),
    # removes where cumsum > p, shifted: at a total of exactly p it keeps one token more
    (TOP_P, top_p_hugging_face_style, "a running total equal to p reaches p: stop there"),
], ids=lambda x: name(x) if callable(x) else "")
def test_learners_bugs_are_named(ex, fn, message):
    result = grade(ex, fn)
    assert result.earned < ex.points
    assert message in result.mistakes, render(result)
