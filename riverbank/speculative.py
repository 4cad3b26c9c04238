"""Speculative decoding: a small draft model proposes tokens, a large target model checks them (chapter 9).

Leviathan et al. (2023) and Chen et al. (2023) decode with two models. Each round, the draft
proposes ``k`` tokens one at a time, ``x_i ~ q_i``; the target scores all of them in one forward
pass, giving ``p_1 .. p_{k+1}``; token ``x_i`` is accepted with probability
``min(1, p_i(x_i) / q_i(x_i))``; at the first rejection a replacement is drawn from the residual
``normalize(max(0, p_i - q_i))`` and the round ends; if all ``k`` are accepted, a bonus token is
drawn from ``p_{k+1}``. Every token that comes out is distributed exactly as the target's own
sample would be (Leviathan et al., 2023, appendix A.1; Chen et al., 2023, theorem 1).

This module holds:

- :class:`Language`, a small synthetic language with real uncertainty and structure that needs
  context, whose exact next-token distributions are known (so its entropy is known);
- the draft and target configurations, their training (``python -m riverbank.speculative``
  retrains both and rewrites ``checkpoints/draft.pt`` and ``checkpoints/target.pt``) and
  :func:`load_draft_and_target`;
- the accept/reject step (:func:`accept_reject`), the decoding loop with a KV cache for each
  model (:func:`speculative_generate`), and the theory to compare with
  (:func:`expected_tokens_per_pass`, :func:`predicted_speedup`);
- a chi-square test without scipy (:func:`chi_square_sf`, :func:`chi_square_test`).

Sampling here is inverse-CDF sampling from explicit uniforms (:func:`sample_from`), so that a
caller who fixes the uniforms and rounds the probabilities gets the same tokens on every machine.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from importlib import resources

import torch
import torch.nn.functional as F
from torch import Tensor

from .cache import KVCache
from .model import ModelConfig, TinyDecoder

__all__ = ["Language", "LANGUAGE", "DRAFT_CONFIG", "TARGET_CONFIG", "train_language_model",
           "load_draft_and_target", "held_out_loss", "truncate_cache", "probabilities",
           "sample_from", "residual", "accept_reject", "SpeculativeStats",
           "speculative_generate", "expected_tokens_per_pass", "predicted_speedup",
           "chi_square_sf", "chi_square_test"]


# --- the language -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Language:
    """A synthetic language: topic-dependent word transitions, a second-order term and copying.

    A sequence is ``BOS, topic, w_2, ..., w_{length-1}``: the topic is one of ``n_topics`` tokens,
    uniformly; each word ``w_t`` (one of ``n_words``) is drawn from

        p(v | history) = copy · [v = w_{t-lag}] + (1 - copy) · base(v),
        base = mix · A[topic, w_{t-1}] + (1 - mix) · B[w_{t-2}],

    where the copy term exists only when ``w_{t-lag}`` is a word (t ≥ 2 + lag) and the B term only
    when ``w_{t-2}`` is a word (t ≥ 4); without them their weight goes to the rest. The first word
    uses A's extra row ``START``. The rows of A and B are fixed random, peaked distributions. So the
    next word depends on the topic (far back), the last two words and the word ``lag`` places back:
    a model must combine four positions, and there is real uncertainty left at every step.

    Token ids: words 0 .. n_words - 1, topics n_words .. n_words + n_topics - 1, then BOS.
    """

    n_words: int = 20
    n_topics: int = 3
    length: int = 32
    lag: int = 8
    copy: float = 0.25
    mix: float = 0.65
    sharpness: float = 2.5      # rows are softmax(sharpness · standard normal)
    table_seed: int = 0
    held_out_size: int = 500
    held_out_seed: int = 1234

    @property
    def vocab_size(self) -> int:
        return self.n_words + self.n_topics + 1

    @property
    def bos(self) -> int:
        return self.n_words + self.n_topics

    def tables(self) -> tuple[Tensor, Tensor]:
        """A: (n_topics, n_words + 1, n_words), row ``n_words`` is START; B: (n_words, n_words). float64."""
        g = torch.Generator().manual_seed(self.table_seed)
        a = torch.randn(self.n_topics, self.n_words + 1, self.n_words, generator=g, dtype=torch.float64)
        b = torch.randn(self.n_words, self.n_words, generator=g, dtype=torch.float64)
        return torch.softmax(self.sharpness * a, -1), torch.softmax(self.sharpness * b, -1)

    def next_word_probs(self, prefix: Tensor) -> Tensor:
        """The exact distribution of the next token after ``prefix`` (batch, t), 2 ≤ t < length:
        (batch, vocab_size), float64, zero outside the words."""
        a, b = self.tables()
        t = prefix.shape[1]
        topic = prefix[:, 1] - self.n_words                              # (batch,)
        previous = prefix[:, -1] if t > 2 else torch.full_like(topic, self.n_words)  # START row
        probs = a[topic, previous]                                       # (batch, n_words)
        if t >= 4:
            probs = self.mix * probs + (1 - self.mix) * b[prefix[:, -2]]
        if t >= 2 + self.lag:
            copied = F.one_hot(prefix[:, t - self.lag], self.n_words).double()
            probs = self.copy * copied + (1 - self.copy) * probs
        return F.pad(probs, (0, self.n_topics + 1))                      # (batch, vocab_size)

    def true_probs(self, sequences: Tensor) -> Tensor:
        """Exact next-token distributions at every position: (batch, length, vocab) -> row t is the
        distribution of token t + 1 given tokens 0..t, for t = 0 .. length - 2. float64."""
        batch = sequences.shape[0]
        topic_row = torch.zeros(self.vocab_size, dtype=torch.float64)
        topic_row[self.n_words:self.bos] = 1 / self.n_topics
        rows = [topic_row.expand(batch, -1)]
        rows += [self.next_word_probs(sequences[:, :t]) for t in range(2, self.length)]
        return torch.stack(rows, dim=1)                                   # (batch, length - 1, vocab)

    def sample(self, size: int, generator: torch.Generator | None = None) -> Tensor:
        """``size`` sequences (size, length) drawn from the language."""
        topic = torch.randint(0, self.n_topics, (size,), generator=generator) + self.n_words
        tokens = torch.stack([torch.full_like(topic, self.bos), topic], dim=1)  # (size, 2)
        for _ in range(2, self.length):
            u = torch.rand(size, generator=generator, dtype=torch.float64)
            word = sample_from(self.next_word_probs(tokens), u)          # (size,)
            tokens = torch.cat([tokens, word[:, None]], dim=1)
        return tokens

    def held_out(self) -> Tensor:
        """The test set: (held_out_size, length), the same on every machine."""
        return self.sample(self.held_out_size, torch.Generator().manual_seed(self.held_out_seed))

    def entropy(self, sequences: Tensor) -> float:
        """The mean entropy (nats) of the exact next-token distributions over ``sequences``: the
        loss that a perfect model reaches on average on this text, and no model can beat."""
        p = self.true_probs(sequences)
        return -(p * p.clamp_min(1e-300).log()).sum(-1).mean().item()


LANGUAGE = Language()

# Target: 2 layers of width 128. Draft: 1 layer of width 32.
TARGET_CONFIG = ModelConfig(vocab_size=LANGUAGE.vocab_size, max_len=LANGUAGE.length, d_model=128,
                            n_heads=4, n_layers=2, d_ff=256)
DRAFT_CONFIG = ModelConfig(vocab_size=LANGUAGE.vocab_size, max_len=LANGUAGE.length, d_model=32,
                           n_heads=2, n_layers=1, d_ff=64)
TRAINING = {"target": {"steps": 1500, "lr": 2e-3, "batch_size": 32},
            "draft": {"steps": 2000, "lr": 3e-3, "batch_size": 32}}


def train_language_model(config: ModelConfig, steps: int, lr: float, language: Language = LANGUAGE,
                         batch_size: int = 64, seed: int = 0) -> tuple[TinyDecoder, list[float]]:
    """Train a TinyDecoder on ``language`` (next-token cross-entropy, AdamW with a cosine decay)."""
    torch.manual_seed(seed)
    model = TinyDecoder(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed + 1)
    data = language.sample(steps * batch_size, generator)            # all batches, drawn at once
    losses = []
    for step in range(steps):
        sequences = data[step * batch_size:(step + 1) * batch_size]  # (batch, length)
        logits, _ = model(sequences[:, :-1])                         # (batch, length - 1, vocab)
        loss = F.cross_entropy(logits.flatten(0, 1), sequences[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return model.eval(), losses


@torch.no_grad()
def held_out_loss(model: TinyDecoder, sequences: Tensor) -> float:
    """Mean next-token cross-entropy (nats) of ``model`` on ``sequences`` (batch, length)."""
    logits, _ = model(sequences[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1).double(), sequences[:, 1:].flatten()).item()


def _load(name: str) -> TinyDecoder:
    path = resources.files("riverbank") / "checkpoints" / name
    with resources.as_file(path) as file:
        stored = torch.load(file, map_location="cpu", weights_only=True)
    model = TinyDecoder(ModelConfig(**stored["config"]))
    model.load_state_dict(stored["state_dict"])
    return model.eval()


def load_draft_and_target() -> tuple[TinyDecoder, TinyDecoder]:
    """The draft and target models stored in the package, trained on :data:`LANGUAGE`, in eval mode."""
    return _load("draft.pt"), _load("target.pt")


def _save_checkpoints() -> None:
    import time
    from pathlib import Path

    torch.set_num_threads(1)
    folder = Path(__file__).parent / "checkpoints"
    held_out = LANGUAGE.held_out()
    for name, config in (("draft", DRAFT_CONFIG), ("target", TARGET_CONFIG)):
        start = time.perf_counter()
        model, losses = train_language_model(config, **TRAINING[name])
        state = {key: t.detach().clone() for key, t in model.state_dict().items()}
        torch.save({"config": asdict(config), "state_dict": state}, folder / f"{name}.pt")
        print(f"{name}: final training loss {sum(losses[-50:]) / 50:.4f}, held-out loss "
              f"{held_out_loss(model, held_out):.4f} ({time.perf_counter() - start:.0f} s)")
    print(f"entropy of the language on the held-out text: {LANGUAGE.entropy(held_out):.4f}")


# --- the accept/reject step ---------------------------------------------------------------------

def truncate_cache(cache: KVCache, length: int) -> KVCache:
    """A cache holding only the first ``length`` tokens of ``cache`` (views; ``cache`` is unchanged).

    This is the rollback after rejected draft tokens: their keys and values are dropped. Since
    :meth:`KVCache.update` builds new tensors rather than writing into old ones, the views stay valid.
    """
    short = KVCache(len(cache.keys))
    # per layer: (batch, kv_heads, length, head_dim)
    short.keys = [None if k is None else k[:, :, :length] for k in cache.keys]
    short.values = [None if v is None else v[:, :, :length] for v in cache.values]
    return short


def probabilities(logits: Tensor, temperature: float) -> Tensor:
    """(..., vocab) logits -> (..., vocab) probabilities; temperature 0 gives the argmax's one-hot."""
    if temperature == 0.0:
        return F.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
    return torch.softmax(logits / temperature, dim=-1)


