"""How an exercise is described: the function asked for, its reference, its checks and known mistakes.

How close is close enough
-------------------------
A right answer is not the reference's float32 output bit for bit: float32 results change with the
order of a sum, and that order changes between CPUs (torch's kernels, ``ATEN_CPU_CAPABILITY``),
numpy's BLAS kernels (``OPENBLAS_CORETYPE``, which Triton's CPU interpreter uses for ``tl.dot``),
thread counts and GPUs. So every check derives its own tolerance from float32's own error on that
check's inputs:

1. The reference is evaluated twice: at the inputs' own precision (float32, or float16 where a
   check is about float16), and in float64 (``promote``: every floating tensor and module converted;
   ``Exercise.precise`` overrides this). The float64 answer is the truth the learner is compared with.
2. The float32 error is max |reference − truth|. Where the course's reference is more careful than
   the plain formula (angles computed in float64, say), ``Exercise.reference32`` gives the plain
   float32 formulation as learners write it, and the larger of the two errors is used.
3. tolerance = SAFETY × float32 error + FLOOR_ULPS × eps × max |truth|, where eps is the output
   dtype's machine epsilon (1.19e-7 for float32). The floor covers checks whose reference happens
   to be exact in float32 while another, equally right, order of operations is not.
4. A learner's output passes when every entry is within the tolerance of the truth (and non-finite
   entries, if the truth has any, are the same). Integer and bool outputs must be exact.

``tests/test_tolerances.py`` proves, for every exercise and check, that the reference and at least
two independently written correct functions sit within half the tolerance, and that every known
mistake is outside it.

Which mistake is named
----------------------
A known mistake is named only if it reproduces the learner's output on every failing check where
the mistake differs from the reference, differs from the reference on no check the learner passed,
and never because both outputs have no finite entry at all. Where the learner's output has NaN or inf entries that no known mistake reproduces, those are
a problem of their own: a mistake agreeing on the finite entries is then not ruled out, but this
check does not count for it either. Several ``Mistake``s with one message count as one mistake. The
headline is the named mistake that reproduced the most checks. ``Exercise.nan_hint`` is said when
every check's output has NaN where the answer is finite and no mistake is named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

SAFETY = 8.0
FLOOR_ULPS = 16.0

# An exercise's level, marked in its notebook heading and in the score table.
WARM_UP, BUILD, EXPERIMENT = "warm-up", "build", "experiment"
LEVELS = (WARM_UP, BUILD, EXPERIMENT)
MAX_HINTS = 3


class WrongKind(TypeError):
    """Raised by ``Exercise.adapt`` when the learner handed in the wrong kind of object (a function
    where a class was asked for, say); its message is the feedback."""


@dataclass(frozen=True)
class Case:
    """One check: inputs to call the learner's function with, and the points it is worth.

    ``make_inputs`` returns a fresh tuple of positional arguments each time it is called, so a
    learner's function that mutates its inputs cannot affect the reference or later checks.
    ``kind`` is "fixed", "random" or "edge"; it only groups checks in the feedback.
    """

    name: str
    make_inputs: Callable[[], tuple]
    points: float = 1.0
    kind: str = "fixed"


@dataclass(frozen=True)
class Mistake:
    """A known wrong variant of the reference, and the sentence that names it for the learner."""

    message: str
    function: Callable[..., Any]
    # Where the feedback sends a learner whose work this mistake reproduces: which of the exercise's
    # hints explains it (1-based), and the chapter section, as the learner finds it ("chapter 2,
    # section “Masking before the softmax”").
    hint: int | None = None
    section: str | None = None


@dataclass(frozen=True)
class Exercise:
    """A graded exercise.

    ``signature`` is shown to the learner, e.g. ``attention_weights(Q: (n, d_k), K: (m, d_k)) -> (n, m)``.
    ``precise`` and ``reference32`` adjust how each check's tolerance is derived (module docstring).
    ``error_hints`` turn a crash into a named mistake: ``(text in the error message, hint)``, or
    ``(text, hint, regex)`` where the hint applies only if the learner's failing line matches the
    regex (``re.search``).

    ``level`` is ``WARM_UP``, ``BUILD`` or ``EXPERIMENT``. ``hints`` are up to three, shown one at a
    time by ``hint(id)``: the idea, then the formula, then the shape of the code, never the code.

    Exercises that are not one function of the check's inputs:

    - ``adapt(obj)`` turns what the learner hands to ``check`` (a class, an ``autograd.Function``, a
      model) into a function of each case's inputs, without running the learner's code; it raises
      ``WrongKind`` with a message when ``obj`` is the wrong kind. ``reference`` and the mistakes are
      then plain functions of the case's inputs too.
    - ``judge(value, *inputs)`` replaces the comparison with the reference: the check passes when it
      returns None, and otherwise its text is the feedback (a trained model's accuracy below a bar,
      say). The reference is not run, and no mistake is named.
    - An experiment's answer is a Python number or string (the reference returns one): a number
      passes within ``answer_tol(truth)`` of the reference's, a string when it equals the reference's
      (case and surrounding spaces ignored). A mistake whose answer equals the learner's is named.
    """

    id: str
    title: str
    function_name: str
    arg_names: tuple[str, ...]
    signature: str
    reference: Callable[..., Any]
    cases: tuple[Case, ...]
    mistakes: tuple[Mistake, ...] = ()
    time_limit: float = 5.0
    error_hints: tuple[tuple[str, ...], ...] = field(default=())
    precise: Callable[..., Any] | None = None
    reference32: Callable[..., Any] | None = None
    # Said when every check's output has NaN or inf where the answer is finite, and no known mistake
    # explains it.
    nan_hint: str | None = None
    level: str = WARM_UP
    hints: tuple[str, ...] = ()
    adapt: Callable[[Any], Callable[..., Any]] | None = None
    judge: Callable[..., str | None] | None = None
    answer_tol: Callable[[float], float] | None = None

    def __post_init__(self):
        if self.level not in LEVELS:
            raise ValueError(f"exercise {self.id}: level {self.level!r} is not one of {LEVELS}")
        if len(self.hints) > MAX_HINTS:
            raise ValueError(f"exercise {self.id}: at most {MAX_HINTS} hints")
        for m in self.mistakes:
            if m.hint is not None and not 1 <= m.hint <= len(self.hints):
                raise ValueError(f"exercise {self.id}: mistake {m.message!r} points to hint {m.hint}, "
                                 f"but there are {len(self.hints)}")

    @property
    def points(self) -> float:
        return sum(case.points for case in self.cases)
