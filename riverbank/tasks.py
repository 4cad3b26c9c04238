"""Toy tasks that a tiny Transformer learns in seconds on a CPU (chapter 5): reversing digits.

A reversal example is a list of digits, a separator, and the same digits backwards::

    3 1 4 1 5 9 2 6 | 6 2 9 5 1 4 1 3

A decoder-only model reads the sequence left to right and learns to predict the part after the
separator. Reversal is the toy task with the most readable attention: to write output digit j, the
model must look at input digit n - 1 - j, so its attention weights form an anti-diagonal.

Token ids: the digits 0-9 are ids 0-9, and the separator ``SEP`` is id 10.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SEP", "VOCAB_SIZE", "IGNORE", "Reversal"]

SEP = 10  # the separator token "|"
VOCAB_SIZE = 11  # digits 0-9 and SEP
IGNORE = -100  # target id that F.cross_entropy skips (its default ignore_index)


@dataclass(frozen=True)
class Reversal:
    """Reverse ``n_digits`` random digits. Sequences are ``2 * n_digits + 1`` tokens long.

    ``held_out(n)`` draws a fixed test set; ``batch(size, generator)`` draws training sequences and
    never returns one that is in the test set, so held-out accuracy measures generalisation to
    sequences the model never saw.
    """

    n_digits: int = 8
    held_out_size: int = 1000
    held_out_seed: int = 1234

    @property
    def seq_len(self) -> int:
        return 2 * self.n_digits + 1

    def build(self, digits: Tensor) -> Tensor:
        """digits: (batch, n_digits) ints in 0-9 -> (batch, 2 · n_digits + 1): digits, SEP, reversed."""
        sep = torch.full((digits.shape[0], 1), SEP, dtype=torch.long)
        return torch.cat([digits, sep, digits.flip(1)], dim=1)

    def random_digits(self, size: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randint(0, 10, (size, self.n_digits), generator=generator)  # (size, n_digits)

    def held_out(self) -> Tensor:
        """The test set: (held_out_size, seq_len), the same on every machine."""
        g = torch.Generator().manual_seed(self.held_out_seed)
        return self.build(self.random_digits(self.held_out_size, g))

    def _key(self, digits: Tensor) -> Tensor:
        """Each row of digits read as one whole number, to compare sequences quickly: (batch,)."""
        powers = 10 ** torch.arange(self.n_digits - 1, -1, -1)  # (n_digits,)
        return (digits * powers).sum(dim=1)

    def batch(self, size: int, generator: torch.Generator | None = None) -> Tensor:
        """Training sequences, (size, seq_len), none of them in the held-out set."""
        test_keys = self._key(self.held_out()[:, :self.n_digits])
        rows = []
        while sum(len(r) for r in rows) < size:
            digits = self.random_digits(size, generator)
            rows.append(digits[~torch.isin(self._key(digits), test_keys)])
        return self.build(torch.cat(rows)[:size])

    def inputs_and_targets(self, sequences: Tensor) -> tuple[Tensor, Tensor]:
        """Next-token prediction on the answer only.

        sequences: (batch, seq_len). Returns inputs (batch, seq_len - 1) and targets
        (batch, seq_len - 1): the target at position t is token t + 1. Targets that are prompt
        digits (unpredictable: they are random) are set to IGNORE, so the loss is on the
        n_digits answer tokens, predicted from the separator onwards.
        """
        inputs, targets = sequences[:, :-1], sequences[:, 1:].clone()
        targets[:, :self.n_digits] = IGNORE  # positions 0 .. n_digits - 1 predict prompt digits
        return inputs, targets

    def prompt(self, sequences: Tensor) -> Tensor:
        """The digits and the separator: (batch, n_digits + 1), what the model is given."""
        return sequences[:, :self.n_digits + 1]

    def answer(self, sequences: Tensor) -> Tensor:
        """The reversed digits: (batch, n_digits), what the model must produce."""
        return sequences[:, self.n_digits + 1:]
