"""The grader: full marks for references, "not attempted" for stubs, named mistakes, and no crash on bad code."""

from __future__ import annotations

import dataclasses
import math
import threading

import pytest
import torch

from riverbank.grading import check, grade, render
from riverbank.grading.exercises import EXERCISES
from riverbank.grading.runner import COMPLETE, NOT_ATTEMPTED
from riverbank.grading.spec import EXPERIMENT

ALL = sorted(EXERCISES)


def plain(ex):
    """The exercise as a function of its checks' inputs: a class-taking exercise (``adapt``) is
    graded here through its reference and mistakes, which are such functions; the chapters' tests
    grade the classes themselves."""
    return dataclasses.replace(ex, adapt=None)


def stub(*args):
    raise NotImplementedError


@pytest.mark.parametrize("exercise_id", ALL)
def test_reference_scores_full_marks(exercise_id):
    ex = plain(EXERCISES[exercise_id])
    result = grade(ex, ex.reference)
    assert result.status == COMPLETE
    assert result.earned == ex.points > 0
    assert "All checks pass." in render(result)


@pytest.mark.parametrize("exercise_id", ALL)
def test_stub_is_not_attempted(exercise_id):
    result = grade(plain(EXERCISES[exercise_id]), stub)
    assert result.status == NOT_ATTEMPTED and result.earned == 0
    assert "not attempted" in render(result)


MISTAKES = [(ex_id, i) for ex_id in ALL for i in range(len(EXERCISES[ex_id].mistakes))]


@pytest.mark.parametrize("exercise_id,index", MISTAKES)
def test_every_known_mistake_loses_points_and_is_named_first(exercise_id, index):
    ex = plain(EXERCISES[exercise_id])
    mistake = ex.mistakes[index]
    result = grade(ex, mistake.function)
    assert result.earned < ex.points
    assert result.mistakes[0] == mistake.message, render(result)
    assert f"Likely mistake: {mistake.message}." in render(result)


@pytest.mark.parametrize("exercise_id", ALL)
def test_every_exercise_has_fixed_random_and_edge_checks(exercise_id):
    """An experiment has one answer; a judged training run one bar. Every other exercise is checked
    on fixed, random and edge-case inputs."""
    ex = EXERCISES[exercise_id]
    kinds = {case.kind for case in ex.cases}
    if ex.level == EXPERIMENT:
        assert kinds == {"experiment"} and len(ex.cases) == 1
    elif ex.judge is None:
        assert kinds == {"fixed", "random", "edge"}


# Buggy solutions written the way learners write them, not copies of the detectors. Exercise 1.1
# takes batched (.., n, d_k) inputs, 1.2 learned projections stored as nn.Linear stores them,
# (d_out, d_model), and 1.3 compares every row of a with every row of b.
def unscaled(Q, K):
    return (Q @ K.transpose(-2, -1)).softmax(dim=-1)


def over_d_k(Q, K):
    return torch.softmax(Q @ K.transpose(-1, -2) / K.shape[-1], dim=-1)


def softmax_over_queries(Q, K):
    s = Q @ K.transpose(-2, -1) / Q.size(-1) ** 0.5
    return torch.exp(s - s.max()) / torch.exp(s - s.max()).sum(dim=-2, keepdim=True)


def hand_softmax(Q, K):
    s = Q @ K.transpose(-2, -1) / math.sqrt(Q.shape[-1])
    return torch.exp(s) / torch.sum(torch.exp(s), dim=-1, keepdim=True)


def forgot_transpose(Q, K):
    return torch.softmax(torch.matmul(Q, K) / math.sqrt(Q.shape[-1]), dim=-1)


def self_attention_weights_transposed(E, W_Q, W_K, W_V):
    Q, K, V = E @ W_Q.T, E @ W_K.T, E @ W_V.T
    w = torch.softmax(Q @ K.transpose(-2, -1) / math.sqrt(Q.shape[-1]), dim=-1)
    return w.transpose(-2, -1) @ V


def self_attention_unscaled(E, W_Q, W_K, W_V):
    Q, K, V = E @ W_Q.T, E @ W_K.T, E @ W_V.T
    return torch.softmax(Q @ K.transpose(-2, -1), dim=-1) @ V


def cosine_dot_only(a, b):
    return torch.einsum("nd,md->nm", a, b)


def cosine_squared_norms(a, b):
    return (a @ b.T) / ((a**2).sum(1)[:, None] * (b**2).sum(1)[None, :])


LEARNER_BUGS = [
    ("1.1", unscaled, "not divided by √d_k"),
    ("1.1", over_d_k, "divided by d_k instead of √d_k"),
    ("1.1", hand_softmax, "overflows"),
    ("1.1", forgot_transpose, "K is not transposed"),
    ("1.2", self_attention_weights_transposed, "weights are transposed"),
    ("1.2", self_attention_unscaled, "not divided by √d_k"),
    ("1.3", cosine_dot_only, "not normalised"),
    ("1.3", cosine_squared_norms, "squared norms"),
]


