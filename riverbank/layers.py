"""Llama's two replacements for GPT-2's block parts, RMSNorm and the SwiGLU FFN, and the gradient
probe chapter 5 measures stacks with (chapter 5).

- :class:`RMSNorm` (Zhang and Sennrich, 2019): ``weight · x / √(mean(x²) + eps)`` over the last
  axis; no centring and no bias, unlike LayerNorm.
- :class:`SwiGLU` (Shazeer, 2020): ``down(silu(gate(x)) · up(x))``, three bias-free matrices.
  :func:`swiglu_hidden_size` is Llama's hidden width: 2/3 of the 4× FFN's, rounded up to a
  multiple (Touvron et al., 2023, section 2.2; 256 in Meta's released code).
- :func:`gradient_norms`: ``‖∂loss/∂W‖`` for each weight in a list, after one backward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """Root-mean-square normalisation of each token's features: (..., d) -> (..., d).

    ``eps`` is explicit, 1e-6 by default as in Llama; ``torch.nn.RMSNorm``'s default is the
    dtype's machine epsilon instead, so pass the same value when comparing the two.
    """

    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        mean_square = x.pow(2).mean(dim=-1, keepdim=True)   # (..., 1)
        return self.weight * x * torch.rsqrt(mean_square + self.eps)


def swiglu_hidden_size(d_model: int, multiple_of: int = 256) -> int:
    """Llama's SwiGLU width: int(2/3 · 4 · d_model), rounded up to a multiple of ``multiple_of``."""
    hidden = int(2 * (4 * d_model) / 3)
    return multiple_of * -(-hidden // multiple_of)


class SwiGLU(nn.Module):
    """The gated FFN of Llama: (..., d_model) -> (..., d_model), through ``d_ff`` hidden units.

    Attributes ``gate``, ``up`` (``d_model → d_ff``) and ``down`` (``d_ff → d_model``), no biases.
    """

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.gate = nn.Linear(d_model, d_ff, bias=False)
        self.up = nn.Linear(d_model, d_ff, bias=False)
        self.down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        hidden = F.silu(self.gate(x)) * self.up(x)   # (..., d_ff): the gate scales each unit
        return self.down(hidden)


def gradient_norms(weights: Sequence[Tensor], loss: Tensor) -> Tensor:
    """``‖∂loss/∂W‖`` (Frobenius) for each W in ``weights``, in order: shape (len(weights),).

    Clears the weights' old gradients first, so a second measurement on the same weights is
    not added onto the first. A weight the loss does not depend on counts as 0.
    """
    for weight in weights:
        weight.grad = None
    loss.backward()
    return torch.stack([weight.grad.norm() if weight.grad is not None
                        else torch.zeros((), dtype=weight.dtype) for weight in weights])
