"""Position information for Transformers: sinusoidal encodings, learned position embeddings, and
the rotation that moves a sinusoidal encoding by a fixed offset (chapter 3; RoPE joins in chapter 8).

Shapes use ``max_len`` for the number of positions and ``d_model`` for the vector size. Positions
count from 0.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

BASE = 10000.0  # Vaswani et al. (2017), section 3.5


def _check_even(d_model: int) -> None:
    if d_model <= 0 or d_model % 2:
        raise ValueError(f"d_model must be a positive even number, got {d_model}: "
                         "the encoding pairs a sine with a cosine for each frequency")


def sinusoidal_frequencies(d_model: int, base: float = BASE) -> Tensor:
    """The angular frequency of each sine/cosine pair: ω_i = 1 / base^(2i / d_model).

    Returns a float64 tensor of shape ``(d_model // 2,)``, from ω_0 = 1 down to nearly 1/base.
    """
    _check_even(d_model)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)  # (d_model // 2,): 0, 2, 4, ...
    return base ** (-two_i / d_model)


def sinusoidal_encoding(max_len: int, d_model: int, base: float = BASE) -> Tensor:
    """The sinusoidal position encodings of Vaswani et al. (2017), section 3.5.

    PE[pos, 2i] = sin(pos · ω_i) and PE[pos, 2i + 1] = cos(pos · ω_i), with ω_i = 1 / base^(2i / d_model):
    sine on the even *dimensions*, cosine on the odd ones, for every position.

    Returns a float32 tensor of shape ``(max_len, d_model)``; row ``pos`` is the encoding of
    position ``pos``. The angles are computed in float64 and rounded once at the end, so every
    CPU gives the same float32 values.
    """
    if max_len < 0:
        raise ValueError(f"max_len must be >= 0, got {max_len}")
    omega = sinusoidal_frequencies(d_model, base)                  # (d_model // 2,)
    positions = torch.arange(max_len, dtype=torch.float64)        # (max_len,)
    angles = positions[:, None] * omega[None, :]                  # (max_len, d_model // 2)
    pe = torch.empty(max_len, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angles)
    pe[:, 1::2] = torch.cos(angles)
    return pe.to(torch.float32)


def offset_rotation(k: int, d_model: int, base: float = BASE) -> Tensor:
    """The matrix M that moves every sinusoidal encoding ``k`` positions on: M @ PE[pos] = PE[pos + k].

    M is block-diagonal. The 2 × 2 block on dimensions (2i, 2i + 1) is

        [[ cos(k ω_i), sin(k ω_i)],
         [-sin(k ω_i), cos(k ω_i)]],

    which follows from the angle-addition formulas. M depends on ``k`` only, never on ``pos``;
    it is orthogonal, and offset_rotation(-k) is its transpose (and its inverse).

    Returns a float32 tensor of shape ``(d_model, d_model)``, to multiply column vectors:
    ``M @ pe[pos]``, or ``pe @ M.T`` for all rows of ``pe`` at once.
    """
    angle = k * sinusoidal_frequencies(d_model, base)            # (d_model // 2,)
    cos, sin = torch.cos(angle), torch.sin(angle)
    m = torch.zeros(d_model, d_model, dtype=torch.float64)
    even = torch.arange(0, d_model, 2)
    m[even, even] = cos            # sin -> sin · cos(kω)
    m[even, even + 1] = sin        #        + cos · sin(kω)
    m[even + 1, even] = -sin       # cos -> -sin · sin(kω)
    m[even + 1, even + 1] = cos    #        + cos · cos(kω)
    return m.to(torch.float32)


class LearnedPositionEmbedding(nn.Module):
    """One trainable vector per position, as in BERT and GPT-2: a table of ``max_len`` rows.

    ``forward(positions)`` takes an integer tensor of positions of any shape ``(...)`` and returns
    their vectors, shape ``(..., d_model)``. A table has no row for a position it was not given,
    so a position outside ``0 .. max_len - 1`` raises an IndexError that says so (a bare
    ``nn.Embedding`` only says "index out of range in self").
    """

    def __init__(self, max_len: int, d_model: int):
        super().__init__()
        self.max_len, self.d_model = max_len, d_model
        self.table = nn.Embedding(max_len, d_model)  # weight: (max_len, d_model)

    def forward(self, positions: Tensor) -> Tensor:
        if positions.numel():
            low, high = int(positions.min()), int(positions.max())
            if high >= self.max_len or low < 0:
                bad = high if high >= self.max_len else low
                raise IndexError(
                    f"position {bad} has no learned vector: this embedding was built with "
                    f"max_len={self.max_len}, so it holds positions 0 to {self.max_len - 1} only. "
                    "A learned table cannot go past the length it was trained for; build it "
                    "with a larger max_len (and train it), or use sinusoidal encodings, which "
                    "are defined at every position.")
        return self.table(positions)  # (..., d_model)

    def extra_repr(self) -> str:
        return f"max_len={self.max_len}, d_model={self.d_model}"
