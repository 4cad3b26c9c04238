"""riverbank.layers: RMSNorm and SwiGLU against their formulas in float64 and against peer
implementations (torch.nn.RMSNorm, Hugging Face's LlamaRMSNorm and LlamaMLP, built offline), Llama's
hidden widths, and the gradient probe on cases whose gradient is known by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

from riverbank.layers import RMSNorm, SwiGLU, gradient_norms, swiglu_hidden_size


def tolerance(float32_out: torch.Tensor, float64_out: torch.Tensor) -> float:
    """8 × the float32 error against float64, plus 16 float32 units in the last place of the
    largest entry (the course's rule, riverbank/grading/spec.py; eps · |x| bounds one ulp at x)."""
    error = (float32_out.double() - float64_out).abs().max().item()
    largest = float64_out.abs().max().item()
    return 8 * error + 16 * torch.finfo(torch.float32).eps * largest


def inputs(seed: int, shape=(2, 5, 16), scale=3.0, shift=1.0):
    g = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(shape, generator=g) + shift
    weight = torch.rand(shape[-1], generator=g) + 0.5
    return x, weight


def rms_formula(x, weight, eps):
    return weight * x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps)


@pytest.mark.parametrize("seed, shape, scale, shift", [(0, (2, 5, 16), 3.0, 1.0), (1, (7, 64), 1e-3, 2e-4),
                                                       (2, (1, 3, 8), 50.0, -20.0)])
def test_rms_norm_matches_float64_and_peers(seed, shape, scale, shift):
    x, weight = inputs(seed, shape, scale, shift)
    ours = RMSNorm(shape[-1], eps=1e-6)
    torch_peer = nn.RMSNorm(shape[-1], eps=1e-6)
    llama_peer = LlamaRMSNorm(shape[-1], eps=1e-6)
    with torch.no_grad():
        for module in (ours, torch_peer, llama_peer):
            module.weight.copy_(weight)
        exact = rms_formula(x.double(), weight.double(), 1e-6)
        out = ours(x)
        tol = tolerance(out, exact)
        assert (out.double() - exact).abs().max() <= tol
        for peer in (torch_peer, llama_peer):
            assert (peer(x).double() - exact).abs().max() <= tol
            assert (peer(x) - out).abs().max() <= tol


def test_rms_norm_gives_unit_root_mean_square_and_ignores_no_shift():
    x, _ = inputs(3)
    out = RMSNorm(16, eps=0.0)(x).detach()
    assert torch.allclose(out.pow(2).mean(dim=-1), torch.ones(2, 5), atol=1e-5)
    # unlike LayerNorm, a shift of the input changes the output ...
    assert not torch.allclose(RMSNorm(16)(x + 5.0), RMSNorm(16)(x), atol=1e-2)
    # ... and on a centred input RMSNorm is LayerNorm without its bias
    centred = x - x.mean(dim=-1, keepdim=True)
    layer_norm = F.layer_norm(x, (16,), eps=1e-5)
    assert torch.allclose(RMSNorm(16, eps=1e-5)(centred), layer_norm, atol=1e-5)


def test_torch_rms_norm_default_eps_is_not_llamas():
    x = 1e-4 * torch.randn(3, 8)   # tiny inputs, where eps decides the output
    assert nn.RMSNorm(8).eps is None   # uses torch.finfo(dtype).eps, 1.2e-7 in float32
    assert not torch.allclose(nn.RMSNorm(8)(x), RMSNorm(8, eps=1e-6)(x), rtol=1e-3)


def test_swiglu_matches_llama_mlp_and_float64():
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=88, hidden_act="silu", mlp_bias=False)
    peer = LlamaMLP(config)
    ours = SwiGLU(32, 88)
    with torch.no_grad():
        ours.gate.weight.copy_(peer.gate_proj.weight)
        ours.up.weight.copy_(peer.up_proj.weight)
        ours.down.weight.copy_(peer.down_proj.weight)
        x = 2 * torch.randn(2, 6, 32)
        out = ours(x)
        exact = ours.double()(x.double())
        tol = tolerance(out, exact)
        assert (out.double() - exact).abs().max() <= tol
        assert (peer(x).double() - exact).abs().max() <= tol
    assert sum(p.numel() for p in ours.parameters()) == 3 * 32 * 88
    assert sum(p.numel() for p in peer.parameters()) == 3 * 32 * 88


def test_swiglu_hidden_sizes_are_llamas():
    # LLaMA 7B, 13B and 65B (Touvron et al., 2023) and Hugging Face's default LlamaConfig (Llama-2-7B)
    assert swiglu_hidden_size(4096) == 11008 == LlamaConfig().intermediate_size
    assert swiglu_hidden_size(5120) == 13824
    assert swiglu_hidden_size(8192) == 22016
    assert swiglu_hidden_size(512, multiple_of=1) == 1365


def test_gradient_norms_on_a_known_gradient():
    # loss = Σ (x Wᵀ): ∂loss/∂W = 1 ⊗ Σ_b x_b, whose norm is √out · ‖Σ_b x_b‖
    torch.manual_seed(0)
    first, second = nn.Linear(5, 3), nn.Linear(3, 4)
    x = torch.randn(6, 5)
    loss = first(x).sum()
    norms = gradient_norms([first.weight, second.weight], loss)
    expected = math.sqrt(3) * x.sum(dim=0).norm()
    assert norms.shape == (2,)
    assert torch.isclose(norms[0], expected, rtol=1e-6)
    assert norms[1] == 0                     # the loss does not use the second layer


def test_gradient_norms_do_not_accumulate():
    torch.manual_seed(0)
    layer = nn.Linear(4, 4)
    x = torch.randn(3, 4)
    once = gradient_norms([layer.weight], layer(x).pow(2).mean())
    twice = gradient_norms([layer.weight], layer(x).pow(2).mean())
    assert torch.equal(once, twice)


def test_gradient_norms_of_a_chain_scale_with_the_downstream_weight():
    # y = c · (W x): doubling the constant c doubles ‖∂loss/∂W‖ for a linear loss
    torch.manual_seed(0)
    layer = nn.Linear(4, 2)
    x = torch.randn(3, 4)
    one = gradient_norms([layer.weight], layer(x).sum())
    two = gradient_norms([layer.weight], (2 * layer(x)).sum())
    assert torch.allclose(two, 2 * one, rtol=1e-6)
