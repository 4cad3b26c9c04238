"""Chapter 4's graded exercises: the reference scores full marks, every named mistake is caught and
named, learners' own correct variants pass, realistic bugs are named, broken functions get a clear
message, and the references agree with riverbank.heads and torch.nn.MultiheadAttention."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from riverbank.attention import causal_mask
from riverbank.grading import grade, render
from riverbank.grading.exercises import EXERCISES
from riverbank.grading.exercises import ch04
from riverbank.grading.runner import COMPLETE, NOT_ATTEMPTED
from riverbank.heads import MultiHeadAttention, merge_heads, split_heads

SPLIT, MERGE, MHA = EXERCISES["4.1"], EXERCISES["4.2"], EXERCISES["4.3"]
ALL = [SPLIT, MERGE, MHA]


def name(x):
    """Readable test ids: the exercise id, or the function's name."""
    return getattr(x, "id", None) or getattr(x, "__name__", None) or str(x)


def test_chapter_4_exercises_are_registered():
    assert [ex.id for ex in ch04.EXERCISES] == ["4.1", "4.2", "4.3"]
    assert (SPLIT, MERGE, MHA) == (ch04.SPLIT, ch04.MERGE, ch04.MHA)




@pytest.mark.parametrize("ex", ALL, ids=name)
def test_named_mistakes_are_distinct(ex):
    # One message may name several functions (the same mistake written two ways), listed together.
    messages = [m.message for m in ex.mistakes]
    groups = [m for i, m in enumerate(messages) if i == 0 or m != messages[i - 1]]
    assert len(set(groups)) == len(groups)
    assert len({m.function for m in ex.mistakes}) == len(ex.mistakes)


@pytest.mark.parametrize("ex", ALL, ids=name)
def test_feedback_lines_fit_the_page(ex):
    # "  Also consistent with: <message>." is the longest line a message appears in.
    for message in [m.message for m in ex.mistakes] + [hint for _, hint in ex.error_hints]:
        assert len(f"  Also consistent with: {message}.") <= 80, message


# --- the references are the course's layer and torch's ---------------------------------------------

def test_split_and_merge_references_equal_the_package():
    x = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ch04.split_heads(x, 3), split_heads(x, 3))
    assert torch.equal(ch04.merge_heads(split_heads(x, 3)), merge_heads(split_heads(x, 3)))


@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "causal"])
def test_mha_reference_equals_torch_multihead_attention(masked):
    # The reference uses x @ w (the paper's convention); nn.Linear stores w transposed.
    torch.manual_seed(1)
    theirs = nn.MultiheadAttention(12, 3, bias=False, batch_first=True)
    w_q, w_k, w_v = (w.T for w in theirs.in_proj_weight.detach().chunk(3))
    w_o = theirs.out_proj.weight.detach().T
    x = torch.randn(2, 6, 12)
    keep = causal_mask(6) if masked else None
    ours = ch04.multi_head_attention(x, w_q, w_k, w_v, w_o, 3, keep)
    want, _ = theirs(x, x, x, attn_mask=None if keep is None else ~keep)
    assert torch.allclose(ours, want.detach(), atol=1e-5)
    package = MultiHeadAttention(12, 3, bias=False)
    with torch.no_grad():
        for proj, w in zip([package.q_proj, package.k_proj, package.v_proj, package.out_proj],
                           [w_q, w_k, w_v, w_o]):
            proj.weight.copy_(w.T)
        assert torch.allclose(package(x, mask=keep)[0], ours, atol=1e-5)


# --- learners' own code: correct variants must pass, buggy ones must be named ---------------------
# Written the way learners write them (einops-style rearranges by hand, loops over heads, contiguous
# views, torch's softmax on float64), not copies of the detectors.

