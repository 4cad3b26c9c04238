"""Chapter 4's graded exercises (4.4 loads all-MiniLM-L6-v2 once, on the CPU): the references score
full marks and agree with riverbank.heads, stubs
are "not attempted", every named mistake is named, learners' classes are built from a config and
loaded with given weights, bad code gets a clear message and never crashes the grader."""

from __future__ import annotations

import math
import time

import nbformat
import pytest
import torch
from torch import nn

from riverbank.attention import causal_mask
from riverbank.grading import grade, render
from riverbank.grading.exercises import EXERCISES
from riverbank.grading.exercises import ch04
from riverbank.grading.runner import COMPLETE, NOT_ATTEMPTED
from riverbank.grading.spec import BUILD, EXPERIMENT, WARM_UP
from riverbank.heads import MultiHeadAttention, merge_heads

CONTRIB, MODULE, POOL, ENTROPY = (EXERCISES[i] for i in ("4.1", "4.2", "4.3", "4.4"))
ALL = [CONTRIB, MODULE, POOL, ENTROPY]


def name(x):
    return getattr(x, "id", None) or getattr(x, "__name__", None) or str(x)


def _headings(path):
    return {line.lstrip("#").strip().replace("$", "")
            for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "markdown"
            for line in cell.source.splitlines() if line.startswith("#")}


def test_chapter_4_exercises_are_registered_in_three_levels():
    assert [ex.id for ex in ch04.EXERCISES] == ["4.1", "4.2", "4.3", "4.4"]
    assert [ex.level for ex in ALL] == [WARM_UP, BUILD, EXPERIMENT, EXPERIMENT]
    assert all(1 <= len(ex.hints) <= 3 for ex in ALL)


@pytest.mark.parametrize("ex", ALL, ids=name)
def test_every_mistake_points_to_a_hint_or_a_real_section(ex):
    chapters = {n: _headings(f"chapters/{f}") for n, f in
                [(2, "02_queries_keys_values.ipynb"), (4, "04_multi_head_attention.ipynb"), (7, "07_kv_cache.ipynb")]}
    for m in ex.mistakes:
        assert m.hint or m.section, m.message
        if m.section:
            chapter, heading = m.section.split(", section “")
            assert heading[:-1] in chapters[int(chapter.split()[1])], m.section


@pytest.mark.parametrize("ex", ALL, ids=name)
def test_feedback_lines_fit_the_page(ex):
    for message in [m.message for m in ex.mistakes] + [hint for _, hint, *_ in ex.error_hints]:
        assert len(f"  Also consistent with: {message}.") <= 80, message


@pytest.mark.parametrize("ex", ALL, ids=name)
def test_named_mistakes_are_distinct(ex):
    messages = [m.message for m in ex.mistakes]
    groups = [m for i, m in enumerate(messages) if i == 0 or m != messages[i - 1]]
    assert len(set(groups)) == len(groups)


# --- the references are the course's layer --------------------------------------------------------

def test_contributions_add_up_to_the_merged_heads_times_w_o():
    heads, w_o = torch.randn(2, 3, 4, 5), torch.randn(15, 7)
    assert torch.allclose(ch04.head_contributions(heads, w_o).sum(1), merge_heads(heads) @ w_o, atol=1e-5)


@pytest.mark.parametrize("n_kv", [None, 4, 2, 1])
def test_the_module_reference_equals_riverbank_heads(n_kv):
    config, state, x = ch04._case(7, 2, 6, 16, 4, n_kv)
    layer = MultiHeadAttention(16, 4, bias=False, n_kv_heads=n_kv)
    with torch.no_grad():
        for ours, theirs in zip(ch04.PARAMETERS, [layer.q_proj, layer.k_proj, layer.v_proj, layer.out_proj]):
            theirs.weight.copy_(state[f"{ours}.weight"])
        want = layer(x, mask=causal_mask(6))[0]
    assert torch.allclose(ch04.causal_self_attention(config, state, x), want, atol=1e-6)


def test_mean_pooling_beats_keeping_the_first_head_and_is_far_from_free():
    error = ch04.gqa_pooling_error()
    assert 0.1 < error < ch04._pooling_error(how="first")
    tol = POOL.answer_tol(error)
    assert 0 < tol < 1e-4 and abs(ch04._pooling_error(torch.float32) - error) <= tol / 2