@pytest.mark.parametrize("exercise_id,fn,named", LEARNER_BUGS, ids=lambda x: getattr(x, "__name__", str(x)))
def test_realistic_bugs_are_named_first(exercise_id, fn, named):
    ex = EXERCISES[exercise_id]
    result = grade(ex, fn)
    assert result.earned < ex.points
    assert result.mistakes and named in result.mistakes[0], render(result)


# --- robustness: every kind of broken function gets a clear message and a score ------------------

EX = EXERCISES["1.1"]


def feedback(fn, exercise=EX):
    result = grade(exercise, fn)
    assert result.earned < exercise.points
    return render(result)


def test_exception_shows_the_learners_own_line():
    def attention_weights(Q, K):
        scores = Q @ K.T
        return scores.softmax(dim=-1) / undefined_name  # noqa: F821

    text = feedback(attention_weights)
    assert "raised NameError: name 'undefined_name' is not defined" in text
    assert "in attention_weights: return scores.softmax(dim=-1) / undefined_name" in text


@pytest.mark.parametrize(
    "fn,message",
    [
        (lambda Q, K: None, "returned None: did you forget `return`?"),
        (lambda Q, K: [[0.5, 0.5]], "expected a torch.Tensor, but your function returned list"),
        (lambda Q, K: torch.full((Q.shape[0], K.shape[0]), float("nan")), "NaN"),
        (lambda Q, K: torch.full((Q.shape[0], K.shape[0]), float("inf")), "inf"),
        (lambda Q, K: torch.zeros(K.shape[0], Q.shape[0] + 1), "has shape"),
        (lambda Q, K: EX.reference(Q, K).double(), "dtype torch.float64, expected torch.float32"),
        (lambda Q, K: EX.reference(Q, K).to("meta"), "your tensor is on meta, expected cpu"),
        (lambda Q, K: EX.reference(Q.mul_(2), K), "changed its input Q in place"),
        (lambda Q: Q, "your function takes (Q) but is called with (Q, K)"),
    ],
    ids=["none", "list", "nan", "inf", "shape", "dtype", "device", "mutation", "signature"],
)
def test_bad_outputs_get_clear_messages(fn, message):
    assert message in feedback(fn)


def test_not_a_function():
    assert "expected a function named attention_weights, got int 3" in feedback(3)


def test_megabytes_of_printing_are_contained(capsys):
    def chatty(Q, K):
        print("x" * 3_000_000)
        return EX.reference(Q, K)

    result = grade(EX, chatty)
    assert result.earned == EX.points  # printing costs no points...
    text = render(result)
    assert "printed 3,000,001 characters" in text  # ...but is reported once,
    assert text.count("printed 3,000,001") == 1
    assert len(capsys.readouterr().out) == 0  # and none of it reaches the notebook


def _loops(Q, K):
    while True:
        try:
            pass
        except BaseException:  # a learner who swallows everything still gets cut off
            pass


@pytest.mark.parametrize("in_thread", [False, True], ids=["main-thread", "worker-thread"])
def test_infinite_loop_is_cut_off(in_thread):
    quick = dataclasses.replace(EX, time_limit=0.3)
    box = {}
    if in_thread:  # outside the main thread the grader cannot use signals
        t = threading.Thread(target=lambda: box.update(r=grade(quick, _loops)))
        t.start()
        t.join(10)
        result = box["r"]
    else:
        result = grade(quick, _loops)
    text = render(result)
    assert result.earned == 0
    assert "did not return within 0.3 s" in text
    assert "skipped: an earlier check timed out" in text  # one timeout, not one per check


def test_sys_exit_in_learner_code_is_feedback():
    def leaves(Q, K):
        raise SystemExit(2)

    assert "raised SystemExit: 2" in feedback(leaves)


def test_check_never_raises(capsys):
    check("9.9", stub)
    assert "There is no exercise '9.9'" in capsys.readouterr().out
    check("1.1", None, record=False)
    assert "expected a function named attention_weights, got None" in capsys.readouterr().out


def test_in_a_jupyter_kernel_a_hanging_function_is_cut_off_and_the_notebook_goes_on(tmp_path):
    # The kernel runs cells in its main thread, so the signal-based time limit applies there.
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in (
        "from riverbank.grading import check\n"
        "def attention_weights(Q, K):\n    while True:\n        pass",
        'check("1.1", attention_weights)',
        'print("the notebook went on")',
    )])
    NotebookClient(nb, kernel_name="python3", timeout=60, resources={"metadata": {"path": str(tmp_path)}}).execute()
    feedback = "".join(o.get("text", "") for o in nb.cells[1].outputs)
    assert "did not return within 5 s" in feedback and "0/10 points" in feedback
    assert nb.cells[2].outputs[0].text == "the notebook went on\n"


