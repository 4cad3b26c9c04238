"""Chapter 10's graded exercises: the references score full marks, stubs are "not attempted", bad
code never crashes the grader, every named mistake is named, and the checks stay within their time."""

from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path

import pytest
import torch

from riverbank.grading import grade, render
from riverbank.grading.exercises import EXERCISES, ch10
from riverbank.grading.runner import NOT_ATTEMPTED
from riverbank.grading.spec import BUILD, EXPERIMENT, WARM_UP

APPEND, PAGED, SCHEDULE, SLIDING = (EXERCISES[i] for i in ("10.1", "10.2", "10.3", "10.4"))
ALL = (APPEND, PAGED, SCHEDULE, SLIDING)
ROOT = Path(__file__).resolve().parents[1]


def name(x):
    return getattr(x, "id", None) or getattr(x, "__name__", None) or type(x).__name__


def test_chapter_10_exercises_are_registered_with_levels_and_hints():
    assert [ex.id for ex in ch10.EXERCISES] == ["10.1", "10.2", "10.3", "10.4"]
    assert [ex.level for ex in ALL] == [WARM_UP, BUILD, EXPERIMENT, WARM_UP]
    assert all(len(ex.hints) == 3 for ex in ALL)
    assert all(m.hint is not None or m.section for ex in ALL for m in ex.mistakes)


@pytest.mark.parametrize("ex", ALL, ids=name)
def test_messages_fit_the_page(ex):
    for message in [m.message for m in ex.mistakes] + [hint for _, hint, *_ in ex.error_hints]:
        assert len(f"  Also consistent with: {message}.") <= 80, message


@pytest.mark.parametrize("ex,handed_in", [(APPEND, ch10.append_slot), (PAGED, ch10._reference_102),
                                          (SCHEDULE, ch10._answer_103), (SLIDING, ch10.blocks_to_free)],
                         ids=name)
def test_the_course_version_gets_full_marks_within_the_time_limits(ex, handed_in):
    started = time.perf_counter()
    result = grade(ex, handed_in)
    assert result.earned == ex.points and not result.mistakes, render(result)
    assert time.perf_counter() - started < len(ex.cases) * ex.time_limit / 2


# --- the references on cases whose answer is known -----------------------------------------------------

def test_copy_on_write_by_hand():
    # two samples share blocks 1, 4 (full) and 2 (2 of 4 slots used) of a 10-token prompt
    tables, refcounts, free = [[1, 4, 2], [1, 4, 2]], [0, 2, 2, 0, 2, 0, 0, 0], [0, 3, 5, 6, 7]
    assert ch10.append_slot(tables[0], 10, refcounts, free, 4) == (7, 2, 2)   # copy on write
    assert ch10.append_slot(tables[1], 10, refcounts, free, 4) == (2, 2, None)  # now its own
    assert ch10.append_slot(tables[0], 12, refcounts, free, 4) == (6, 0, None)  # a full block: a new one
    assert tables == [[1, 4, 7, 6], [1, 4, 2]] and refcounts == [0, 2, 1, 0, 2, 0, 1, 1] and free == [0, 3, 5]
    with pytest.raises(ValueError):
        ch10.append_slot([0], 1, [2], [], 4)


@pytest.mark.parametrize("case", APPEND.cases, ids=lambda c: c.name)
def test_every_scenario_keeps_the_counts_equal_to_the_tables(case):
    block_size, n_blocks, tables, lengths, refcounts, free, calls = case.make_inputs()
    for s in calls:
        try:
            ch10.append_slot(tables[s], lengths[s], refcounts, free, block_size)
            lengths[s] += 1
        except ValueError:
            assert not free
    held = [b for t in tables for b in t]
    assert refcounts == [held.count(b) for b in range(n_blocks)]
    assert sorted(free + sorted(set(held))) == list(range(n_blocks))
    assert all(len(t) == math.ceil(n / block_size) for t, n in zip(tables, lengths))


