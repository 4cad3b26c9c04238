"""Chapter 1 second opinions: attention weights, attend, cosine similarity."""

import math

import torch
import torch.nn.functional as F


# --- 1.1 attention_weights: correct ------------------------------------------------------------

def ch01_weights_einsum_stable_softmax(Q, K):
    s = torch.einsum("nd,md->nm", Q, K) / Q.shape[1] ** 0.5
    s = s - s.max(dim=1, keepdim=True).values
    e = s.exp()
    return e / e.sum(dim=1, keepdim=True)


def ch01_weights_float64_inside(Q, K):
    s = Q.double() @ K.double().t() / math.sqrt(K.size(-1))
    return torch.softmax(s, dim=-1).to(Q.dtype)


def ch01_weights_logsumexp(Q, K):
    s = torch.matmul(Q, K.transpose(0, 1)) * (1.0 / math.sqrt(Q.shape[-1]))
    return torch.exp(s - torch.logsumexp(s, dim=-1, keepdim=True))


def ch01_weights_exp2_rows_loop(Q, K):
    rows = []
    for q in Q:
        s = (K @ q) / math.sqrt(len(q)) * math.log2(math.e)   # base-2 scores
        e = torch.exp2(s - s.max())
        rows.append(e / e.sum())
    return torch.stack(rows)


# --- 1.1 attention_weights: wrong --------------------------------------------------------------

def ch01_weights_no_scaling(Q, K):
    return F.softmax(Q @ K.t(), dim=1)


def ch01_weights_divided_by_dk(Q, K):
    d_k = K.shape[-1]
    return torch.softmax(torch.einsum("id,jd->ij", Q, K) / d_k, dim=-1)


def ch01_weights_softmax_dim0(Q, K):
    return (Q @ K.T / math.sqrt(Q.shape[-1])).softmax(0)


def ch01_weights_hand_softmax_no_max(Q, K):
    e = torch.exp(Q @ K.T / math.sqrt(Q.shape[1]))
    return e / e.sum(-1, keepdim=True)


def ch01_weights_scaled_by_number_of_queries(Q, K):  # sqrt(len(Q)) is the number of queries
    return torch.softmax(Q @ K.T / math.sqrt(len(Q)), dim=-1)


def ch01_weights_multiplied_by_sqrt_dk(Q, K):
    return torch.softmax(Q @ K.T * math.sqrt(Q.shape[-1]), dim=-1)


def ch01_weights_global_max_subtracted(Q, K):  # one max for the whole matrix: rows underflow
    s = Q @ K.T / math.sqrt(Q.shape[-1])
    e = torch.exp(s - s.max())
    return e / e.sum(dim=-1, keepdim=True)


def ch01_weights_keys_by_queries(Q, K):  # (m, n): the weights of each key over the queries
    return torch.softmax(K @ Q.T / math.sqrt(Q.shape[-1]), dim=0)


# --- 1.2 attend: correct ------------------------------------------------------------------------

def ch01_attend_einsum(Q, K, V):
    w = torch.einsum("qd,kd->qk", Q, K).div(math.sqrt(Q.shape[-1])).softmax(-1)
    return torch.einsum("qk,kv->qv", w, V)


def ch01_attend_torch_sdpa(Q, K, V):
    return F.scaled_dot_product_attention(Q[None], K[None], V[None])[0]


def ch01_attend_loop_over_queries(Q, K, V):
    out = torch.zeros(Q.shape[0], V.shape[1])
    for i in range(Q.shape[0]):
        w = torch.softmax(K @ Q[i] / math.sqrt(K.shape[1]), dim=0)
        for j in range(K.shape[0]):
            out[i] += w[j] * V[j]
    return out


def ch01_attend_float64_inside(Q, K, V):
    Qd, Kd, Vd = Q.double(), K.double(), V.double()
    w = torch.softmax(Qd @ Kd.T / Qd.shape[-1] ** 0.5, dim=-1)
    return (w @ Vd).float()


# --- 1.2 attend: wrong --------------------------------------------------------------------------

def ch01_attend_weights_transposed(Q, K, V):
    w = torch.softmax(Q @ K.T / math.sqrt(Q.shape[-1]), dim=-1)
    return w.T @ V


def ch01_attend_plain_average(Q, K, V):
    return V.mean(0).repeat(Q.shape[0], 1)


def ch01_attend_returns_weights(Q, K, V):
    weights = torch.softmax(Q @ K.T / math.sqrt(Q.shape[-1]), dim=-1)
    output = weights @ V  # noqa: F841 (computed, then the wrong name returned)
    return weights


def ch01_attend_no_scaling(Q, K, V):
    return torch.softmax(Q @ K.T, dim=-1) @ V


def ch01_attend_softmax_over_queries(Q, K, V):
    return torch.softmax(Q @ K.T / math.sqrt(Q.shape[-1]), dim=0) @ V


def ch01_attend_hand_softmax_no_max(Q, K, V):
    e = (Q @ K.T / math.sqrt(Q.shape[-1])).exp()
    return (e / e.sum(1, keepdim=True)) @ V


