"""Chapter 3's graded exercises: the reference scores full marks, every named mistake is caught and
named, learners' own correct variants pass, and broken functions get a clear message."""

from __future__ import annotations

import math

import pytest
import torch

from riverbank.grading import grade, render
from riverbank.grading.exercises import EXERCISES
from riverbank.grading.exercises import ch03
from riverbank.grading.runner import COMPLETE, NOT_ATTEMPTED

SINUSOID, ROTATION = EXERCISES["3.1"], EXERCISES["3.2"]


def name(x):
    """Readable test ids: the exercise id, or the function's name."""
    return getattr(x, "id", None) or getattr(x, "__name__", None) or str(x)


def test_chapter_3_exercises_are_registered():
    assert [ex.id for ex in ch03.EXERCISES] == ["3.1", "3.2"]
    assert SINUSOID is ch03.SINUSOIDAL and ROTATION is ch03.ROTATION




@pytest.mark.parametrize("ex", [SINUSOID, ROTATION], ids=name)
def test_named_mistakes_are_distinct(ex):
    assert len({m.message for m in ex.mistakes}) == len(ex.mistakes)


# --- learners' own code: correct variants must pass, buggy ones must be named ---------------------
# Written the way learners write them (float32, loops, the Annotated Transformer's exp-log trick),
# not copies of the detectors.

def annotated_transformer_style(max_len, d_model):
    pe = torch.zeros(max_len, d_model)
    position = torch.arange(0, max_len).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d_model, 2) * -(math.log(10000.0) / d_model))
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe


def float32_pow(max_len, d_model):
    pos = torch.arange(max_len, dtype=torch.float32)[:, None]
    i = torch.arange(d_model // 2, dtype=torch.float32)
    angles = pos / torch.pow(10000.0, 2 * i / d_model)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).reshape(max_len, d_model)


