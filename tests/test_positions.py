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
