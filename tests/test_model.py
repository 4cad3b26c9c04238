"""riverbank.model and riverbank.tasks: shapes, causality, the position offset, LayerNorm and the block
against their formulas, top-p and sampling, and the stored reversal model that later chapters load."""

from __future__ import annotations

from importlib import resources

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from riverbank.grading.exercises.ch05 import rms_norm
from riverbank.model import (Block, ModelConfig, SinusoidalPositions, TinyDecoder, exact_match, generate,
                             load_reversal_model, sample_next_token, top_p_filter, train_reversal)
from riverbank.positions import LearnedPositionEmbedding, sinusoidal_encoding
from riverbank.tasks import IGNORE, SEP, VOCAB_SIZE, Reversal

SMALL = ModelConfig(d_model=16, n_heads=2, n_layers=2, d_ff=64, max_len=24)


@pytest.fixture(scope="module")
def stored():
    return load_reversal_model()


def test_forward_shapes():
    torch.manual_seed(0)
    model = TinyDecoder(SMALL)
    tokens = torch.randint(0, VOCAB_SIZE, (3, 10))
    logits, attentions = model(tokens)
    assert logits.shape == (3, 10, VOCAB_SIZE)
    assert len(attentions) == SMALL.n_layers
    assert all(a.shape == (3, SMALL.n_heads, 10, 10) for a in attentions)
    assert torch.allclose(attentions[0].sum(-1), torch.ones(3, SMALL.n_heads, 10), atol=1e-5)


def test_future_tokens_do_not_change_past_outputs():
    torch.manual_seed(0)
    model = TinyDecoder(SMALL).eval()
    tokens = torch.randint(0, VOCAB_SIZE, (2, 12))
    changed = tokens.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % VOCAB_SIZE
    with torch.no_grad():
        before, _ = model(tokens)
        after, _ = model(changed)
    assert torch.allclose(before[:, :7], after[:, :7], atol=1e-6)
    assert not torch.allclose(before[:, 7:], after[:, 7:], atol=1e-3)


def test_start_is_the_position_of_the_first_token():
    # model(x, start=s) must equal a model whose position table is moved up by s, run at start 0
    torch.manual_seed(0)
    model = TinyDecoder(SMALL).eval()
    shifted = TinyDecoder(SMALL).eval()
    shifted.load_state_dict(model.state_dict())
    with torch.no_grad():
        table = model.positions.table.weight
        shifted.positions.table.weight.copy_(torch.roll(table, -5, dims=0))
        tokens = torch.randint(0, VOCAB_SIZE, (2, 8))
        assert torch.allclose(model(tokens, start=5)[0], shifted(tokens)[0], atol=1e-6)
        assert not torch.allclose(model(tokens, start=5)[0], model(tokens)[0], atol=1e-3)
    with pytest.raises(IndexError, match="max_len=24"):
        model(tokens, start=20)  # positions 20..27: past the learned table


def test_positions_are_a_choice_in_the_config():
    assert isinstance(TinyDecoder(SMALL).positions, LearnedPositionEmbedding)
    sinusoidal = TinyDecoder(ModelConfig(d_model=16, n_heads=2, d_ff=64, positions="sinusoidal"))
    assert isinstance(sinusoidal.positions, SinusoidalPositions)
    assert torch.equal(sinusoidal.positions(torch.arange(3, 7)), sinusoidal_encoding(32, 16)[3:7])
    assert not any("positions" in name for name, _ in sinusoidal.named_parameters())
    with pytest.raises(KeyError):
        TinyDecoder(ModelConfig(positions="no such encoding"))


def test_long_context_config_for_chapter_7():
    model = TinyDecoder(ModelConfig(max_len=1024)).eval()
    with torch.no_grad():
        logits, _ = model(torch.zeros(1, 4, dtype=torch.long), start=1020)
    assert logits.shape == (1, 4, VOCAB_SIZE)


@pytest.mark.parametrize("shape", [(2, 3, 8), (5, 16), (1, 1, 1)])
def test_the_chapters_rms_norm_equals_nn_rms_norm(shape):
    torch.manual_seed(0)
    x = 4 * torch.randn(*shape) - 2
    reference = nn.RMSNorm(shape[-1], eps=1e-6)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5)
        assert torch.allclose(rms_norm(x, reference.weight, 1e-6), reference(x), atol=1e-5)


def test_block_is_pre_ln():
    torch.manual_seed(0)
    block = Block(SMALL).eval()
    x = torch.randn(2, 6, 16)
    mask = torch.tril(torch.ones(6, 6, dtype=torch.bool))
    with torch.no_grad():
        h = x + block.attention(block.norm1(x), mask=mask)[0]
        expected = h + block.ffn.contract(F.gelu(block.ffn.expand(block.norm2(h))))
        out, weights = block(x, mask)
    assert torch.allclose(out, expected, atol=1e-6)
    assert weights.shape == (2, SMALL.n_heads, 6, 6)
    assert block.ffn.expand.out_features == 4 * SMALL.d_model


