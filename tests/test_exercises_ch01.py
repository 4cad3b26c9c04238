"""Chapter 1's graded exercises: learner-style bugs are named and pointed to a hint or a section, bad
code never crashes the grader, the checks are fast, and the notebook headings match the specs."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from pathlib import Path

import pytest
import torch

from riverbank.grading import grade, render
from riverbank.grading.exercises import EXERCISES
from riverbank.grading.exercises import ch01
from riverbank.grading.runner import COMPLETE, NOT_ATTEMPTED

IDS = ("1.1", "1.2", "1.3", "1.4")
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("exercise_id", IDS)
def test_a_stub_is_not_attempted(exercise_id):
    def stub(*args):
        raise NotImplementedError

    assert grade(EXERCISES[exercise_id], stub).status == NOT_ATTEMPTED


def test_the_package_attention_passes_1_1():
    from riverbank.attention import attention_weights
    assert grade(EXERCISES["1.1"], lambda Q, K: attention_weights(Q, K)).status == COMPLETE


def test_the_build_reproduces_the_chapters_blended_bank():
    out = ch01.self_attention(torch.tensor(ch01.TOY_E), 1.2 * torch.eye(3), 0.9 * torch.eye(3), torch.eye(3))
    assert torch.allclose(out[0], torch.tensor([0.5335, 0.1427, -0.0523]), atol=1e-4)  # chapter 1, cell 13


def test_the_experiments_answer_is_a_float_not_printed_in_the_chapter():
    answer = ch01.bank_river_similarity()
    assert isinstance(answer, float) and 0.1 < answer < 0.3
    for folder in ("chapters", "solutions"):
        text = (ROOT / folder / "01_bank_by_the_river.ipynb").read_text()
        assert f"{answer:.4f}" not in text and f"{answer:.5f}" not in text


def test_the_large_scores_case_means_its_name():
    """Scores around 100 where a right softmax is not one-hot, a softmax without the maximum
    subtracted overflows float32, and forgetting √d_k gives other weights: each loses the case."""
    ex = EXERCISES["1.1"]
    case = next(c for c in ex.cases if c.name.startswith("edge: large scores"))
    Q, K = case.make_inputs()
    scores = Q.double() @ K.double().mT / math.sqrt(Q.shape[-1])  # (2, 3, 4)
    main, last = scores[:, :-1], scores[:, -1]
    assert 95 < float(main.abs().mean()) < 105 and 15 < float(last.abs().mean()) < 25
    largest = torch.softmax(main, dim=-1).max(dim=-1).values
    assert float(largest.max()) < 0.9 and float(largest.min()) > 0.3  # not one-hot
    assert torch.exp((Q @ K.mT / math.sqrt(Q.shape[-1]))[:, :-1]).isinf().any()  # overflows float32
    one = dataclasses.replace(ex, cases=(case,))
    assert grade(one, ex.reference).earned == case.points
    unscaled = lambda Q, K: torch.softmax(Q @ K.mT, dim=-1)  # noqa: E731
    over_d_k = lambda Q, K: torch.softmax(Q @ K.mT / Q.shape[-1], dim=-1)  # noqa: E731
    no_max = lambda Q, K: (lambda e: e / e.sum(-1, keepdim=True))(torch.exp(Q @ K.mT / Q.shape[-1] ** 0.5))  # noqa: E731
    for fn, named in ((unscaled, "not divided by √d_k"), (over_d_k, "divided by d_k instead"),
                      (no_max, "overflows")):
        result = grade(one, fn)
        assert result.earned == 0 and named in result.mistakes[0], render(result)


# --- learner-style bugs --------------------------------------------------------------------------

def weights_batched_dot_T(Q, K):
    return torch.softmax(Q @ K.T / math.sqrt(Q.shape[-1]), dim=-1)


def self_attention_not_transposed(E, W_Q, W_K, W_V):
    Q, K, V = E @ W_Q, E @ W_K, E @ W_V
    return torch.softmax(Q @ K.transpose(-2, -1) / math.sqrt(Q.shape[-1]), dim=-1) @ V


def self_attention_swapped(E, W_Q, W_K, W_V):
    q, k = E @ W_K.T, E @ W_Q.T
    return torch.softmax(q @ k.mT / q.shape[-1] ** 0.5, -1) @ (E @ W_V.T)


def self_attention_fixed(E, W_Q, W_K, W_V):
    q, k = E @ W_Q.T, E @ W_K.T
    return torch.softmax(q @ k.mT / q.shape[-1] ** 0.5, -1) @ (E @ W_V.T)


@pytest.mark.filterwarnings("ignore:The use of `x.T`")
def test_k_dot_T_on_a_batch_names_the_transpose_fix():
    text = render(grade(EXERCISES["1.1"], weights_batched_dot_T))
    assert "K.transpose(-2, -1)" in text


def test_weights_used_without_their_transpose_are_named_and_pointed_to_hint_2():
    result = grade(EXERCISES["1.2"], self_attention_not_transposed)
    text = render(result)
    assert result.earned < EXERCISES["1.2"].points
    assert "stored as nn.Linear stores them" in result.mistakes[0], text
    assert 'hint("1.2", 2)' in text


def test_swapped_queries_and_keys_point_to_the_symmetry_section():
    result = grade(EXERCISES["1.2"], self_attention_swapped)
    text = render(result)
    assert "queries and keys are swapped" in result.mistakes[0], text
    assert "Learned projections break the symmetry" in text
    assert grade(EXERCISES["1.2"], self_attention_fixed).earned == EXERCISES["1.2"].points


def test_every_section_named_is_a_heading_of_chapter_1():
    nb = json.loads((ROOT / "chapters" / "01_bank_by_the_river.ipynb").read_text())
    headings = {re.sub(r"[*`$]", "", line.lstrip("#").strip())
                for c in nb["cells"] if c["cell_type"] == "markdown"
                for line in "".join(c["source"]).splitlines() if line.startswith("#")}
    for ex in ch01.EXERCISES:
        for m in ex.mistakes:
            if m.section:
                assert m.section.split("“")[1].rstrip("”") in headings, m.section


def test_a_rounded_experiment_answer_fails_and_a_tensor_answer_passes():
    ex = EXERCISES["1.4"]
    assert grade(ex, lambda: round(ch01.bank_river_similarity(), 3)).earned == 0
    assert grade(ex, lambda: torch.tensor(ch01.bank_river_similarity())).earned == ex.points


# --- bad code never crashes the grader -----------------------------------------------------------

BAD = [
    lambda *a: None,
    lambda *a: "a string",
    lambda *a: torch.zeros(1),
    lambda *a: torch.zeros(2, 2, dtype=torch.int64),
    lambda *a: (torch.zeros(1), torch.zeros(1)),
    lambda *a: 1 / 0,
]


@pytest.mark.parametrize("exercise_id", IDS)
@pytest.mark.parametrize("index", range(len(BAD)))
def test_bad_code_gets_feedback_not_a_crash(exercise_id, index):
    ex = EXERCISES[exercise_id]
    fn = BAD[index]
    result = grade(ex, lambda *args: fn(*args))
    assert result.earned < ex.points
    assert render(result)


@pytest.mark.parametrize("exercise_id", IDS)
def test_the_reference_checks_are_fast(exercise_id):
    ex = EXERCISES[exercise_id]
    start = time.perf_counter()
    assert grade(ex, ex.reference).status == COMPLETE
    assert time.perf_counter() - start < 2.0


def test_the_notebook_headings_give_each_exercises_level_and_points():
    nb = json.loads((ROOT / "solutions" / "01_bank_by_the_river.ipynb").read_text())
    cells = {c.get("id"): "".join(c["source"]) for c in nb["cells"]}
    for ex in ch01.EXERCISES:
        n = ex.id.replace(".", "-")
        heading = cells[f"ex-{n}-md"].splitlines()[0]
        assert heading == f"## Exercise {ex.id}: {heading.split(': ', 1)[1].rsplit(' (', 1)[0]} " \
                          f"({ex.level}, {ex.points:g} points)", heading
        assert f'check("{ex.id}", {ex.function_name})' == cells[f"ex-{n}-check"].strip()
