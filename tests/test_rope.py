"""riverbank.positions.apply_rope (chapter 8) against the formula of Su et al. (2021) computed one
number at a time, against Hugging Face transformers' rotary code (Llama: split halves; GPT-J:
interleaved), the two conventions against each other, the relative-position property, and RoPE in
the tiny decoder with and without the KV cache's position offset."""

from __future__ import annotations

import math

import pytest
import torch

from riverbank.heads import MultiHeadAttention, merge_heads, split_heads
from riverbank.positions import apply_rope, rope_frequencies, rope_pair_permutation
from riverbank.model import ModelConfig, TinyDecoder, generate

CONVENTIONS = ["interleaved", "split_halves"]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def by_hand(x: list[float], m: int, convention: str) -> list[float]:
    """RoPE of one vector at position m, in plain Python: pair i turns by m / 10000^(2i/d)."""
    d, out = len(x), list(x)
    for i in range(d // 2):
        a_dim, b_dim = (2 * i, 2 * i + 1) if convention == "interleaved" else (i, i + d // 2)
        phi = m / 10000 ** (2 * i / d)
        a, b = x[a_dim], x[b_dim]
        out[a_dim] = a * math.cos(phi) - b * math.sin(phi)
        out[b_dim] = a * math.sin(phi) + b * math.cos(phi)
    return out


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("head_dim", [2, 6, 64])
def test_apply_rope_matches_the_formula_one_number_at_a_time(convention, head_dim):
    x = torch.randn(7, head_dim, generator=gen(head_dim), dtype=torch.float64)
    positions = torch.tensor([0, 1, 2, 9, 100, 513, 4095])
    ours = apply_rope(x, positions, convention)
    for row, m in enumerate(positions.tolist()):
        expected = torch.tensor(by_hand(x[row].tolist(), m, convention), dtype=torch.float64)
        assert torch.allclose(ours[row], expected, atol=1e-10), (row, m)


def test_frequencies_are_the_papers():
    theta = rope_frequencies(8)
    assert torch.allclose(theta, torch.tensor([1.0, 0.1, 0.01, 0.001], dtype=torch.float64))


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_rope_is_a_rotation_that_keeps_shape_dtype_and_length(convention):
    x = torch.randn(2, 3, 10, 16, generator=gen(1))
    positions = torch.arange(10)
    out = apply_rope(x, positions, convention)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.allclose(out.norm(dim=-1), x.norm(dim=-1), rtol=1e-5)
    assert torch.equal(apply_rope(x, torch.zeros(10, dtype=torch.int64), convention), x)
    assert not torch.allclose(out[..., 1:, :], x[..., 1:, :], atol=1e-3)
    # turning back by the same positions undoes it
    assert torch.allclose(apply_rope(out, -positions, convention), x, atol=1e-5)


def test_unknown_convention_is_refused():
    with pytest.raises(ValueError, match="interleaved"):
        apply_rope(torch.zeros(1, 4), torch.arange(1), "halves")


@pytest.mark.parametrize("head_dim", [2, 4, 32, 128])
def test_conventions_are_equal_up_to_a_fixed_permutation(head_dim):
    perm = rope_pair_permutation(head_dim)
    assert sorted(perm.tolist()) == list(range(head_dim))
    x = torch.randn(3, 40, head_dim, generator=gen(head_dim))
    positions = torch.randint(0, 10_000, (40,), generator=gen(2))
    assert torch.equal(apply_rope(x[..., perm], positions, "split_halves"),
                       apply_rope(x, positions, "interleaved")[..., perm])
    if head_dim > 2:  # with a single pair the two conventions are the same thing
        assert not torch.allclose(apply_rope(x, positions, "split_halves"),
                                  apply_rope(x, positions, "interleaved"), atol=1e-2)


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_scores_depend_only_on_the_offset(convention):
    q, k = torch.randn(2, 32, generator=gen(3), dtype=torch.float64)
    n = 200
    positions = torch.arange(n)
    q_rot = apply_rope(q.expand(n, 32), positions, convention)
    k_rot = apply_rope(k.expand(n, 32), positions, convention)
    scores = q_rot @ k_rot.T  # (m, n)
    for offset in range(-n + 1, n):
        diagonal = torch.diagonal(scores, offset=offset)  # all (m, m + offset)
        assert torch.allclose(diagonal, diagonal[0].expand_as(diagonal), atol=1e-9), offset
    assert not math.isclose(scores[0, 5], scores[5, 0], abs_tol=1e-3)  # direction matters


# --- against Hugging Face transformers ------------------------------------------------------------

def test_split_halves_equals_hugging_face_llama():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    config = LlamaConfig(hidden_size=128, num_attention_heads=4, num_key_value_heads=4,
                         intermediate_size=256, num_hidden_layers=1, vocab_size=32)
    q, k = torch.randn(2, 2, 4, 30, 32, generator=gen(4))  # (batch, heads, seq, head_dim)
    position_ids = torch.stack([torch.arange(30), torch.arange(100, 130)])  # (batch, seq)
    cos, sin = LlamaRotaryEmbedding(config)(q, position_ids)
    q_hf, k_hf = apply_rotary_pos_emb(q, k, cos, sin)
    for b in range(2):
        assert torch.allclose(apply_rope(q[b], position_ids[b], "split_halves"), q_hf[b], atol=1e-4)
        assert torch.allclose(apply_rope(k[b], position_ids[b], "split_halves"), k_hf[b], atol=1e-4)
    assert not torch.allclose(apply_rope(q[0], position_ids[0], "interleaved"), q_hf[0], atol=1e-2)


def test_llama_with_another_base_matches_ours_with_that_base():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    config = LlamaConfig(hidden_size=64, num_attention_heads=2, num_key_value_heads=2,
                         intermediate_size=128, num_hidden_layers=1, vocab_size=32,
                         rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    q = torch.randn(1, 2, 12, 32, generator=gen(5))
    pos = torch.arange(12)
    cos, sin = LlamaRotaryEmbedding(config)(q, pos[None])
    q_hf, _ = apply_rotary_pos_emb(q, q, cos, sin)
    assert torch.allclose(apply_rope(q, pos, "split_halves", base=500000.0), q_hf, atol=1e-5)
    assert not torch.allclose(apply_rope(q, pos, "split_halves"), q_hf, atol=1e-3)


def test_interleaved_equals_hugging_face_gptj():
    from transformers.models.gptj import modeling_gptj as gptj

    x = torch.randn(2, 3, 25, 16, generator=gen(6))  # (batch, heads, seq, head_dim)
    pos = torch.arange(7, 32)
    sin, cos = gptj.create_sinusoidal_positions(64, 16)[pos][None].chunk(2, dim=-1)
    x_j = gptj.apply_rotary_pos_emb(x.transpose(1, 2), sin, cos).transpose(1, 2)
    assert torch.allclose(apply_rope(x, pos, "interleaved"), x_j, atol=1e-5)
    assert not torch.allclose(apply_rope(x, pos, "split_halves"), x_j, atol=1e-2)


# --- RoPE in attention and in the tiny decoder ----------------------------------------------------

def test_attention_rotates_queries_and_keys_but_not_values():
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4)
    x = torch.randn(2, 9, 32)
    positions = torch.arange(3, 12)
    out, weights = mha(x, rope_positions=positions)
    q = apply_rope(split_heads(mha.q_proj(x), 4), positions)
    k = apply_rope(split_heads(mha.k_proj(x), 4), positions)
    v = split_heads(mha.v_proj(x), 4)
    expected_weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8), dim=-1)
    assert torch.allclose(weights, expected_weights, atol=1e-6)
    assert torch.allclose(out, mha.out_proj(merge_heads(expected_weights @ v)), atol=1e-6)
    assert not torch.allclose(mha(x)[1], weights, atol=1e-3)  # rope_positions=None: no rotation


