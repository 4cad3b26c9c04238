"""Chapter 3 exercises: sinusoidal position encodings, and the rotation that moves them by an offset."""

from __future__ import annotations

import math

import torch

from ...positions import offset_rotation, sinusoidal_encoding
from ..spec import Case, Exercise, Mistake


def _drawn(seed: int, low: int, high: int, even: bool = False) -> int:
    """A whole number drawn from [low, high) with a fixed seed: random, but the same on every run."""
    n = int(torch.randint(low, high, (1,), generator=torch.Generator().manual_seed(seed)))
    return n + n % 2 if even else n


def _table(max_len: int, d_model: int, *, exponent=lambda dim, d: 2 * (dim // 2) / d, shift: int = 0,
           sine_on=lambda pos, dim: dim % 2 == 0, multiply: bool = False,
           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A sinusoidal table, right by default; each keyword is one place where a learner can go wrong.

    exponent(dim, d): ω for dimension ``dim`` is 1 / 10000^exponent; shift: added to every position;
    sine_on(pos, dim): where the sine goes (the cosine goes everywhere else); multiply: pos · 10000^exponent.
    Returns ``dtype`` (float32 unless asked), shape (max_len, d_model).
    """
    pos = torch.arange(max_len, dtype=torch.float64)[:, None] + shift    # (max_len, 1)
    dim = torch.arange(d_model, dtype=torch.float64)[None, :]            # (1, d_model)
    scale = 10000.0 ** exponent(dim, d_model)                            # (1, d_model)
    angle = pos * scale if multiply else pos / scale                     # (max_len, d_model)
    return torch.where(sine_on(pos, dim), torch.sin(angle), torch.cos(angle)).to(dtype)


def _float32_table(max_len: int, d_model: int) -> torch.Tensor:
    """The encoding as learners compute it, in float32 throughout: it sets the checks' tolerance."""
    pos = torch.arange(max_len, dtype=torch.float32)[:, None]                         # (max_len, 1)
    omega = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))  # (d_model // 2,)
    pe = torch.zeros(max_len, d_model)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * omega), torch.cos(pos * omega)
    return pe


# --- 3.1 sinusoidal_encoding --------------------------------------------------------------------

def _halves(max_len: int, d_model: int) -> torch.Tensor:
    pe = sinusoidal_encoding(max_len, d_model)
    return torch.cat([pe[:, 0::2], pe[:, 1::2]], dim=1)


