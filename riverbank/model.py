"""A tiny decoder-only Transformer, its pre-LN block, and text generation (chapter 5; chapter 7
adds a KV cache to generation, chapter 8 swaps the positions for RoPE).

The model is GPT-2's layout at toy size (Radford et al., 2019): token embedding plus position
vectors, ``n_layers`` pre-LN blocks, a final LayerNorm and a linear layer to the vocabulary::

    x = embed(tokens) + positions(start .. start + T - 1)
    for each block:  x = x + attention(norm1(x));  x = x + ffn(norm2(x))
    logits = lm_head(final_norm(x))

Two choices are made explicit for the chapters that change them:

- the position encoding is ``ModelConfig.positions``, a name looked up in ``POSITIONS``;
- ``forward`` takes ``start``, the position of its first token, instead of assuming 0. Without a
  cache it is always 0; with chapter 7's cache, the new tokens start where the cached ones end.

``load_reversal_model()`` returns the model trained on :class:`riverbank.tasks.Reversal`, stored
in the package (``riverbank/checkpoints/reversal.pt``); ``python -m riverbank.model`` retrains it.
Its ``max_len`` is 32, enough for the 17-token reversal sequences; build a fresh
``ModelConfig(max_len=1024)`` for long prompts (chapter 7 times prompts of 512 + 256 tokens).

Chapter 7's additions are marked ``# NEW``: ``ModelConfig.n_kv_heads`` (grouped-query attention),
a ``cache`` argument (a :class:`riverbank.cache.KVCache`) through ``TinyDecoder.forward`` and
``Block.forward`` to the attention, and ``generate(..., cache=True)``, which runs the prompt once
and then feeds the model one new token per step.

Chapter 10's additions are marked ``# NEW (chapter 10)``: ``ModelConfig.window``, sliding-window
attention (Beltagy et al., 2020; Jiang et al., 2023, section 2). With ``window = W`` every layer's
token at position i attends to the keys at positions i - W + 1 .. i only (a banded causal mask,
:func:`riverbank.attention.sliding_window_mask`), with no cache, with a :class:`KVCache`, or with
a :class:`riverbank.cache.RollingKVCache` of the same window, which then holds at most W tokens
per layer however long the sequence grows. ``window = None``, the default, is full causal
attention, exactly as before. :func:`with_window` runs a trained model's weights with a window,
and ``python -m riverbank.model --window W --steps N`` trains and stores a reversal model with one
(``load_reversal_model(W, N)`` loads it; chapter 10 stores W = 9 after 200 and 600 steps, and
W = 5 after 600).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from importlib import resources
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import causal_mask, sliding_window_mask  # NEW (chapter 10): sliding_window_mask
from .cache import KVCache, RollingKVCache  # NEW; NEW (chapter 10): RollingKVCache
from .heads import MultiHeadAttention
from .positions import LearnedPositionEmbedding, sinusoidal_encoding
from .tasks import VOCAB_SIZE, Reversal

__all__ = ["ModelConfig", "FeedForward", "Block", "TinyDecoder", "POSITIONS", "top_p_filter",
           "sample_next_token", "generate", "train_reversal", "exact_match",
           "load_reversal_model", "with_window"]


@dataclass
class ModelConfig:
    vocab_size: int = VOCAB_SIZE
    max_len: int = 32          # positions the model has vectors for
    d_model: int = 64
    n_heads: int = 2
    n_layers: int = 2
    d_ff: int = 256            # FFN hidden width: 4 × d_model (Vaswani et al., 2017, section 3.3)
    positions: str = "learned"  # a key of POSITIONS: "learned", "sinusoidal" or "rope"
    n_kv_heads: int | None = None  # NEW: key/value heads (GQA); None = n_heads, plain MHA
    window: int | None = None  # NEW (chapter 10): keys each token sees, itself included; None = all


class SinusoidalPositions(nn.Module):
    """Fixed sinusoidal vectors (chapter 3) with the same interface as LearnedPositionEmbedding."""

    def __init__(self, max_len: int, d_model: int):
        super().__init__()
        self.register_buffer("table", sinusoidal_encoding(max_len, d_model), persistent=False)

    def forward(self, positions: Tensor) -> Tensor:
        return self.table[positions]  # (..., d_model)


class RotaryPositions(nn.Module):
    """RoPE (Su et al., 2021; chapter 8): nothing is added to the embeddings. The ``rotary`` flag
    tells TinyDecoder to have every attention layer rotate its queries and keys by their positions
    instead (:func:`riverbank.positions.apply_rope`). No table, so no maximum length."""

    rotary = True

    def __init__(self, max_len: int, d_model: int):
        super().__init__()

    def forward(self, positions: Tensor) -> Tensor:
        return torch.zeros(*positions.shape, 1, device=positions.device)  # (..., 1): adds 0


# name -> constructor(max_len, d_model) of a module mapping positions (...,) to vectors (..., d_model)
POSITIONS: dict[str, Callable[[int, int], nn.Module]] = {
    "learned": LearnedPositionEmbedding,
    "sinusoidal": SinusoidalPositions,
    "rope": RotaryPositions,  # chapter 8
}


class FeedForward(nn.Module):
    """The position-wise FFN: expand to d_ff, GELU, project back. Applied to each token alone."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.expand = nn.Linear(d_model, d_ff)
        self.contract = nn.Linear(d_ff, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.contract(F.gelu(self.expand(x)))  # (batch, seq, d_ff) -> (batch, seq, d_model)


class Block(nn.Module):
    """A pre-LN decoder block (GPT-2; Xiong et al., 2020): normalise, transform, add back."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.d_model)
        self.attention = MultiHeadAttention(config.d_model, config.n_heads,
                                            n_kv_heads=config.n_kv_heads)  # NEW: n_kv_heads
        self.norm2 = nn.LayerNorm(config.d_model)
        self.ffn = FeedForward(config.d_model, config.d_ff)

    def forward(self, x: Tensor, mask: Tensor, cache: KVCache | None = None,
                layer: int = 0,
                rope_positions: Tensor | None = None) -> tuple[Tensor, Tensor]:  # NEW: cache, layer
        """x: (batch, seq, d_model), mask: bool (seq, seq_k), True = keep. rope_positions: the
        tokens' positions (seq,) when the model uses RoPE (chapter 8), else None.

        Returns x (batch, seq, d_model) and the attention weights (batch, heads, seq, seq_k).
        """
        attended, weights = self.attention(self.norm1(x), mask=mask, cache=cache,
                                           layer=layer,  # NEW: cache, layer
                                           rope_positions=rope_positions)  # chapter 8: RoPE
        x = x + attended                  # residual around attention
        x = x + self.ffn(self.norm2(x))   # residual around the FFN
        return x, weights


class TinyDecoder(nn.Module):
    """A decoder-only Transformer language model: tokens in, next-token logits out."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.positions = POSITIONS[config.positions](config.max_len, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.final_norm = nn.LayerNorm(config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size)

    def forward(self, tokens: Tensor, start: int = 0,
                cache: KVCache | None = None) -> tuple[Tensor, list[Tensor]]:  # NEW: cache
        """tokens: (batch, seq) ids at positions start .. start + seq - 1.

        With a ``cache`` (chapter 7), tokens are only the new ones: their keys and values are
        appended to the cache and their queries attend to every cached token, so the attention
        weights are (batch, heads, seq, cached seq). ``start`` should then be ``cache.seq_len``
        (the cache does not check it: chapter 8 shows what a wrong offset does).

        With ``config.window = W`` (chapter 10) the mask is banded: the token at position i sees
        positions i - W + 1 .. i. The cache may then be a :class:`RollingKVCache` with the same
        window; past the window it holds W tokens, and one new token at a time sees all of them.

        Returns the logits (batch, seq, vocab_size), where row t scores the token after token t,
        and each layer's attention weights, a list of n_layers tensors (batch, heads, seq, seq).
        """
        seq = tokens.shape[1]
        positions = torch.arange(start, start + seq, device=tokens.device)  # (seq,)
        x = self.token_embedding(tokens) + self.positions(positions)  # (batch, seq, d_model)
        past = 0 if cache is None else cache.seq_len  # NEW: tokens already cached
        window = self.config.window  # NEW (chapter 10)
        if window is None:
            mask = causal_mask(seq, past + seq, device=tokens.device)  # NEW: (seq, past + seq); no looking ahead
        else:  # NEW (chapter 10): a band of `window` keys, (seq, keys held after this step)
            mask = self._window_mask(seq, past, window, cache, tokens.device)
        rope = positions if getattr(self.positions, "rotary", False) else None  # chapter 8: RoPE
        attentions = []
        for layer, block in enumerate(self.blocks):  # NEW: layer; x: (batch, seq, d_model)
            x, weights = block(x, mask, cache, layer, rope_positions=rope)  # NEW: cache, layer
            # weights: (batch, heads, seq, past + seq)
            attentions.append(weights)
        return self.lm_head(self.final_norm(x)), attentions  # (batch, seq, vocab_size)

    @staticmethod
    def _window_mask(seq: int, past: int, window: int, cache: KVCache | RollingKVCache | None,
                     device: torch.device) -> Tensor:  # NEW (chapter 10)
        """The banded mask (seq, n_keys) for seq new tokens after past ones. A KVCache (or none)
        holds every key, n_keys = past + seq. A RollingKVCache holds min(past + seq, window)
        keys: in position order while they fit (it refuses several tokens that do not), and for
        one token past the window all of them lie in its band, so the mask is all True."""
        if isinstance(cache, RollingKVCache):
            if cache.window != window:
                raise ValueError(f"the RollingKVCache's window ({cache.window}) is not the "
                                 f"model's ({window})")
            return sliding_window_mask(seq, min(past + seq, window), window, device=device)
        return sliding_window_mask(seq, past + seq, window, device=device)


def top_p_filter(probs: Tensor, p: float) -> Tensor:
    """Nucleus (top-p) filtering (Holtzman et al., 2020): keep the most probable tokens until
    their total reaches p, zero the rest, renormalise.

    probs: (..., vocab), rows summing to 1. The kept set is the smallest set of most probable
    tokens whose probabilities add up to at least p, so the token that crosses p is kept. The
    most probable token is always kept; p = 1 keeps every token. Returns (..., vocab), rows
    summing to 1.
    """
    sorted_probs, order = probs.sort(dim=-1, descending=True)  # (..., vocab)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs   # mass of the more probable tokens
    keep_sorted = mass_before < p                               # (..., vocab), True at rank 0
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    kept = probs * keep
    return kept / kept.sum(dim=-1, keepdim=True)


def sample_next_token(logits: Tensor, temperature: float = 0.0, top_p: float = 1.0,
                      generator: torch.Generator | None = None) -> Tensor:
    """Pick one token per row. logits: (batch, vocab) -> (batch, 1).

    temperature 0 is greedy decoding (the argmax). Otherwise the logits are divided by the
    temperature, turned into probabilities, cut to the top-p nucleus, and sampled.
    """
    if temperature == 0.0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = torch.softmax(logits / temperature, dim=-1)  # (batch, vocab)
    return torch.multinomial(top_p_filter(probs, top_p), 1, generator=generator)  # (batch, 1)


@torch.no_grad()
def generate(model: TinyDecoder, prompt: Tensor, max_new_tokens: int, temperature: float = 0.0,
             top_p: float = 1.0, generator: torch.Generator | None = None,
             cache: bool = False) -> Tensor:  # NEW: cache
    """Append max_new_tokens tokens to prompt (batch, seq), one at a time. Returns
    (batch, seq + max_new_tokens).

    Each step runs the model on the whole sequence so far and keeps only the last row of logits:
    the work for the earlier tokens is redone every step. Chapter 7's KV cache removes that:
    with ``cache=True`` the prompt runs once, filling a :class:`KVCache`, and every later step
    runs the model on the one new token only. Both give the same tokens (up to float rounding in
    the logits, which can only matter when two tokens tie). A model with a window (chapter 10)
    gets a :class:`RollingKVCache` instead, which never holds more than ``window`` tokens per
    layer; the part of the prompt beyond the window is then fed one token at a time.
    """
    if cache:  # NEW
        return _generate_with_cache(model, prompt, max_new_tokens, temperature, top_p, generator)
    tokens = prompt
    for _ in range(max_new_tokens):
        logits, _ = model(tokens)  # (batch, seq, vocab)
        next_token = sample_next_token(logits[:, -1], temperature, top_p, generator)  # (batch, 1)
        tokens = torch.cat([tokens, next_token], dim=1)  # (batch, seq + 1)
    return tokens


@torch.no_grad()
def _generate_with_cache(model: TinyDecoder, prompt: Tensor, max_new_tokens: int,
                         temperature: float, top_p: float,
                         generator: torch.Generator | None) -> Tensor:  # NEW (chapter 7)
    tokens, new = prompt, prompt  # new: the tokens the model has not seen yet
    window = model.config.window  # NEW (chapter 10)
    if window is None:
        kv_cache = KVCache(len(model.blocks))
    else:  # NEW (chapter 10): capped at `window` tokens; several at once must fit in the window
        kv_cache = RollingKVCache(len(model.blocks), window)
        if prompt.shape[1] > window:  # the first `window` together, the rest one at a time
            model(prompt[:, :window], start=0, cache=kv_cache)
            for t in range(window, prompt.shape[1] - 1):
                model(prompt[:, t:t + 1], start=t, cache=kv_cache)
            new = prompt[:, -1:]  # the loop below runs the last prompt token
    for _ in range(max_new_tokens):
        logits, _ = model(new, start=kv_cache.seq_len, cache=kv_cache)  # (batch, new, vocab)
        new = sample_next_token(logits[:, -1], temperature, top_p, generator)  # (batch, 1)
        tokens = torch.cat([tokens, new], dim=1)  # (batch, seq + 1)
    return tokens


# --- the trained reversal model -----------------------------------------------------------------

REVERSAL_CONFIG = ModelConfig()


def train_reversal(config: ModelConfig = REVERSAL_CONFIG, task: Reversal = Reversal(), steps: int = 200,
                   batch_size: int = 64, lr: float = 3e-3, seed: int = 0,
                   progress: bool = False) -> tuple[TinyDecoder, list[float]]:
    """Train a TinyDecoder on the reversal task with AdamW; returns the model and its losses.

    The same loop as chapter 5's, so that the stored checkpoint is the chapter's model.
    """
    torch.manual_seed(seed)
    model = TinyDecoder(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    steps_iter = range(steps)
    if progress:
        from tqdm.auto import tqdm
        steps_iter = tqdm(steps_iter, desc="training")
    losses = []
    for _ in steps_iter:
        inputs, targets = task.inputs_and_targets(task.batch(batch_size, generator))
        logits, _ = model(inputs)  # (batch, seq, vocab)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return model.eval(), losses


@torch.no_grad()
def exact_match(model: TinyDecoder, task: Reversal, sequences: Tensor) -> float:
    """The fraction of sequences whose whole answer the model gets right by greedy decoding.

    One forward pass is enough: greedy decoding gets a sequence right exactly when every answer
    token is the argmax given the correct tokens before it (a first error would be the same in
    both), which is what the teacher-forced argmax checks.
    """
    inputs, _ = task.inputs_and_targets(sequences)
    logits, _ = model(inputs)
    predicted = logits.argmax(dim=-1)[:, task.n_digits:]  # (batch, n_digits), from SEP onwards
    return (predicted == task.answer(sequences)).all(dim=1).float().mean().item()


CHECKPOINT = "reversal.pt"


def _checkpoint_name(window: int | None, steps: int = 200) -> str:  # NEW (chapter 10)
    if window is None:
        return CHECKPOINT
    return f"reversal_window{window}.pt" if steps == 200 else f"reversal_window{window}_steps{steps}.pt"


def load_reversal_model(window: int | None = None, steps: int = 200) -> TinyDecoder:
    """The reversal model stored in the package, in eval mode.

    ``window``, ``steps`` (chapter 10): None loads the model trained with full attention; an int W
    loads the one trained for ``steps`` steps with ``ModelConfig(window=W)`` (``python -m
    riverbank.model --window W --steps N``), if it is stored. A stored config without a
    ``window`` entry means full attention.
    """
    path = resources.files("riverbank") / "checkpoints" / _checkpoint_name(window, steps)  # NEW (chapter 10)
    with resources.as_file(path) as file:
        stored = torch.load(file, map_location="cpu", weights_only=True)
    model = TinyDecoder(ModelConfig(**stored["config"]))
    model.load_state_dict(stored["state_dict"])
    return model.eval()


def with_window(model: TinyDecoder, window: int | None) -> TinyDecoder:  # NEW (chapter 10)
    """The same weights run with sliding-window attention of ``window`` keys (None: full).

    Returns a new TinyDecoder, in the mode of ``model``, whose config differs only in ``window``;
    the parameters are copied, so ``model`` is left as it is. Running a model with a window it was
    not trained with is allowed, and is what chapter 10 measures.
    """
    windowed = TinyDecoder(replace(model.config, window=window))
    windowed.load_state_dict(model.state_dict())
    return windowed.train(model.training)


def _save_reversal_model(window: int | None = None, steps: int = 200) -> None:
    from pathlib import Path

    torch.set_num_threads(1)  # as chapter 5 trains it: one thread is fastest for tiny matrices
    config = REVERSAL_CONFIG if window is None else ModelConfig(window=window)  # NEW (chapter 10)
    model, losses = train_reversal(config=config, steps=steps, progress=True)
    accuracy = exact_match(model, Reversal(), Reversal().held_out())
    folder = Path(__file__).parent / "checkpoints"
    folder.mkdir(exist_ok=True)
    state = {name: t.detach().clone() for name, t in model.state_dict().items()}
    stored = asdict(model.config)
    if window is None:  # the stored full-attention checkpoint predates `window`: keep its keys
        stored.pop("window")
    name = _checkpoint_name(window, steps)
    torch.save({"config": stored, "state_dict": state}, folder / name)
    print(f"final loss {losses[-1]:.4f}, held-out exact match {accuracy:.1%}; "
          f"wrote {folder / name}")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Train and store the reversal model.")
    parser.add_argument("--window", type=int, default=None,  # NEW (chapter 10)
                        help="train with sliding-window attention of this many keys")
    parser.add_argument("--steps", type=int, default=200, help="training steps")  # NEW (chapter 10)
    arguments = parser.parse_args()
    _save_reversal_model(arguments.window, arguments.steps)
