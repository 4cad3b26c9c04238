"""Every check's tolerance comes from float32's own error: right answers sit well inside it and
known mistakes outside it, on every exercise and check (the rule: riverbank/grading/spec.py)."""

from __future__ import annotations

import importlib
import itertools

import pytest
import torch

from riverbank.grading.exercises import EXERCISES
from riverbank.grading.spec import FLOOR_ULPS, SAFETY, Case, Exercise
from riverbank.grading.tolerance import clone, expected, is_answer, promote, same_output, tolerance, within

MODULES = [importlib.import_module(f"second_opinion.ch{n:02d}") for n in range(1, 11)]
CORRECT = {ex_id: fns for m in MODULES for ex_id, fns in m.CORRECT.items()}
# A judged check (a trained model's accuracy above a bar) has no reference to be near.
ALL = sorted(ex_id for ex_id, ex in EXERCISES.items() if ex.judge is None)


def _callable(ex: Exercise, fn):
    """What the grader calls: the learner's object adapted to a function of the case's inputs."""
    return ex.adapt(fn) if ex.adapt is not None and fn is not ex.reference else fn


def _error(out, exp) -> float:
    if is_answer(exp.value):
        if isinstance(exp.value, str):
            return 0.0 if isinstance(out, str) and out.strip().casefold() == exp.value.casefold() else float("inf")
        out = out.item() if isinstance(out, torch.Tensor) else out
        return abs(float(out) - float(exp.value))
    if exp.exact:
        return 0.0 if torch.equal(out, exp.truth) else float("inf")
    return float((out.detach().double() - exp.truth).abs().max()) if out.numel() else 0.0


# --- the rule on cases whose answer is known --------------------------------------------------------

def test_the_tolerance_is_safety_times_the_float32_error_plus_a_floor_scaled_by_the_output():
    value, truth = torch.tensor([2.0, -4.0]), torch.tensor([2.0, -4.0], dtype=torch.float64)
    assert tolerance(value, truth, 1e-6) == pytest.approx(SAFETY * 1e-6 + FLOOR_ULPS * 2.0 ** -23 * 4.0)
    half = torch.tensor([2.0], dtype=torch.float16)
    assert tolerance(half, truth[:1], 0.0) == pytest.approx(FLOOR_ULPS * 2.0 ** -10 * 2.0)


def _exercise(reference, cases, **kw):
    return Exercise("0.0", "t", "f", ("x",), "f(x)", reference, tuple(cases), **kw)


def test_the_float32_error_is_measured_against_a_float64_evaluation():
    # 1 + 1e-8 is 1 in float32: a sum of 10^4 such terms is off by exactly 10^4 · 1e-8 = 1e-4 there.
    x = torch.full((10_000,), 1e-8)
    ex = _exercise(lambda x: (x + 1.0).sum(0, keepdim=True) - 10_000, [Case("c", lambda: (x,))])
    exp = expected(ex, (x.clone(),))
    assert exp.truth.dtype == torch.float64
    assert exp.float32_error == pytest.approx(1e-4, rel=1e-3)
    assert exp.tol == pytest.approx(SAFETY * exp.float32_error + FLOOR_ULPS * 2.0 ** -23 * 1e-4, rel=1e-3)


def test_reference32_widens_the_tolerance_to_a_plainer_formula():
    x = torch.arange(5, dtype=torch.float32)
    careful = lambda x: (x.double() * 0.1).float()  # noqa: E731 - exact rounding of the float64 product
    plain = lambda x: x * torch.tensor(0.1) + 1e-3  # noqa: E731 - off by 1e-3 on purpose
    ex = _exercise(careful, [Case("c", lambda: (x,))], precise=lambda x: x * 0.1, reference32=plain)
    exp = expected(ex, (x,))
    assert exp.float32_error == pytest.approx(1e-3, rel=1e-3)


def test_integer_and_bool_answers_are_exact():
    ex = _exercise(lambda x: x * 3, [Case("c", lambda: (torch.tensor([2**40]),))])
    exp = expected(ex, (torch.tensor([2**40]),))
    assert exp.exact and exp.tol == 0.0
    assert within(torch.tensor([3 * 2**40]), exp) and not within(torch.tensor([3 * 2**40 + 1]), exp)


def test_promote_converts_floating_tensors_and_modules_only():
    layer = torch.nn.Linear(2, 2)
    x, n, mask = torch.ones(2), torch.tensor([1]), torch.tensor([True])
    px, pn, pmask, player, k = promote((x, n, mask, layer, 3))
    assert px.dtype == torch.float64 and pn.dtype == torch.int64 and pmask.dtype == torch.bool and k == 3
    assert player.weight.dtype == torch.float64 and layer.weight.dtype == torch.float32  # a copy


