"""riverbank.positions against the formula of Vaswani et al. (2017, section 3.5), computed here one
number at a time in plain Python; the relative-offset rotation; the learned embedding's limits; and
agreement with the functions chapter 3 builds in its cells."""

from __future__ import annotations

import math
from pathlib import Path

import nbformat
import pytest
import torch

from riverbank.positions import (LearnedPositionEmbedding, offset_rotation, sinusoidal_encoding,
                                 sinusoidal_frequencies)

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "chapters" / "03_positional_encodings.ipynb"


def paper(pos: int, dim: int, d_model: int) -> float:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d_model))."""
    i = dim // 2
    angle = pos / 10000 ** (2 * i / d_model)
    return math.sin(angle) if dim % 2 == 0 else math.cos(angle)


@pytest.mark.parametrize("max_len,d_model", [(1, 2), (7, 6), (64, 128), (1000, 512)])
def test_sinusoidal_encoding_matches_the_paper_at_sampled_points(max_len, d_model):
    pe = sinusoidal_encoding(max_len, d_model)
    assert pe.shape == (max_len, d_model) and pe.dtype == torch.float32
    g = torch.Generator().manual_seed(max_len * 1000 + d_model)
    points = {(0, 0), (0, d_model - 1), (max_len - 1, 0), (max_len - 1, d_model - 1)}
    points |= {(int(p), int(d)) for p, d in zip(torch.randint(max_len, (50,), generator=g),
                                               torch.randint(d_model, (50,), generator=g))}
    for pos, dim in sorted(points):
        # float32 holds ~7 digits; the angles are exact before rounding, so 1e-6 is enough even at pos 999
        assert abs(pe[pos, dim].item() - paper(pos, dim, d_model)) < 1e-6, (pos, dim)


def test_sine_on_even_dimensions_and_cosine_on_odd_dimensions_at_every_position():
    pe = sinusoidal_encoding(5, 4)
    # position 0: sin 0 = 0 on the even dimensions, cos 0 = 1 on the odd ones, whatever the frequency
    assert pe[0].tolist() == [0.0, 1.0, 0.0, 1.0]
    # an odd position still has the sine on dimension 0 (frequency 1): not "cosine for odd positions"
    assert pe[3, 0].item() == pytest.approx(math.sin(3), abs=1e-7)
    assert pe[3, 1].item() == pytest.approx(math.cos(3), abs=1e-7)
    # pair 1 of d_model = 4 has frequency 1/10000^(2/4) = 1/100
    assert pe[3, 2].item() == pytest.approx(math.sin(0.03), abs=1e-7)


def test_frequencies_and_wavelengths_follow_the_paper():
    omega = sinusoidal_frequencies(512)
    assert omega.shape == (256,)
    assert omega[0].item() == 1.0
    wavelengths = 2 * math.pi / omega
    # "the wavelengths form a geometric progression from 2π to 10000 · 2π"
    ratios = wavelengths[1:] / wavelengths[:-1]
    assert torch.allclose(ratios, ratios[0].expand_as(ratios))
    assert 2 * math.pi <= wavelengths.min() and wavelengths.max() < 10000 * 2 * math.pi


@pytest.mark.parametrize("d_model", [0, 3, -2])
def test_odd_or_empty_d_model_is_refused_with_a_reason(d_model):
    with pytest.raises(ValueError, match="even"):
        sinusoidal_encoding(4, d_model)


@pytest.mark.parametrize("k", [1, 2, 7, 50, -1, -13])
def test_offset_rotation_moves_every_position_by_k(k):
    pe = sinusoidal_encoding(80, 64)
    M = offset_rotation(k, 64)
    if k > 0:
        before, after = pe[:-k], pe[k:]
    else:
        before, after = pe[-k:], pe[:k]
    # row pos of before @ M.T is M @ PE(pos); the same M for every pos
    assert torch.allclose(before @ M.T, after, atol=1e-6)


def test_offset_rotation_is_block_diagonal_orthogonal_and_composes():
    M = offset_rotation(3, 8)
    block_mask = torch.block_diag(*[torch.ones(2, 2)] * 4).bool()
    assert (M[~block_mask] == 0).all()
    assert torch.allclose(M @ M.T, torch.eye(8), atol=1e-6)
    assert torch.allclose(M.T, offset_rotation(-3, 8), atol=1e-7)
    assert torch.allclose(offset_rotation(1, 8) @ offset_rotation(2, 8), M, atol=1e-6)
    assert torch.equal(offset_rotation(0, 8), torch.eye(8))


def test_offset_rotation_first_block_by_hand():
    # pair 0 has frequency 1: sin(p + k) = sin p cos k + cos p sin k, cos(p + k) = cos p cos k − sin p sin k
    k = 2
    M = offset_rotation(k, 2)
    expected = torch.tensor([[math.cos(k), math.sin(k)], [-math.sin(k), math.cos(k)]])
    assert torch.allclose(M, expected, atol=1e-7)


def test_dot_product_of_two_encodings_depends_only_on_their_distance():
    pe = sinusoidal_encoding(200, 32).double()
    omega = sinusoidal_frequencies(32)
    for k in [0, 1, 5, 40]:
        expected = torch.cos(k * omega).sum()
        dots = (pe[:200 - k] * pe[k:]).sum(dim=1)      # PE(pos) · PE(pos + k) for every pos
        assert torch.allclose(dots, expected.expand_as(dots), atol=1e-5)


def test_learned_embedding_returns_its_rows_and_is_trainable():
    torch.manual_seed(0)
    emb = LearnedPositionEmbedding(max_len=10, d_model=4)
    positions = torch.tensor([[0, 1, 2], [7, 8, 9]])
    out = emb(positions)
    assert out.shape == (2, 3, 4)
    assert torch.equal(out[1, 2], emb.table.weight[9])
    out.sum().backward()
    assert emb.table.weight.grad is not None and emb.table.weight.grad[9].abs().sum() > 0


@pytest.mark.parametrize("positions,bad", [(torch.arange(12), 11), (torch.tensor([3, 10]), 10),
                                           (torch.tensor([-1, 0]), -1)])
def test_learned_embedding_past_its_maximum_length_says_so(positions, bad):
    emb = LearnedPositionEmbedding(max_len=10, d_model=4)
    with pytest.raises(IndexError) as info:
        emb(positions)
    message = str(info.value)
    assert f"position {bad}" in message and "max_len=10" in message and "0 to 9" in message


def _chapter_namespace() -> dict:
    """Run the cells of chapter 3 that define its sinusoidal functions, and return what they define."""
    cells = {c.get("id"): c.source for c in nbformat.read(CHAPTER, as_version=4).cells}
    namespace = {"torch": torch, "math": math, "print": lambda *a, **k: None}
    for cell_id in ("frequencies-code", "sinusoidal-code", "pair-rotation"):
        exec(compile(cells[cell_id], f"{CHAPTER.name}:{cell_id}", "exec"), namespace)
    return namespace


def test_the_package_holds_the_same_functions_the_chapter_builds():
    chapter = _chapter_namespace()
    for max_len, d_model in [(64, 128), (10, 6), (1, 2), (300, 512)]:
        assert torch.equal(chapter["sinusoidal_encoding"](max_len, d_model), sinusoidal_encoding(max_len, d_model))
    # The chapter builds one pair's 2 x 2 block (exercise 3.2 assembles them); the package's matrix
    # is those blocks on its diagonal and zero elsewhere.
    for k, d_model in [(1, 6), (7, 128), (-3, 16), (0, 4)]:
        m = offset_rotation(k, d_model)
        blocks = torch.zeros_like(m)
        for i, omega in enumerate(chapter["sinusoidal_frequencies"](d_model).tolist()):
            blocks[2 * i:2 * i + 2, 2 * i:2 * i + 2] = chapter["pair_rotation"](k, omega).to(m.dtype)
        assert torch.allclose(m, blocks, atol=1e-7)


# --- the rotation's orientation, the pair diagram, and the chapter's similarity measure ------------

def textbook_rotation(theta: float) -> torch.Tensor:
    """R(θ) = [[cos θ, −sin θ], [sin θ, cos θ]]: a counter-clockwise turn of a column vector (x, y)."""
    return torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])


@pytest.mark.parametrize("k,d_model", [(1, 2), (2, 8), (-5, 16), (40, 64)])
def test_each_block_is_the_transpose_of_the_textbook_rotation(k, d_model):
    # The pair is stored as (sin, cos), so moving on is a clockwise turn: R(kω)ᵀ = R(−kω). Listed
    # as (cos, sin), the same move is the textbook R(kω), the form chapter 8's RoPE uses.
    m = offset_rotation(k, d_model)
    swap = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    for i, omega in enumerate(sinusoidal_frequencies(d_model).tolist()):
        block = m[2 * i:2 * i + 2, 2 * i:2 * i + 2]
        assert torch.allclose(block, textbook_rotation(k * omega).T, atol=1e-6)
        assert torch.allclose(block, textbook_rotation(-k * omega), atol=1e-6)
        assert torch.allclose(swap @ block @ swap, textbook_rotation(k * omega), atol=1e-6)


def test_the_pair_diagram_shows_the_encodings_own_numbers():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from riverbank.diagrams.rotation import draw_pair_turn, pair_turn

    omega = sinusoidal_frequencies(16)[3].item()
    turn = pair_turn(omega, pos=5, k=4)
    pe = sinusoidal_encoding(10, 16)
    assert len(turn.points) == 5 and turn.angle == pytest.approx(4 * omega)
    for j, point in enumerate(turn.points):        # pair 3 is dimensions 6 and 7
        assert torch.allclose(torch.tensor(point, dtype=torch.float32), pe[5 + j, 6:8], atol=1e-6)
    block = offset_rotation(4, 16)[6:8, 6:8].double()
    assert torch.allclose(block @ torch.tensor(turn.start, dtype=torch.float64),
                          torch.tensor(turn.end, dtype=torch.float64), atol=1e-6)
    with pytest.raises(ValueError, match="at least 1"):
        pair_turn(omega, pos=0, k=0)

    fig, drawn = draw_pair_turn(omega=1.0, pos=1, k=2)
    assert drawn == pair_turn(1.0, 1, 2)
    titles = [ax.get_title() for ax in fig.axes]
    assert "clockwise" in titles[0] and "counter-clockwise" in titles[1]
    assert fig.get_facecolor()[:3] == (1.0, 1.0, 1.0)  # white in the site's light and dark modes
    plt.close(fig)


def _similarity_by_distance():
    """The chapter's `similarity_by_distance`, run from its own cell."""
    cells = {c.get("id"): c.source for c in nbformat.read(CHAPTER, as_version=4).cells}
    namespace = {"torch": torch}
    exec(compile(cells["similarity-code"], f"{CHAPTER.name}:similarity-code", "exec"), namespace)
    return namespace["similarity_by_distance"]