def _top_p_by_hand(row: list[float], p: float) -> list[float]:
    order = sorted(range(len(row)), key=lambda i: -row[i])
    kept, total = [], 0.0
    for i in order:
        if total >= p:
            break
        kept.append(i)
        total += row[i]
    return [row[i] / total if i in kept else 0.0 for i in range(len(row))]


@pytest.mark.parametrize("p", [0.05, 0.3, 0.62, 0.9, 1.0])
def test_top_p_filter_keeps_the_smallest_set_reaching_p(p):
    probs = torch.softmax(torch.randn(5, 12, generator=torch.Generator().manual_seed(3)), dim=-1)
    out = top_p_filter(probs, p)
    expected = torch.tensor([_top_p_by_hand(row, p) for row in probs.double().tolist()], dtype=torch.float32)
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(out.sum(-1), torch.ones(5), atol=1e-6)
    assert (out[probs == probs.max(-1, keepdim=True).values] > 0).all()  # the top token is always kept


def test_top_p_filter_keeps_the_crossing_token():
    out = top_p_filter(torch.tensor([0.5, 0.3, 0.2]), 0.6)
    assert torch.allclose(out, torch.tensor([0.625, 0.375, 0.0]))


def test_sampling():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0], [0.0, 3.0, 0.1, 0.2]])
    assert torch.equal(sample_next_token(logits), torch.tensor([[0], [1]]))  # temperature 0: argmax
    a = sample_next_token(logits, 1.0, generator=torch.Generator().manual_seed(0))
    b = sample_next_token(logits, 1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (2, 1)
    g = torch.Generator().manual_seed(1)
    draws = torch.cat([sample_next_token(logits, 1.0, top_p=0.01, generator=g) for _ in range(50)], dim=1)
    assert (draws == torch.tensor([[0], [1]])).all()  # a tiny nucleus is the top token alone
    g = torch.Generator().manual_seed(2)
    hot = torch.cat([sample_next_token(logits, 100.0, generator=g) for _ in range(200)], dim=1)
    assert len(hot[0].unique()) == 4  # a very high temperature reaches every token


def test_reversal_task():
    task = Reversal(n_digits=5, held_out_size=50)
    seqs = task.batch(300, torch.Generator().manual_seed(0))
    assert seqs.shape == (300, 11) and (seqs[:, 5] == SEP).all()
    assert torch.equal(seqs[:, 6:], seqs[:, :5].flip(1))
    held = {tuple(r) for r in task.held_out()[:, :5].tolist()}
    assert held.isdisjoint(tuple(r) for r in seqs[:, :5].tolist())
    inputs, targets = task.inputs_and_targets(seqs)
    assert inputs.shape == targets.shape == (300, 10)
    assert (targets[:, :5] == IGNORE).all() and torch.equal(targets[:, 5:], task.answer(seqs))


def test_held_out_set_is_never_drawn_for_training():
    # a task with only 10 possible sequences: half are held out, so batches must avoid them
    task = Reversal(n_digits=1, held_out_size=5)
    held = set(task.held_out()[:, 0].tolist())
    drawn = set(task.batch(200, torch.Generator().manual_seed(0))[:, 0].tolist())
    assert drawn and held.isdisjoint(drawn)


def test_training_is_seeded():
    config = ModelConfig(d_model=16, n_heads=2, n_layers=1, d_ff=64)
    _, first = train_reversal(config, steps=15, seed=3)
    _, second = train_reversal(config, steps=15, seed=3)
    assert first == second and first[-1] < first[0]


def test_stored_checkpoint_is_small():
    path = resources.files("riverbank") / "checkpoints" / "reversal.pt"
    assert path.is_file() and path.stat().st_size < 500_000


def test_stored_model_reverses_held_out_sequences(stored):
    task = Reversal()
    test = task.held_out()
    assert exact_match(stored, task, test) >= 0.95
    out = generate(stored, task.prompt(test[:20]), max_new_tokens=task.n_digits)
    assert torch.equal(out[:, :task.n_digits + 1], task.prompt(test[:20]))
    assert (out[:, task.n_digits + 1:] == task.answer(test[:20])).all(dim=1).float().mean() >= 0.95


def test_stored_model_attends_along_the_anti_diagonal(stored):
    task = Reversal()
    inputs, _ = task.inputs_and_targets(task.held_out()[:200])
    with torch.no_grad():
        _, attentions = stored(inputs)
    n = task.n_digits
    queries = torch.arange(n, 2 * n)    # the separator and the answer positions
    keys = 2 * n - 1 - queries          # input digit n - 1 - j for answer j
    for weights in attentions:
        assert (weights[:, :, queries, keys].mean(dim=(0, 2)) > 0.5).all()