def test_same_output_rules():
    a = torch.tensor([1.0, float("nan"), 3.0])
    assert same_output(a, torch.tensor([1.0, 5.0, 3.0]), 1e-6) is True      # NaN of the learner's own: left out
    assert same_output(a, torch.tensor([1.0, 5.0, 3.1]), 1e-6) is False
    assert same_output(torch.tensor([1.0, 2.0]), torch.tensor([1.0, float("nan")]), 1e-6) is False
    nan = torch.full((3,), float("nan"))
    assert same_output(nan, nan.clone(), 1e-6) is None                      # nothing to compare
    assert same_output(torch.ones(2), torch.ones(2, dtype=torch.float64), 1.0) is False
    assert same_output(torch.ones(0, 2), torch.ones(0, 2), 0.0) is None
    assert same_output(a, torch.tensor([1.0, 5.0, 3.0]), 1e-6, strict=True) is False  # strict: NaN must match
    assert same_output(a, a.clone(), 1e-6, strict=True) is True


# --- every exercise, every check ------------------------------------------------------------------

@pytest.mark.parametrize("exercise_id", ALL)
def test_the_reference_and_correct_variants_sit_within_half_the_tolerance(exercise_id):
    """The reference and every correct second-opinion function (at least two, written independently)."""
    ex = EXERCISES[exercise_id]
    variants = [ex.reference, *CORRECT.get(exercise_id, [])]
    assert len(variants) >= 3
    for case in ex.cases:
        exp = expected(ex, case.make_inputs())
        for fn in variants:
            err = _error(_callable(ex, fn)(*clone(case.make_inputs())), exp)
            assert err <= exp.tol / 2, (f"{getattr(fn, '__name__', fn)} on '{case.name}': error {err:.3g}, "
                                        f"tolerance {exp.tol:.3g} (float32 error {exp.float32_error:.3g})")


@pytest.mark.parametrize("exercise_id", ALL)
def test_no_check_sits_on_a_knife_edge(exercise_id):
    """float32 and float64 take the same discrete decisions on every check (which token top-p keeps,
    say): otherwise the float32 "error" would be a flipped decision, and the tolerance derived from
    it would accept anything. Rounding alone stays below 1e-4 of the output's size (1e-2 in float16)."""
    ex = EXERCISES[exercise_id]
    for case in ex.cases:
        exp = expected(ex, case.make_inputs())
        if is_answer(exp.value) or exp.exact or not exp.truth.numel():
            continue
        scale = float(exp.truth[torch.isfinite(exp.truth)].abs().max()) or 1.0
        limit = 1e-2 if exp.value.dtype == torch.float16 else 1e-4
        assert exp.float32_error <= limit * scale, (case.name, exp.float32_error, scale)


@pytest.mark.parametrize("exercise_id", ALL)
def test_every_known_mistake_is_outside_the_tolerance_somewhere(exercise_id):
    ex = EXERCISES[exercise_id]
    exps = [expected(ex, case.make_inputs()) for case in ex.cases]
    for mistake in ex.mistakes:
        outside = False
        for case, exp in zip(ex.cases, exps):
            try:
                out = mistake.function(*clone(case.make_inputs()))
            except Exception:  # noqa: BLE001 - a mistake that crashes on a check fails it too
                outside = True
                continue
            if is_answer(exp.value):
                outside = outside or _error(out, exp) > exp.tol
                continue
            same_kind = (isinstance(out, torch.Tensor) and out.shape == exp.value.shape
                         and out.dtype == exp.value.dtype)
            outside = outside or not same_kind or not within(out, exp)
        assert outside, mistake.message


@pytest.mark.parametrize("exercise_id", ALL)
def test_named_mistakes_can_be_told_apart(exercise_id):
    """For two mistakes with different messages, some check's outputs tell them apart."""
    ex = EXERCISES[exercise_id]
    inputs = [case.make_inputs() for case in ex.cases]
    outputs = {}
    for mistake in ex.mistakes:
        outs = []
        for args in inputs:
            try:
                outs.append(mistake.function(*clone(args)))
            except Exception:  # noqa: BLE001
                outs.append(None)
        outputs.setdefault(mistake.message, []).append(outs)
    for (m1, runs1), (m2, runs2) in itertools.combinations(outputs.items(), 2):
        for outs1, outs2 in itertools.product(runs1, runs2):
            apart = any((a is None) != (b is None) or (a is not None and (
                (is_answer(a) and a != b) or (not is_answer(a) and (
                    same_output(a, b, 1e-6, strict=True) is False or same_output(b, a, 1e-6, strict=True) is False))))
                for a, b in zip(outs1, outs2))
            assert apart, f"'{m1}' and '{m2}' give the same outputs on every check"