def test_window_attention_equals_dense_attention_on_the_window_gathered_by_hand():
    q, kp, vp, tables, lengths, window = ch10._window_inputs(7, [5, 13, 18], 6, 4, 2, 8, 4, 12)
    assert tables.tolist()[2][:2] == [-1, -1] and tables.tolist()[1][0] == -1   # freed blocks
    out = ch10.paged_window_attention(*[t.double() if torch.is_tensor(t) and t.is_floating_point() else t
                                        for t in (q, kp, vp, tables, lengths, window)])
    for b, n in enumerate(lengths.tolist()):
        positions = range(max(0, n - window), n)
        table = tables[b].tolist()
        k = torch.stack([kp[table[p // 4], :, p % 4] for p in positions], 1).double()   # (kv, keys, hd)
        v = torch.stack([vp[table[p // 4], :, p % 4] for p in positions], 1).double()
        for h in range(4):
            w = torch.softmax(k[h // 2] @ q[b, h].double() / math.sqrt(8), dim=0)
            assert torch.allclose(out[b, h], w @ v[h // 2], atol=1e-12)


def test_reading_a_freed_block_gives_wrong_values():
    inputs = PAGED.cases[0].make_inputs()
    right = ch10._reference_102(*inputs)
    for mistake in PAGED.mistakes[:4]:
        assert (mistake.function(*inputs) - right).abs().max() > 0.1, mistake.message


def test_a_per_token_python_loop_passes_and_an_endless_loop_times_out():
    from second_opinion.ch10 import ch10_paged_loop
    started = time.perf_counter()
    assert grade(PAGED, ch10_paged_loop).earned == PAGED.points
    assert time.perf_counter() - started < PAGED.time_limit

    def endless(queries, key_pool, value_pool, block_tables, lengths, window):
        while True:
            pass
    result = grade(PAGED, endless)
    assert result.earned == 0 and "did not return within" in render(result)


def test_the_schedulers_on_the_worked_example_and_the_rules():
    example = [(0, 20, 3), (0, 10, 5), (1, 40, 2)]
    assert ch10.continuous_steps(example, 4, 16, 2) == 5 and ch10.static_steps(example, 2) == 7
    # one request alone takes output_len steps either way; with room for everything, continuous
    # batching finishes when the last request admitted on arrival does
    assert ch10.continuous_steps([(3, 10, 4)], 4, 16, 2) == 7 == ch10.static_steps([(3, 10, 4)], 2)
    w = ch10.WORKLOAD
    roomy = ch10.continuous_steps(w, n_blocks=10 ** 4, max_batch=len(w))
    assert roomy == max(a + o for a, _, o in w)


def test_the_speedup_answer_is_exact_and_its_mistakes_are_told_apart():
    answer = ch10._answer_103()
    assert 1.0 < answer < ch10.speedup(check_blocks=False)   # the tight pool costs continuous batching
    wrong = [m.function() for m in SCHEDULE.mistakes]
    values = sorted([answer, *wrong])
    assert min(b - a for a, b in zip(values, values[1:])) > 10 * SCHEDULE.answer_tol(answer)


def test_blocks_to_free_by_hand():
    assert ch10.blocks_to_free([7, 2, 9, 4, 0], 17, 8, 4) == [7, 2]   # the window starts at position 10
    assert ch10.blocks_to_free([7, 2, 9, 4, 0], 17, 18, 4) == []
    assert ch10.blocks_to_free([2, 0, 5], 12, 1, 4) == [2, 0, 5]      # only position 12 is kept


# --- every named mistake is named ---------------------------------------------------------------------

def _named_first(ex, handed_in, message):
    result = grade(ex, handed_in)
    assert result.earned < ex.points, render(result)
    assert result.mistakes and result.mistakes[0] == message, render(result)


APPEND_WRONG = [dict(cow=False), dict(decrement=False), dict(full_test="early"), dict(full_test="greater"),
                dict(copy_unshared=True), dict(shared_first=True), dict(first=True), dict(new_count=0),
                dict(check_free_first=False)]


@pytest.mark.parametrize("wrong,mistake", zip(APPEND_WRONG, APPEND.mistakes), ids=lambda x: str(x)[:40])
def test_each_append_mistake_is_named(wrong, mistake):
    def learner(table, length, refcounts, free, block_size):
        return ch10._variant_101(table, length, refcounts, free, block_size, **wrong)
    _named_first(APPEND, learner, mistake.message)


@pytest.mark.parametrize("mistake", PAGED.mistakes, ids=lambda m: m.message[:40])
def test_each_paged_mistake_is_named(mistake):
    _named_first(PAGED, mistake.function, mistake.message)


@pytest.mark.parametrize("mistake", SCHEDULE.mistakes, ids=lambda m: m.message[:40])
def test_each_schedule_mistake_is_named(mistake):
    answer = mistake.function()
    _named_first(SCHEDULE, lambda: answer, mistake.message)


SLIDING_WRONG = [dict(first_kept=lambda length, window: length - window),
                 dict(first_kept=lambda length, window: length - window + 2), dict(test="first"),
                 dict(physical=False)]


@pytest.mark.parametrize("wrong,mistake", zip(SLIDING_WRONG, SLIDING.mistakes), ids=lambda x: str(x)[:40])
def test_each_sliding_mistake_is_named(wrong, mistake):
    _named_first(SLIDING, functools.partial(ch10.blocks_to_free, **wrong), mistake.message)


# --- stubs and broken code ----------------------------------------------------------------------------

def _stub(*args):
    raise NotImplementedError


def _stub4(table, length, window, block_size):
    raise NotImplementedError


def _stub5(table, length, refcounts, free, block_size):
    raise NotImplementedError


@pytest.mark.parametrize("ex,stub", [(APPEND, _stub5), (PAGED, _stub), (SCHEDULE, _stub), (SLIDING, _stub4)],
                         ids=["append", "paged", "schedule", "sliding"])
def test_stubs_are_not_attempted(ex, stub):
    result = grade(ex, stub)
    assert result.status == NOT_ATTEMPTED and "not attempted" in render(result)


def _append_returns_two(table, length, refcounts, free, block_size):
    return 0, 0


def _append_returns_floats(table, length, refcounts, free, block_size):
    return 0.5, 0, None


def _append_wrong_error(table, length, refcounts, free, block_size):
    if not free:
        raise RuntimeError("full")
    return ch10.append_slot(table, length, refcounts, free, block_size)


def _append_empties_the_pool(table, length, refcounts, free, block_size):
    free.clear()
    raise ValueError


def _free_mutates(table, length, window, block_size):
    table.clear()
    return table


@pytest.mark.parametrize("ex,handed_in", [
    (APPEND, _append_returns_two), (APPEND, _append_returns_floats), (APPEND, _append_wrong_error),
    (APPEND, _append_empties_the_pool), (APPEND, lambda table, length: None), (APPEND, ch10.blocks_to_free),
    (APPEND, dict), (PAGED, lambda queries, key_pool, value_pool, block_tables, lengths, window: None),
    (PAGED, lambda queries, key_pool, value_pool, block_tables, lengths, window: queries.mul_(2)),
    (PAGED, lambda queries, key_pool, value_pool, block_tables, lengths, window: queries[:, :1]),
    (PAGED, lambda queries, key_pool, value_pool, block_tables, lengths, window: key_pool[block_tables.max() + 99]),
    (SCHEDULE, lambda: "1.2"), (SCHEDULE, lambda: float("nan")), (SCHEDULE, lambda: None),
    (SLIDING, lambda table, length, window, block_size: None),
    (SLIDING, lambda table, length, window, block_size: "0, 1"),
    (SLIDING, lambda table, length, window, block_size: [0.5]),
    (SLIDING, lambda table, length, window, block_size: table + table), (SLIDING, _free_mutates),
], ids=name)
def test_bad_submissions_lose_points_without_crashing_the_grader(ex, handed_in):
    result = grade(ex, handed_in)
    assert result.earned < ex.points
    assert render(result)


def test_a_missing_free_list_check_is_told_to_raise_value_error():
    def never_checks(table, length, refcounts, free, block_size):
        slot = length % block_size
        if slot and refcounts[table[-1]] == 1:
            return table[-1], slot, None
        block = free.pop()
        refcounts[block] = 1
        if slot == 0:
            table.append(block)
            return block, 0, None
        old, table[-1] = table[-1], block
        refcounts[old] -= 1
        return block, slot, old
    result = grade(APPEND, never_checks)
    assert result.earned == APPEND.points - 1 and "raise ValueError" in result.mistakes[0], render(result)


def _text(path: Path) -> str:
    nb = json.loads(path.read_text())
    parts = []
    for cell in nb["cells"]:
        parts.append("".join(cell["source"]))
        for out in cell.get("outputs", []):
            parts.append("".join(out.get("text", "")) + "".join(out.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def test_the_measured_answer_is_printed_nowhere():
    answer = f"{ch10._answer_103():.4f}"
    for folder in ("chapters", "solutions", "exercises"):
        path = ROOT / folder / "10_serving_many_requests.ipynb"
        if path.exists():
            assert answer not in _text(path), folder


def test_the_exercise_prints_the_graders_workload():
    source = _text(ROOT / "solutions" / "10_serving_many_requests.ipynb")
    assert all(str(request) in source for request in ch10.WORKLOAD)
    assert f"BLOCK_SIZE, N_BLOCKS, MAX_BATCH = {ch10.BLOCK_SIZE}, {ch10.N_BLOCKS}, {ch10.MAX_BATCH}" in source