def test_mean_entropy_is_far_below_uniform_and_its_tolerance_is_float32s():
    entropy = ch04.mean_attention_entropy()
    rows = ch04._entropies()
    uniform = sum(math.log(len(ids)) * int(words.sum()) for _, ids, words in rows) / sum(
        int(words.sum()) for _, _, words in rows)
    assert 1.0 < entropy < 0.75 * uniform
    tol = ENTROPY.answer_tol(entropy)
    assert 0 < tol < 1e-4 and abs(ch04._mean_entropy(torch.float32) - entropy) <= tol / 2


def test_entropy_of_one_sentence_matches_a_direct_computation():
    tokenizer, model = ch04._minilm(torch.float64)
    encoded = tokenizer(ch04.ENTROPY_SENTENCES[0], return_tensors="pt")
    with torch.no_grad():
        a = torch.cat(model(**encoded, output_attentions=True).attentions)
    direct = -(a * a.log()).sum(-1)
    assert torch.allclose(ch04._entropies()[0][0], direct, atol=1e-12)
    assert ch04._entropies()[0][2].tolist() == [False] + [True] * (a.shape[-1] - 2) + [False]


def test_a_padded_batch_done_right_gets_the_answer():
    padded = ch04._entropies(batched=True)
    total = torch.cat([e[..., w & (ids != 0)].flatten() for e, ids, w in padded]).mean().item()
    assert abs(total - ch04.mean_attention_entropy()) <= ENTROPY.answer_tol(total) / 2


def test_the_solutions_notebook_lists_the_graders_sentences():
    ns = _solution_namespace()
    assert tuple(ns["entropy_sentences"]) == ch04.ENTROPY_SENTENCES


# --- grading -----------------------------------------------------------------------------------------

def _solution_namespace():
    nb = nbformat.read("solutions/04_multi_head_attention.ipynb", as_version=4)
    ns: dict = {}
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.get("id") in ("ex-4-1-solution", "ex-4-2-solution",
                                                          "ex-4-3-setup", "ex-4-3-solution", "ex-4-4-setup",
                                                          "ex-4-4-solution"):
            exec(compile("import math, torch\nfrom torch import Tensor, nn\n" + cell.source, cell.id, "exec"), ns)
    return ns


def test_the_solutions_get_full_marks_quickly():
    ns = _solution_namespace()  # loads the model, as the notebook's setup cell does before its check
    fns = [ns["head_contributions"], ns["CausalSelfAttention"], ns["gqa_pooling_error"], ns["mean_attention_entropy"]]
    for ex, fn in zip(ALL, fns):
        start = time.perf_counter()
        result = grade(ex, fn)
        assert result.status == COMPLETE and result.earned == ex.points, render(result)
        assert time.perf_counter() - start < 5


@pytest.mark.parametrize("ex", [CONTRIB, POOL, ENTROPY], ids=name)
def test_the_function_references_get_full_marks(ex):
    result = grade(ex, ex.reference)
    assert result.earned == ex.points, render(result)


@pytest.mark.parametrize("ex,mistake", [(ex, m) for ex in (CONTRIB, POOL, ENTROPY) for m in ex.mistakes],
                         ids=lambda v: getattr(v, "id", None) or getattr(v, "message", "")[:40])
def test_each_named_mistake_of_a_function_is_named(ex, mistake):
    result = grade(ex, mistake.function)
    assert result.earned < ex.points
    assert result.mistakes and result.mistakes[0] == mistake.message, render(result)