def ch01_attend_weighted_sum_over_queries(Q, K, V):  # sums weights × values along the wrong axis
    w = torch.softmax(Q @ K.T / math.sqrt(Q.shape[-1]), dim=-1)
    return (w[:, :, None] * V[None, :, :]).sum(dim=0)


# --- 1.3 cosine_similarity: correct -------------------------------------------------------------

def ch01_cosine_torch_builtin(a, b):
    return F.cosine_similarity(a, b, dim=-1)


def ch01_cosine_normalize_then_dot(a, b):
    return (F.normalize(a, dim=1) * F.normalize(b, dim=1)).sum(dim=1)


def ch01_cosine_einsum_sqrt(a, b):
    dot = torch.einsum("nd,nd->n", a, b)
    return dot / torch.sqrt(torch.einsum("nd,nd->n", a, a) * torch.einsum("nd,nd->n", b, b))


def ch01_cosine_float64_linalg(a, b):
    a64, b64 = a.double(), b.double()
    sim = (a64 * b64).sum(-1) / (torch.linalg.vector_norm(a64, dim=-1) * torch.linalg.vector_norm(b64, dim=-1))
    return sim.to(a.dtype)


# --- 1.3 cosine_similarity: wrong ---------------------------------------------------------------

def ch01_cosine_plain_dot(a, b):
    return torch.einsum("nd,nd->n", a, b)


def ch01_cosine_only_a_normalised(a, b):
    return (a * b).sum(1) / torch.norm(a, dim=1)


def ch01_cosine_squared_norms(a, b):
    return (a * b).sum(-1) / (a.pow(2).sum(-1) * b.pow(2).sum(-1))


def ch01_cosine_over_axis_0(a, b):
    return F.cosine_similarity(a, b, dim=0)


def ch01_cosine_whole_matrix_norms(a, b):  # a.norm() without dim: one length for all rows
    return (a * b).sum(-1) / (a.norm() * b.norm())


def ch01_cosine_mean_instead_of_sum(a, b):
    return (a * b).mean(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def ch01_cosine_absolute_value(a, b):
    return ((a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))).abs()


def ch01_cosine_all_pairs(a, b):  # the (n, n) matrix of every pair, not one value per row
    return (a @ b.T) / (a.norm(dim=-1)[:, None] * b.norm(dim=-1)[None, :])


CORRECT = {
    "1.1": [ch01_weights_einsum_stable_softmax, ch01_weights_float64_inside, ch01_weights_logsumexp,
            ch01_weights_exp2_rows_loop],
    "1.2": [ch01_attend_einsum, ch01_attend_torch_sdpa, ch01_attend_loop_over_queries, ch01_attend_float64_inside],
    "1.3": [ch01_cosine_torch_builtin, ch01_cosine_normalize_then_dot, ch01_cosine_einsum_sqrt,
            ch01_cosine_float64_linalg],
}

WRONG = {
    "1.1": [
        (ch01_weights_no_scaling, "not divided by √d_k"),
        (ch01_weights_divided_by_dk, "divided by d_k instead of √d_k"),
        (ch01_weights_softmax_dim0, "query axis"),
        (ch01_weights_hand_softmax_no_max, "overflows"),
        (ch01_weights_scaled_by_number_of_queries, None),
        (ch01_weights_multiplied_by_sqrt_dk, None),
        (ch01_weights_global_max_subtracted, "subtract each row"),
        (ch01_weights_keys_by_queries, None),
    ],
    "1.2": [
        (ch01_attend_weights_transposed, "the weights are transposed"),
        (ch01_attend_plain_average, "plain average"),
        (ch01_attend_returns_weights, "returns the attention weights"),
        (ch01_attend_no_scaling, "not divided by √d_k"),
        (ch01_attend_softmax_over_queries, "query axis"),
        (ch01_attend_hand_softmax_no_max, "overflows"),
        (ch01_attend_weighted_sum_over_queries, None),
    ],
    "1.3": [
        (ch01_cosine_plain_dot, "not normalised"),
        (ch01_cosine_only_a_normalised, "only one of the two"),
        (ch01_cosine_squared_norms, "squared norms"),
        (ch01_cosine_over_axis_0, "wrong axis"),
        (ch01_cosine_whole_matrix_norms, None),
        (ch01_cosine_mean_instead_of_sum, None),
        (ch01_cosine_absolute_value, None),
        (ch01_cosine_all_pairs, None),
    ],
}


def ch01_weights_K_untransposed_matmul(Q, K):
    scores = torch.matmul(Q, K) / math.sqrt(Q.shape[-1])
    return torch.softmax(scores, dim=-1)


def ch01_attend_weights_t_method(Q, K, V):  # crashes where n != m: the hint must not blame K
    weights = F.softmax(Q @ K.t() / math.sqrt(K.shape[-1]), dim=-1)
    return weights.t() @ V


WRONG["1.1"].append((ch01_weights_K_untransposed_matmul, "K is not transposed"))
WRONG["1.2"].append((ch01_attend_weights_t_method, "the weights are transposed"))