def sample_from(probs: Tensor, uniforms: Tensor) -> Tensor:
    """Inverse-CDF sampling: probs (batch, vocab), rows summing to 1 (or any positive total),
    uniforms (batch,) in [0, 1) -> (batch,) the first token whose cumulative mass exceeds u · total."""
    cumulative = probs.cumsum(-1)                                        # (batch, vocab)
    u = uniforms.to(probs)[:, None] * cumulative[:, -1:]           # (batch, 1)
    index = torch.searchsorted(cumulative, u, right=True)[:, 0]
    return index.clamp_max(probs.shape[-1] - 1)


def residual(p: Tensor, q: Tensor) -> Tensor:
    """normalize(max(0, p - q)) per row: (batch, vocab). Where p equals q nothing is ever rejected;
    the row is then p, so that the result is always a distribution."""
    excess = (p - q).clamp_min(0)                                        # (batch, vocab)
    total = excess.sum(-1, keepdim=True)
    return torch.where(total > 0, excess / total.clamp_min(1e-300), p)


def accept_reject(p: Tensor, q: Tensor, drafted: Tensor, u_accept: Tensor,
                  u_resample: Tensor) -> tuple[Tensor, Tensor]:
    """One speculative step, batched: keep the drafted token with probability min(1, p/q), else
    draw from the residual.

    p, q: (batch, vocab) target and draft distributions at this position; drafted: (batch,) the
    draft's tokens (drawn from q); u_accept, u_resample: (batch,) uniforms in [0, 1).
    Returns (accepted (batch,) bool, token (batch,)): token is ``drafted`` where accepted.
    """
    p_x = p.gather(-1, drafted[:, None])[:, 0]                           # (batch,)
    q_x = q.gather(-1, drafted[:, None])[:, 0]
    accepted = u_accept.to(p) * q_x < p_x                          # u < p(x) / q(x)
    replacement = sample_from(residual(p, q), u_resample)
    return accepted, torch.where(accepted, drafted, replacement)


