"""Chapter 3 (encodings of any positions, the offset rotation, a causal mask and word order):
learner code the grader has not seen."""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from riverbank.attention import scaled_dot_product_attention
from riverbank.grading.exercises.ch03 import order_setup


# --- 3.1 encode_positions: correct -----------------------------------------------------------------

def ch03_enc_float32_exp_log(positions, d_model, base=10000.0):  # float32 angles, the tutorials' exp-log ω
    div = torch.exp(torch.arange(0, d_model, 2) * (-math.log(base) / d_model))
    angles = positions.unsqueeze(-1).float() * div
    pe = torch.zeros(*positions.shape, d_model)
    pe[..., 0::2], pe[..., 1::2] = torch.sin(angles), torch.cos(angles)
    return pe


def ch03_enc_flat_then_reshape(positions, d_model, base=10000.0):  # a (n, d) table, reshaped back
    flat = positions.reshape(-1, 1).double()
    i = torch.arange(d_model // 2, dtype=torch.float64)
    angles = flat / base ** (2 * i / d_model)
    table = torch.stack([angles.sin(), angles.cos()], dim=-1).reshape(len(flat), d_model)
    return table.reshape(*positions.shape, d_model).float()


def ch03_enc_numpy_loops(positions, d_model, base=10000.0):
    pos = positions.numpy().astype(np.float64)
    out = np.empty(pos.shape + (d_model,))
    for dim in range(d_model):
        angle = pos / base ** (2 * (dim // 2) / d_model)
        out[..., dim] = np.sin(angle) if dim % 2 == 0 else np.cos(angle)
    return torch.from_numpy(out).float()


def ch03_enc_complex_einsum(positions, d_model, base=10000.0):  # e^{i·pos·ω}: imag is sin, real is cos
    omega = base ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    z = torch.polar(torch.ones((), dtype=torch.float64), torch.einsum("...,i->...i", positions.double(), omega))
    return torch.stack([z.imag, z.real], dim=-1).flatten(-2).float()


# --- 3.1 encode_positions: wrong -------------------------------------------------------------------

def ch03_enc_swapped(positions, d_model, base=10000.0):
    angles = positions[..., None] / base ** (torch.arange(0, d_model, 2) / d_model)
    pe = torch.zeros(*positions.shape, d_model)
    pe[..., 0::2], pe[..., 1::2] = angles.cos(), angles.sin()
    return pe


def ch03_enc_hard_coded_base(positions, d_model, base=10000.0):
    angles = positions[..., None].float() / 10000 ** (torch.arange(0, d_model, 2) / d_model)
    return torch.stack([angles.sin(), angles.cos()], -1).flatten(-2)


def ch03_enc_chapter_table_indexed(positions, d_model, base=10000.0):  # rows 0..n-1 of a table
    n = positions.numel()
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    angles = pos / base ** (torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    table = torch.stack([angles.sin(), angles.cos()], -1).flatten(-2)
    return table.reshape(*positions.shape, d_model).float()


def ch03_enc_cat_halves(positions, d_model, base=10000.0):
    angles = positions[..., None].double() / base ** (torch.arange(0, d_model, 2) / d_model)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).float()


def ch03_enc_i_over_d(positions, d_model, base=10000.0):
    angles = positions[..., None].double() / base ** (torch.arange(d_model // 2) / d_model)
    return torch.stack([angles.sin(), angles.cos()], -1).flatten(-2).float()


def ch03_enc_flattened(positions, d_model, base=10000.0):
    angles = positions.reshape(-1, 1).double() / base ** (torch.arange(0, d_model, 2) / d_model)
    return torch.stack([angles.sin(), angles.cos()], -1).flatten(-2).float()


def ch03_enc_abs_positions(positions, d_model, base=10000.0):  # negative positions made positive
    angles = positions.abs()[..., None].double() / base ** (torch.arange(0, d_model, 2) / d_model)
    return torch.stack([angles.sin(), angles.cos()], -1).flatten(-2).float()


# --- 3.2 offset_rotation: correct ---------------------------------------------------------------

def ch03_rot_float32_exp_log(k, d_model):  # float32 angles, the way learners write ω
    omega = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
    angle = k * omega
    M = torch.zeros(d_model, d_model)
    for i in range(d_model // 2):
        c, s = torch.cos(angle[i]), torch.sin(angle[i])
        M[2 * i, 2 * i], M[2 * i, 2 * i + 1] = c, s
        M[2 * i + 1, 2 * i], M[2 * i + 1, 2 * i + 1] = -s, c
    return M


def ch03_rot_matrix_exp(k, d_model):  # exp(k·A), A the generator of every pair's rotation
    A = torch.zeros(d_model, d_model, dtype=torch.float64)
    for i in range(d_model // 2):
        w = 10000.0 ** (-2 * i / d_model)
        A[2 * i, 2 * i + 1], A[2 * i + 1, 2 * i] = w, -w
    return torch.linalg.matrix_exp(k * A).float()


def ch03_rot_kron_blocks(k, d_model):
    M = torch.zeros(d_model, d_model, dtype=torch.float64)
    for i in range(d_model // 2):
        a = k / 10000 ** (2 * i / d_model)
        block = torch.tensor([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]], dtype=torch.float64)
        E = torch.zeros(d_model // 2, d_model // 2, dtype=torch.float64)
        E[i, i] = 1
        M += torch.kron(E, block)
    return M.to(torch.float32)


def ch03_rot_complex_stack(k, d_model):  # z = e^{i k ω}: cos = z.real, sin = z.imag
    omega = torch.pow(10000.0, -torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)
    z = torch.exp(1j * k * omega.to(torch.complex64))
    c, s = z.real, z.imag
    blocks = torch.stack([torch.stack([c, s], -1), torch.stack([-s, c], -1)], -2)  # (d/2, 2, 2)
    return torch.block_diag(*blocks)


# --- 3.2 offset_rotation: wrong -----------------------------------------------------------------

def ch03_rot_textbook_rotation(k, d_model):  # [[cos, -sin], [sin, cos]]: turns the other way
    M = torch.zeros(d_model, d_model)
    for i in range(d_model // 2):
        a = k / 10000 ** (2 * i / d_model)
        M[2 * i:2 * i + 2, 2 * i:2 * i + 2] = torch.tensor([[math.cos(a), -math.sin(a)],
                                                             [math.sin(a), math.cos(a)]])
    return M


def ch03_rot_k_radians(k, d_model):
    c, s = math.cos(k), math.sin(k)
    M = torch.zeros(d_model, d_model)
    even = torch.arange(0, d_model, 2)
    M[even, even], M[even, even + 1], M[even + 1, even], M[even + 1, even + 1] = c, s, -s, c
    return M


def ch03_rot_i_over_d(k, d_model):
    blocks = []
    for i in range(d_model // 2):
        a = k / 10000 ** (i / d_model)
        blocks.append(torch.tensor([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]]))
    return torch.block_diag(*blocks)


def ch03_rot_4i_over_d(k, d_model):
    M = torch.zeros(d_model, d_model)
    for j in range(0, d_model, 2):
        a = k / 10000 ** (2 * j / d_model)
        M[j, j], M[j, j + 1], M[j + 1, j], M[j + 1, j + 1] = math.cos(a), math.sin(a), -math.sin(a), math.cos(a)
    return M


def ch03_rot_sin_on_diagonal(k, d_model):
    blocks = []
    for i in range(d_model // 2):
        a = k / 10000 ** (2 * i / d_model)
        blocks.append(torch.tensor([[math.sin(a), math.cos(a)], [-math.cos(a), math.sin(a)]]))
    return torch.block_diag(*blocks)


def ch03_rot_rotate_half_layout(k, d_model):
    half = d_model // 2
    omega = 10000 ** (-torch.arange(half, dtype=torch.float64) * 2 / d_model)
    c, s = torch.cos(k * omega), torch.sin(k * omega)
    top = torch.cat([torch.diag(c), torch.diag(s)], dim=1)
    bottom = torch.cat([torch.diag(-s), torch.diag(c)], dim=1)
    return torch.cat([top, bottom], dim=0).float()


def ch03_rot_both_sines_negative(k, d_model):  # [[cos, -sin], [-sin, cos]]: not a rotation
    blocks = []
    for i in range(d_model // 2):
        a = k / 10000 ** (2 * i / d_model)
        blocks.append(torch.tensor([[math.cos(a), -math.sin(a)], [-math.sin(a), math.cos(a)]]))
    return torch.block_diag(*blocks)


def ch03_rot_integer_division_exponent(k, d_model):  # 2 * i // d_model is 0: every ω is 1
    blocks = []
    for i in range(d_model // 2):
        a = k / 10000 ** (2 * i // d_model)
        blocks.append(torch.tensor([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]]))
    return torch.block_diag(*blocks)




# --- 3.3 and 3.4: the exercise notebook's tokens and attend ----------------------------------------

_X, (_WQ, _WK, _WV) = order_setup()
_CAUSAL = torch.tril(torch.ones(5, 5, dtype=torch.bool))


def _attend(tokens, mask=None):
    return scaled_dot_product_attention(tokens @ _WQ, tokens @ _WK, tokens @ _WV, mask)


def _orders():
    return [list(p) for p in itertools.permutations(range(5))]


# --- 3.3 causal_equivariance_gap: correct ------------------------------------------------------------

def ch03_gap_loop():
    before = _attend(_X, _CAUSAL)
    return max((_attend(_X[o], _CAUSAL) - before[o]).abs().max().item() for o in _orders())


def ch03_gap_batched():  # all 120 orders at once: (120, 5, 8)
    orders = torch.tensor(_orders())
    moved = _attend(_X[orders], _CAUSAL)
    return float((moved - _attend(_X, _CAUSAL)[orders]).abs().amax())


def ch03_gap_float64():
    x, w = _X.double(), (_WQ.double(), _WK.double(), _WV.double())
    f = lambda t: scaled_dot_product_attention(t @ w[0], t @ w[1], t @ w[2], _CAUSAL)  # noqa: E731
    return max(float((f(x[o]) - f(x)[o]).abs().max()) for o in _orders())


def ch03_gap_inverse_permutation():  # undo the order on the output instead
    before = _attend(_X, _CAUSAL)
    worst = 0.0
    for o in _orders():
        inverse = torch.argsort(torch.tensor(o))
        worst = max(worst, (_attend(_X[o], _CAUSAL)[inverse] - before).abs().max().item())
    return worst


# --- 3.3 causal_equivariance_gap: wrong --------------------------------------------------------------

def ch03_gap_invariance():
    before = _attend(_X, _CAUSAL)
    return max((_attend(_X[o], _CAUSAL) - before).abs().max().item() for o in _orders())


def ch03_gap_reversed_only():
    o = [4, 3, 2, 1, 0]
    return (_attend(_X[o], _CAUSAL) - _attend(_X, _CAUSAL)[o]).abs().max().item()


def ch03_gap_mean():
    before = _attend(_X, _CAUSAL)
    return sum((_attend(_X[o], _CAUSAL) - before[o]).abs().mean().item() for o in _orders()) / 120


def ch03_gap_one_side_masked():
    before = _attend(_X)
    return max((_attend(_X[o], _CAUSAL) - before[o]).abs().max().item() for o in _orders())


def ch03_gap_triu_mask():
    future = torch.triu(torch.ones(5, 5, dtype=torch.bool))
    before = _attend(_X, future)
    return max((_attend(_X[o], future) - before[o]).abs().max().item() for o in _orders())


def ch03_gap_no_mask():  # rounding error only
    before = _attend(_X)
    return max((_attend(_X[o]) - before[o]).abs().max().item() for o in _orders())


def ch03_gap_typed():  # the number copied with 3 decimals
    return round(ch03_gap_loop(), 3)


# --- 3.4 orders_keeping_position_2: correct ----------------------------------------------------------

def ch03_kept_loop():
    before = _attend(_X, _CAUSAL)
    return sum(int((_attend(_X[o], _CAUSAL)[2] - before[o[2]]).abs().max() <= 1e-5) for o in _orders())


def ch03_kept_batched():
    orders = torch.tensor(_orders())
    now = _attend(_X[orders], _CAUSAL)[:, 2]              # (120, 8)
    then = _attend(_X, _CAUSAL)[orders[:, 2]]             # (120, 8)
    return int(((now - then).abs().amax(dim=-1) <= 1e-5).sum())


def ch03_kept_allclose():
    before = _attend(_X, _CAUSAL)
    return len([o for o in _orders() if torch.allclose(_attend(_X[o], _CAUSAL)[2], before[o[2]], atol=1e-5, rtol=0)])


# --- 3.4 orders_keeping_position_2: wrong ------------------------------------------------------------

def ch03_kept_same_token_only():  # "the same token at position 2" without measuring
    return sum(1 for o in _orders() if o[2] == 2)


def ch03_kept_no_mask():
    before = _attend(_X)
    return sum(int((_attend(_X[o])[2] - before[o[2]]).abs().max() <= 1e-5) for o in _orders())


def ch03_kept_prefix_in_place():  # everything before position 2 kept in place too
    return sum(1 for o in _orders() if o[:3] == [0, 1, 2])


def ch03_kept_as_fraction():
    return ch03_kept_loop() / 120


def ch03_kept_the_identity():
    return 1


CORRECT = {
    "3.1": [ch03_enc_float32_exp_log, ch03_enc_flat_then_reshape, ch03_enc_numpy_loops, ch03_enc_complex_einsum],
    "3.2": [ch03_rot_float32_exp_log, ch03_rot_matrix_exp, ch03_rot_kron_blocks, ch03_rot_complex_stack],
    "3.3": [ch03_gap_loop, ch03_gap_batched, ch03_gap_float64, ch03_gap_inverse_permutation],
    "3.4": [ch03_kept_loop, ch03_kept_batched, ch03_kept_allclose],
}

WRONG = {
    "3.1": [
        (ch03_enc_swapped, "sine and cosine are swapped"),
        (ch03_enc_hard_coded_base, "the base is ignored"),
        (ch03_enc_chapter_table_indexed, "the positions' values are ignored"),
        (ch03_enc_cat_halves, "sines in the first half"),
        (ch03_enc_i_over_d, "i/d_model"),
        (ch03_enc_flattened, "the output is flattened"),
        (ch03_enc_abs_positions, None),
    ],
    "3.2": [
        (ch03_rot_textbook_rotation, "the matrix is transposed"),
        (ch03_rot_k_radians, "every block turns by k radians"),
        (ch03_rot_i_over_d, "10000^(i/d_model)"),
        (ch03_rot_4i_over_d, "so 4i/d_model"),
        (ch03_rot_sin_on_diagonal, "cosine and sine are swapped"),
        (ch03_rot_rotate_half_layout, "pair i is on dimensions i and i + d_model/2"),
        (ch03_rot_both_sines_negative, None),
        (ch03_rot_integer_division_exponent, "every block turns by k radians"),
    ],
    "3.3": [
        (ch03_gap_invariance, "without reordering the output"),
        (ch03_gap_reversed_only, "one order only"),
        (ch03_gap_mean, "the average change"),
        (ch03_gap_one_side_masked, "only the reordered input was masked"),
        (ch03_gap_triu_mask, "the mask keeps the future"),
        (ch03_gap_no_mask, None),
        (ch03_gap_typed, None),
    ],
    "3.4": [
        (ch03_kept_same_token_only, "the same tokens before it"),
        (ch03_kept_no_mask, "without a mask"),
        (ch03_kept_prefix_in_place, "the tokens after position 2 may come in any order"),
        (ch03_kept_the_identity, "only the original order"),
        (ch03_kept_as_fraction, None),
    ],
}
