"""Chapter 2's graded exercises: the references score full marks, and each named mistake is caught and named."""

from __future__ import annotations

import math

import pytest
import torch

from riverbank.attention import causal_mask as package_causal_mask
from riverbank.attention import padding_mask as package_padding_mask
from riverbank.attention import scaled_dot_product_attention as package_sdpa
from riverbank.grading import grade, render
from riverbank.grading.exercises import EXERCISES
from riverbank.grading.runner import COMPLETE, NOT_ATTEMPTED

IDS = ("2.1", "2.2", "2.3")


def test_the_package_functions_pass_the_exercises():
    # The exercises ask for what riverbank.attention provides (its extra arguments have defaults).
    assert grade(EXERCISES["2.1"], package_sdpa).status == COMPLETE
    assert grade(EXERCISES["2.2"], lambda n: package_causal_mask(n)).status == COMPLETE
    assert grade(EXERCISES["2.3"], lambda lengths, max_len: package_padding_mask(lengths, max_len)).status == COMPLETE


@pytest.mark.parametrize("exercise_id", IDS)
def test_a_stub_is_not_attempted(exercise_id):
    def stub(*args):
        raise NotImplementedError

    assert grade(EXERCISES[exercise_id], stub).status == NOT_ATTEMPTED


# --- the mistakes the issue names, written the way learners write them ---------------------------

def sdpa_mask_inverted(q, k, v, mask=None):
    s = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(k.size(-1))
    if mask is not None:
        s = s.masked_fill(mask, -math.inf)
    return torch.softmax(s, dim=-1) @ v


def sdpa_mask_after_softmax(q, k, v, mask=None):
    w = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)
    if mask is not None:
        w = w * mask
    return w @ v


def sdpa_mask_filled_with_zero(q, k, v, mask=None):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = torch.where(mask, s, torch.zeros_like(s))
    return s.softmax(-1) @ v


def sdpa_scores_times_mask(q, k, v, mask=None):  # the same mistake, written another way
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return torch.softmax(s if mask is None else s * mask, dim=-1) @ v


def sdpa_no_sqrt_dk(q, k, v, mask=None):
    s = q @ k.transpose(-2, -1)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    w = torch.softmax(s, dim=-1)
    return torch.nan_to_num(w) @ v


