"""riverbank.triton_flash: the kernel against SDPA, in Triton's CPU interpreter here and compiled on a GPU."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

# Not importorskip: importing triton here, before riverbank.triton_flash, would skip the interpreter switch.
if importlib.util.find_spec("triton") is None or importlib.util.find_spec("numpy") is None:
    pytest.skip("needs triton, and numpy for its interpreter", allow_module_level=True)

from riverbank import triton_flash  # noqa: E402  (sets TRITON_INTERPRET before triton is imported)
from riverbank.flash import tiled_attention_forward  # noqa: E402
from riverbank.triton_flash import triton_attention, triton_attention_forward  # noqa: E402

DEVICE = triton_flash.DEVICE
BLOCK = 64


def qkv(seed: int, heads: int, n: int, d: int, dtype=torch.float32, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(heads, n, d, generator=g).to(device=device, dtype=dtype) for _ in range(3))


def test_interpreter_switch_matches_the_hardware():
    assert triton_flash.INTERPRETED == (not torch.cuda.is_available())


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("n,d", [(16, 16), (64, 64), (100, 32), (130, 16), (192, 64), (77, 40)])
def test_kernel_equals_sdpa_in_float32(n, d, causal):
    q, k, v = qkv(n + d, 2, n, d)
    out, lse = triton_attention_forward(q, k, v, causal, BLOCK, BLOCK)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    assert out.dtype == torch.float32
    assert torch.allclose(out, expected, atol=2e-6)
    _, tiled_lse = tiled_attention_forward(q.cpu(), k.cpu(), v.cpu(), causal, 32)
    assert torch.allclose(lse.cpu(), tiled_lse, atol=1e-5)


def test_kernel_takes_batch_and_head_dimensions_and_strided_views():
    q, k, v = qkv(3, 6, 96, 32)
    q4, k4, v4 = (t.reshape(2, 3, 96, 32) for t in (q, k, v))
    out = triton_attention(q4.transpose(1, 2).transpose(1, 2), k4, v4)  # a view, made contiguous inside
    assert out.shape == (2, 3, 96, 32)
    assert torch.allclose(out, F.scaled_dot_product_attention(q4, k4, v4), atol=2e-6)
    k_strided = torch.randn(32, 96, device=DEVICE).T  # (96, 32), not contiguous
    out = triton_attention(q[:1], k_strided[None], v[:1])
    assert torch.allclose(out, F.scaled_dot_product_attention(q[:1], k_strided[None], v[:1]), atol=2e-6)



def test_the_kernel_itself_needs_contiguous_inputs_on_every_backend():
    # Its addresses are head·n·d + row·d + col, with no strides: the launcher's .contiguous() is needed
    # compiled as much as interpreted. Launched directly, a strided view of the same numbers is misread.
    q, k, v = qkv(8, 1, 64, 32)
    k_view = k.transpose(1, 2).contiguous().transpose(1, 2)
    assert torch.equal(k_view, k) and not k_view.is_contiguous()
    expected = F.scaled_dot_product_attention(q, k, v)

    def launch(keys):
        out, lse = torch.empty_like(q), torch.empty(1, 64, device=q.device)
        triton_flash.flash_forward_kernel[(1, 1)](q, keys, v, out, lse, 64, 32, 32**-0.5, CAUSAL=False,
                                                  BLOCK_M=64, BLOCK_N=64, BLOCK_D=32, STEP=triton_flash.attend_block)
        return out

    assert torch.allclose(launch(k), expected, atol=2e-6)
    assert not torch.allclose(launch(k_view), expected, atol=1e-2)
    assert torch.allclose(triton_attention(q, k_view, v), expected, atol=2e-6)

def test_float16_is_close_to_float32_sdpa():
    q, k, v = qkv(4, 2, 128, 64, dtype=torch.float16)
    out = triton_attention(q, k, v, causal=True)
    assert out.dtype == torch.float16
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    assert torch.allclose(out.float(), expected, atol=3e-3)


def test_bfloat16_is_refused_with_the_reason():
    q, k, v = qkv(5, 1, 32, 16, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="bfloat16 is not offered"):
        triton_attention(q, k, v)


@pytest.mark.parametrize("block", [8, 48])
def test_blocks_that_would_not_compile_on_a_gpu_are_refused(block):
    q, k, v = qkv(6, 1, 32, 16)
    with pytest.raises(ValueError, match="powers of two and at least 16"):
        triton_attention(q, k, v, block_m=block)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the compiled kernel")
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("n", [128, 1000, 4096])
def test_compiled_kernel_on_gpu(n, causal):
    q, k, v = qkv(7, 8, n, 64, device="cuda")
    exact = triton_attention(q, k, v, causal, precision="ieee")
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=causal).float()
    assert torch.allclose(exact, expected, atol=1e-5)
    fast = triton_attention(q, k, v, causal, precision="tf32")
    assert torch.allclose(fast, expected, atol=5e-3)
    half = triton_attention(q.half(), k.half(), v.half(), causal)
    assert torch.allclose(half.float(), expected, atol=5e-3)
