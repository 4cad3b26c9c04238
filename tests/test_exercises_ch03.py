"""Chapter 3's graded exercises: the references score full marks, stubs are "not attempted", every
named mistake is named when a learner makes it, bad code gets a clear message and never crashes the
grader, and the checks are fast enough for a notebook."""

from __future__ import annotations

import itertools
import math
import time

import pytest
import torch

from riverbank.grading import grade, render
from riverbank.grading.exercises import EXERCISES
from riverbank.grading.exercises import ch03
from riverbank.grading.runner import COMPLETE, NOT_ATTEMPTED
from riverbank.grading.spec import BUILD, EXPERIMENT, WARM_UP
from riverbank.positions import offset_rotation, sinusoidal_encoding

ENCODE, ROTATION, GAP, KEPT = (EXERCISES[i] for i in ("3.1", "3.2", "3.3", "3.4"))
ALL = [ENCODE, ROTATION, GAP, KEPT]


def name(x):
    """Readable test ids: the exercise id, or the function's name."""
    return getattr(x, "id", None) or getattr(x, "__name__", None) or str(x)


def test_chapter_3_exercises_are_registered_in_three_levels():
    assert [ex.id for ex in ch03.EXERCISES] == ["3.1", "3.2", "3.3", "3.4"]
    assert [ex.level for ex in ALL] == [WARM_UP, BUILD, EXPERIMENT, EXPERIMENT]
    assert all(1 <= len(ex.hints) <= 3 for ex in ALL)


@pytest.mark.parametrize("ex", ALL, ids=name)
def test_every_mistake_points_to_a_hint_or_a_real_section(ex):
    import nbformat

    headings = {line.lstrip("#").strip().replace("$", "")
                for cell in nbformat.read("chapters/03_positional_encodings.ipynb", as_version=4).cells
                if cell.cell_type == "markdown" for line in cell.source.splitlines() if line.startswith("#")}
    for m in ex.mistakes:
        assert m.hint or m.section, m.message
        if m.section:
            assert m.section.startswith("chapter 3, section “") and m.section[len("chapter 3, section “"):-1] in headings


@pytest.mark.parametrize("ex", ALL, ids=name)
def test_named_mistakes_are_distinct(ex):
    assert len({m.message for m in ex.mistakes}) == len(ex.mistakes)


# --- the references and the package ------------------------------------------------------------------

def test_encode_positions_extends_the_chapter_table():
    positions = torch.tensor([[0, 0, 1, 2], [0, 1, 2, 3]])
    table = sinusoidal_encoding(4, 8)
    assert torch.equal(ch03.encode_positions(positions, 8), table[positions])
    assert ch03.encode_positions(torch.tensor(5), 6).shape == (6,)
    assert torch.allclose(ch03.encode_positions(torch.arange(3), 4, 100.0),
                          sinusoidal_encoding(3, 4, base=100.0), atol=1e-7)


def test_the_rotation_moves_encodings_of_any_positions_by_k():
    for k in (3, -7):
        M = offset_rotation(k, 16)
        pe = ch03.encode_positions(torch.arange(-10, 40), 16)
        assert torch.allclose(pe @ M.T, ch03.encode_positions(torch.arange(-10, 40) + k, 16), atol=1e-5)


def test_the_experiments_measure_what_they_say():
    x, (w_q, w_k, w_v) = ch03.order_setup(torch.float64)
    assert ch03.causal_equivariance_gap() > 0.5  # the mask breaks equivariance, clearly
    assert ch03._largest_change(mask_a="none", mask_b="none") < 1e-12  # without it, none at all
    # Position 2 keeps its output exactly when the same token stands there with the same two before it.
    assert ch03.orders_keeping_position_2() == math.factorial(2) * math.factorial(2)
    # ... and every other order changes it clearly, so the 1e-5 threshold is no knife edge.
    from riverbank.attention import scaled_dot_product_attention as attend
    causal = torch.tril(torch.ones(5, 5, dtype=torch.bool))
    f = lambda t: attend(t @ w_q, t @ w_k, t @ w_v, causal)  # noqa: E731
    changes = sorted(float((f(x[list(o)])[2] - f(x)[o[2]]).abs().max()) for o in itertools.permutations(range(5)))
    assert changes[3] < 1e-12 and changes[4] > 1e-2


