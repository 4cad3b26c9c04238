"""Weight and KV-cache quantization: integer codes plus scales, packed and counted in bytes (chapter 9).

A quantized tensor stores small integers ``q`` (the **codes**) and a few float **scales** ``s``
(and, for affine quantization, **zero points** ``z``); the value it stands for is
``dequantize(q) = s · (q − z)``. Chapter 9 builds, and later exercises reuse:

- :func:`absmax_quantize`: symmetric quantization, ``s = max|x| / (2^(bits−1) − 1)``, over the
  whole tensor or over chosen axes (per output channel of a weight, per token and head of a cache);
- :func:`zero_point_quantize`: affine (asymmetric) quantization to ``[0, 2^bits − 1]``, for a range
  that is not centred on zero;
- :func:`groupwise_quantize`: absmax in groups of ``group_size`` consecutive weights along the
  input axis, scales stored in float16 (as GPTQ/AWQ checkpoints and llama.cpp's Q4_0 do);
- :func:`pack_int4` / :func:`unpack_int4`: two 4-bit codes per byte;
- :class:`QuantizedWeight`, :func:`quantize_weight` and :func:`quantize_linears`: every
  ``nn.Linear`` weight of a model stored as codes and scales, with the bytes actually held;
- :class:`Int8KVCache`: a KV cache with :class:`riverbank.cache.KVCache`'s interface that stores
  int8 codes per token and head, and returns dequantized keys and values.

Everything here is "fake quantization" for the arithmetic: codes are dequantized to float32
before the matrix products, so the results show the error of the stored format, not the speed of
integer kernels.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

__all__ = ["absmax_quantize", "dequantize", "zero_point_quantize", "groupwise_quantize",
           "dequantize_groupwise", "round_up_to_float16", "pack_int4", "unpack_int4",
           "QuantizedWeight", "quantize_weight", "quantize_linears", "absmax_per_token",
           "Int8KVCache"]


def round_up_to_float16(scale: Tensor) -> Tensor:
    """``scale`` (float32) stored as float16, rounded up where float16 rounding went down.

    A scale that is never smaller than ``max|x| / qmax`` keeps every ``x / scale`` within the code
    range, so no code is clamped and the round-off bound ``|x − s·q| ≤ s / 2`` still holds.
    """
    half = scale.to(torch.float16)
    low = half.float() < scale
    up = torch.nextafter(half, torch.full_like(half, float("inf")))
    return torch.where(low, up, half)


def absmax_quantize(x: Tensor, bits: int = 8, dim: int | tuple[int, ...] | None = None,
                    scale_dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Symmetric (absmax) quantization: ``s = max|x| / qmax``, ``q = clamp(round(x / s), −qmax, qmax)``.

    ``qmax = 2^(bits−1) − 1`` (127 for int8, 7 for int4): the range is symmetric, so the code
    −2^(bits−1) is left unused. ``dim=None`` uses one scale for the whole tensor; otherwise the
    maximum is taken over ``dim`` (kept as size-1 axes), one scale per remaining index: for an
    ``nn.Linear`` weight (out, in), ``dim=1`` gives one scale per output channel (row).

    Returns ``(codes, scale)``: codes int8 of x's shape, scale of ``scale_dtype`` broadcastable
    to it. An all-zero slice gets scale 1 (its codes are 0).
    """
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be between 2 and 8 for int8 codes, got {bits}")
    qmax = 2 ** (bits - 1) - 1
    if dim is None:
        amax = x.abs().amax().reshape([1] * x.dim())
    else:
        amax = x.abs().amax(dim=dim, keepdim=True)
    scale = amax.float() / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    if scale_dtype == torch.float16:
        scale = round_up_to_float16(scale)
    codes = torch.round(x / scale.float()).clamp(-qmax, qmax).to(torch.int8)
    return codes, scale.to(scale_dtype)


def dequantize(codes: Tensor, scale: Tensor, zero_point: Tensor | int = 0) -> Tensor:
    """``scale · (codes − zero_point)`` in float32, broadcasting scale and zero point.

    The codes come first in the product so that the result keeps their memory layout.
    """
    return (codes.float() - torch.as_tensor(zero_point).float()) * scale.float()