def _as_class(fn):
    """A learner's class whose forward is the given mistake, with the right parameters."""
    class Wrong(nn.Module):
        def __init__(self, d_model, n_heads, n_kv_heads=None):
            super().__init__()
            self.config = {"d_model": d_model, "n_heads": n_heads, "n_kv_heads": n_kv_heads}
            kv = (n_kv_heads or n_heads) * (d_model // n_heads)
            self.w_q, self.w_o = nn.Linear(d_model, d_model, bias=False), nn.Linear(d_model, d_model, bias=False)
            self.w_k, self.w_v = nn.Linear(d_model, kv, bias=False), nn.Linear(d_model, kv, bias=False)

        def forward(self, x):
            return fn(self.config, {k: v for k, v in self.state_dict().items()}, x)
    return Wrong


@pytest.mark.parametrize("mistake", MODULE.mistakes, ids=lambda m: m.message[:40])
def test_each_named_mistake_of_the_module_is_named(mistake):
    result = grade(MODULE, _as_class(mistake.function))
    assert result.earned < MODULE.points
    assert result.mistakes and result.mistakes[0] == mistake.message, render(result)


@pytest.mark.parametrize("ex", [CONTRIB, POOL, ENTROPY], ids=name)
def test_stub_is_not_attempted(ex):
    def stub(*args):
        raise NotImplementedError

    assert grade(ex, stub).status == NOT_ATTEMPTED


@pytest.mark.parametrize("where", ["__init__", "forward"])
def test_a_class_stub_is_not_attempted(where):
    class CausalSelfAttention(nn.Module):
        def __init__(self, d_model, n_heads, n_kv_heads=None):
            super().__init__()
            if where == "__init__":
                raise NotImplementedError
            kv = (n_kv_heads or n_heads) * (d_model // n_heads)  # __init__ written, forward not yet
            self.w_q, self.w_o = nn.Linear(d_model, d_model, bias=False), nn.Linear(d_model, d_model, bias=False)
            self.w_k, self.w_v = nn.Linear(d_model, kv, bias=False), nn.Linear(d_model, kv, bias=False)

        def forward(self, x):
            raise NotImplementedError

    result = grade(MODULE, CausalSelfAttention)
    assert result.status == NOT_ATTEMPTED and "not attempted" in render(result)


# --- robustness --------------------------------------------------------------------------------------

class NoForward(nn.Module):
    def __init__(self, d_model, n_heads, n_kv_heads=None):
        super().__init__()
        kv = (n_kv_heads or n_heads) * (d_model // n_heads)
        self.w_q, self.w_o = nn.Linear(d_model, d_model, bias=False), nn.Linear(d_model, d_model, bias=False)
        self.w_k, self.w_v = nn.Linear(d_model, kv, bias=False), nn.Linear(d_model, kv, bias=False)


class TooFewLayers(nn.Module):
    def __init__(self, d_model, n_heads, n_kv_heads=None):
        super().__init__()
        self.w_q = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x):
        return x


class ReturnsTuple(nn.Module):
    def __init__(self, d_model, n_heads, n_kv_heads=None):
        super().__init__()
        kv = (n_kv_heads or n_heads) * (d_model // n_heads)
        self.w_q, self.w_o = nn.Linear(d_model, d_model, bias=False), nn.Linear(d_model, d_model, bias=False)
        self.w_k, self.w_v = nn.Linear(d_model, kv, bias=False), nn.Linear(d_model, kv, bias=False)

    def forward(self, x):
        return ch04.causal_self_attention({"d_model": x.shape[-1], "n_heads": 1}, self.state_dict(), x), None


class NoGqaArgument(nn.Module):
    def __init__(self, d_model, n_heads):
        super().__init__()

    def forward(self, x):
        return x


def test_a_module_returning_a_tuple_is_told_so():
    assert "tuple" in render(grade(MODULE, ReturnsTuple))


@pytest.mark.parametrize(
    "ex,obj,message",
    [
        (CONTRIB, lambda heads, w_o: None, "returned None"),
        (CONTRIB, lambda heads, w_o: heads.sum(), "has shape"),
        (CONTRIB, lambda heads, w_o: heads @ w_o, "w_o is (n_heads·head_dim, d_out)"),
        (MODULE, lambda config, state, x: x, "expected a class"),
        (MODULE, MultiHeadAttention(8, 2), "expected a class"),
        (MODULE, int, "is not an nn.Module"),
        (MODULE, NoForward, "no forward method"),
        (MODULE, NoGqaArgument, "n_kv_heads=None"),
        (MODULE, TooFewLayers, "define all four layers"),
        (POOL, lambda: "0.9", "expected a number"),
        (POOL, lambda: 0.5, "is not within"),
        (ENTROPY, lambda: round(ch04.mean_attention_entropy(), 3), "is not within"),
        (ENTROPY, lambda: float("nan"), "not a finite number"),
        (ENTROPY, lambda: torch.tensor([1.5, 1.5]), "expected a number"),
        (ENTROPY, lambda: None, "returned None"),
        (ENTROPY, lambda: {}["entropy"], "raised KeyError"),
    ],
    ids=["none", "shape", "matmul", "function", "instance", "not-module", "no-forward", "no-gqa", "too-few",
         "answer-string", "answer-wrong",
         "entropy-rounded", "entropy-nan", "entropy-tensor", "entropy-none", "entropy-raises"],
)
def test_bad_submissions_get_clear_messages(ex, obj, message):
    result = grade(ex, obj)
    assert result.earned < ex.points
    assert message in render(result), render(result)


def test_the_course_layer_is_refused():
    class Mine(MultiHeadAttention):
        pass

    assert "write the layer yourself" in render(grade(MODULE, Mine))