def test_rope_decoder_sees_only_relative_positions():
    torch.manual_seed(1)
    model = TinyDecoder(ModelConfig(positions="rope", max_len=8)).eval()
    tokens = torch.randint(0, 10, (2, 20))  # longer than max_len: RoPE has no table
    with torch.no_grad():
        at_0, _ = model(tokens)
        at_1000, _ = model(tokens, start=1000)
    assert torch.allclose(at_0, at_1000, atol=1e-4)
    learned = TinyDecoder(ModelConfig(positions="learned", max_len=64)).eval()
    with torch.no_grad():
        assert not torch.allclose(learned(tokens)[0], learned(tokens, start=10)[0], atol=1e-3)


def test_rope_with_a_kv_cache_needs_the_position_offset():
    from riverbank.cache import KVCache

    torch.manual_seed(2)
    model = TinyDecoder(ModelConfig(positions="rope")).eval()
    tokens = torch.randint(0, 10, (3, 24))
    with torch.no_grad():
        full, _ = model(tokens)
        for offset in (True, False):
            cache = KVCache(len(model.blocks))
            first, _ = model(tokens[:, :16], start=0, cache=cache)
            steps = [model(tokens[:, t:t + 1], start=cache.seq_len if offset else 0, cache=cache)[0]
                     for t in range(16, 24)]
            cached = torch.cat([first, *steps], dim=1)
            gap = (cached - full).abs().max().item()
            assert (gap < 1e-4) if offset else (gap > 0.01), (offset, gap)  # untrained: small logits
    prompt = tokens[:, :5]
    assert torch.equal(generate(model, prompt, 12, cache=True), generate(model, prompt, 12))
