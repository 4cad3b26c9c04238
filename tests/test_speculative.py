"""Speculative decoding (chapter 9): the accept/reject rule, the decoding loop and its caches,
the chi-square test, the synthetic language and the stored draft and target models."""

import copy
import math
from pathlib import Path

import pytest
import torch

from riverbank.cache import KVCache
from riverbank.model import generate
from riverbank.speculative import (LANGUAGE, accept_reject, chi_square_sf, chi_square_test,
                                   expected_tokens_per_pass, held_out_loss, load_draft_and_target,
                                   predicted_speedup, residual, sample_from, speculative_generate,
                                   truncate_cache)

# Held-out losses printed by `python -m riverbank.speculative` and in chapter 9.
EXPECTED_LOSS = {"draft": 2.0836, "target": 1.8770}
ENTROPY = 1.8370


@pytest.fixture(scope="module")
def models():
    torch.set_num_threads(1)
    return load_draft_and_target()


@pytest.fixture(scope="module")
def models64(models):
    draft, target = models
    return copy.deepcopy(draft).double(), copy.deepcopy(target).double()


P = torch.tensor([[0.5, 0.3, 0.15, 0.05]], dtype=torch.float64)
Q = torch.tensor([[0.2, 0.5, 0.05, 0.25]], dtype=torch.float64)


def test_accept_reject_output_is_p_analytically():
    # P(out = v) = q(v) min(1, p(v)/q(v)) + (1 - sum min(p, q)) residual(v) = p(v)
    accepted_mass = Q * torch.clamp(P / Q, max=1)
    out = accepted_mass + (1 - torch.minimum(P, Q).sum()) * residual(P, Q)
    assert torch.allclose(out, P, atol=1e-15)
    assert torch.allclose(residual(P, P), P)            # nothing to reject: still a distribution


def _output_frequencies(rule, n=60):
    """Run a rule on a full grid of midpoint uniforms (draft, accept, resample): exact up to the grid."""
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    u_draft, u_accept, u_resample = (g.flatten() for g in torch.meshgrid(u, u, u, indexing="ij"))
    batch = len(u_draft)
    p, q = P.expand(batch, -1), Q.expand(batch, -1)
    drafted = sample_from(q, u_draft)
    _, token = rule(p, q, drafted, u_accept, u_resample)
    return torch.bincount(token, minlength=4).double() / batch


def test_accept_reject_samples_p_and_a_broken_rule_does_not():
    assert torch.allclose(_output_frequencies(accept_reject), P[0], atol=0.02)

    def no_residual(p, q, drafted, u_accept, u_resample):    # on rejection, sample p itself
        accepted, _ = accept_reject(p, q, drafted, u_accept, u_resample)
        return accepted, torch.where(accepted, drafted, sample_from(p, u_resample))

    assert (_output_frequencies(no_residual) - P[0]).abs().max() > 0.05


def test_sample_from_is_inverse_cdf():
    probs = torch.tensor([[0.25, 0.5, 0.25]], dtype=torch.float64).expand(4, -1)
    u = torch.tensor([0.0, 0.2499, 0.25, 0.99], dtype=torch.float64)
    assert sample_from(probs, u).tolist() == [0, 0, 1, 2]


def test_greedy_speculative_equals_target_greedy(models64):
    draft, target = models64
    prompts = LANGUAGE.held_out()[:12, :4]
    for k in (1, 3, 6):
        for prompt in prompts:
            ours, stats = speculative_generate(target, draft, prompt[None], 20, k, temperature=0.0)
            assert torch.equal(ours, generate(target, prompt[None], 20))
            assert stats.new_tokens == 20 and stats.target_passes < 20


def test_bonus_token_when_the_draft_is_the_target(models64):
    _, target = models64
    prompt = LANGUAGE.held_out()[:1, :4]
    g = torch.Generator().manual_seed(0)
    tokens, stats = speculative_generate(target, target, prompt, 12, 3, temperature=1.0, generator=g)
    assert tokens.shape == (1, 16)
    assert stats.accepted == stats.judged == 9          # every proposal accepted
    assert stats.target_passes == 3                     # 3 drafts + 1 bonus token per pass


