"""riverbank.quantize against hand-computed codes, its own error bounds and the float32 KV cache."""

import pytest
import torch

from riverbank.cache import KVCache
from riverbank.model import load_reversal_model
from riverbank.quantize import (Int8KVCache, absmax_quantize, dequantize, dequantize_groupwise,
                                groupwise_quantize, pack_int4, quantize_linears, quantize_weight,
                                round_up_to_float16, unpack_int4, zero_point_quantize)
from riverbank.tasks import Reversal


def test_absmax_int8_hand_computed():
    codes, scale = absmax_quantize(torch.tensor([-1.0, 0.5, 0.25]))
    assert scale.item() == pytest.approx(1 / 127)
    assert codes.dtype == torch.int8
    assert codes.tolist() == [-127, 64, 32]   # 63.5 rounds to even 64, 31.75 to 32


def test_absmax_int4_hand_computed():
    codes, scale = absmax_quantize(torch.tensor([-1.4, 0.7, 0.1, 0.0]), bits=4)
    assert scale.item() == pytest.approx(0.2)
    assert codes.tolist() == [-7, 4, 0, 0]    # 3.5 -> 4 (half to even), 0.5 -> 0


def test_bits_outside_the_code_dtype_are_refused():
    with pytest.raises(ValueError):
        absmax_quantize(torch.ones(3), bits=9)
    with pytest.raises(ValueError):
        zero_point_quantize(torch.ones(3), bits=0)


def test_absmax_per_channel_scales_are_row_maxima():
    w = torch.tensor([[1.0, -2.0], [0.0, 0.0], [0.5, 0.25]])
    codes, scale = absmax_quantize(w, dim=1)
    assert scale.shape == (3, 1)
    assert torch.allclose(scale.squeeze(1), torch.tensor([2 / 127, 1.0, 0.5 / 127]))
    assert codes[1].tolist() == [0, 0]        # an all-zero row: scale 1, codes 0
    assert codes[0].tolist() == [64, -127]


@pytest.mark.parametrize("bits", [8, 4, 3])
@pytest.mark.parametrize("dim", [None, 1])
def test_round_off_at_most_half_a_scale(bits, dim):
    w = torch.randn(64, 96, generator=torch.Generator().manual_seed(bits))
    codes, scale = absmax_quantize(w, bits, dim=dim)
    error = (dequantize(codes, scale) - w).abs()
    assert (error <= scale / 2 * (1 + 1e-6)).all()
    assert codes.abs().max() == 2 ** (bits - 1) - 1   # the largest |w| reaches the last code


def test_zero_point_hand_computed():
    codes, scale, zero = zero_point_quantize(torch.tensor([-0.5, 0.0, 2.0]))
    assert scale.item() == pytest.approx(2.5 / 255)
    assert zero.item() == 51                  # round(0.5 / (2.5 / 255)) = round(51.0)
    assert codes.dtype == torch.uint8
    assert codes.tolist() == [0, 51, 255]
    assert dequantize(codes, scale, zero)[1].item() == 0.0   # zero is stored exactly


def test_zero_point_beats_absmax_on_a_one_sided_range():
    x = torch.rand(1000, generator=torch.Generator().manual_seed(0)) * 3 - 0.2   # [-0.2, 2.8)
    codes, scale, zero = zero_point_quantize(x)
    affine_error = (dequantize(codes, scale, zero) - x).abs()
    assert (affine_error <= scale / 2 * (1 + 1e-6)).all()
    a_codes, a_scale = absmax_quantize(x)
    assert affine_error.max() < 0.6 * (dequantize(a_codes, a_scale) - x).abs().max()


def test_float16_scales_round_up():
    s = torch.tensor([0.1, 1 / 3, 2 / 7, 1e-3])
    s16 = round_up_to_float16(s)
    assert s16.dtype == torch.float16 and (s16.float() >= s).all()
    assert ((s16.float() - s) / s < 2 ** -10).all()   # at most one float16 step above


