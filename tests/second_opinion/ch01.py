"""Chapter 1 second opinions: batched weights, self-attention from embeddings, a cosine matrix, the
temperature experiment."""

import math

import torch
import torch.nn.functional as F


# --- 1.1 attention_weights: correct --------------------------------------------------------------

def ch01_weights_einsum_stable_softmax(Q, K):
    s = torch.einsum("...nd,...md->...nm", Q, K) / math.sqrt(K.shape[-1])
    e = torch.exp(s - s.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def ch01_weights_float64_inside(Q, K):
    s = Q.double() @ K.double().mT * Q.shape[-1] ** -0.5
    return F.softmax(s, dim=-1).to(Q.dtype)


def ch01_weights_logsumexp(Q, K):
    s = torch.matmul(Q, K.transpose(-1, -2)) / Q.size(-1) ** 0.5
    return torch.exp(s - torch.logsumexp(s, dim=-1, keepdim=True))


def ch01_weights_flatten_and_loop(Q, K):  # one sentence at a time, leading axes flattened
    lead, (n, d), m = Q.shape[:-2], Q.shape[-2:], K.shape[-2]
    q, k = Q.reshape(-1, n, d), K.reshape(-1, m, d)
    rows = [torch.softmax(q[b] @ k[b].T / math.sqrt(d), dim=-1) for b in range(q.shape[0])]
    return torch.stack(rows).reshape(*lead, n, m)


# --- 1.1 attention_weights: wrong ----------------------------------------------------------------

def ch01_weights_no_scaling(Q, K):
    return torch.softmax(Q @ K.transpose(-2, -1), dim=-1)


def ch01_weights_divided_by_dk(Q, K):
    return torch.softmax(Q @ K.transpose(-2, -1) / K.shape[-1], dim=-1)


def ch01_weights_softmax_dim1(Q, K):  # dim=1: the queries of a 3-D batch
    return torch.softmax(Q @ K.transpose(-2, -1) / math.sqrt(Q.shape[-1]), dim=1)


def ch01_weights_hand_softmax_no_max(Q, K):
    e = (Q @ K.transpose(-2, -1) / math.sqrt(Q.shape[-1])).exp()
    return e / e.sum(-1, keepdim=True)


def ch01_weights_global_max_subtracted(Q, K):
    s = Q @ K.transpose(-2, -1) / math.sqrt(Q.shape[-1])
    e = torch.exp(s - s.max())
    return e / e.sum(-1, keepdim=True)


def ch01_weights_k_dot_T(Q, K):  # right on 2-D inputs only
    return torch.softmax(Q @ K.T / math.sqrt(Q.shape[-1]), dim=-1)


def ch01_weights_multiplied_by_sqrt_dk(Q, K):
    return torch.softmax(Q @ K.transpose(-2, -1) * math.sqrt(Q.shape[-1]), dim=-1)


def ch01_weights_clamped_against_overflow(Q, K):  # finite, but every score above 80 becomes 80
    e = (Q @ K.transpose(-2, -1) / math.sqrt(Q.shape[-1])).clamp(max=80.0).exp()
    return e / e.sum(-1, keepdim=True)


def ch01_weights_keys_by_queries(Q, K):
    return torch.softmax(K @ Q.transpose(-2, -1) / math.sqrt(Q.shape[-1]), dim=-1).transpose(-2, -1)


# --- 1.2 self_attention: correct -----------------------------------------------------------------

def ch01_self_attention_linear_functional(E, W_Q, W_K, W_V):
    Q, K, V = F.linear(E, W_Q), F.linear(E, W_K), F.linear(E, W_V)
    return F.scaled_dot_product_attention(Q, K, V)


def ch01_self_attention_einsum_float64(E, W_Q, W_K, W_V):
    e = E.double()
    Q = torch.einsum("...nd,kd->...nk", e, W_Q.double())
    K = torch.einsum("...nd,kd->...nk", e, W_K.double())
    V = torch.einsum("...nd,vd->...nv", e, W_V.double())
    s = torch.einsum("...nk,...mk->...nm", Q, K) / math.sqrt(W_Q.shape[0])
    return (torch.softmax(s, -1) @ V).to(E.dtype)


def ch01_self_attention_bilinear_form(E, W_Q, W_K, W_V):  # scores = E (W_Qᵀ W_K) Eᵀ, as in the chapter
    scores = E @ (W_Q.T @ W_K) @ E.transpose(-2, -1) / W_K.shape[0] ** 0.5
    w = torch.exp(scores - scores.amax(-1, keepdim=True))
    return (w / w.sum(-1, keepdim=True)) @ (E @ W_V.T)


def ch01_self_attention_nn_linear(E, W_Q, W_K, W_V):
    layers = []
    for W in (W_Q, W_K, W_V):
        layer = torch.nn.Linear(W.shape[1], W.shape[0], bias=False).to(W.dtype)
        with torch.no_grad():
            layer.weight.copy_(W)
        layers.append(layer)
    with torch.no_grad():
        Q, K, V = (layer(E) for layer in layers)
    return torch.softmax(Q @ K.mT / math.sqrt(Q.shape[-1]), dim=-1) @ V


# --- 1.2 self_attention: wrong -------------------------------------------------------------------

def ch01_self_attention_not_transposed(E, W_Q, W_K, W_V):  # right shapes only when square
    Q, K, V = E @ W_Q, E @ W_K, E @ W_V
    return torch.softmax(Q @ K.transpose(-2, -1) / math.sqrt(Q.shape[-1]), dim=-1) @ V


def ch01_self_attention_queries_from_W_K(E, W_Q, W_K, W_V):
    Q, K, V = E @ W_K.T, E @ W_Q.T, E @ W_V.T
    return torch.softmax(Q @ K.transpose(-2, -1) / math.sqrt(Q.shape[-1]), dim=-1) @ V


def ch01_self_attention_sqrt_d_model(E, W_Q, W_K, W_V):
    Q, K, V = E @ W_Q.T, E @ W_K.T, E @ W_V.T
    return torch.softmax(Q @ K.transpose(-2, -1) / math.sqrt(E.shape[-1]), dim=-1) @ V


def ch01_self_attention_values_unprojected(E, W_Q, W_K, W_V):
    Q, K = E @ W_Q.T, E @ W_K.T
    return torch.softmax(Q @ K.transpose(-2, -1) / math.sqrt(Q.shape[-1]), dim=-1) @ E


def ch01_self_attention_weights_transposed(E, W_Q, W_K, W_V):
    Q, K, V = E @ W_Q.T, E @ W_K.T, E @ W_V.T
    w = torch.softmax(Q @ K.transpose(-2, -1) / math.sqrt(Q.shape[-1]), dim=-1)
    return w.transpose(-2, -1) @ V


def ch01_self_attention_unscaled(E, W_Q, W_K, W_V):
    Q, K, V = F.linear(E, W_Q), F.linear(E, W_K), F.linear(E, W_V)
    return torch.softmax(Q @ K.transpose(-2, -1), dim=-1) @ V


def ch01_self_attention_residual_added(E, W_Q, W_K, W_V):  # a step of chapter 5, not asked here
    Q, K, V = E @ W_Q.T, E @ W_K.T, E @ W_V.T
    out = torch.softmax(Q @ K.transpose(-2, -1) / math.sqrt(Q.shape[-1]), dim=-1) @ V
    return out + V


# --- 1.3 cosine_similarity: correct --------------------------------------------------------------

def ch01_cosine_torch_broadcast(a, b):
    return F.cosine_similarity(a[:, None, :], b[None, :, :], dim=-1)


def ch01_cosine_normalize_then_matmul(a, b):
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


def ch01_cosine_einsum_sqrt(a, b):
    dots = torch.einsum("id,jd->ij", a, b)
    return dots / torch.sqrt(torch.einsum("id,id->i", a, a))[:, None] / torch.sqrt((b * b).sum(-1))[None, :]


def ch01_cosine_float64_double_loop(a, b):
    a64, b64 = a.double(), b.double()
    out = torch.empty(len(a), len(b), dtype=torch.float64)
    for i in range(len(a)):
        for j in range(len(b)):
            out[i, j] = a64[i] @ b64[j] / (torch.linalg.norm(a64[i]) * torch.linalg.norm(b64[j]))
    return out.to(a.dtype)


# --- 1.3 cosine_similarity: wrong ----------------------------------------------------------------

def ch01_cosine_plain_dot(a, b):
    return a @ b.T


def ch01_cosine_only_a_normalised(a, b):
    return (a / a.norm(dim=-1, keepdim=True)) @ b.T


def ch01_cosine_squared_norms(a, b):
    return a @ b.T / ((a ** 2).sum(-1, keepdim=True) * (b ** 2).sum(-1)[None, :])


def ch01_cosine_norms_swapped(a, b):
    return a @ b.T / (a.norm(dim=-1)[None, :] * b.norm(dim=-1)[:, None])


def ch01_cosine_row_wise_only(a, b):  # the chapter's matching pairs, not every pair
    return F.cosine_similarity(a, b, dim=-1)


def ch01_cosine_whole_matrix_norms(a, b):
    return a @ b.T / (a.norm() * b.norm())


def ch01_cosine_absolute_value(a, b):
    return (F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T).abs()


# --- 1.4 the temperature experiment --------------------------------------------------------------

TOY = [[0.8, -0.2, 0.1], [0.1, 0.7, -0.3]]


def _similarity(T, dtype=torch.float32, sqrt_dk=True, before=False, against_input=False):
    E = torch.tensor(TOY, dtype=dtype)
    if before:
        return F.cosine_similarity(E[0], E[1], dim=0).item()
    s = (1.2 * E) @ (0.9 * E).T / ((3 ** 0.5 if sqrt_dk else 1.0) * T)
    out = torch.softmax(s, dim=-1) @ E
    other = E[1] if against_input else out[1]
    return F.cosine_similarity(out[0], other, dim=0).item()


def ch01_similarity_float32():
    return _similarity(0.25)


def ch01_similarity_float64():
    return _similarity(0.25, torch.float64)


def ch01_similarity_by_hand():
    import numpy as np
    E = np.array(TOY)
    s = 1.08 * E @ E.T / (np.sqrt(3) * 0.25)
    w = np.exp(s - s.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    out = w @ E
    return float(out[0] @ out[1] / np.linalg.norm(out[0]) / np.linalg.norm(out[1]))


def ch01_similarity_returns_a_tensor():  # a one-entry tensor is read as its number
    E = torch.tensor(TOY)
    out = torch.softmax((1.2 * E / 0.25) @ (0.9 * E).T / 3 ** 0.5, dim=-1) @ E
    return F.cosine_similarity(out[:1], out[1:])


CORRECT = {
    "1.1": [ch01_weights_einsum_stable_softmax, ch01_weights_float64_inside, ch01_weights_logsumexp,
            ch01_weights_flatten_and_loop],
    "1.2": [ch01_self_attention_linear_functional, ch01_self_attention_einsum_float64,
            ch01_self_attention_bilinear_form, ch01_self_attention_nn_linear],
    "1.3": [ch01_cosine_torch_broadcast, ch01_cosine_normalize_then_matmul, ch01_cosine_einsum_sqrt,
            ch01_cosine_float64_double_loop],
    "1.4": [ch01_similarity_float32, ch01_similarity_float64, ch01_similarity_by_hand,
            ch01_similarity_returns_a_tensor],
}

WRONG = {
    "1.1": [
        (ch01_weights_no_scaling, "not divided by √d_k"),
        (ch01_weights_divided_by_dk, "divided by d_k instead of √d_k"),
        (ch01_weights_softmax_dim1, "wrong axis"),
        (ch01_weights_hand_softmax_no_max, "overflows"),
        (ch01_weights_global_max_subtracted, "overflows"),
        (ch01_weights_k_dot_T, ".T reverses every axis"),
        (ch01_weights_multiplied_by_sqrt_dk, None),
        (ch01_weights_keys_by_queries, "wrong axis"),
        (ch01_weights_clamped_against_overflow, None),
    ],
    "1.2": [
        (ch01_self_attention_not_transposed, "stored as nn.Linear stores them"),
        (ch01_self_attention_queries_from_W_K, "queries and keys are swapped"),
        (ch01_self_attention_sqrt_d_model, "√d_model instead of √d_k"),
        (ch01_self_attention_values_unprojected, "raw embeddings"),
        (ch01_self_attention_weights_transposed, "the weights are transposed"),
        (ch01_self_attention_unscaled, "not divided by √d_k"),
        (ch01_self_attention_residual_added, None),
    ],
    "1.3": [
        (ch01_cosine_plain_dot, "not normalised"),
        (ch01_cosine_only_a_normalised, "only the rows of a"),
        (ch01_cosine_squared_norms, "squared norms"),
        (ch01_cosine_norms_swapped, "wrong way round"),
        (ch01_cosine_row_wise_only, None),
        (ch01_cosine_whole_matrix_norms, None),
        (ch01_cosine_absolute_value, None),
    ],
    "1.4": [
        (lambda: _similarity(1.0), "at T = 1"),
        (lambda: _similarity(4.0), "multiplies the scores"),
        (lambda: _similarity(0.25, before=True), "before attention"),
        (lambda: _similarity(0.25, sqrt_dk=False), "not divided by √d_k"),
        (lambda: _similarity(0.25, against_input=True), "river's embedding"),
        (lambda: round(_similarity(0.25), 3), None),
        (lambda: _similarity(0.5), None),
    ],
}
