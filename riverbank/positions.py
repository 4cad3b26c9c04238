"""Position information for Transformers: sinusoidal encodings, learned position embeddings, and
the rotation that moves a sinusoidal encoding by a fixed offset (chapter 3); rotary position
embeddings, RoPE, which rotate the queries and keys themselves (chapter 8).

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


# --- RoPE (chapter 8) ---------------------------------------------------------------------------
# Su et al. (2021), "RoFormer: Enhanced Transformer with Rotary Position Embedding", section 3.4.

ROPE_CONVENTIONS = ("interleaved", "split_halves")


def rope_frequencies(head_dim: int, base: float = BASE) -> Tensor:
    """RoPE's angle per position for each pair of dimensions: θ_i = 1 / base^(2i / head_dim).

    The same frequencies as the sinusoidal encoding's ω_i. Returns float64, shape ``(head_dim // 2,)``.
    """
    return sinusoidal_frequencies(head_dim, base)


def rope_pair_permutation(head_dim: int) -> Tensor:
    """The order of dimensions that turns the interleaved convention into the split-halves one.

    ``perm = [0, 2, 4, ..., 1, 3, 5, ...]``, shape ``(head_dim,)``: it moves the interleaved pair
    (2i, 2i + 1) to the split-halves pair (i, i + head_dim/2). For every x and positions,
    ``apply_rope(x[..., perm], p, "split_halves") == apply_rope(x, p, "interleaved")[..., perm]``.
    """
    _check_even(head_dim)
    return torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])


def apply_rope(x: Tensor, positions: Tensor, convention: str = "interleaved",
               base: float = BASE) -> Tensor:
    """Rotary position embedding: turn each pair of dimensions of ``x`` by ``position · θ_i``.

    Args:
        x: (..., seq, head_dim), queries or keys (never values), for example
            (batch, heads, seq, head_dim). ``head_dim`` is even.
        positions: integer positions of the ``seq`` tokens, shape (seq,), or any shape that
            broadcasts against ``x.shape[:-1]``, e.g. (batch, 1, seq). With a KV cache, the new
            tokens' positions start where the cached ones end.
        convention: which dimensions form pair i, turned by the angle position · θ_i with
            θ_i = 1 / base^(2i / head_dim):

            - ``"interleaved"``: dimensions (2i, 2i + 1), as in Su et al. (2021) and GPT-J;
            - ``"split_halves"``: dimensions (i, i + head_dim/2), as in GPT-NeoX and Hugging Face's
              Llama (``rotate_half``).

            The two are the same rotation with the dimensions listed in a different order; see
            :func:`rope_pair_permutation`.
        base: 10000 in the paper; Llama 3 uses 500000.

    Each pair (a, b) becomes (a cos φ − b sin φ, a sin φ + b cos φ), φ = position · θ_i: a turn
    counter-clockwise by φ. Returns a tensor of the shape and dtype of ``x``. The angles are
    computed in float64 and their cosines and sines rounded to x's dtype, so every CPU agrees.
    """
    if convention not in ROPE_CONVENTIONS:
        raise ValueError(f"convention must be one of {ROPE_CONVENTIONS}, got {convention!r}")
    head_dim = x.shape[-1]
    theta = rope_frequencies(head_dim, base).to(x.device)                  # (head_dim // 2,)
    angles = positions.to(x.device, torch.float64)[..., None] * theta      # (..., seq, head_dim // 2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    if convention == "interleaved":
        a, b = x[..., 0::2], x[..., 1::2]                                  # (..., seq, head_dim // 2)
        turned = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1)  # (..., seq, half, 2)
        return turned.flatten(-2)                                          # (..., seq, head_dim)
    a, b = x[..., :head_dim // 2], x[..., head_dim // 2:]                   # (..., seq, head_dim // 2)
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)       # (..., seq, head_dim)