@dataclass
class SpeculativeStats:
    """Counts from one :func:`speculative_generate` run."""

    target_passes: int = 0     # rounds: one target forward pass each
    draft_calls: int = 0       # draft forward passes
    judged: int = 0            # draft tokens the target decided on (accepted or rejected)
    accepted: int = 0          # draft tokens accepted
    new_tokens: int = 0        # tokens added to the sequence
    accepted_per_round: list[int] = field(default_factory=list)
    proposed_per_round: list[int] = field(default_factory=list)   # k, or fewer near the end

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / max(self.judged, 1)

    @property
    def tokens_per_pass(self) -> float:
        return self.new_tokens / max(self.target_passes, 1)


@torch.no_grad()
def speculative_generate(target: TinyDecoder, draft: TinyDecoder, prompt: Tensor,
                         max_new_tokens: int, k: int, temperature: float = 1.0,
                         generator: torch.Generator | None = None,
                         return_caches: bool = False):
    """Speculative decoding of one sequence with a KV cache for each model.

    prompt: (1, n) token ids. Each round the draft proposes up to ``k`` tokens (fewer near
    ``max_new_tokens``), the target scores them in one pass over its uncached tokens plus the
    proposals, and :func:`accept_reject` decides left to right. Both caches then keep only tokens
    that stay in the sequence (:func:`truncate_cache`). At temperature 0 both distributions are
    one-hot, so a token is accepted exactly when it is the target's argmax, and the output is
    the target's greedy output. Uniforms come from ``generator`` (float64).

    The models may sit on a GPU; the uniforms are drawn on the CPU and moved.
    Returns (tokens (1, n + max_new_tokens), :class:`SpeculativeStats`), plus the two caches
    (target, draft) when ``return_caches``. The target's cache then holds every token but the
    last; the draft's holds a prefix of those (it lags after fully accepted rounds and rounds
    with no proposals; its next call feeds in what it has not seen).
    """
    def uniform() -> Tensor:
        return torch.rand(1, generator=generator, dtype=torch.float64)

    tokens, stats = prompt, SpeculativeStats()
    target_cache, draft_cache = KVCache(len(target.blocks)), KVCache(len(draft.blocks))
    end = prompt.shape[1] + max_new_tokens
    while tokens.shape[1] < end:
        n, k_now = tokens.shape[1], min(k, end - tokens.shape[1] - 1)
        drafted, q = [], []
        new = tokens[:, draft_cache.seq_len:]                # tokens the draft has not seen
        for _ in range(k_now):                               # the draft proposes, one by one
            logits, _ = draft(new, start=draft_cache.seq_len, cache=draft_cache)
            q.append(probabilities(logits[:, -1], temperature))          # (1, vocab)
            new = sample_from(q[-1], uniform())[:, None]                 # (1, 1)
            drafted.append(new)
        stats.draft_calls += k_now
        proposal = torch.cat([tokens[:, target_cache.seq_len:]] + drafted, dim=1)
        logits, _ = target(proposal, start=target_cache.seq_len, cache=target_cache)
        p = probabilities(logits[0, -(k_now + 1):], temperature)         # (k_now + 1, vocab)
        stats.target_passes += 1
        out, accepted_here = [], 0
        for i in range(k_now):                               # accept left to right
            accepted, token = accept_reject(p[i:i + 1], q[i], drafted[i][0], uniform(), uniform())
            stats.judged += 1
            out.append(token)
            if not accepted:
                break
            accepted_here += 1
        else:                                                # all accepted: a bonus token
            out.append(sample_from(p[k_now:], uniform()))
        stats.accepted += accepted_here
        stats.accepted_per_round.append(accepted_here)
        stats.proposed_per_round.append(k_now)
        tokens = torch.cat([tokens, torch.stack(out, dim=1)], dim=1)     # (1, n + len(out))
        stats.new_tokens += len(out)
        keep = tokens.shape[1] - 1                           # the newest token is not cached yet
        target_cache = truncate_cache(target_cache, keep)
        draft_cache = truncate_cache(draft_cache, min(draft_cache.seq_len, keep))
    if return_caches:
        return tokens, stats, target_cache, draft_cache
    return tokens, stats