def test_a_written_function_calling_an_unwritten_one_is_not_reported_as_not_attempted():
    def attention_weights(Q, K):
        raise NotImplementedError

    def self_attention(E, W_Q, W_K, W_V):
        return attention_weights(E @ W_Q.T, E @ W_K.T) @ (E @ W_V.T)

    result = grade(EXERCISES["1.2"], self_attention)
    assert result.status != NOT_ATTEMPTED and result.earned == 0
    assert "calls attention_weights(), which is not written yet" in render(result)


# --- which mistake is named (the rule: riverbank/grading/spec.py) --------------------------------

UNSCALED = EX.mistakes[0]  # "the scores are not divided by √d_k"


def test_all_nan_output_names_no_mistake():
    result = grade(EX, lambda Q, K: torch.full((Q.shape[0], K.shape[0]), float("nan")))
    assert result.earned == 0 and result.mistakes == [], render(result)


def test_a_mistake_matching_one_check_by_coincidence_is_not_named():
    """Unscaled on the toy example only, and wrong in another way everywhere else."""
    toy = EX.cases[0].make_inputs()[0]

    def attention_weights(Q, K):
        if Q.shape == toy.shape and torch.equal(Q, toy):
            return UNSCALED.function(Q, K)
        return EX.reference(Q, K).flip(-1)

    result = grade(EX, attention_weights)
    assert UNSCALED.message not in result.mistakes, render(result)


def test_a_mistake_is_named_when_it_matches_every_check_where_it_differs():
    """Unscaled everywhere, except the single-key check, where any weights are 1."""
    def attention_weights(Q, K):
        if K.shape[0] == 1:
            return torch.ones(Q.shape[0], 1)
        return UNSCALED.function(Q, K)

    result = grade(EX, attention_weights)
    assert result.mistakes[0] == UNSCALED.message, render(result)


def test_a_mistake_that_would_fail_a_check_the_learner_passed_is_not_named():
    """Right on the toy example, where the unscaled scores give other weights; unscaled elsewhere."""
    toy = EX.cases[0].make_inputs()[0]

    def attention_weights(Q, K):
        if Q.shape == toy.shape and torch.equal(Q, toy):
            return EX.reference(Q, K)
        return UNSCALED.function(Q, K)

    result = grade(EX, attention_weights)
    assert UNSCALED.message not in result.mistakes, render(result)


def test_a_second_problem_with_nans_does_not_hide_the_mistake():
    """Softmax over the queries everywhere, and, on the large-scores check, NaN in some entries
    (a second problem): the NaNs are left out, and the finite entries still name the mistake."""
    over_queries = next(m for m in EX.mistakes if "wrong axis" in m.message).function

    def attention_weights(Q, K):
        out = over_queries(Q, K)
        if Q.abs().max() > 50:
            out = out.clone()
            out[..., 0] = float("nan")
        return out

    result = grade(EX, attention_weights)
    assert "wrong axis" in result.mistakes[0], render(result)


def test_shape_errors_name_the_line_that_dropped_an_axis():
    def rms_norm_backward(x, weight, grad_out, eps):
        rms = torch.sqrt(x.pow(2).mean(-1)[..., None] + eps)
        dot = (weight * grad_out * x).mean(-1)
        grad_x = (weight * grad_out - x * dot / rms ** 2) / rms
        return grad_x, (grad_out * x / rms).reshape(-1, x.shape[-1]).sum(0)

    text = feedback(rms_norm_backward, EXERCISES["5.1"])
    line = rms_norm_backward.__code__.co_firstlineno + 2  # the dot line: the rms line put its axis back
    assert f"Likely mistake: line {line}: .mean() drops its axis; add keepdim=True" in text


def test_error_hints_can_require_the_failing_line_to_match():
    def attention_weights(Q, K):
        return torch.softmax(Q @ K / Q.shape[-1] ** 0.5, dim=-1)

    ex = dataclasses.replace(EX, error_hints=(("cannot be multiplied", "uses .T", r"\.T\b"),))
    assert "uses .T" not in feedback(attention_weights, ex)
    ex = dataclasses.replace(EX, error_hints=(("cannot be multiplied", "no .T here", r"Q @ K /"),))
    assert "no .T here." in feedback(attention_weights, ex)


def test_returning_a_tuple_says_to_return_the_tensor_alone():
    text = feedback(lambda Q, K: (EX.reference(Q, K), Q))
    assert "expected one torch.Tensor of shape (2, 2), but your function returned a tuple of 2" in text


def test_a_module_called_norm_on_self_is_not_read_as_a_reduction():
    from riverbank.grading.runner import _drops_axis

    assert _drops_axis("h = self.norm(x)") is None
    assert _drops_axis("v = x.norm(dim=-1)") == "norm"