def sdpa_nan_rows(q, k, v, mask=None):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s.masked_fill(mask == 0, float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def sdpa_minus_1e9(q, k, v, mask=None):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s.masked_fill(~mask, -1e9)
    return torch.softmax(s, dim=-1) @ v


def causal_upper(n):
    return torch.ones(n, n).triu().bool()


def causal_no_diagonal(n):
    i = torch.arange(n)
    return i[None, :] < i[:, None]


def causal_seed_004(n):
    return torch.triu(torch.ones(n, n), diagonal=1).bool()


def padding_one_too_many(lengths, max_len):
    return torch.arange(max_len).unsqueeze(0) <= lengths.unsqueeze(1)


def padding_one_too_few(lengths, max_len):
    return torch.arange(1, max_len + 1)[None, :] < lengths[:, None]


def padding_true_at_pad(lengths, max_len):
    return ~(torch.arange(max_len)[None] < lengths[:, None])


LEARNER_BUGS = [
    ("2.1", sdpa_mask_inverted, "the mask is inverted"),
    ("2.1", sdpa_mask_after_softmax, "applied after the softmax"),
    ("2.1", sdpa_mask_filled_with_zero, "filled with 0 instead of −∞"),
    ("2.1", sdpa_scores_times_mask, "filled with 0 instead of −∞"),
    ("2.1", sdpa_no_sqrt_dk, "not divided by √d_k"),
    ("2.1", sdpa_nan_rows, "gets NaN"),
    ("2.1", sdpa_minus_1e9, "a finite fill"),
    ("2.2", causal_upper, "upper triangle"),
    ("2.2", causal_no_diagonal, "diagonal is excluded"),
    ("2.2", causal_seed_004, "True marks the future"),
    ("2.3", padding_one_too_many, "off by one: each row keeps one position too many"),
    ("2.3", padding_one_too_few, "off by one: each row keeps one position too few"),
    ("2.3", padding_true_at_pad, "True marks the padding"),
]


@pytest.mark.parametrize("exercise_id,fn,named", LEARNER_BUGS, ids=lambda x: getattr(x, "__name__", str(x)))
def test_each_named_mistake_loses_points_and_is_named_first(exercise_id, fn, named):
    ex = EXERCISES[exercise_id]
    result = grade(ex, fn)
    assert result.earned < ex.points
    assert result.mistakes and named in result.mistakes[0], render(result)
    assert f"Likely mistake: {result.mistakes[0]}" in render(result)


def test_a_wrong_mask_shows_true_and_false_where_it_differs():
    text = render(grade(EXERCISES["2.2"], causal_no_diagonal))
    assert "values differ: 4 of 16 entries are not the expected True/False" in text
    assert "yours, row 0:    [False, False, False, False]" in text
    assert "expected, row 0: [True, False, False, False]" in text


def test_a_float_mask_is_told_to_be_bool():
    text = render(grade(EXERCISES["2.2"], lambda n: torch.tril(torch.ones(n, n))))
    assert "dtype torch.float32, expected torch.bool" in text
    assert "not bool" in text
    text = render(grade(EXERCISES["2.3"], lambda lengths, max_len: (torch.arange(max_len)[None] < lengths[:, None]).long()))
    assert "dtype torch.int64, expected torch.bool" in text


# --- broken functions get a clear message, never a crash -----------------------------------------

@pytest.mark.filterwarnings("ignore:The use of `x.T`")  # torch warns before it raises; the learner's bug
def test_a_crash_shows_the_error_and_the_learners_line():
    def scaled_dot_product_attention(q, k, v, mask=None):
        scores = q @ k.T / math.sqrt(q.shape[-1])  # k.T on a batched tensor
        return torch.softmax(scores, dim=-1) @ v

    result = grade(EXERCISES["2.1"], scaled_dot_product_attention)
    text = render(result)
    assert result.earned < EXERCISES["2.1"].points
    assert "your function raised RuntimeError" in text
    assert "in scaled_dot_product_attention: scores = q @ k.T / math.sqrt(q.shape[-1])" in text
    assert "k.transpose(-2, -1)" in text  # the hint names the fix


def test_nan_output_is_reported():
    def nan_everywhere(q, k, v, mask=None):
        return torch.full((*q.shape[:-1], v.shape[-1]), float("nan"))

    text = render(grade(EXERCISES["2.1"], nan_everywhere))
    assert "your output has" in text and "NaN" in text and "where the answer is finite" in text


def test_wrong_shape_is_reported():
    def returns_the_weights(q, k, v, mask=None):
        return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)

    text = render(grade(EXERCISES["2.1"], returns_the_weights))
    assert "your output has shape (2, 3, 5, 5), expected (2, 3, 5, 8)" in text


def test_a_mask_of_the_wrong_shape_is_reported():
    def transposed(lengths, max_len):
        return (torch.arange(max_len)[None, :] < lengths[:, None]).T

    text = render(grade(EXERCISES["2.3"], transposed))
    assert "your output has shape (4, 3), expected (3, 4)" in text
    assert "Likely mistake: the mask is transposed" in text


def test_a_missing_mask_argument_is_a_signature_message():
    def no_mask(q, k, v):
        return package_sdpa(q, k, v)

    text = render(grade(EXERCISES["2.1"], no_mask))
    assert "your function takes (q, k, v) but is called with (q, k, v, mask)" in text


def test_changing_lengths_in_place_is_reported():
    def mutates(lengths, max_len):
        lengths -= 0  # harmless...
        lengths.clamp_(max=max_len - 1)  # ...but this one changes the caller's tensor
        return torch.arange(max_len)[None, :] < lengths[:, None]

    text = render(grade(EXERCISES["2.3"], mutates))
    assert "changed its input lengths in place" in text