SINUSOID_MISTAKES = (
    Mistake("sine and cosine are swapped: sine on even dimensions 2i",
            lambda n, d: _table(n, d, sine_on=lambda pos, dim: dim % 2 == 1)),
    Mistake("sine on the even positions, cosine on the odd ones: the sine goes on the even dimensions 2i",
            lambda n, d: _table(n, d, sine_on=lambda pos, dim: pos % 2 == 0)),
    Mistake("only sines: dimension 2i+1 holds cos(pos·ω_i), not sin",
            lambda n, d: _table(n, d, sine_on=lambda pos, dim: dim >= 0)),
    Mistake("only cosines: dimension 2i holds sin(pos·ω_i), not cos",
            lambda n, d: _table(n, d, sine_on=lambda pos, dim: dim < 0)),
    Mistake("every pair has ω = 1: use 2i / d_model, not 2i // d_model",
            lambda n, d: _table(n, d, exponent=lambda dim, d: 0 * dim)),
    Mistake("the frequency uses 10000^(i/d_model), not 10000^(2i/d_model), with i the pair index",
            lambda n, d: _table(n, d, exponent=lambda dim, d: (dim // 2) / d)),
    Mistake("dimension 2i+1 uses 10000^((2i+1)/d_model): both dimensions of pair i use 10000^(2i/d_model)",
            lambda n, d: _table(n, d, exponent=lambda dim, d: dim / d)),
    Mistake("the exponent is 2j/d_model with j = 2i the dimension, so 4i/d_model; it should be 2i/d_model",
            lambda n, d: _table(n, d, exponent=lambda dim, d: 4 * (dim // 2) / d)),
    Mistake("positions start at 1: the first row is position 0 (every sine 0, every cosine 1)",
            lambda n, d: _table(n, d, shift=1)),
    Mistake("the position is multiplied by 10000^(2i/d_model) instead of divided by it",
            lambda n, d: _table(n, d, multiply=True)),
    Mistake("sines in the first half, cosines in the second: interleave them, sine on 2i, cosine on 2i+1",
            _halves),
    Mistake("the result is transposed: rows are positions, shape (max_len, d_model)",
            lambda n, d: sinusoidal_encoding(n, d).T.contiguous()),
)

_L31, _D31 = _drawn(31, 20, 80), _drawn(32, 6, 40, even=True)

SINUSOIDAL = Exercise(
    id="3.1",
    title="Sinusoidal position encodings",
    function_name="sinusoidal_encoding",
    arg_names=("max_len", "d_model"),
    signature="sinusoidal_encoding(max_len: int, d_model: int) -> (max_len, d_model)",
    reference=sinusoidal_encoding,
    cases=(
        Case("4 positions, d_model = 6", lambda: (4, 6), 2, "fixed"),
        Case(f"random size: {_L31} positions, d_model = {_D31}", lambda: (_L31, _D31), 2, "random"),
        Case("100 positions, d_model = 128", lambda: (100, 128), 2, "fixed"),
        Case("edge: a single position (position 0)", lambda: (1, 8), 1, "edge"),
        Case("edge: d_model = 2 (one frequency, ω = 1)", lambda: (5, 2), 1, "edge"),
        Case("edge: 512 positions, d_model = 512 (the paper's size)", lambda: (512, 512), 2, "edge"),
    ),
    mistakes=SINUSOID_MISTAKES,
    # The reference rounds float64 angles once; learners' float32 angles (pos · ω) are off by up to
    # ~3e-5 at position 511, so that plainer formula sets the tolerance.
    precise=lambda max_len, d_model: _table(max_len, d_model, dtype=torch.float64),
    reference32=_float32_table,
)


# --- 3.2 offset_rotation ------------------------------------------------------------------------

def _rotation(k: float, d_model: int, angle_of, block, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A block-diagonal (d_model, d_model) matrix; pair i's 2 × 2 block is block(angle_of(k, i, d))."""
    m = torch.zeros(d_model, d_model, dtype=torch.float64)
    for i in range(d_model // 2):
        a = angle_of(k, i, d_model)
        m[2 * i:2 * i + 2, 2 * i:2 * i + 2] = torch.tensor(block(a), dtype=torch.float64)
    return m.to(dtype)


def _angle(k, i, d):
    return k / 10000.0 ** (2 * i / d)


def _right_block(a):
    return [[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]]


def _float32_rotation(k: int, d_model: int) -> torch.Tensor:
    """The rotation as learners compute it, in float32 throughout: it sets the checks' tolerance."""
    angle = k * torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))  # (d_model // 2,)
    m = torch.zeros(d_model, d_model)
    even = torch.arange(0, d_model, 2)
    m[even, even], m[even, even + 1] = torch.cos(angle), torch.sin(angle)
    m[even + 1, even], m[even + 1, even + 1] = -torch.sin(angle), torch.cos(angle)
    return m


def _split_halves(k: int, d_model: int) -> torch.Tensor:
    # The same blocks, but pair i on dimensions (i, i + d/2): the rotate-half layout of some RoPE code.
    half = d_model // 2
    m = torch.zeros(d_model, d_model, dtype=torch.float64)
    for i in range(half):
        c, s = math.cos(_angle(k, i, d_model)), math.sin(_angle(k, i, d_model))
        m[i, i], m[i, i + half], m[i + half, i], m[i + half, i + half] = c, s, -s, c
    return m.to(torch.float32)


ROTATION_MISTAKES = (
    Mistake("the matrix is transposed (the sines have the wrong signs): it moves PE(pos) back to PE(pos − k)",
            lambda k, d: offset_rotation(-k, d)),
    Mistake("every block turns by k radians: pair i turns by k·ω_i, with ω_i = 1/10000^(2i/d_model)",
            lambda k, d: _rotation(k, d, lambda k, i, d: float(k), _right_block)),
    Mistake("the frequency uses 10000^(i/d_model), not 10000^(2i/d_model), with i the pair index",
            lambda k, d: _rotation(k, d, lambda k, i, d: k / 10000.0 ** (i / d), _right_block)),
    Mistake("the exponent is 2j/d_model with j = 2i the dimension, so 4i/d_model; it should be 2i/d_model",
            lambda k, d: _rotation(k, d, lambda k, i, d: k / 10000.0 ** (4 * i / d), _right_block)),
    Mistake("cosine and sine are swapped in the block: the diagonal holds cos(k·ω_i), not sin(k·ω_i)",
            lambda k, d: _rotation(k, d, _angle, lambda a: [[math.sin(a), math.cos(a)],
                                                            [-math.cos(a), math.sin(a)]])),
    Mistake("pair i is on dimensions i and i + d_model/2: it belongs on 2i (sine) and 2i+1 (cosine)",
            _split_halves),
)

_K32, _D32 = _drawn(41, 2, 30), _drawn(42, 6, 40, even=True)

ROTATION = Exercise(
    id="3.2",
    title="The rotation that moves an encoding by k positions",
    function_name="offset_rotation",
    arg_names=("k", "d_model"),
    signature="offset_rotation(k: int, d_model: int) -> (d_model, d_model)",
    reference=offset_rotation,
    cases=(
        Case("k = 1, d_model = 4", lambda: (1, 4), 2, "fixed"),
        Case(f"random: k = {_K32}, d_model = {_D32}", lambda: (_K32, _D32), 2, "random"),
        Case("k = 100, d_model = 64", lambda: (100, 64), 2, "fixed"),
        Case("edge: k = 0 (the identity)", lambda: (0, 8), 1, "edge"),
        Case("edge: k = −3 (moves back 3 positions)", lambda: (-3, 6), 1, "edge"),
        Case("edge: d_model = 2 (a single 2 × 2 block)", lambda: (2, 2), 1, "edge"),
    ),
    mistakes=ROTATION_MISTAKES,
    precise=lambda k, d_model: _rotation(k, d_model, _angle, _right_block, dtype=torch.float64),
    reference32=_float32_rotation,
)

EXERCISES = (SINUSOIDAL, ROTATION)