def test_experiment_tolerances_come_from_float32():
    tol = GAP.answer_tol(ch03.causal_equivariance_gap())
    assert 0 < tol < 1e-4
    assert abs(ch03._largest_change(torch.float32) - ch03.causal_equivariance_gap()) <= tol / 2


# --- grading: full marks, not attempted, each mistake named ----------------------------------------

@pytest.mark.parametrize("ex", ALL, ids=name)
def test_the_reference_gets_full_marks_quickly(ex):
    start = time.perf_counter()
    result = grade(ex, ex.reference)
    assert result.status == COMPLETE and result.earned == ex.points, render(result)
    assert time.perf_counter() - start < 5


def test_a_float32_measurement_gets_full_marks():
    result = grade(GAP, lambda: ch03._largest_change(torch.float32))
    assert result.earned == GAP.points, render(result)


@pytest.mark.parametrize("ex,mistake", [(ex, m) for ex in ALL for m in ex.mistakes],
                         ids=lambda v: getattr(v, "id", None) or getattr(v, "message", "")[:40])
def test_each_named_mistake_is_named(ex, mistake):
    result = grade(ex, mistake.function)
    assert result.earned < ex.points
    assert result.mistakes and result.mistakes[0] == mistake.message, render(result)


@pytest.mark.parametrize("ex", ALL, ids=name)
def test_stub_is_not_attempted(ex):
    def stub(*args):
        raise NotImplementedError

    result = grade(ex, stub)
    assert result.status == NOT_ATTEMPTED and "not attempted" in render(result)


# --- robustness: crashes, NaN, wrong shapes and types get a clear message --------------------------

def feedback(ex, fn):
    result = grade(ex, fn)
    assert result.earned < ex.points
    return render(result)


@pytest.mark.parametrize(
    "ex,fn,message",
    [
        (ENCODE, lambda positions, d_model, base: None, "returned None"),
        (ENCODE, lambda positions, d_model, base: [[0.0, 1.0]], "expected a torch.Tensor"),
        (ENCODE, lambda positions, d_model, base: torch.full((*positions.shape, d_model), float("nan")), "NaN"),
        (ENCODE, lambda positions, d_model, base: torch.zeros(*positions.shape, d_model // 2), "has shape"),
        (ENCODE, lambda positions, d_model, base: ch03.encode_positions(positions, d_model, base).double(),
         "dtype torch.float64, expected torch.float32"),
        (ENCODE, lambda positions, d_model: torch.zeros(2), "it should be encode_positions"),
        (ROTATION, lambda k, d_model: torch.eye(d_model + 1), "your output has shape"),
        (ROTATION, lambda k, d_model: torch.full((d_model, d_model), float("inf")), "inf"),
        (ROTATION, lambda k, d_model: 1 / (k - k), "raised ZeroDivisionError"),
        (GAP, lambda: None, "returned None"),
        (GAP, lambda: "2.5", "expected a number"),
        (GAP, lambda: float("nan"), "not a finite number"),
        (GAP, lambda: torch.tensor([1.0, 2.0]), "expected a number"),
        (KEPT, lambda: 1 / 0, "raised ZeroDivisionError"),
        (KEPT, lambda: 5, "is not within"),
        (GAP, lambda x: 1.0, "takes (x)"),
    ],
    ids=["none", "list", "nan", "shape", "dtype", "signature", "rotation-shape", "inf", "crash",
         "answer-none", "answer-string", "answer-nan", "answer-tensor", "answer-crash", "answer-wrong",
         "answer-signature"],
)
def test_bad_outputs_get_clear_messages(ex, fn, message):
    assert message in feedback(ex, fn)


def test_the_feedback_never_prints_an_experiments_answer():
    text = render(grade(GAP, lambda: 1.0))
    truth = GAP.reference()
    assert f"{truth:.3g}" not in text and f"{truth:.3f}" not in text, text
