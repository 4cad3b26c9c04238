"""A kernel that stops answering is not the learner's infinite loop: the grader tells them apart
and grades such a notebook once more in a fresh kernel."""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_submissions", ROOT / "tests" / "make_submissions.py")
make_submissions = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_submissions)

# The kernel runs this cell but its reply never leaves: the client waits while the kernel sits
# idle, as in a real stall. `always`: on the second attempt too.
STALL = '''import os

if {condition}:
    kernel = get_ipython().kernel
    send = kernel.session.send

    def lose_the_reply(stream, msg_or_type, *args, **kwargs):
        kind = msg_or_type if isinstance(msg_or_type, str) else msg_or_type["header"]["msg_type"]
        if kind == "execute_reply":
            kernel.session.send = send  # only this cell's reply is lost
            return None
        return send(stream, msg_or_type, *args, **kwargs)

    kernel.session.send = lose_the_reply'''
CASES = {
    "once": 'os.environ.get("RIVERBANK_GRADE_ATTEMPT") == "1"',
    "always": "True",
}


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> dict[str, dict]:
    base = tmp_path_factory.mktemp("stall")
    correct = make_submissions.solved(make_submissions.CORRECT)
    for case, condition in CASES.items():
        nb = make_submissions.inserted(correct, "imports", STALL.format(condition=condition), "stall")
        (base / "class" / case).mkdir(parents=True)
        nbformat.write(nb, base / "class" / case / make_submissions.NAME)
    (base / "class" / "loop").mkdir()
    nbformat.write(make_submissions.inserted(correct, "imports", "while True:\n    pass", "loop"),
                   base / "class" / "loop" / make_submissions.NAME)
    run = subprocess.run([sys.executable, "-m", "riverbank.grading", "class", "--out", "gradebook", "--jobs", "2",
                          "--cell-timeout", "8", "--no-progress"], cwd=base, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr
    with open(base / "gradebook" / "gradebook.csv", newline="", encoding="utf-8") as f:
        return {row["learner"]: row for row in csv.DictReader(f)}


def test_a_stalled_kernel_is_graded_again_and_the_learner_keeps_every_point(graded):
    row = graded["once"]
    assert row["total"] == row["max"] == "31"
    assert row["problems"] == ('cell 4 ("if os.environ.get("RIVERBANK_GRADE_ATTE…"): the kernel stopped answering '
                               "(not the learner's code); graded again in a fresh kernel")
    assert "infinite loop" not in row["problems"]


def test_a_kernel_that_stalls_twice_is_reported_as_ours_not_the_learners(graded):
    row = graded["always"]
    assert "graded again in a fresh kernel, where it stopped again: tell the course's maintainers" in row["problems"]
    assert "the kernel stopped answering (it sat idle for 8 s; not your code)" in row["problems"]
    assert "infinite loop" not in row["problems"]


def test_a_learners_endless_loop_is_still_called_one(graded):
    row = graded["loop"]
    assert "did not finish before its time limit of 8 s (an infinite loop?)" in row["problems"]
    assert "stopped answering" not in row["problems"]