# --- theory and statistics ----------------------------------------------------------------------

def expected_tokens_per_pass(alpha: float, k: int) -> float:
    """Leviathan et al. (2023), eq. 1: (1 - α^(k+1)) / (1 - α) tokens per target pass."""
    return k + 1.0 if alpha >= 1 else (1 - alpha ** (k + 1)) / (1 - alpha)


def predicted_speedup(alpha: float, k: int, c: float) -> float:
    """Leviathan et al. (2023), theorem 3.8: wall-clock improvement (1 - α^(k+1)) / ((1 - α)(k·c + 1)),
    where c is the time of one draft call divided by the time of one target call."""
    return expected_tokens_per_pass(alpha, k) / (k * c + 1)


def chi_square_sf(x: float, dof: int) -> float:
    """P(X ≥ x) for a chi-square variable with ``dof`` degrees of freedom: Q(dof / 2, x / 2)."""
    half = torch.tensor(dof / 2, dtype=torch.float64)
    return torch.special.gammaincc(half, torch.tensor(x / 2, dtype=torch.float64)).item()


def chi_square_test(counts: Tensor, probs: Tensor, min_expected: float = 5.0) -> tuple[float, int, float]:
    """Pearson's chi-square goodness-of-fit test of ``counts`` (cells,) against ``probs`` (cells,).

    Cells whose expected count is below ``min_expected`` are pooled into one cell, so that the
    chi-square approximation holds. Returns (statistic, degrees of freedom, p-value).
    """
    counts, probs = counts.double(), probs.double() / probs.sum()
    expected = probs * counts.sum()
    small = expected < min_expected
    if small.any():
        counts = torch.cat([counts[~small], counts[small].sum()[None]])
        expected = torch.cat([expected[~small], expected[small].sum()[None]])
    statistic = ((counts - expected) ** 2 / expected).sum().item()
    dof = len(counts) - 1
    return statistic, dof, chi_square_sf(statistic, dof)


if __name__ == "__main__":
    _save_checkpoints()