def python_loops(max_len, d_model):
    rows = []
    for pos in range(max_len):
        row = []
        for dim in range(d_model):
            angle = pos / 10000 ** (2 * (dim // 2) / d_model)
            row.append(math.sin(angle) if dim % 2 == 0 else math.cos(angle))
        rows.append(row)
    return torch.tensor(rows)


def rotation_with_block_diag(k, d_model):
    blocks = []
    for i in range(d_model // 2):
        w = 1 / 10000 ** (2 * i / d_model)
        c, s = math.cos(k * w), math.sin(k * w)
        blocks.append(torch.tensor([[c, s], [-s, c]]))
    return torch.block_diag(*blocks)


def rotation_float32_vectorised(k, d_model):
    w = 10000.0 ** (-torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)
    c, s = torch.cos(k * w), torch.sin(k * w)
    M = torch.zeros(d_model, d_model)
    idx = torch.arange(0, d_model, 2)
    M[idx, idx], M[idx, idx + 1], M[idx + 1, idx], M[idx + 1, idx + 1] = c, s, -s, c
    return M


@pytest.mark.parametrize("ex,fn", [(SINUSOID, annotated_transformer_style), (SINUSOID, float32_pow),
                                   (SINUSOID, python_loops), (ROTATION, rotation_with_block_diag),
                                   (ROTATION, rotation_float32_vectorised)],
                         ids=name)
def test_correct_learner_variants_get_full_marks(ex, fn):
    # The tolerance (atol 1e-4) must accept float32 angles at position 511, and loops must be fast enough.
    result = grade(ex, fn)
    assert result.status == COMPLETE and result.earned == ex.points, render(result)


def swapped(max_len, d_model):
    pe = torch.zeros(max_len, d_model)
    pos = torch.arange(max_len).unsqueeze(1)
    angle = pos / 10000 ** (torch.arange(0, d_model, 2) / d_model)
    pe[:, 0::2] = torch.cos(angle)
    pe[:, 1::2] = torch.sin(angle)
    return pe


def seed_prose_reading(max_len, d_model):  # "sine for even positions, cosine for odd"
    rows = []
    for pos in range(max_len):
        f = math.sin if pos % 2 == 0 else math.cos
        rows.append([f(pos / 10000 ** (2 * (dim // 2) / d_model)) for dim in range(d_model)])
    return torch.tensor(rows)


def i_over_d(max_len, d_model):
    pos = torch.arange(max_len).unsqueeze(1).float()
    i = torch.arange(d_model // 2).float()
    angle = pos / 10000 ** (i / d_model)
    pe = torch.zeros(max_len, d_model)
    pe[:, 0::2], pe[:, 1::2] = angle.sin(), angle.cos()
    return pe


def own_dimension_index(max_len, d_model):
    pos = torch.arange(max_len).unsqueeze(1).float()
    j = torch.arange(d_model).float()
    angle = pos / 10000 ** (j / d_model)
    return torch.where(j % 2 == 0, angle.sin(), angle.cos())


def two_j_over_d(max_len, d_model):
    pe = torch.zeros(max_len, d_model)
    pos = torch.arange(max_len).unsqueeze(1).float()
    for j in range(0, d_model, 2):
        pe[:, j] = torch.sin(pos[:, 0] / 10000 ** (2 * j / d_model))
        pe[:, j + 1] = torch.cos(pos[:, 0] / 10000 ** (2 * j / d_model))
    return pe


def from_one(max_len, d_model):
    return annotated_transformer_style(max_len + 1, d_model)[1:].clone()


def concatenated(max_len, d_model):
    pe = annotated_transformer_style(max_len, d_model)
    return torch.cat([pe[:, ::2], pe[:, 1::2]], dim=-1)


def backwards_rotation(k, d_model):  # the textbook rotation matrix [[cos, -sin], [sin, cos]]
    blocks = [torch.tensor([[math.cos(k * w), -math.sin(k * w)], [math.sin(k * w), math.cos(k * w)]])
              for w in (10000 ** (-2 * i / d_model) for i in range(d_model // 2))]
    return torch.block_diag(*blocks)


def no_frequency(k, d_model):
    c, s = math.cos(k), math.sin(k)
    return torch.block_diag(*[torch.tensor([[c, s], [-s, c]])] * (d_model // 2))


LEARNER_BUGS = [
    (SINUSOID, swapped, "sine and cosine are swapped"),
    (SINUSOID, seed_prose_reading, "sine on the even positions"),
    (SINUSOID, i_over_d, "10000^(i/d_model)"),
    (SINUSOID, own_dimension_index, "dimension 2i+1 uses 10000^((2i+1)/d_model)"),
    (SINUSOID, two_j_over_d, "so 4i/d_model"),
    (SINUSOID, from_one, "positions start at 1"),
    (SINUSOID, concatenated, "sines in the first half"),
    (ROTATION, backwards_rotation, "the matrix is transposed"),
    (ROTATION, no_frequency, "every block turns by k radians"),
]


@pytest.mark.parametrize("ex,fn,named", LEARNER_BUGS, ids=name)
def test_realistic_bugs_are_named_first(ex, fn, named):
    result = grade(ex, fn)
    assert result.earned < ex.points
    assert result.mistakes and named in result.mistakes[0], render(result)


def test_the_rotation_of_the_wrong_direction_still_scores_the_identity_case():
    # k = 0 is the identity either way: partial credit, not zero, for a sign error.
    result = grade(ROTATION, backwards_rotation)
    passed = {c.name for c in result.checks if c.passed}
    assert passed == {"edge: k = 0 (the identity)"}


# --- robustness: crashes, NaN, wrong shapes and types get a clear message --------------------------

def feedback(ex, fn):
    result = grade(ex, fn)
    assert result.earned < ex.points
    return render(result)


@pytest.mark.parametrize(
    "ex,fn,message",
    [
        (SINUSOID, lambda max_len, d_model: None, "returned None: did you forget `return`?"),
        (SINUSOID, lambda max_len, d_model: [[0.0, 1.0]], "expected a torch.Tensor, but your function returned list"),
        (SINUSOID, lambda max_len, d_model: torch.full((max_len, d_model), float("nan")), "NaN"),
        (SINUSOID, lambda max_len, d_model: torch.zeros(max_len, d_model // 2), "has shape"),
        (SINUSOID, lambda max_len, d_model: python_loops(max_len, d_model).double(),
         "dtype torch.float64, expected torch.float32"),
        (SINUSOID, lambda max_len: torch.zeros(max_len, 2), "your function takes (max_len) but is called with (max_len, d_model)"),
        (ROTATION, lambda k, d_model: torch.eye(d_model + 1), "your output has shape"),
        (ROTATION, lambda k, d_model: torch.full((d_model, d_model), float("inf")), "inf"),
        (ROTATION, lambda k, d_model: 1 / (k - k), "raised ZeroDivisionError: division by zero"),
    ],
    ids=["none", "list", "nan", "shape", "dtype", "signature", "rotation-shape", "inf", "crash"],
)
def test_bad_outputs_get_clear_messages(ex, fn, message):
    assert message in feedback(ex, fn)


@pytest.mark.parametrize("ex", [SINUSOID, ROTATION], ids=name)
def test_stub_is_not_attempted(ex):
    def stub(*args):
        raise NotImplementedError

    result = grade(ex, stub)
    assert result.status == NOT_ATTEMPTED and "not attempted" in render(result)
