"""riverbank.flash: online softmax, the tiled forward and backward against SDPA and autograd, and their memory."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from riverbank.bench import peak_cpu_bytes
from riverbank.flash import (flash_attention, naive_attention, online_softmax, tiled_attention,
                             tiled_attention_backward, tiled_attention_forward, visited_tiles)

ATOL = 2e-6  # float32: the same sums in another order; a real error is orders of magnitude larger


def qkv(seed: int, *shape: int, dtype=torch.float32, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    return tuple(scale * torch.randn(*shape, generator=g, dtype=dtype) for _ in range(3))


@pytest.mark.parametrize("block", [1, 3, 4, 64])
def test_online_softmax_equals_softmax_even_for_large_scores(block):
    x = 50 * torch.randn(4, 37, generator=torch.Generator().manual_seed(0))  # exp(x) alone would overflow
    assert torch.allclose(online_softmax(x, block), torch.softmax(x, dim=-1), atol=1e-7)


def test_online_softmax_rescales_when_the_max_grows():
    x = torch.arange(8.0)[None]  # every block raises the max
    assert torch.allclose(online_softmax(x, 2), torch.softmax(x, -1), atol=1e-7)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("n,block_k", [(1, 16), (7, 16), (100, 32), (129, 64), (300, 128), (256, 256)])
def test_tiled_forward_equals_sdpa(n, block_k, causal):
    q, k, v = qkv(n, 2, 3, n, 32)
    out, lse = tiled_attention_forward(q, k, v, causal, block_k)
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v, is_causal=causal), atol=ATOL)
    scores = q @ k.transpose(-2, -1) / math.sqrt(32)
    if causal:
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    assert torch.allclose(lse, torch.logsumexp(scores, dim=-1), atol=1e-5)


def test_tiled_forward_leaves_its_inputs_alone():
    q, k, v = qkv(1, 50, 16)
    copies = [t.clone() for t in (q, k, v)]
    tiled_attention(q, k, v, causal=True, block_k=16)
    assert all(torch.equal(a, b) for a, b in zip((q, k, v), copies))


def test_tiled_forward_rejects_causal_with_different_lengths():
    q, _, _ = qkv(2, 5, 8)
    k, v, _ = qkv(3, 7, 8)
    with pytest.raises(ValueError, match="as many queries as keys"):
        tiled_attention(q, k, v, causal=True)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("n,block_k", [(5, 16), (70, 16), (128, 32)])
def test_tiled_backward_equals_autograd_through_naive_attention(n, block_k, causal):
    q, k, v = (t.requires_grad_() for t in qkv(10 + n, 2, n, 16, dtype=torch.float64))
    grad_out = torch.randn(2, n, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    naive_attention(q, k, v, causal).backward(grad_out)
    with torch.no_grad():
        out, lse = tiled_attention_forward(q, k, v, causal, block_k)
        grads = tiled_attention_backward(grad_out, q, k, v, out, lse, causal, block_k)
    for ours, param in zip(grads, (q, k, v)):
        assert torch.allclose(ours, param.grad, atol=1e-12)


def test_flash_attention_passes_gradcheck():
    q, k, v = (t.requires_grad_() for t in qkv(4, 1, 19, 8, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda q, k, v: flash_attention(q, k, v, True, 16), (q, k, v))


def test_training_step_through_flash_attention_matches_naive():
    def step(attention):
        torch.manual_seed(0)
        proj = torch.nn.Linear(16, 48)
        opt = torch.optim.SGD(proj.parameters(), lr=0.1)
        x = torch.randn(2, 40, 16)
        losses = []
        for _ in range(3):
            q, k, v = proj(x).chunk(3, dim=-1)  # (2, 40, 16) each
            loss = attention(q, k, v).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses, proj.weight.detach()

    naive_losses, naive_w = step(lambda q, k, v: naive_attention(q, k, v, causal=True))
    flash_losses, flash_w = step(lambda q, k, v: flash_attention(q, k, v, causal=True, block_k=16))
    assert flash_losses == pytest.approx(naive_losses, rel=1e-5)
    assert naive_losses[-1] < naive_losses[0]
    assert torch.allclose(flash_w, naive_w, atol=1e-6)


def test_visited_tiles_skip_the_tiles_above_the_diagonal():
    assert len(visited_tiles(512, 64, 64, causal=False)) == 64
    causal = visited_tiles(512, 64, 64, causal=True)
    assert len(causal) == 8 * 9 // 2 and all(j <= i for i, j in causal)
    assert len(visited_tiles(100, 64, 32, causal=True)) == 2 + 4  # query block 1 ends at row 99


def test_peak_memory_naive_holds_two_n_by_n_matrices_and_tiled_does_not():
    n, d = 1024, 64
    q, k, v = qkv(5, n, d)
    naive = peak_cpu_bytes(lambda: naive_attention(q, k, v))
    tiled = peak_cpu_bytes(lambda: tiled_attention(q, k, v))
    assert naive == pytest.approx(2 * n * n * 4 + n * d * 4, rel=0.05)  # scores and weights, float32
    assert tiled < naive / 4
    q2, k2, v2 = qkv(6, 2 * n, d)
    assert peak_cpu_bytes(lambda: tiled_attention(q2, k2, v2)) == pytest.approx(2 * tiled, rel=0.1)  # linear
