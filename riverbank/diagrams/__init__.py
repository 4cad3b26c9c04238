"""Explanatory diagrams of chapters 1-4, drawn with matplotlib so that they are made in code.

Each module draws one chapter's diagrams and returns the figure; the chapter prints the shapes or
numbers a diagram shows, since the regression test compares printed outputs and not images.
"""