def split_with_permute(x, n_heads):
    b, s, d = x.shape
    return x.reshape(b, s, n_heads, d // n_heads).permute(0, 2, 1, 3)


def split_with_a_loop(x, n_heads):
    head_dim = x.shape[-1] // n_heads
    return torch.stack([x[..., h * head_dim:(h + 1) * head_dim] for h in range(n_heads)], dim=1)


def split_with_chunk(x, n_heads):
    return torch.stack(x.chunk(n_heads, dim=-1), dim=1)


def merge_with_contiguous_view(x):
    b, h, s, d = x.shape
    return x.transpose(1, 2).contiguous().view(b, s, h * d)


def merge_with_cat(x):
    return torch.cat(x.unbind(dim=1), dim=-1)


def mha_loop_over_heads(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    d_head = x.shape[-1] // n_heads
    outs = []
    for h in range(n_heads):
        cols = slice(h * d_head, (h + 1) * d_head)
        q, k, v = x @ w_q[:, cols], x @ w_k[:, cols], x @ w_v[:, cols]
        scores = q @ k.transpose(-1, -2) / d_head ** 0.5
        if mask is not None:
            scores = scores.masked_fill(mask.logical_not()[..., 0, :, :] if mask.dim() == 4 else ~mask, -1e9)
        outs.append(torch.softmax(scores, dim=-1) @ v)
    return torch.cat(outs, dim=-1) @ w_o


def mha_with_einsum(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    b, s, d = x.shape
    q, k, v = ((x @ w).view(b, s, n_heads, d // n_heads) for w in (w_q, w_k, w_v))
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d // n_heads)
    if mask is not None:
        scores = torch.where(mask, scores, torch.tensor(float("-inf")))
    out = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)
    return out.reshape(b, s, d) @ w_o


@pytest.mark.parametrize("ex,fn", [(SPLIT, split_with_permute), (SPLIT, split_with_a_loop),
                                   (SPLIT, split_with_chunk), (MERGE, merge_with_contiguous_view),
                                   (MERGE, merge_with_cat), (MHA, mha_loop_over_heads),
                                   (MHA, mha_with_einsum)], ids=name)
def test_correct_learner_variants_get_full_marks(ex, fn):
    result = grade(ex, fn)
    assert result.status == COMPLETE and result.earned == ex.points, render(result)


def split_by_reshape(x, n_heads):  # the chapter's "no transpose" trap, written with view
    b, s, d = x.shape
    return x.view(b, n_heads, s, d // n_heads)


def split_by_head_dim_first(x, n_heads):
    b, s, d = x.shape
    return x.view(b, s, d // n_heads, n_heads).transpose(1, 3).transpose(2, 3)


def merge_by_view(x):  # a view without the transpose
    b, h, s, d = x.shape
    return x.view(b, s, h * d)


def merge_reversed_loop(x):
    return torch.cat([x[:, h] for h in reversed(range(x.shape[1]))], dim=-1)


def mha_scaled_by_d_model(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    b, s, d = x.shape
    q, k, v = (split_with_permute(x @ w, n_heads) for w in (w_q, w_k, w_v))
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return merge_with_cat(scores.softmax(dim=-1) @ v) @ w_o


def mha_without_w_o(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    out = mha_with_einsum(x, w_q, w_k, w_v, torch.eye(x.shape[-1]), n_heads, mask)
    return out


def mha_softmax_dim_2(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    q, k, v = (split_with_permute(x @ w, n_heads) for w in (w_q, w_k, w_v))
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return merge_with_cat(scores.softmax(dim=2) @ v) @ w_o


def mha_like_nn_linear(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return mha_with_einsum(x, w_q.T, w_k.T, w_v.T, w_o.T, n_heads, mask)


def mha_merge_without_transpose(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    b, s, d = x.shape
    q, k, v = (split_with_permute(x @ w, n_heads) for w in (w_q, w_k, w_v))
    scores = q @ k.transpose(-2, -1) / math.sqrt(d // n_heads)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1) @ v).reshape(b, s, d) @ w_o


LEARNER_BUGS = [
    (SPLIT, split_by_reshape, "no transpose(1, 2)"),
    (SPLIT, split_by_head_dim_first, "features interleaved"),
    (MERGE, merge_by_view, "without transpose(1, 2)"),
    (MERGE, merge_reversed_loop, "last first"),
    (MHA, mha_scaled_by_d_model, "divided by √d_model"),
    (MHA, mha_without_w_o, "output projection is missing"),
    (MHA, mha_softmax_dim_2, "softmax runs over the queries"),
    (MHA, mha_like_nn_linear, "weights used transposed"),
    (MHA, mha_merge_without_transpose, "merged in the wrong order"),
]


@pytest.mark.parametrize("ex,fn,named", LEARNER_BUGS, ids=name)
def test_realistic_bugs_are_named_first(ex, fn, named):
    result = grade(ex, fn)
    assert result.earned < ex.points
    assert result.mistakes and named in result.mistakes[0], render(result)


def test_a_transpose_then_view_gets_the_contiguity_hint():
    def merge_transpose_view(x):
        b, h, s, d = x.shape
        return x.transpose(1, 2).view(b, s, h * d)

    feedback = render(grade(MERGE, merge_transpose_view))
    assert "view size is not compatible" in feedback and "use reshape()" in feedback


def test_mha_that_calls_an_unwritten_split_heads_says_so():
    def split_heads(x, n_heads):  # the learner's 4.1, still a stub
        raise NotImplementedError

    def multi_head_attention(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
        q = split_heads(x @ w_q, n_heads)
        return q

    result = grade(MHA, multi_head_attention)
    assert result.status != NOT_ATTEMPTED and "split_heads(), which is not written yet" in render(result)


# --- robustness: crashes, NaN, wrong shapes and types get a clear message --------------------------

@pytest.mark.parametrize(
    "ex,fn,message",
    [
        (SPLIT, lambda x, n_heads: None, "returned None: did you forget `return`?"),
        (SPLIT, lambda x, n_heads: x.tolist(), "expected a torch.Tensor, but your function returned list"),
        (MERGE, lambda x: x.double().transpose(1, 2).flatten(2), "dtype torch.float64, expected torch.float32"),
        (MHA, lambda x, w_q, w_k, w_v, w_o, n_heads, mask=None: x * float("nan"), "NaN"),
        (MHA, lambda x, w_q, w_k, w_v, w_o, n_heads: x, "your function takes"),
        (MHA, lambda x, w_q, w_k, w_v, w_o, n_heads, mask=None: x @ w_q.T[:2], "raised RuntimeError"),
    ],
    ids=["none", "list", "dtype", "nan", "signature", "crash"],
)
def test_bad_outputs_get_clear_messages(ex, fn, message):
    result = grade(ex, fn)
    assert result.earned < ex.points
    assert message in render(result)


def test_mha_that_changes_x_in_place_is_told_so():
    def in_place(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
        x.mul_(1.0).add_(0.0)  # harmless values, but not a new tensor...
        x[0, 0, 0] = 0.0       # ...and this one really changes the input
        return ch04.multi_head_attention(x, w_q, w_k, w_v, w_o, n_heads, mask)

    assert "changed its input x in place" in render(grade(MHA, in_place))


@pytest.mark.parametrize("ex", ALL, ids=name)
def test_stub_is_not_attempted(ex):
    def stub(*args):
        raise NotImplementedError

    result = grade(ex, stub)
    assert result.status == NOT_ATTEMPTED and "not attempted" in render(result)