def test_truncate_cache_keeps_a_prefix_and_the_original():
    cache = KVCache(2)
    for layer in range(2):
        cache.update(layer, torch.randn(1, 2, 7, 4), torch.randn(1, 2, 7, 4))
    short = truncate_cache(cache, 5)
    assert short.seq_len == 5 and cache.seq_len == 7
    assert torch.equal(short.keys[1], cache.keys[1][:, :, :5])
    short.update(0, torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 4))
    assert cache.seq_len == 7 and short.keys[0].shape[2] == 6


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cache_rollback_matches_a_fresh_prefill(models, temperature):
    draft, target = models
    prompt = LANGUAGE.held_out()[3:4, :4]
    g = torch.Generator().manual_seed(1)
    tokens, stats, target_cache, draft_cache = speculative_generate(
        target, draft, prompt, 24, 4, temperature, g, return_caches=True)
    assert stats.judged > stats.accepted                 # some proposals were rolled back
    assert target_cache.seq_len == tokens.shape[1] - 1
    assert prompt.shape[1] < draft_cache.seq_len <= tokens.shape[1] - 1   # a prefix
    for model, cache in ((target, target_cache), (draft, draft_cache)):
        fresh = KVCache(len(model.blocks))
        with torch.no_grad():
            model(tokens[:, :cache.seq_len], cache=fresh)
        for ours, truth in zip(cache.keys + cache.values, fresh.keys + fresh.values):
            assert torch.allclose(ours, truth, atol=1e-5)


def test_chi_square_sf_known_values():
    assert chi_square_sf(3.841459, 1) == pytest.approx(0.05, abs=1e-6)
    assert chi_square_sf(5.991465, 2) == pytest.approx(0.05, abs=1e-6)
    assert chi_square_sf(18.307038, 10) == pytest.approx(0.05, abs=1e-6)
    assert chi_square_sf(6.634897, 1) == pytest.approx(0.01, abs=1e-6)
    assert chi_square_sf(3.0, 2) == pytest.approx(math.exp(-1.5), abs=1e-12)


def test_chi_square_test_accepts_the_truth_and_rejects_a_bias():
    probs = torch.tensor([0.5, 0.25, 0.125, 0.125])
    _, dof, p_value = chi_square_test(torch.tensor([500, 250, 125, 125]), probs)
    assert dof == 3 and p_value == pytest.approx(1.0)
    assert chi_square_test(torch.tensor([600, 200, 100, 100]), probs)[2] < 1e-6
    _, dof, _ = chi_square_test(torch.tensor([990, 8, 1, 1]), torch.tensor([0.99, 0.008, 0.001, 0.001]))
    assert dof == 2                                       # the two cells expected once: pooled


def test_theory_formulas():
    assert expected_tokens_per_pass(0.0, 5) == 1.0
    assert expected_tokens_per_pass(1.0, 5) == 6.0
    assert expected_tokens_per_pass(0.5, 1) == pytest.approx(1.5)
    assert predicted_speedup(0.5, 1, 1.0) == pytest.approx(0.75)


def test_language_true_probs_are_distributions_and_match_samples():
    sequences = LANGUAGE.sample(4000, torch.Generator().manual_seed(5))
    probs = LANGUAGE.true_probs(sequences)                       # (batch, length - 1, vocab)
    assert torch.allclose(probs.sum(-1), torch.ones(()).double())
    # the truth puts positive mass on every token that occurs
    assert (probs.gather(-1, sequences[:, 1:, None]) > 0).all()
    # position 2 (first word) depends only on the topic: frequencies match the truth
    frequencies = torch.bincount(sequences[:, 2], minlength=LANGUAGE.vocab_size).double() / 4000
    assert (frequencies - probs[:, 1].mean(0)).abs().max() < 0.03


def test_checkpoints_load_and_reach_their_losses(models):
    draft, target = models
    folder = Path(__file__).parents[1] / "riverbank" / "checkpoints"
    assert (folder / "draft.pt").stat().st_size + (folder / "target.pt").stat().st_size < 1.5e6
    held_out = LANGUAGE.held_out()
    entropy = LANGUAGE.entropy(held_out)
    draft_loss, target_loss = held_out_loss(draft, held_out), held_out_loss(target, held_out)
    assert entropy == pytest.approx(ENTROPY, abs=1e-4)
    assert draft_loss == pytest.approx(EXPECTED_LOSS["draft"], abs=2e-3)
    assert target_loss == pytest.approx(EXPECTED_LOSS["target"], abs=2e-3)
    assert entropy < target_loss < draft_loss
