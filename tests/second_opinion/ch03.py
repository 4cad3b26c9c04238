"""Chapter 3 second opinions: sinusoidal encodings and the rotation that moves them by k positions."""

import math

import numpy as np
import torch


# --- 3.1 sinusoidal_encoding: correct -----------------------------------------------------------

def ch03_pe_float32_exp_log_stack(max_len, d_model):  # float32 angles, as most tutorials
    position = torch.arange(max_len).float().unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
    angles = position * div_term
    return torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(1)


def ch03_pe_float32_pow_divide(max_len, d_model):
    pe = torch.zeros(max_len, d_model)
    pos = torch.arange(0, max_len, dtype=torch.float32).reshape(-1, 1)
    denom = torch.pow(10000, torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)
    pe[:, 0::2] = torch.sin(pos / denom)
    pe[:, 1::2] = torch.cos(pos / denom)
    return pe


def ch03_pe_complex_polar(max_len, d_model):  # e^{i·pos·ω}: real part cos, imaginary part sin
    omega = 1.0 / 10000 ** (torch.arange(d_model // 2, dtype=torch.float64) * 2 / d_model)
    z = torch.polar(torch.ones(max_len, d_model // 2, dtype=torch.float64),
                    torch.arange(max_len, dtype=torch.float64)[:, None] * omega)
    return torch.view_as_real(z).flip(-1).reshape(max_len, d_model).float()


def ch03_pe_numpy_float64(max_len, d_model):
    pos = np.arange(max_len)[:, np.newaxis]
    dims = np.arange(d_model)[np.newaxis, :]
    angle_rates = 1 / np.power(10000, (2 * (dims // 2)) / np.float64(d_model))
    angles = pos * angle_rates
    angles[:, 0::2] = np.sin(angles[:, 0::2])
    angles[:, 1::2] = np.cos(angles[:, 1::2])
    return torch.from_numpy(angles).to(torch.float32)


def ch03_pe_float32_exp2_cos_shift(max_len, d_model):  # sine as a shifted cosine, ω via exp2
    i = torch.arange(d_model // 2, dtype=torch.float32)
    omega = torch.exp2(-(2 * i / d_model) * math.log2(10000.0))
    angles = torch.arange(max_len, dtype=torch.float32)[:, None] * omega[None, :]
    pe = torch.empty(max_len, d_model)
    pe[:, ::2] = torch.cos(angles.double() - math.pi / 2).float()
    pe[:, 1::2] = torch.cos(angles)
    return pe


# --- 3.1 sinusoidal_encoding: wrong -------------------------------------------------------------

def ch03_pe_sine_everywhere(max_len, d_model):
    pos = torch.arange(max_len).float()[:, None]
    dim = torch.arange(d_model)
    omega = 1 / 10000 ** (2 * (dim // 2) / d_model)
    return torch.sin(pos * omega)


def ch03_pe_cosine_everywhere(max_len, d_model):
    pos = torch.arange(max_len).float()[:, None]
    omega = 1 / 10000 ** (2 * (torch.arange(d_model) // 2) / d_model)
    return torch.cos(pos * omega)


def ch03_pe_swapped(max_len, d_model):
    position = torch.arange(max_len).float().unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
    return torch.stack([torch.cos(position * div_term), torch.sin(position * div_term)], dim=-1).flatten(1)


def ch03_pe_rows_by_position_parity(max_len, d_model):  # pe[0::2] = sin, pe[1::2] = cos
    pos = torch.arange(max_len, dtype=torch.float32)[:, None]
    omega = 10000 ** (-2 * (torch.arange(d_model) // 2) / d_model)
    angles = pos * omega
    pe = torch.cos(angles)
    pe[0::2] = torch.sin(angles[0::2])
    return pe


def ch03_pe_i_over_d(max_len, d_model):
    pe = torch.zeros(max_len, d_model)
    for pos in range(max_len):
        for i in range(d_model // 2):
            w = 1 / 10000 ** (i / d_model)
            pe[pos, 2 * i] = math.sin(pos * w)
            pe[pos, 2 * i + 1] = math.cos(pos * w)
    return pe


def ch03_pe_own_dimension_exponent(max_len, d_model):
    pos = np.arange(max_len)[:, None]
    j = np.arange(d_model)[None, :]
    angles = pos / np.power(10000, j / d_model)
    out = np.where(j % 2 == 0, np.sin(angles), np.cos(angles))
    return torch.tensor(out, dtype=torch.float32)


def ch03_pe_from_position_one(max_len, d_model):
    position = torch.arange(1, max_len + 1).float().unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
    return torch.stack([torch.sin(position * div_term), torch.cos(position * div_term)], dim=-1).flatten(1)


def ch03_pe_multiplied(max_len, d_model):
    position = torch.arange(max_len, dtype=torch.float64).unsqueeze(1)
    scale = 10000.0 ** (torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    pe = torch.zeros(max_len, d_model, dtype=torch.float64)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(position * scale), torch.cos(position * scale)
    return pe.float()


def ch03_pe_halves_by_cat(max_len, d_model):
    position = torch.arange(max_len).float().unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
    return torch.cat([torch.sin(position * div_term), torch.cos(position * div_term)], dim=1)


def ch03_pe_transposed(max_len, d_model):
    pos = torch.arange(max_len, dtype=torch.float32)[None, :]
    omega = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))[:, None]
    pe = torch.zeros(d_model, max_len)
    pe[0::2], pe[1::2] = torch.sin(omega * pos), torch.cos(omega * pos)
    return pe


def ch03_pe_integer_division_exponent(max_len, d_model):  # 2 * i // d_model is 0: every ω is 1
    pe = torch.zeros(max_len, d_model)
    pos = torch.arange(max_len)[:, None]
    i = torch.arange(0, d_model, 2)
    pe[:, 0::2] = torch.sin(pos / 10000 ** (i // d_model))
    pe[:, 1::2] = torch.cos(pos / 10000 ** (i // d_model))
    return pe


def ch03_pe_base_1000(max_len, d_model):
    position = torch.arange(max_len).float().unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(1000.0) / d_model))
    return torch.stack([torch.sin(position * div_term), torch.cos(position * div_term)], dim=-1).flatten(1)


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


CORRECT = {
    "3.1": [ch03_pe_float32_exp_log_stack, ch03_pe_float32_pow_divide, ch03_pe_complex_polar,
            ch03_pe_numpy_float64, ch03_pe_float32_exp2_cos_shift],
    "3.2": [ch03_rot_float32_exp_log, ch03_rot_matrix_exp, ch03_rot_kron_blocks, ch03_rot_complex_stack],
}

WRONG = {
    "3.1": [
        (ch03_pe_sine_everywhere, "only sines"),
        (ch03_pe_cosine_everywhere, "only cosines"),
        (ch03_pe_swapped, "sine and cosine are swapped"),
        (ch03_pe_rows_by_position_parity, "sine on the even positions"),
        (ch03_pe_i_over_d, "10000^(i/d_model)"),
        (ch03_pe_own_dimension_exponent, "dimension 2i+1 uses"),
        (ch03_pe_from_position_one, "positions start at 1"),
        (ch03_pe_multiplied, "multiplied by 10000^(2i/d_model)"),
        (ch03_pe_halves_by_cat, "sines in the first half"),
        (ch03_pe_transposed, "the result is transposed"),
        (ch03_pe_integer_division_exponent, "every pair has ω = 1"),
        (ch03_pe_base_1000, None),
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
}
