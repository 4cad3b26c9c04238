"""Support package for the course "From the river bank to FlashAttention".

Lesson helpers that several chapters reuse, the offline pretrained model, and the exercise grader.
"""

__version__ = "0.1.0"
