"""Second opinions on the grader: learner functions it has never seen, one module per chapter.

Each module ``chNN`` defines, per exercise id:

- ``CORRECT[id]``: at least three correct functions written differently from the reference
  (another formula, einsum, float64 inside, a loop...). Each must get full marks, with a margin
  of at least 2x inside every check's tolerance.
- ``WRONG[id]``: at least five plausible wrong functions, each as ``(function, named)``. Each must
  lose points. ``named`` is text that the headline mistake ("Likely mistake: ...") must contain,
  or ``None`` when the grader knows no such mistake and so must name none.
"""
