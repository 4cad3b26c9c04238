"""Chapter 3 exercises: encodings of any positions, the rotation M_k that moves them by k, and two
measurements of what a causal mask does to attention's blindness to order."""

from __future__ import annotations

import functools
import itertools
import math

import torch

from ...attention import scaled_dot_product_attention
from ...positions import offset_rotation
from ..spec import BUILD, EXPERIMENT, FLOOR_ULPS, SAFETY, WARM_UP, Case, Exercise, Mistake

ENCODING = "chapter 3, section “The sinusoidal encoding”"
ROTATION_SECTION = "chapter 3, section “Moving k positions on is a rotation”"
ORDER = "chapter 3, section “Attention does not see word order”"


def _drawn(seed: int, low: int, high: int, even: bool = False) -> int:
    """A whole number drawn from [low, high) with a fixed seed: random, but the same on every run."""
    n = int(torch.randint(low, high, (1,), generator=torch.Generator().manual_seed(seed)))
    return n + n % 2 if even else n


# --- 3.1 encode_positions -----------------------------------------------------------------------

def _encode(positions, d_model, base=10000.0, *, exponent=lambda two_i, d: two_i / d, sine_first=True,
            multiply=False, halves=False, dtype=torch.float32):
    """The encoding of each position in ``positions``, right by default; each keyword is one place
    where a learner can go wrong. positions: int tensor (...) -> (..., d_model)."""
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)           # (d_model // 2,)
    scale = base ** exponent(two_i, d_model)                            # (d_model // 2,)
    pos = positions.to(torch.float64)[..., None]                        # (..., 1)
    angles = pos * scale if multiply else pos / scale                   # (..., d_model // 2)
    first, second = (angles.sin(), angles.cos()) if sine_first else (angles.cos(), angles.sin())
    if halves:
        return torch.cat([first, second], dim=-1).to(dtype)
    return torch.stack([first, second], dim=-1).flatten(-2).to(dtype)  # (..., d_model): 2i, 2i + 1


def encode_positions(positions: torch.Tensor, d_model: int, base: float = 10000.0) -> torch.Tensor:
    """PE(pos) for every entry of ``positions``: (...) int -> (..., d_model) float32, with
    PE(pos, 2i) = sin(pos ω_i), PE(pos, 2i + 1) = cos(pos ω_i), ω_i = 1 / base^(2i / d_model)."""
    return _encode(positions, d_model, base)


def _encode_float32(positions, d_model, base=10000.0):
    """The encoding as learners compute it, in float32 throughout: it sets the checks' tolerance."""
    omega = base ** (-torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)  # (d_model // 2,)
    angles = positions.float()[..., None] * omega                                  # (..., d_model // 2)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)


def _left_padded() -> torch.Tensor:
    # Position ids of a left-padded batch: the padding repeats position 0, each text counts from 0.
    return torch.tensor([[0, 0, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5]])


def _drawn_positions(seed: int, shape: tuple[int, ...], low: int, high: int) -> torch.Tensor:
    return torch.randint(low, high, shape, generator=torch.Generator().manual_seed(seed))


_D31 = _drawn(311, 6, 30, even=True)