def zero_point_quantize(x: Tensor, bits: int = 8) -> tuple[Tensor, Tensor, Tensor]:
    """Affine (asymmetric) quantization of a whole tensor to the codes ``0 .. 2^bits − 1``.

    The range ``[min, max]`` is widened to contain 0 (so that 0 is stored exactly, as padding and
    ReLU zeros need), then ``s = (max − min) / (2^bits − 1)``, ``z = round(−min / s)`` and
    ``q = clamp(round(x / s) + z, 0, 2^bits − 1)``. Returns ``(codes, scale, zero_point)``:
    codes uint8 (bits ≤ 8) of x's shape, scale float32 and zero point int32, both 0-dimensional.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be between 1 and 8 for uint8 codes, got {bits}")
    levels = 2 ** bits - 1
    low, high = x.min().clamp(max=0).float(), x.max().clamp(min=0).float()
    scale = (high - low) / levels
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero_point = torch.round(-low / scale).clamp(0, levels).to(torch.int32)
    codes = (torch.round(x / scale) + zero_point).clamp(0, levels).to(torch.uint8)
    return codes, scale, zero_point


def groupwise_quantize(w: Tensor, bits: int = 4, group_size: int = 32) -> tuple[Tensor, Tensor]:
    """Absmax quantization in groups of ``group_size`` consecutive weights along the input axis.

    w: (rows, cols), cols divisible by group_size. Returns codes int8 (rows, cols) and scales
    float16 (rows, cols // group_size), one per group, rounded up so no code is clamped.
    """
    rows, cols = w.shape
    if cols % group_size:
        raise ValueError(f"{cols} columns do not split into groups of {group_size}")
    groups = w.reshape(rows, cols // group_size, group_size)  # (rows, n_groups, group_size)
    codes, scales = absmax_quantize(groups, bits, dim=-1, scale_dtype=torch.float16)
    return codes.reshape(rows, cols), scales.squeeze(-1)  # (rows, cols), (rows, n_groups)


def dequantize_groupwise(codes: Tensor, scales: Tensor) -> Tensor:
    """Undo :func:`groupwise_quantize`: codes (rows, cols), scales (rows, n_groups) -> (rows, cols)."""
    rows, cols = codes.shape
    groups = codes.reshape(rows, scales.shape[1], -1)  # (rows, n_groups, group_size)
    return dequantize(groups, scales[..., None]).reshape(rows, cols)


def pack_int4(codes: Tensor) -> Tensor:
    """Two signed 4-bit codes (−8..7) per byte: (..., n) int8, n even -> (..., n // 2) uint8.

    Code ``2i`` goes to the low nibble of byte i, code ``2i + 1`` to the high nibble, each in
    two's complement (``q & 0xF``).
    """
    if codes.shape[-1] % 2:
        raise ValueError("the last axis must have an even length to pack two codes per byte")
    nibbles = codes.to(torch.int16) & 0xF                 # (..., n), values 0..15
    low, high = nibbles[..., 0::2], nibbles[..., 1::2]    # (..., n // 2) each
    return (low | (high << 4)).to(torch.uint8)


def unpack_int4(packed: Tensor) -> Tensor:
    """Undo :func:`pack_int4`: (..., m) uint8 -> (..., 2m) int8 codes in −8..7."""
    as_int = packed.to(torch.int16)
    low, high = as_int & 0xF, as_int >> 4                 # (..., m) each, values 0..15
    nibbles = torch.stack([low, high], dim=-1).flatten(-2)  # (..., 2m), back in order
    return ((nibbles ^ 8) - 8).to(torch.int8)             # 8..15 -> −8..−1


@dataclass
class QuantizedWeight:
    """A weight matrix (rows, cols) stored as codes and scales.

    ``codes``: int8 (rows, cols), or uint8 (rows, cols // 2) with two codes per byte when
    ``packed``. ``scales``: float32 (1, 1) per tensor or (rows, 1) per channel, or float16
    (rows, cols // group_size) for groups. ``nbytes`` counts the tensors actually held.
    """

    codes: Tensor
    scales: Tensor
    bits: int
    packed: bool
    grouped: bool

    def dequantize(self) -> Tensor:
        codes = unpack_int4(self.codes) if self.packed else self.codes
        if self.grouped:
            return dequantize_groupwise(codes, self.scales)
        return dequantize(codes, self.scales)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.codes, self.scales))


def quantize_weight(w: Tensor, bits: int, granularity: str | int) -> QuantizedWeight:
    """Store ``w`` (rows, cols) with ``bits``-bit absmax codes.

    granularity: ``"tensor"`` (one float32 scale), ``"channel"`` (one float32 scale per row, i.e.
    per output channel of ``nn.Linear``) or an int group size (float16 scales per group of that
    many consecutive weights in a row; it must divide the row length). Codes of 4 bits or fewer
    are packed two per byte, so 3- and 2-bit codes take as much memory as 4-bit ones.
    """
    if granularity == "tensor":
        codes, scales = absmax_quantize(w, bits)
    elif granularity == "channel":
        codes, scales = absmax_quantize(w, bits, dim=1)
    else:
        codes, scales = groupwise_quantize(w, bits, int(granularity))
    packed = bits <= 4
    return QuantizedWeight(pack_int4(codes) if packed else codes, scales, bits, packed,
                           grouped=not isinstance(granularity, str))


def quantize_linears(model: nn.Module, bits: int | None,
                     granularity: str | int | None = "channel",
                     others: torch.dtype = torch.float16) -> tuple[nn.Module, int]:
    """A copy of ``model`` whose ``nn.Linear`` weights hold what ``bits``-bit codes store.

    Every ``nn.Linear`` weight is replaced by its :func:`quantize_weight` round trip; every other
    parameter (biases, embeddings, LayerNorm) is rounded through ``others``, the dtype it is
    stored in. ``bits=None`` quantizes nothing and stores the Linear weights in ``others`` too
    (``granularity`` is then ignored); see :func:`quantize_weight` for ``granularity``.
    Returns ``(model copy, bytes)``, where bytes sums the stored tensors of all parameters.
    """
    quantized = copy.deepcopy(model)
    total, done = 0, set()
    with torch.no_grad():
        for module in quantized.modules():
            if isinstance(module, nn.Linear) and bits is not None:
                if granularity is None:
                    raise ValueError("give a granularity: 'tensor', 'channel' or a group size")
                stored = quantize_weight(module.weight, bits, granularity)
                module.weight.copy_(stored.dequantize())
                total += stored.nbytes
                done.add(id(module.weight))
        for parameter in quantized.parameters():
            if id(parameter) not in done:
                kept = parameter.to(others)
                parameter.copy_(kept)
                total += kept.numel() * kept.element_size()
    return quantized, total


def absmax_per_token(x: Tensor) -> tuple[Tensor, Tensor]:
    """int8 absmax codes of keys or values (batch, heads, seq, head_dim), one float16 scale per
    token and head: returns codes int8 (batch, heads, seq, head_dim), scales (batch, heads, seq, 1)."""
    return absmax_quantize(x, 8, dim=-1, scale_dtype=torch.float16)


class Int8KVCache:
    """A KV cache that stores keys and values as int8 codes with one scale per token and head.

    Same interface as :class:`riverbank.cache.KVCache`: ``update(layer, k, v)`` takes the new keys
    and values (batch, n_kv_heads, new, head_dim), appends their codes and scales, and returns the
    layer's whole cache dequantized to float32, old tokens first. ``quantize`` maps a tensor
    (batch, heads, new, head_dim) to ``(codes, scales)`` with ``scales`` broadcastable to it; the
    default is :func:`absmax_per_token`. ``nbytes`` counts the codes and scales held.
    """

    def __init__(self, n_layers: int,
                 quantize: Callable[[Tensor], tuple[Tensor, Tensor]] = absmax_per_token):
        self.quantize = quantize
        self.key_codes: list[Tensor | None] = [None] * n_layers
        self.key_scales: list[Tensor | None] = [None] * n_layers
        self.value_codes: list[Tensor | None] = [None] * n_layers
        self.value_scales: list[Tensor | None] = [None] * n_layers

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        stores = (self.key_codes, self.key_scales, self.value_codes, self.value_scales)
        new = (*self.quantize(k), *self.quantize(v))
        for store, tensor in zip(stores, new):
            old = store[layer]  # along seq: (batch, kv_heads, seq + new, head_dim or 1)
            store[layer] = tensor if old is None else torch.cat([old, tensor], dim=2)
        keys = dequantize(self.key_codes[layer], self.key_scales[layer])
        values = dequantize(self.value_codes[layer], self.value_scales[layer])
        return keys, values

    @property
    def seq_len(self) -> int:
        """Tokens cached so far: the position the next token will have."""
        return 0 if self.key_codes[0] is None else self.key_codes[0].shape[2]

    @property
    def nbytes(self) -> int:
        """Bytes held by every layer's codes and scales."""
        stores = self.key_codes + self.key_scales + self.value_codes + self.value_scales
        return sum(t.numel() * t.element_size() for t in stores if t is not None)

    def __repr__(self) -> str:
        return f"Int8KVCache(n_layers={len(self.key_codes)}, seq_len={self.seq_len}, nbytes={self.nbytes})"
