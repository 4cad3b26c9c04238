"""Chapter 10's sliding-window attention: the banded mask against hand-written cases, the model with
a window with and without caches (KVCache, and RollingKVCache past the window) giving the same
logits, the default (no window) unchanged, and the stored windowed reversal models reaching the
accuracy the chapter prints."""

from __future__ import annotations

import pytest
import torch

from riverbank.attention import causal_mask, sliding_window_mask
from riverbank.cache import KVCache, RollingKVCache
from riverbank.model import (ModelConfig, TinyDecoder, exact_match, generate, load_reversal_model,
                             with_window)
from riverbank.tasks import Reversal


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Matrices this small run fastest on one thread (and the file stays quick on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def model_for(seed: int = 0, **config) -> TinyDecoder:
    torch.manual_seed(seed)
    return TinyDecoder(ModelConfig(**{"max_len": 96, "d_model": 32, "n_heads": 4, "d_ff": 64,
                                      **config})).eval()


def test_the_mask_against_hand_written_cases():
    assert torch.equal(sliding_window_mask(5, 5, 2), torch.tensor([[1, 0, 0, 0, 0],
                                                                   [1, 1, 0, 0, 0],
                                                                   [0, 1, 1, 0, 0],
                                                                   [0, 0, 1, 1, 0],
                                                                   [0, 0, 0, 1, 1]]).bool())
    # the last 2 queries of 6 tokens (positions 4 and 5), window 3
    assert torch.equal(sliding_window_mask(2, 6, 3), torch.tensor([[0, 0, 1, 1, 1, 0],
                                                                   [0, 0, 0, 1, 1, 1]]).bool())
    assert torch.equal(sliding_window_mask(1, 4, 4), torch.ones(1, 4, dtype=torch.bool))
    assert torch.equal(sliding_window_mask(3, 3, 1), torch.eye(3, dtype=torch.bool))


@pytest.mark.parametrize("n, n_keys, window", [(6, 6, 6), (6, 6, 50), (3, 8, 8), (1, 5, 9)])
def test_a_window_at_least_the_keys_is_the_causal_mask(n, n_keys, window):
    assert torch.equal(sliding_window_mask(n, n_keys, window), causal_mask(n, n_keys))


def test_a_smaller_window_differs_from_causal_and_bad_windows_are_refused():
    assert not torch.equal(sliding_window_mask(6, 6, 5), causal_mask(6))
    assert sliding_window_mask(6, 6, 5).sum(dim=1).tolist() == [1, 2, 3, 4, 5, 5]
    with pytest.raises(ValueError):
        sliding_window_mask(4, 4, 0)
    with pytest.raises(ValueError):
        sliding_window_mask(4, 3, 2)


def test_the_model_attends_only_inside_the_band():
    model = model_for(window=4)
    tokens = torch.randint(0, 11, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, attentions = model(tokens)
    outside = ~sliding_window_mask(12, 12, 4)
    for weights in attentions:  # (batch, heads, 12, 12)
        assert not weights[..., outside].any()
        assert torch.allclose(weights.sum(dim=-1), torch.ones(2, 4, 12))


@pytest.mark.parametrize("config", [{"positions": "rope"}, {}, {"n_kv_heads": 2}], ids=str)
def test_cached_steps_equal_the_banded_forward_pass_past_the_window(config):
    window, length = 5, 40
    model = model_for(window=window, **config)
    tokens = torch.randint(0, 11, (2, length), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, _ = model(tokens)                            # (2, 40, vocab), no cache
        for cache in (KVCache(len(model.blocks)), RollingKVCache(len(model.blocks), window)):
            steps = [model(tokens[:, :3], cache=cache)[0]]   # a prefill inside the window
            for t in range(3, length):
                logits, weights = model(tokens[:, t:t + 1], start=t, cache=cache)
                steps.append(logits)
            assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)
            held = weights[0].shape[-1]
            assert held == (length if isinstance(cache, KVCache) else window)
    assert not torch.allclose(full, with_window(model, None)(tokens)[0], atol=1e-3)


def test_the_rolling_cache_stays_at_the_window_and_must_match_it():
    model = model_for(window=4, positions="rope")
    rolling, growing = RollingKVCache(2, 4), KVCache(2)
    tokens = torch.randint(0, 11, (1, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for t in range(20):
            model(tokens[:, t:t + 1], start=t, cache=rolling)
            model(tokens[:, t:t + 1], start=t, cache=growing)
        per_token = 2 * 2 * 4 * 8 * 4  # layers, keys and values, heads, head_dim, float32 bytes
        assert (rolling.nbytes, growing.nbytes) == (4 * per_token, 20 * per_token)
        with pytest.raises(ValueError):
            model(tokens[:, :1], cache=RollingKVCache(2, 3))


@pytest.mark.parametrize("prompt_length", [3, 6, 11])
def test_windowed_generation_with_the_cache_gives_the_same_tokens(prompt_length):
    model = model_for(window=6, positions="rope")
    prompt = torch.randint(0, 11, (3, prompt_length), generator=torch.Generator().manual_seed(3))
    assert torch.equal(generate(model, prompt, 30, cache=True), generate(model, prompt, 30))


def test_no_window_is_the_default_and_a_wide_window_changes_nothing():
    assert ModelConfig().window is None
    model = model_for()
    tokens = torch.randint(0, 11, (2, 16), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        plain, plain_weights = model(tokens)
        wide, wide_weights = with_window(model, 16)(tokens)
        x = model.token_embedding(tokens) + model.positions(torch.arange(16))  # (2, 16, 32)
        block = model.blocks[0]
        _, causal_weights = block.attention(block.norm1(x), mask=causal_mask(16))
    assert torch.equal(plain, wide) and torch.equal(plain_weights[0], wide_weights[0])
    assert torch.equal(plain_weights[0], causal_weights)  # the first layer's full causal weights
    assert with_window(model, 3).config.window == 3 and model.config.window is None


def test_the_stored_full_attention_model_is_unchanged():
    model, task = load_reversal_model(), Reversal()
    assert model.config.window is None
    assert exact_match(model, task, task.held_out()) == 1.0
    assert exact_match(with_window(model, 16), task, task.held_out()) == 1.0  # 16 inputs: all seen


@pytest.mark.parametrize("window, steps, expected", [(9, 200, 0.088), (9, 600, 1.0), (5, 600, 0.0)])
def test_the_stored_windowed_models_reach_the_printed_accuracy(window, steps, expected):
    model, task = load_reversal_model(window, steps), Reversal()
    assert model.config.window == window
    assert exact_match(model, task, task.held_out()) == pytest.approx(expected, abs=1e-9)
