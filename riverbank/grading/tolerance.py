"""What a check expects: the reference's answer in float64, and a tolerance set by float32's own error.

The rule is documented in ``spec.py`` (``SAFETY`` and ``FLOOR_ULPS``); this module applies it to
one case's inputs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from .spec import FLOOR_ULPS, SAFETY, Exercise


@dataclass(frozen=True)
class Expected:
    """The answer to one case.

    ``value`` is the reference's own output: its type, shape, dtype and device are what the learner
    must return. ``truth`` is the same answer evaluated in float64 (for integer and bool outputs,
    ``value`` itself). ``tol`` is the largest absolute difference from ``truth`` that still counts
    as right; ``float32_error`` is the error the tolerance was derived from.
    """

    value: Any
    truth: Any
    tol: float
    float32_error: float

    @property
    def exact(self) -> bool:
        return not (isinstance(self.value, torch.Tensor) and self.value.is_floating_point())


def _clone(a: Any) -> Any:
    if isinstance(a, torch.Tensor):
        return a.clone()
    if isinstance(a, dict):
        return type(a)((k, _clone(v)) for k, v in a.items())
    if isinstance(a, (tuple, list)):
        return type(a)(_clone(v) for v in a)
    if isinstance(a, nn.Module):
        return copy.deepcopy(a)
    return a


def clone(args: tuple) -> tuple:
    """A copy of the arguments that a function may change without changing the originals
    (tensors, also inside dicts, lists and tuples, and modules)."""
    return tuple(_clone(a) for a in args)


def is_answer(value: Any) -> bool:
    """An experiment's answer: a Python number (bools included) or string."""
    return isinstance(value, (int, float, str))


def promote(value: Any) -> Any:
    """The same inputs in float64: floating tensors and modules converted, everything else as it is."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(torch.float64) if value.is_floating_point() else value.clone()
    if isinstance(value, nn.Module):
        return copy.deepcopy(value).to(torch.float64)
    if isinstance(value, (tuple, list)):
        return type(value)(promote(v) for v in value)
    if isinstance(value, dict):  # a state dict, a config
        return type(value)((k, promote(v)) for k, v in value.items())
    return value


def _finite_max(t: torch.Tensor) -> float:
    finite = t[torch.isfinite(t)]
    return float(finite.abs().max()) if finite.numel() else 0.0


def _error(approx: torch.Tensor, truth: torch.Tensor) -> float:
    """max |approx − truth| over the entries where the truth is finite."""
    finite = torch.isfinite(truth)
    if not finite.any():
        return 0.0
    diff = (approx.detach().cpu().to(torch.float64) - truth.cpu())[finite]
    diff = torch.where(torch.isfinite(diff), diff, torch.full_like(diff, float("inf")))
    return float(diff.abs().max())


def tolerance(value: torch.Tensor, truth: torch.Tensor, float32_error: float) -> float:
    """``SAFETY`` times float32's own error on this case, plus ``FLOOR_ULPS`` units in the last place
    of the output's largest entry (eps of the output's dtype)."""
    scale = _finite_max(truth) or 1.0
    return SAFETY * float32_error + FLOOR_ULPS * torch.finfo(value.dtype).eps * scale


def expected(exercise: Exercise, args: tuple) -> Expected:
    """Evaluate the reference on ``args`` at their own precision and in float64, and derive the
    case's tolerance from the difference."""
    value = exercise.reference(*clone(args))
    if is_answer(value):
        tol = float(exercise.answer_tol(value)) if exercise.answer_tol and isinstance(value, (int, float)) else 0.0
        return Expected(value, value, tol, 0.0)
    if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
        return Expected(value, value, 0.0, 0.0)
    precise: Callable = exercise.precise or exercise.reference
    truth = precise(*promote(clone(args)))
    if not isinstance(truth, torch.Tensor) or truth.shape != value.shape:
        raise TypeError(f"exercise {exercise.id}: the float64 evaluation returned {type(truth).__name__} "
                        f"{getattr(truth, 'shape', '')}, not the reference's shape {tuple(value.shape)}")
    truth = truth.detach().to("cpu", torch.float64)
    error = _error(value, truth)
    if exercise.reference32 is not None:  # a plainer float32 formulation, as learners write it
        error = max(error, _error(exercise.reference32(*clone(args)), truth))
    return Expected(value, truth, tolerance(value, truth, error), error)


def within(value: torch.Tensor, exp: Expected, tol: float | None = None) -> bool:
    """True when a tensor of the expected dtype and shape is within ``tol`` of the truth everywhere
    (non-finite entries of the truth must be matched exactly)."""
    if exp.exact:
        return bool(torch.equal(value.detach().cpu(), exp.truth.cpu()))
    tol = exp.tol if tol is None else tol
    v = value.detach().cpu().to(torch.float64)
    finite = torch.isfinite(exp.truth)
    if not torch.equal(torch.isfinite(v), finite):
        return False
    if (~finite).any() and not torch.equal(v[~finite].nan_to_num(0.0), exp.truth[~finite].nan_to_num(0.0)):
        return False
    return bool(((v[finite] - exp.truth[finite]).abs() <= tol).all())


def same_output(value: Any, other: Any, tol: float, strict: bool = False) -> bool | None:
    """Whether a learner's output is the same answer as another (a known mistake's): equal type,
    shape and dtype, and, wherever the learner's entries are finite, the other's are too and lie
    within ``tol`` of them.

    Entries that are NaN or infinite in the learner's output alone are left out, unless ``strict``:
    they may be a second problem of their own, reported as such. ``strict`` asks for the same
    non-finite entries too. None when there is nothing to compare (both empty, or no finite entry
    in the learner's output): no evidence either way, so it never names a mistake and never rules
    one out.
    """
    if not (isinstance(value, torch.Tensor) and isinstance(other, torch.Tensor)):
        return False
    if value.shape != other.shape or value.dtype != other.dtype or value.device != other.device:
        return False
    a, b = value.detach().cpu(), other.detach().cpu()
    if not a.is_floating_point():
        return bool(torch.equal(a, b)) if a.numel() else None
    fa = torch.isfinite(a)
    if strict and not (torch.equal(fa, torch.isfinite(b))
                       and torch.equal(a[~fa].nan_to_num(0.0), b[~fa].nan_to_num(0.0))):
        return False
    if not fa.any():
        return None
    if not torch.isfinite(b[fa]).all():  # the other predicts NaN or inf where the learner has a number
        return False
    return bool(((a[fa].to(torch.float64) - b[fa].to(torch.float64)).abs() <= tol).all())