ENCODE = Exercise(
    id="3.1",
    title="Encodings of any positions",
    function_name="encode_positions",
    arg_names=("positions", "d_model", "base"),
    signature="encode_positions(positions: (...) int, d_model: int, base: float = 10000.0) -> (..., d_model)",
    reference=encode_positions,
    level=WARM_UP,
    cases=(
        Case("positions 0 to 3, d_model = 6", lambda: (torch.arange(4), 6, 10000.0), 2, "fixed"),
        Case("a left-padded batch of position ids (2, 6), d_model = 8",
             lambda: (_left_padded(), 8, 10000.0), 2, "fixed"),
        Case(f"random positions (3, 7) up to 500, d_model = {_D31}",
             lambda: (_drawn_positions(312, (3, 7), 0, 500), _D31, 10000.0), 2, "random"),
        Case("random positions (4, 5), base 500, d_model = 12",
             lambda: (_drawn_positions(313, (4, 5), 0, 200), 12, 500.0), 2, "random"),
        Case("edge: negative positions −3 to 2, d_model = 4", lambda: (torch.arange(-3, 3), 4, 10000.0), 1, "edge"),
        Case("edge: one position as a 0-d tensor, d_model = 10", lambda: (torch.tensor(37), 10, 10000.0), 1, "edge"),
        Case("edge: d_model = 2, base 100", lambda: (torch.arange(5)[:, None] * 3, 2, 100.0), 1, "edge"),
    ),
    mistakes=(
        Mistake("sine and cosine are swapped: the sine goes on dimension 2i",
                lambda p, d, b: _encode(p, d, b, sine_first=False), hint=2, section=ENCODING),
        Mistake("the base is ignored: ω_i = 1 / base^(2i/d_model), with the base passed in",
                lambda p, d, b: _encode(p, d), hint=2),
        Mistake("the exponent uses i/d_model, with i the pair index: use 2i/d_model",
                lambda p, d, b: _encode(p, d, b, exponent=lambda two_i, d: two_i / 2 / d), hint=2, section=ENCODING),
        Mistake("the exponent uses 4i/d_model: with j = 2i the dimension, it is j/d_model",
                lambda p, d, b: _encode(p, d, b, exponent=lambda two_i, d: 2 * two_i / d), hint=2, section=ENCODING),
        Mistake("the position is multiplied by base^(2i/d_model) instead of divided",
                lambda p, d, b: _encode(p, d, b, multiply=True), hint=2),
        Mistake("sines in the first half, cosines in the second: interleave them",
                lambda p, d, b: _encode(p, d, b, halves=True), hint=3, section=ENCODING),
        Mistake("the positions' values are ignored: encode the numbers you are given",
                lambda p, d, b: _encode(torch.arange(p.numel()).reshape(p.shape), d, b), hint=1),
        Mistake("the output is flattened: keep the positions' shape, add d_model last",
                lambda p, d, b: _encode(p.reshape(-1), d, b), hint=3),
    ),
    hints=(
        "A position's vector depends only on its own number, so the shape the positions come in does not "
        "matter: compute one angle per position and per pair of dimensions, and put the sine and the cosine "
        "of each angle side by side. Nothing limits the positions to 0, 1, 2, …: a left-padded batch repeats "
        "position 0, and negative positions follow the same formula.",
        "ω_i = 1 / base^(2i/d_model) for the pairs i = 0 … d_model/2 − 1; PE(pos, 2i) = sin(pos·ω_i) and "
        "PE(pos, 2i+1) = cos(pos·ω_i).",
        "positions (...) → positions[..., None] times ω (d_model/2,) broadcasts to angles (..., d_model/2); fill "
        "an empty (..., d_model) tensor with the sines in [..., 0::2] and the cosines in [..., 1::2]. Angles in "
        "float64, the result converted to float32 at the end, are the same on every machine.",
    ),
    reference32=_encode_float32,
    precise=lambda positions, d_model, base=10000.0: _encode(positions, d_model, base, dtype=torch.float64),
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


def _same_block_everywhere(k: int, d_model: int) -> torch.Tensor:
    # Pair 0's block copied to every pair: the chapter's one-pair rotation not given each pair's ω_i.
    return _rotation(k, d_model, lambda k, i, d: float(k), _right_block)


ROTATION_MISTAKES = (
    Mistake("the matrix is transposed (the sines have the wrong signs): it moves PE(pos) back to PE(pos − k)",
            lambda k, d: offset_rotation(-k, d), hint=2, section=ROTATION_SECTION),
    Mistake("every block turns by k radians: pair i turns by k·ω_i, with ω_i = 1/10000^(2i/d_model)",
            _same_block_everywhere, hint=1, section=ROTATION_SECTION),
    Mistake("the frequency uses 10000^(i/d_model), not 10000^(2i/d_model), with i the pair index",
            lambda k, d: _rotation(k, d, lambda k, i, d: k / 10000.0 ** (i / d), _right_block), hint=2,
            section=ENCODING),
    Mistake("the exponent is 2j/d_model with j = 2i the dimension, so 4i/d_model; it should be 2i/d_model",
            lambda k, d: _rotation(k, d, lambda k, i, d: k / 10000.0 ** (4 * i / d), _right_block), hint=2,
            section=ENCODING),
    Mistake("cosine and sine are swapped in the block: the diagonal holds cos(k·ω_i), not sin(k·ω_i)",
            lambda k, d: _rotation(k, d, _angle, lambda a: [[math.sin(a), math.cos(a)],
                                                            [-math.cos(a), math.sin(a)]]), hint=2,
            section=ROTATION_SECTION),
    Mistake("pair i is on dimensions i and i + d_model/2: it belongs on 2i (sine) and 2i+1 (cosine)",
            _split_halves, hint=3),
)

_K32, _D32 = _drawn(41, 2, 30), _drawn(42, 6, 40, even=True)
_KNEG, _DNEG = -_drawn(43, 5, 60), _drawn(44, 8, 32, even=True)

ROTATION = Exercise(
    id="3.2",
    title="The rotation that moves an encoding by k positions",
    function_name="offset_rotation",
    arg_names=("k", "d_model"),
    signature="offset_rotation(k: int, d_model: int) -> (d_model, d_model)",
    reference=offset_rotation,
    level=BUILD,
    cases=(
        Case("k = 1, d_model = 4", lambda: (1, 4), 2, "fixed"),
        Case(f"random: k = {_K32}, d_model = {_D32}", lambda: (_K32, _D32), 2, "random"),
        Case(f"random: k = −{-_KNEG} (backwards), d_model = {_DNEG}", lambda: (_KNEG, _DNEG), 2, "random"),
        Case("k = 100, d_model = 64", lambda: (100, 64), 2, "fixed"),
        Case("edge: k = 0 (the identity)", lambda: (0, 8), 1, "edge"),
        Case("edge: k = −3 (moves back 3 positions)", lambda: (-3, 6), 1, "edge"),
        Case("edge: d_model = 2 (a single 2 × 2 block)", lambda: (2, 2), 1, "edge"),
    ),
    mistakes=ROTATION_MISTAKES,
    hints=(
        "The pairs of dimensions (2i, 2i+1) never mix: each pair turns on its own circle, by its own angle "
        "k·ω_i. So M_k is the chapter's 2 × 2 rotation for one pair, repeated down the diagonal with each "
        "pair's own frequency, and zeros everywhere else. A negative k turns the other way and needs no "
        "special case.",
        "For pair i, with a = k·ω_i and ω_i = 1/10000^(2i/d_model), the block on rows and columns 2i, 2i+1 is "
        "[[cos a, sin a], [−sin a, cos a]]: row 2i gives sin(x + a) = sin x cos a + cos x sin a, row 2i+1 "
        "gives cos(x + a) = cos x cos a − sin x sin a.",
        "Start from a (d_model, d_model) zero matrix and write four entries per pair, in a loop over the "
        "d_model/2 pairs or with index tensors of the even rows; or build the d_model/2 blocks and join them "
        "with torch.block_diag. Return float32.",
    ),
    precise=lambda k, d_model: _rotation(k, d_model, _angle, _right_block, dtype=torch.float64),
    reference32=_float32_rotation,
)


# --- 3.3 and 3.4: a causal mask and the order of the tokens -------------------------------------
# The exercise notebook builds the same five tokens and projections, from the same generator.

N_TOKENS, D_ORDER, ORDER_SEED = 5, 8, 2017


def order_setup(dtype: torch.dtype = torch.float32):
    """The exercises' five tokens x (5, 8) and projections W_Q, W_K, W_V (8, 8), in ``dtype``."""
    g = torch.Generator().manual_seed(ORDER_SEED)
    x = torch.randn(N_TOKENS, D_ORDER, generator=g)
    ws = [torch.randn(D_ORDER, D_ORDER, generator=g) / math.sqrt(D_ORDER) for _ in range(3)]
    return x.to(dtype), tuple(w.to(dtype) for w in ws)


def _changes(dtype, *, mask_a="causal", mask_b="causal", reorder=True):
    """For every order σ of the tokens: |attend(x[σ], mask_a) − attend(x, mask_b)[σ]|, (5, 8) each."""
    x, (w_q, w_k, w_v) = order_setup(dtype)
    masks = {"causal": torch.tril(torch.ones(N_TOKENS, N_TOKENS, dtype=torch.bool)),
             "future": torch.triu(torch.ones(N_TOKENS, N_TOKENS, dtype=torch.bool)), "none": None}

    def attend(t, mask):
        return scaled_dot_product_attention(t @ w_q, t @ w_k, t @ w_v, masks[mask])

    before = attend(x, mask_b)
    for order in itertools.permutations(range(N_TOKENS)):
        order = list(order)
        yield order, (attend(x[order], mask_a) - (before[order] if reorder else before)).abs()


@functools.cache
def _largest_change(dtype=torch.float64, **how) -> float:
    return max(change.max().item() for _, change in _changes(dtype, **how))


def causal_equivariance_gap() -> float:
    """The largest change, over all 120 orders σ, of |attend(x[σ], causal) − attend(x, causal)[σ]|."""
    return _largest_change()


def _answer_tol(measure):
    """SAFETY × the measurement's own float32 error, plus FLOOR_ULPS units in its last place."""
    def tol(truth):
        error = abs(measure(torch.float32) - measure(torch.float64))
        return SAFETY * error + FLOOR_ULPS * torch.finfo(torch.float32).eps * abs(truth)
    return tol


EQUIVARIANCE = Exercise(
    id="3.3",
    title="A causal mask and the order of the tokens",
    function_name="causal_equivariance_gap",
    arg_names=(),
    signature="causal_equivariance_gap() -> float",
    reference=causal_equivariance_gap,
    level=EXPERIMENT,
    cases=(Case("your answer", lambda: (), 4, "experiment"),),
    mistakes=(
        Mistake("this is the change without reordering the output: compare with attend(x, causal)[σ]",
                lambda: _largest_change(reorder=False), hint=2, section=ORDER),
        Mistake("only the reordered input was masked: both runs take the causal mask",
                lambda: _largest_change(mask_b="none"), hint=2),
        Mistake("only the original input was masked: both runs take the causal mask",
                lambda: _largest_change(mask_a="none"), hint=2),
        Mistake("the mask keeps the future: a causal mask keeps key j ≤ query i (torch.tril)",
                lambda: _largest_change(mask_a="future", mask_b="future"), hint=3),
        Mistake("this is one order only (the reversed one): take the largest over all 120",
                lambda: max(c.max().item() for o, c in _changes(torch.float64) if o == [4, 3, 2, 1, 0]), hint=2),
        Mistake("this is the average change: the answer is the largest one",
                lambda: sum(c.mean().item() for _, c in _changes(torch.float64)) / 120, hint=2),
    ),
    hints=(
        "Equivariance means: reorder the input rows, and the output rows are the old ones, reordered the same "
        "way. Without a mask that holds up to rounding (the chapter's dog bites man). Test it with a causal "
        "mask, for every order of the five tokens, and record how far the worst order is from it.",
        "For an order σ (a list of row indices), the change is max |attend(x[σ], causal) − attend(x, causal)[σ]| "
        "over all entries; the answer is the largest change over all 5! = 120 orders.",
        "causal is a (5, 5) bool mask, True on and below the diagonal; loop over itertools.permutations(range(5)), "
        "turn each order into a list to index with, compute both (5, 8) outputs, take the largest absolute "
        "difference, and keep the maximum. Return it as a Python float (.item()).",
    ),
    answer_tol=_answer_tol(lambda dtype: _largest_change(dtype)),
)


@functools.cache
def _orders_kept(position: int = 2, *, mask_a="causal", threshold: float = 1e-5) -> int:
    count = 0
    for order, change in _changes(torch.float64, mask_a=mask_a, mask_b=mask_a):
        if change[position].max().item() < threshold:
            count += 1
    return count


def orders_keeping_position_2() -> int:
    """In how many of the 120 orders does the token at position 2 keep the causal output it had?"""
    return _orders_kept()


PREFIX = Exercise(
    id="3.4",
    title="What a causal mask lets a token see",
    function_name="orders_keeping_position_2",
    arg_names=(),
    signature="orders_keeping_position_2() -> int",
    reference=orders_keeping_position_2,
    level=EXPERIMENT,
    cases=(Case("your answer", lambda: (), 3, "experiment"),),
    mistakes=(
        Mistake("the token at position 2 must also have the same tokens before it, in any order",
                lambda: math.factorial(N_TOKENS - 1), hint=2),
        Mistake("that counts orders without a mask: with the causal mask the answer differs",
                lambda: _orders_kept(mask_a="none"), hint=2),
        Mistake("the tokens after position 2 may come in any order: they are masked out",
                lambda: 2, hint=2),
        Mistake("only the original order? Count every order that leaves the output unchanged",
                lambda: 1, hint=1),
    ),
    hints=(
        "With a causal mask, the token at position i blends the values of the tokens at positions 0 to i. A sum "
        "does not care about the order of its terms, so ask which reorderings leave that sum, and the token "
        "itself, the same. Then measure it.",
        "For each order σ, the token now at position 2 is x[σ[2]]; its output attend(x[σ], causal)[2] is "
        "unchanged when it is within 1e-5 of attend(x, causal)[σ[2]], the output that token had before.",
        "Loop over the 120 orders as in exercise 3.3, compare row 2 of the two outputs (after reordering the old "
        "one), count the orders whose largest difference is below 1e-5, and return the count as an int.",
    ),
)

EXERCISES = (ENCODE, ROTATION, EQUIVARIANCE, PREFIX)