def test_groupwise_hand_computed_and_bound():
    w = torch.tensor([[0.7, -0.3, 7.0, 1.0]])
    codes, scales = groupwise_quantize(w, bits=4, group_size=2)
    assert scales.dtype == torch.float16 and scales.shape == (1, 2)
    assert codes.tolist() == [[7, -3, 7, 1]]  # groups [0.7, -0.3] and [7, 1]: scales 0.1, 1
    w = torch.randn(16, 128, generator=torch.Generator().manual_seed(1))
    codes, scales = groupwise_quantize(w, bits=4, group_size=32)
    error = (dequantize_groupwise(codes, scales) - w).abs().reshape(16, 4, 32)
    assert (error <= scales.float()[..., None] / 2 * (1 + 1e-6)).all()


def test_pack_int4_round_trip_and_layout():
    every = torch.arange(-8, 8, dtype=torch.int8)
    packed = pack_int4(every)
    assert packed.dtype == torch.uint8 and packed.shape == (8,)
    assert packed[0].item() == 0x98           # -8 -> 0x8 low nibble, -7 -> 0x9 high nibble
    assert torch.equal(unpack_int4(packed), every)
    codes = torch.randint(-8, 8, (5, 6, 10), dtype=torch.int8)
    assert torch.equal(unpack_int4(pack_int4(codes)), codes)
    with pytest.raises(ValueError):
        pack_int4(torch.zeros(3, dtype=torch.int8))


def test_quantized_weight_bytes():
    w = torch.randn(64, 256)
    assert quantize_weight(w, 8, "tensor").nbytes == 64 * 256 + 4
    assert quantize_weight(w, 8, "channel").nbytes == 64 * 256 + 64 * 4
    stored = quantize_weight(w, 4, 32)
    assert stored.nbytes == 64 * 256 // 2 + 64 * 8 * 2   # 4 + 16/32 bits per weight
    assert torch.equal(stored.dequantize(), dequantize_groupwise(*groupwise_quantize(w, 4, 32)))


def test_quantize_linears_counts_and_leaves_original():
    model = load_reversal_model()
    before = model.blocks[0].ffn.expand.weight.clone()
    params = sum(p.numel() for p in model.parameters())
    half, half_bytes = quantize_linears(model, None)
    assert half_bytes == 2 * params
    int8, int8_bytes = quantize_linears(model, 8, "tensor")
    linear = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    n_linear = sum(w.numel() for w in linear)
    assert int8_bytes == n_linear + 4 * len(linear) + 2 * (params - n_linear)
    assert torch.equal(model.blocks[0].ffn.expand.weight, before)
    assert not torch.equal(int8.blocks[0].ffn.expand.weight, before)


def _cached_logits(model, sequences, cache):
    with torch.no_grad():
        logits, _ = model(sequences[:, :9], start=0, cache=cache)
        steps = [logits[:, -1]]
        for t in range(9, sequences.shape[1] - 1):
            logits, _ = model(sequences[:, t:t + 1], start=cache.seq_len, cache=cache)
            steps.append(logits[:, -1])
    return torch.stack(steps, dim=1)          # (batch, 8, vocab)


def test_int8_cache_with_identity_quantizer_is_the_float32_cache():
    model, sequences = load_reversal_model(), Reversal().held_out()[:32]
    identity = Int8KVCache(2, quantize=lambda x: (x, torch.ones(*x.shape[:-1], 1)))
    plain = _cached_logits(model, sequences, KVCache(2))
    assert torch.equal(_cached_logits(model, sequences, identity), plain)


def test_int8_cache_stores_int8_and_stays_close():
    model, sequences = load_reversal_model(), Reversal().held_out()[:32]
    cache = Int8KVCache(2)
    quantized = _cached_logits(model, sequences, cache)
    plain_cache = KVCache(2)
    plain = _cached_logits(model, sequences, plain_cache)
    assert cache.key_codes[0].dtype == torch.int8 and cache.seq_len == 16
    assert cache.key_scales[0].shape == (32, 2, 16, 1)
    # codes 1 byte + one float16 scale per 32-wide head, against 4 bytes per number
    assert cache.nbytes * 4 * 32 == plain_cache.nbytes * (32 + 2)
    error = (quantized - plain).abs().max()
    assert 0 < error < 0.05 * plain.abs().max()
