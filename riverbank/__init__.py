"""Support package for the course "From the river bank to FlashAttention".

Lesson helpers that several chapters reuse, the offline pretrained model, and the exercise grader.
"""

__version__ = "0.1.0"

from .versions import warn_if_too_old as _warn_if_too_old

_warn_if_too_old()
