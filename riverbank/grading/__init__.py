"""The course's exercise grader: specs, safe calls into learner code, named mistakes, the instructor CLI.

In a notebook::

    from riverbank.grading import check, hint, score_table
    check("1.1", attention_weights)
    hint("1.1")  # the next hint: the idea, the formula, the shape of the code
    score_table(chapter=1)
"""

from .hints import hint
from .runner import ExerciseResult, grade, render
from .session import check, score_table
from .spec import Case, Exercise, Mistake

__all__ = ["check", "hint", "score_table", "grade", "render", "Case", "Exercise", "Mistake", "ExerciseResult"]