def test_similarity_by_distance_on_tables_whose_answer_is_known():
    similarity_by_distance = _similarity_by_distance()
    # Unit vectors at angle p·θ: rows k apart meet at angle k·θ, so every pair has similarity cos kθ.
    theta = 0.3
    angles = torch.arange(50, dtype=torch.float64) * theta
    circle = torch.stack([angles.cos(), angles.sin()], dim=1) * 7.0   # the length must not matter
    got = similarity_by_distance(circle, [0, 1, 2, 10])
    assert torch.allclose(got, torch.cos(torch.tensor([0.0, 1.0, 2.0, 10.0], dtype=torch.float64) * theta))
    # Rows alternate between two perpendicular directions: 0 at odd distances, 1 at even ones.
    alternating = torch.tensor([[1.0, 0.0], [0.0, 2.0]]).repeat(6, 1)      # (12, 2)
    assert similarity_by_distance(alternating, [1, 2, 3, 4]).tolist() == [0.0, 1.0, 0.0, 1.0]
    # Sinusoids: every row has length √(d/2), so the similarity is Σ cos(kω_i) / (d/2) at every k.
    d = 384
    omega = sinusoidal_frequencies(d)
    for k in [1, 3, 64, 256]:
        expected = torch.cos(k * omega).sum() / (d / 2)
        for table in (sinusoidal_encoding(512, d), sinusoidal_encoding(1024, d)[512:]):
            assert similarity_by_distance(table, [k]).item() == pytest.approx(expected.item(), abs=1e-6)


def test_a_causal_mask_alone_breaks_permutation_equivariance():
    from riverbank.attention import causal_mask, scaled_dot_product_attention

    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 8, generator=g)
    w_q, w_k, w_v = (torch.randn(8, 8, generator=g) for _ in range(3))

    def attend(tokens, mask=None):
        return scaled_dot_product_attention(tokens @ w_q, tokens @ w_k, tokens @ w_v, mask)

    order = [3, 2, 1, 0]
    assert torch.allclose(attend(x[order]), attend(x)[order], atol=1e-5)      # no mask: equivariant
    causal = causal_mask(4)
    out = attend(x, causal)
    assert torch.allclose(out[0], (x @ w_v)[0], atol=1e-5)        # the first token sees only itself
    assert torch.allclose(out[3], attend(x)[3], atol=1e-5)        # the last sees everything
    assert (attend(x[order], causal) - out[order]).abs().max() > 0.1
