"""Comparing a learner's output with the expected one, and saying how they differ in words."""

from __future__ import annotations

import reprlib
from typing import Any

import torch


def describe(value: Any) -> str:
    """A short description of any value, for messages: its type, and shape and dtype for tensors."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}, dtype {value.dtype}"
    if value is None:
        return "None"
    try:
        text = reprlib.repr(value)  # bounded: a returned list of millions of floats stays short
    except Exception:
        text = "(unprintable)"
    return f"{type(value).__name__} {text}"


def fmt_row(t: torch.Tensor, width: int = 6, row: int = 0) -> str:
    """Row ``row`` (the first by default; or the first few entries) of a tensor, rounded to 4 decimals
    (integers as they are)."""
    flat = t.detach().to("cpu", torch.float64)
    row = flat.reshape(-1) if flat.dim() <= 1 else flat.reshape(-1, flat.shape[-1])[row]
    exact = not t.is_floating_point() and not t.is_complex()
    items = [f"{int(x)}" if exact else f"{x:.4f}" for x in row[:width].tolist()]
    return "[" + ", ".join(items) + (", …]" if row.numel() > width else "]")


def problem(value: Any, expected: torch.Tensor) -> str | None:
    """Why ``value`` cannot be compared with ``expected`` at all (None if it can)."""
    if value is None:
        return "your function returned None: did you forget `return`?"
    if isinstance(value, (tuple, list)) and value and all(isinstance(v, torch.Tensor) for v in value):
        return (f"expected one torch.Tensor of shape {tuple(expected.shape)}, but your function returned "
                f"a {type(value).__name__} of {len(value)} tensors: return only the result")
    if not isinstance(value, torch.Tensor):
        return f"expected a torch.Tensor, but your function returned {describe(value)}"
    if value.device != expected.device:
        return f"your tensor is on {value.device}, expected {expected.device}"
    if tuple(value.shape) != tuple(expected.shape):
        return f"your output has shape {tuple(value.shape)}, expected {tuple(expected.shape)}"
    if value.dtype != expected.dtype:
        return f"your output has dtype {value.dtype}, expected {expected.dtype}"
    bad = ~torch.isfinite(value) & torch.isfinite(expected)
    if bad.any():
        n_nan = int(torch.isnan(value).sum())
        n_inf = int(torch.isinf(value).sum())
        what = " and ".join(p for p in (f"{n_nan} NaN" if n_nan else "", f"{n_inf} inf" if n_inf else "") if p)
        return f"your output has {what} of {value.numel()} entries where the answer is finite"
    return None


def first_differing_row(value: torch.Tensor, truth: torch.Tensor, tol: float) -> int:
    """The first row (over the last axis, leading axes flattened) farther than ``tol`` from the truth; 0 if none."""
    a = value.detach().cpu().to(torch.float64).reshape(-1, value.shape[-1])
    b = truth.cpu().to(torch.float64).reshape(-1, truth.shape[-1])
    bad = (~torch.isclose(a, b, rtol=0.0, atol=tol, equal_nan=True)).any(dim=-1).nonzero()
    return int(bad[0, 0]) if len(bad) else 0


def mask_difference(value: torch.Tensor, expected: torch.Tensor, width: int = 8) -> list[str]:
    """For boolean outputs (masks): how many entries differ, and the first row where they do."""
    differ = value.detach().cpu() != expected.cpu()
    rows_yours = value.detach().cpu().reshape(-1, value.shape[-1]) if value.dim() else value.reshape(1, 1)
    rows_expected = expected.cpu().reshape(-1, expected.shape[-1]) if expected.dim() else expected.reshape(1, 1)
    row = int(differ.reshape(rows_yours.shape).any(dim=-1).nonzero()[0, 0])

    def fmt(r: torch.Tensor) -> str:
        items = [str(bool(x)) for x in r[:width].tolist()]
        return "[" + ", ".join(items) + (", …]" if r.numel() > width else "]")

    return [f"values differ: {int(differ.sum())} of {differ.numel()} entries are not the expected True/False",
            f"  yours, row {row}:    {fmt(rows_yours[row])}",
            f"  expected, row {row}: {fmt(rows_expected[row])}"]


def max_error(value: torch.Tensor, expected: torch.Tensor) -> float:
    return float((value.detach().to(torch.float64) - expected.to(torch.float64)).abs().max())
