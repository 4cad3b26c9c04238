"""nbval plugin: compare notebook outputs token by token, numbers to the precision they are printed at.

float32 results differ in their last bits between CPUs, instruction sets, thread counts and BLAS
builds, so a value on a rounding boundary prints as 0.7730 on one machine and 0.7731 on another.
nbval compares outputs as exact strings; this plugin relaxes that, and only that:

- Text is split into tokens: numbers, words and single punctuation marks. Whitespace only
  separates tokens, so torch's padding (which changes when a sign appears) does not matter.
- A number printed with a fractional part or an exponent (``0.7731``, ``1.5e-06``) matches a stored
  number within one unit of the last digit printed. When the two are printed to different
  precision (``%g`` drops trailing zeros), the finer unit applies. ``-0.0000`` equals ``0.0000``.
- A number printed without a fractional part (``42``, torch's ``1.``), and every other token, must
  match exactly: shapes, counts, ids, words and masks printed as ``0.``/``1.`` are not fuzzy.

Load it with ``-p printed_numbers`` and ``tests/`` on ``PYTHONPATH`` (the Makefile's nbval target).
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import NamedTuple

_TOKEN = re.compile(
    r"""
    (?P<version>\d+(?:\.\d+){2,})                                   # 2.13.0: compared exactly
  | (?P<number>(?<![\w.])[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
  | (?P<word>\w+)
  | (?P<mark>\S)
    """,
    re.X,
)


class Token(NamedTuple):
    text: str
    is_number: bool


def tokens(text: str) -> list[Token]:
    return [Token(m.group(), m.lastgroup == "number") for m in _TOKEN.finditer(text)]


def _unit(number: str) -> Decimal | None:
    """One unit of the last printed digit, or None for a number printed without fraction or exponent."""
    mantissa, _, exponent = number.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    if not decimals and not exponent:
        return None
    return Decimal(1).scaleb(int(exponent or 0) - decimals)


def numbers_match(stored: str, computed: str) -> bool:
    """True when two printed numbers agree to the precision they were printed at."""
    if stored == computed:
        return True
    unit_stored, unit_computed = _unit(stored), _unit(computed)
    if unit_stored is None or unit_computed is None:  # integers: exact (-0 equals 0)
        return unit_stored is unit_computed and Decimal(stored) == Decimal(computed)
    return abs(Decimal(stored) - Decimal(computed)) <= min(unit_stored, unit_computed)


def first_difference(stored: str, computed: str) -> str | None:
    """None when the outputs match under the rule above; otherwise the first differing token, in words."""
    stored, computed = str(stored), str(computed)  # plain str: PrintedText's == would recurse here
    if stored == computed:
        return None
    a, b = tokens(stored), tokens(computed)
    for i, (x, y) in enumerate(zip(a, b)):
        if x.is_number and y.is_number:
            if not numbers_match(x.text, y.text):
                units = (_unit(x.text), _unit(y.text))
                why = (f"they differ by more than one unit of the last printed digit ({min(units)})"
                       if None not in units else "a number printed without decimals must match exactly")
                return f"token {i}: stored {x.text!r}, computed {y.text!r}: {why}"
        elif x.text != y.text:
            return f"token {i}: stored {x.text!r}, computed {y.text!r}"
    if len(a) != len(b):
        extra = (a if len(a) > len(b) else b)[min(len(a), len(b))].text
        side = "stored" if len(a) > len(b) else "computed"
        return f"the {side} output goes on after token {min(len(a), len(b))}: {extra!r}"
    return None


def outputs_match(stored: str, computed: str) -> bool:
    return first_difference(stored, computed) is None


class PrintedText(str):
    """A sanitized output string whose ``==`` is :func:`outputs_match`, which nbval's comparison uses."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return outputs_match(str(self), str(other))
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = str.__hash__


def pytest_configure(config) -> None:
    if not (getattr(config.option, "nbval", False) or getattr(config.option, "nbval_lax", False)):
        return
    from nbval.plugin import IPyNbCell

    if getattr(IPyNbCell.sanitize, "printed_numbers", False):
        return
    sanitize, report = IPyNbCell.sanitize, IPyNbCell.format_output_compare

    def sanitize_to_printed_text(self, s):
        s = sanitize(self, s)
        return PrintedText(s) if isinstance(s, str) else s

    def report_first_difference(self, key, left, right):
        report(self, key, left, right)
        if isinstance(left, str) and isinstance(right, str):
            self.comparison_traceback.append(
                f"  printed_numbers: first difference at {first_difference(left, right)}")

    sanitize_to_printed_text.printed_numbers = True
    IPyNbCell.sanitize = sanitize_to_printed_text
    IPyNbCell.format_output_compare = report_first_difference
