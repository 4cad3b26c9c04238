"""Chapter 10 exercises: copy-on-write appends to a shared block table (parallel sampling), batched
paged sliding-window attention with grouped-query heads, continuous against static batching on a workload,
measured, and the blocks a sliding window lets a paged cache give back.

Every reference is written here (the chapter's own ``riverbank.paged`` is not imported): the grader
must not change when the chapter's module does."""

from __future__ import annotations

import copy
import math
from typing import Any, Callable

import torch

from ..sandbox import signature_problem
from ..spec import BUILD, EXPERIMENT, WARM_UP, Case, Exercise, Mistake, WrongKind
from .ch07 import SECTION_GQA, _drawn, _gen


def _function_adapter(name: str, arg_names: tuple[str, ...], replay: Callable[..., Any]):
    """Exercise.adapt for a function whose work is replayed by ``replay(fn, *inputs)``: checks its
    kind and signature, runs nothing."""
    def adapt(obj):
        if isinstance(obj, type) or not callable(obj):
            raise WrongKind(f"hand in a function {name}({', '.join(arg_names)}), not {type(obj).__name__}")
        wrong = signature_problem(obj, arg_names)
        if wrong:
            raise WrongKind(wrong)

        def run(*inputs):
            return replay(obj, *inputs)
        return run
    return adapt


# --- 10.1 append_slot: copy-on-write for forked sequences -----------------------------------------

def append_slot(table, length, refcounts, free, block_size):
    """Where token number ``length`` of a sequence goes, allocating and copying on write.

    table: the sequence's physical blocks, ceil(length / block_size) of them; refcounts: list, one
    count per physical block (0 = free); free: the free blocks, a fresh one taken with free.pop().
    Returns (block, slot, copied_from): copied_from is the shared block whose first ``slot`` tokens
    must be copied into ``block`` first, or None. Mutates table, refcounts and free; raises
    ValueError, changing nothing, when a block is needed and none is free.
    """
    slot = length % block_size
    if slot == 0:                                    # the last block is full (or there is none)
        if not free:
            raise ValueError("no free block")
        block = free.pop()
        refcounts[block] = 1
        table.append(block)
        return block, 0, None
    last = table[-1]
    if refcounts[last] == 1:                         # ours alone: write in place
        return last, slot, None
    if not free:
        raise ValueError("no free block")
    block = free.pop()                               # shared: copy on write
    refcounts[last] -= 1
    refcounts[block] = 1
    table[-1] = block
    return block, slot, last


def _as_int(x: Any, what: str) -> int:
    if isinstance(x, bool) or not isinstance(x, (int, torch.Tensor)) or (isinstance(x, torch.Tensor) and x.numel() != 1):
        raise TypeError(f"append_slot must return whole numbers: {what} is {type(x).__name__}")
    return int(x)


def replay_appends(fn, block_size, n_blocks, tables, lengths, refcounts, free, calls):
    """Run ``fn`` (append_slot's signature) on a scripted scenario and record what it did.

    ``calls`` lists which sequence appends one token, in order. Returns a long tensor (rows, W),
    W = max(8, n_blocks), padded with −1: one row per call, [block, slot, copied_from (−1 for
    None), 1 if it raised ValueError, len(table), table[−1], refcounts[block], len(free)]; then the
    final refcounts, how often each block is in the free list, and each final table.
    """
    tables, lengths = copy.deepcopy(list(tables)), list(lengths)
    refcounts, free = list(refcounts), list(free)
    width = max(8, n_blocks)
    rows = []
    for s in calls:
        table = tables[s]
        try:
            out = fn(table, lengths[s], refcounts, free, block_size)
        except ValueError:
            block = slot = copied = -1
            raised = 1
        else:
            if not isinstance(out, (tuple, list)) or len(out) != 3:
                raise TypeError("append_slot must return a triple (block, slot, copied_from)")
            block, slot = _as_int(out[0], "block"), _as_int(out[1], "slot")
            copied = -1 if out[2] is None else _as_int(out[2], "copied_from")
            raised = 0
            lengths[s] += 1
        count = refcounts[block] if 0 <= block < len(refcounts) else -1
        rows.append([block, slot, copied, raised, len(table), table[-1] if table else -1, count, len(free)])
    rows.append(list(refcounts))
    rows.append([free.count(b) for b in range(n_blocks)])
    rows += [list(t) for t in tables]
    if any(len(r) > width for r in rows):
        raise ValueError("a table or the counts grew longer than the pool has blocks")
    return torch.tensor([r + [-1] * (width - len(r)) for r in rows], dtype=torch.long)


APPEND_ARGS = ("table", "length", "refcounts", "free", "block_size")


def _reference_101(*inputs):
    return replay_appends(append_slot, *inputs)


def _wrong_101(fn):
    return lambda *inputs: replay_appends(fn, *inputs)


def _take(free, first=False):
    return free.pop(0) if first else free.pop()


def _variant_101(table, length, refcounts, free, block_size, *, cow=True, decrement=True, new_count=1,
                 first=False, full_test="modulo", copy_unshared=False, shared_first=False,
                 check_free_first=True):
    slot = length % block_size
    if shared_first and table and refcounts[table[-1]] > 1:     # sharing tested before fullness
        last = table[-1]
        block = _take(free, first)
        refcounts[last] -= 1
        refcounts[block] = new_count
        table[-1] = block
        return block, slot, last
    if full_test == "modulo":
        full = slot == 0
    elif full_test == "greater":                                # length > len(table) * block_size
        full = not table or length > len(table) * block_size
    else:                                                       # a ceil computed one token early
        full = (length + 1) // block_size + 1 > len(table)
    if full:
        if not free:
            raise ValueError("no free block")
        block = _take(free, first)
        refcounts[block] = new_count
        table.append(block)
        return block, slot, None
    last = table[-1]
    if (refcounts[last] == 1 and not copy_unshared) or not cow:
        return last, slot, None
    if not check_free_first:
        refcounts[last] -= 1
    if not free:
        raise ValueError("no free block")
    block = _take(free, first)
    if decrement and check_free_first:
        refcounts[last] -= 1
    refcounts[block] = new_count
    table[-1] = block
    return block, slot, last


def _v101(**kw):
    def fn(table, length, refcounts, free, block_size):
        return _variant_101(table, length, refcounts, free, block_size, **kw)
    return _wrong_101(fn)


def _pool(n_blocks, used):
    """The free list of a pool whose blocks ``used`` are taken: the others, in increasing order."""
    return [b for b in range(n_blocks) if b not in set(used)]


def _fork(block_size, n_blocks, prompt_blocks, prompt_len, n_seqs, calls):
    """n_seqs sequences forked from one prompt: they share its blocks (count n_seqs each)."""
    refcounts = [0] * n_blocks
    for b in prompt_blocks:
        refcounts[b] = n_seqs
    tables = [list(prompt_blocks) for _ in range(n_seqs)]
    return (block_size, n_blocks, tables, [prompt_len] * n_seqs, refcounts, _pool(n_blocks, prompt_blocks),
            list(calls))


def _random_fork():
    g = _gen(1010)
    block_size = (2, 4, 8)[int(torch.randint(0, 3, (1,), generator=g))]
    prompt_len = int(torch.randint(3, 4 * block_size, (1,), generator=g))
    n_seqs = int(torch.randint(2, 5, (1,), generator=g))
    n_blocks = 24
    prompt_blocks = torch.randperm(n_blocks, generator=g)[:math.ceil(prompt_len / block_size)].tolist()
    calls = torch.randint(0, n_seqs, (14,), generator=g).tolist()
    return _fork(block_size, n_blocks, prompt_blocks, prompt_len, n_seqs, calls)


def _no_free_block():
    # two sequences share blocks 0 and 1 (6 tokens of 4 per block), and the pool has nothing left
    return (4, 2, [[0, 1], [0, 1]], [6, 6], [2, 2], [], [0, 1])


APPEND_HINTS = (
    "Token number length goes to slot length mod block_size of the sequence's last block. Three "
    "situations: that slot is 0, so the last block is full (or the table is empty) and a fresh block "
    "is appended; the last block has room and belongs to this sequence alone (count 1), so write in "
    "place; or it has room but is shared (count above 1), so writing would change the other "
    "sequences too: take a fresh block for this sequence instead, and say which block to copy.",
    "Copy on write: new = free.pop(), refcounts[old] decreases by 1, refcounts[new] = 1, and new "
    "replaces old as the table's last entry; the triple is (new, slot, old). A full shared block "
    "stays shared: a full block is never written again. Before changing anything, check that the "
    "free list is not empty; if it is, raise ValueError.",
    "slot = length % block_size; first branch on slot == 0 (append), then on refcounts[table[-1]] "
    "== 1 (in place), else copy on write. Mutate the three lists in place and return a tuple of "
    "three, None for no copy.",
)

APPEND = Exercise(
    id="10.1",
    title="Copy-on-write appends for forked sequences",
    function_name="append_slot",
    arg_names=APPEND_ARGS,
    signature="append_slot(table: list[int], length: int, refcounts: list[int], free: list[int], "
              "block_size: int) -> (block, slot, copied_from | None)",
    reference=_reference_101,
    cases=(
        Case("one sequence, block size 4: 9 tokens from an empty table",
             lambda: (4, 6, [[]], [0], [0] * 6, list(range(6)), [0] * 9), 2, "fixed"),
        Case("two samples forked from a 10-token prompt, 3 tokens each",
             lambda: _fork(4, 8, [1, 4, 2], 10, 2, [0, 1, 0, 1, 0, 1]), 2, "fixed"),
        Case("four samples forked at a block boundary (8 tokens)",
             lambda: _fork(4, 10, [3, 0], 8, 4, [0, 1, 2, 3, 0, 1, 2, 3, 0]), 2, "fixed"),
        Case("random: a forked prompt, 14 appends in a random order", _random_fork, 2, "random"),
        Case("edge: a shared block and no free block: ValueError, nothing changed", _no_free_block, 1, "edge"),
        Case("edge: block size 1: every block is full, nothing is copied",
             lambda: _fork(1, 8, [5, 2], 2, 2, [0, 1, 0, 1]), 1, "edge"),
    ),
    mistakes=(
        Mistake("a shared block was written: copy it first", _v101(cow=False), hint=1),
        Mistake("on a copy the old block's count must decrease by 1", _v101(decrement=False), hint=2),
        Mistake("a block with a free slot got a new block", _v101(full_test="early"), hint=3),
        Mistake("length a multiple of block_size: the last block is full", _v101(full_test="greater"), hint=3),
        Mistake("a block with count 1 was copied: only shared ones are", _v101(copy_unshared=True), hint=1),
        Mistake("a full shared block stays shared: append a new block", _v101(shared_first=True), hint=2),
        Mistake("take the free list's last block, free.pop()", _v101(first=True), hint=2),
        Mistake("a new block's count is 1", _v101(new_count=0), hint=2),
        Mistake("no free block: raise before changing any count", _v101(check_free_first=False), hint=2),
    ),
    error_hints=(("pop from empty list", "no free block: raise ValueError, changing nothing"),
                 ("list index out of range", "an empty table: slot 0, append a fresh block")),
    level=WARM_UP,
    hints=APPEND_HINTS,
    adapt=_function_adapter("append_slot", APPEND_ARGS, replay_appends),
)


# --- 10.2 paged_window_attention -----------------------------------------------------------------

SECTION_BATCH = "chapter 10, section “Attention through block tables, for a batch”"
SECTION_WINDOW = "chapter 10, section “Sliding-window attention in the model”"


def paged_window_attention(queries, key_pool, value_pool, block_tables, lengths, window, *, first=0,
                           mask="window", kv_map="group", scale=True, softmax_dim=-1):
    """One decode step of sliding-window attention for a batch, keys read through block tables.

    queries: (batch, n_heads, head_dim); key_pool, value_pool: (n_blocks, n_kv_heads, block_size,
    head_dim); block_tables: (batch, max_blocks) long, −1 for padding past a sequence's blocks and
    for the blocks already freed (every position in them older than the window); lengths: (batch,)
    long, the new token included, at position length − 1. The query attends to positions
    length − window .. length − 1 (fewer when length < window). Query head h reads kv head
    h // (n_heads // n_kv_heads). Returns (batch, n_heads, head_dim). The keywords are the named
    mistakes: ``first`` moves the oldest kept position, ``mask`` is "window", "readable" (every slot
    below the length whose block is not −1), "length" (every slot below the length, −1 read as the
    pool's last block) or "no_length" (the window's start only).
    """
    batch, n_heads, head_dim = queries.shape
    n_kv, block_size = key_pool.shape[1], key_pool.shape[2]
    group = n_heads // n_kv
    safe = block_tables if mask == "length" else block_tables.clamp(min=0)  # −1 indexes the last block
    k = key_pool[safe].transpose(1, 2).reshape(batch, n_kv, -1, head_dim)  # (batch, kv, slots, hd)
    v = value_pool[safe].transpose(1, 2).reshape(batch, n_kv, -1, head_dim)
    repeat = (lambda t: t.repeat_interleave(group, dim=1)) if kv_map == "group" else (lambda t: t.repeat(1, group, 1, 1))
    k, v = repeat(k), repeat(v)                                          # (batch, heads, slots, hd)
    scores = torch.einsum("bhd,bhsd->bhs", queries, k)                   # (batch, heads, slots)
    if scale:
        scores = scores / math.sqrt(head_dim)
    pos = torch.arange(k.shape[2])[None, :]                              # (1, slots)
    below = pos < lengths[:, None]
    inside = pos >= (lengths - window + first)[:, None]
    keep = {"window": below & inside,
            "readable": below & (block_tables >= 0).repeat_interleave(block_size, dim=1),
            "length": below, "no_length": inside}[mask]                  # (batch, slots)
    scores = scores.masked_fill(~keep[:, None, :], float("-inf"))
    weights = scores.softmax(dim=softmax_dim).nan_to_num(0.0)
    return torch.einsum("bhs,bhsd->bhd", weights, v)


def _reference_102(queries, key_pool, value_pool, block_tables, lengths, window):
    return paged_window_attention(queries, key_pool, value_pool, block_tables, lengths, window)


def _wrong_102(**kw):
    return lambda *inputs: paged_window_attention(*inputs, **kw)


def _window_inputs(seed, lengths, window, n_heads, n_kv, head_dim, block_size, n_blocks):
    """Random queries, a pool and block tables as a sliding-window cache leaves them: logical block
    j of a sequence of length L is freed (−1) when (j + 1) · block_size ≤ L − window, and its
    physical block has gone to another sequence; −1 padding follows each table. The pool's last
    block, where a −1 index lands, is never handed out and holds large garbage."""
    g = _gen(seed)
    batch = len(lengths)
    queries = torch.randn(batch, n_heads, head_dim, generator=g)
    key_pool = torch.randn(n_blocks, n_kv, block_size, head_dim, generator=g)
    value_pool = torch.randn(n_blocks, n_kv, block_size, head_dim, generator=g)
    key_pool[-1] = 4.0 * queries.abs().amax() * torch.sign(torch.randn(n_kv, block_size, head_dim, generator=g))
    value_pool[-1] = 50.0
    logical = [math.ceil(n / block_size) for n in lengths]
    freed = [max(0, (n - window) // block_size) for n in lengths]
    width = max(logical) + 1
    order = torch.randperm(n_blocks - 1, generator=g).tolist()      # live blocks first, freed ones reused
    if sum(f - d for f, d in zip(logical, freed)) > n_blocks - 1:
        raise ValueError("the pool is too small")
    tables = torch.full((batch, width), -1, dtype=torch.long)
    for i, (n, f) in enumerate(zip(logical, freed)):
        tables[i, f:n] = torch.tensor(order[:n - f], dtype=torch.long)
        order = order[n - f:]
    return queries, key_pool, value_pool, tables, torch.tensor(lengths, dtype=torch.long), window


_L102 = [_drawn(1020 + i, 1, 80) for i in range(_drawn(1019, 3, 7))]

PAGED_HINTS = (
    "Slot s of logical block j holds position j · block_size + s. Gather every sequence's blocks "
    "into one long row of slots and score the query against all of them; then keep only the slots "
    "whose position lies in the window, from length − window to length − 1. That one test also "
    "leaves out the freed blocks (all their positions are older), the last block's unused slots and "
    "the −1 padding, whatever the pool holds there. n_heads / n_kv_heads consecutive query heads "
    "share a kv head.",
    "Keep position p when length − window ≤ p < length: exactly window keys, or length when "
    "window exceeds it. kv head of query head h: h // (n_heads // n_kv_heads). Scores q · k / "
    "√head_dim, −inf outside the window, softmax over the slots, then the weighted sum of values.",
    "Replace −1 by a valid block number before indexing (the mask removes those slots); move the "
    "kv-head axis ahead of the blocks and merge blocks and slots into one axis; repeat_interleave "
    "the kv heads along dim 1; one boolean mask of shape (batch, slots) from an arange of the slot "
    "positions compared with lengths[:, None] twice.",
)

WINDOW_ARGS = ("queries", "key_pool", "value_pool", "block_tables", "lengths", "window")

PAGED = Exercise(
    id="10.2",
    title="Batched paged sliding-window attention with grouped-query heads",
    function_name="paged_window_attention",
    arg_names=WINDOW_ARGS,
    signature="paged_window_attention(queries: (batch, n_heads, head_dim), key_pool, value_pool: "
              "(n_blocks, n_kv_heads, block_size, head_dim), block_tables: (batch, max_blocks) long, "
              "lengths: (batch,) long, window: int) -> (batch, n_heads, head_dim)",
    reference=_reference_102,
    cases=(
        Case("2 sequences, 4 heads on 2 kv heads, block size 4, window 6",
             lambda: _window_inputs(0, [11, 17], 6, 4, 2, 8, 4, 12), 3, "fixed"),
        Case("3 sequences, 4 heads and 4 kv heads, block size 8, window 13",
             lambda: _window_inputs(1, [30, 9, 45], 13, 4, 4, 16, 8, 16), 2, "fixed"),
        Case("multi-query: 8 heads on 1 kv head, block size 16, window 21",
             lambda: _window_inputs(2, [70, 23], 21, 8, 1, 8, 16, 10), 2, "fixed"),
        Case(f"random: {len(_L102)} sequences of lengths {', '.join(map(str, _L102))}, 6 heads on 2 kv, window 27",
             lambda: _window_inputs(3, _L102, 27, 6, 2, 8, 4, 64), 2, "random"),
        Case("edge: window 1, the new token alone; one sequence of length 1",
             lambda: _window_inputs(4, [1, 9, 6], 1, 4, 2, 4, 4, 8), 1, "edge"),
        Case("edge: window 10 over lengths 3, 9, 14 and 24: longer than two of them",
             lambda: _window_inputs(5, [3, 9, 14, 24], 10, 4, 2, 8, 4, 12), 1, "edge"),
    ),
    mistakes=(
        Mistake("window + 1 keys: position length − window − 1 is out", _wrong_102(first=-1), hint=2),
        Mistake("window − 1 keys: position length − window is in", _wrong_102(first=1), hint=2),
        Mistake("no window: old slots of a kept block were attended", _wrong_102(mask="readable"),
                hint=1, section=SECTION_WINDOW),
        Mistake("−1 read as the pool's last block: mask by the window", _wrong_102(mask="length"),
                hint=1, section=SECTION_BATCH),
        Mistake("kv head h // (n_heads/n_kv_heads), not h % n_kv_heads", _wrong_102(kv_map="modulo"), hint=2,
                section=SECTION_GQA),
        Mistake("scores not divided by √head_dim", _wrong_102(scale=False), hint=2),
        Mistake("no length mask: slots past each length count", _wrong_102(mask="no_length"), hint=2),
        Mistake("softmax over the heads: it runs over the slots", _wrong_102(softmax_dim=1), hint=2),
    ),
    error_hints=(("out of bounds", "a −1 block is padding: replace it before indexing", r"\["),),
    time_limit=10.0,
    level=BUILD,
    hints=PAGED_HINTS,
)


# --- 10.3 continuous against static batching, measured --------------------------------------------

BLOCK_SIZE, N_BLOCKS, MAX_BATCH = 16, 80, 8

# (arrival_step, prompt_len, output_len) of 32 requests, in order of arrival: printed in the exercise
WORKLOAD = [(0, 169, 106), (4, 136, 78), (5, 181, 107), (8, 13, 63), (9, 112, 79), (12, 37, 43), (12, 78, 63), (14, 86, 75), (14, 153, 101), (17, 102, 55), (17, 80, 95), (21, 27, 23), (21, 157, 5), (25, 96, 60), (27, 114, 101), (27, 21, 111), (31, 188, 40), (31, 32, 65), (34, 180, 77), (35, 125, 104), (36, 196, 29), (38, 125, 17), (42, 152, 34), (46, 66, 10), (47, 38, 5), (51, 94, 17), (51, 174, 43), (54, 43, 56), (55, 92, 82), (58, 115, 68), (62, 70, 72), (62, 34, 6)]


def continuous_steps(workload, n_blocks=N_BLOCKS, block_size=BLOCK_SIZE, max_batch=MAX_BATCH, *,
                     check_blocks=True, need="whole", fcfs=True, free_late=False, extra_step=False):
    """Steps continuous batching takes to finish every request (rules: the exercise's text).

    Before step t: requests done in step t − 1 leave (their blocks return), then the waiting requests
    that have arrived are admitted in order while fewer than max_batch run and the first one's
    blocks, ceil((prompt + output) / block_size), fit; the first that does not fit stops admission.
    An admitted request makes its first token in that step and its last output_len − 1 steps later.
    The keywords are the named mistakes.
    """
    blocks = {"whole": lambda p, o: math.ceil((p + o) / block_size),
              "prompt": lambda p, o: math.ceil((p + 1) / block_size),
              "floor": lambda p, o: (p + o) // block_size}[need]
    waiting, running = list(range(len(workload))), []   # running: (the step it leaves before, blocks)
    free, t, last = n_blocks, 0, -1
    while waiting or running:
        free += sum(b for leaves, b in running if leaves <= t)
        running = [r for r in running if r[0] > t]
        for i in list(waiting):
            arrival, p, o = workload[i]
            if arrival > t or len(running) >= max_batch:
                break
            b = blocks(p, o)
            if b > n_blocks:
                raise ValueError(f"request {i} needs {b} blocks, more than the pool's {n_blocks}")
            if check_blocks and b > free:
                if fcfs:
                    break
                continue
            waiting.remove(i)
            free -= b if check_blocks else 0
            end = t + o - 1 + (1 if extra_step else 0)     # the step of its last token
            running.append((end + 1 + (1 if free_late else 0), b))
            last = max(last, end)
        t += 1
    return last + 1


def static_steps(workload, max_batch=MAX_BATCH, *, wait_for="last", extra_step=False):
    """Steps static batching takes: batches of max_batch in order; a batch starts once the previous
    one has finished and all its requests have arrived, and runs as long as its longest output."""
    end = 0
    for start in range(0, len(workload), max_batch):
        batch = workload[start:start + max_batch]
        arrived = max(a for a, _, _ in batch) if wait_for == "last" else min(a for a, _, _ in batch)
        end = max(end, arrived) + max(o for _, _, o in batch) + (1 if extra_step else 0)
    return end


def speedup(workload=None, *, padded=False, static_kw=None, **continuous_kw):
    """Continuous batching's generated tokens per step over static batching's (real tokens only)."""
    workload = WORKLOAD if workload is None else workload
    tokens = sum(o for _, _, o in workload)
    static_tokens = tokens
    if padded:  # every place of a static batch counted for its longest output
        static_tokens = sum(len(workload[s:s + MAX_BATCH]) * max(o for _, _, o in workload[s:s + MAX_BATCH])
                            for s in range(0, len(workload), MAX_BATCH))
    return (tokens / continuous_steps(workload, **continuous_kw)) / (static_tokens / static_steps(workload, **(static_kw or {})))


DECIMALS = 4  # the answer is asked for to 4 decimals


def _answer_103():
    return round(speedup(), DECIMALS)


def _answer_tol_103(truth: float) -> float:
    # whole step counts: the answer is exact; one unit of the last decimal asked for covers rounding
    return 10 ** -DECIMALS



SCHEDULE_HINTS = (
    "Simulate both schedulers step by step, as the rules say, and count steps. Continuous batching "
    "keeps a list of running requests, each with the step of its last token and the blocks it holds; "
    "before each step it first lets the finished ones go, then admits from the head of the queue. "
    "Static batching needs no simulation: a batch's start and length follow from its requests.",
    "A request admitted before step t makes its tokens in steps t .. t + output − 1 and holds "
    "ceil((prompt + output) / 16) blocks until then; it leaves before step t + output. A static "
    "batch starts at max(end of the previous batch, the latest arrival in it) and lasts max output "
    "steps. Throughput: the real output tokens (the sum of output_len) divided by the steps.",
    "A while loop over t that runs while requests wait or run; inside: free the blocks of those "
    "leaving, then a for loop over the waiting requests in order that breaks at the first one that "
    "has not arrived, finds the batch full or does not fit. Check both functions on the worked "
    "example first.",
)


def _mistake_103(**kw):
    return lambda: round(speedup(**kw), DECIMALS)


SCHEDULE = Exercise(
    id="10.3",
    title="Continuous against static batching, on one workload",
    function_name="continuous_speedup",
    arg_names=(),
    signature="continuous_speedup() -> float, continuous batching's tokens per step over static batching's",
    reference=_answer_103,
    cases=(Case("your answer", lambda: (), 4, "experiment"),),
    mistakes=(
        Mistake("padding is not throughput: count real tokens only", _mistake_103(padded=True), hint=2),
        Mistake("admitted without checking that its blocks fit", _mistake_103(check_blocks=False), hint=1),
        Mistake("a partly filled block is a whole block: ceil", _mistake_103(need="floor"), hint=2),
        Mistake("first come, first served: stop at the first misfit", _mistake_103(fcfs=False), hint=3),
        Mistake("a request done in step t − 1 leaves before step t", _mistake_103(free_late=True), hint=2),
        Mistake("prefill makes the first token: output_len steps in all",
                _mistake_103(extra_step=True, static_kw=dict(extra_step=True)), hint=2),
        Mistake("a static batch waits for its last request to arrive",
                _mistake_103(static_kw=dict(wait_for="first")), hint=2),
    ),
    level=EXPERIMENT,
    hints=SCHEDULE_HINTS,
    answer_tol=_answer_tol_103,
)


# --- 10.4 blocks_to_free: what a sliding window gives back ----------------------------------------

def blocks_to_free(table, length, window, block_size, *, first_kept=None, test="last", physical=True):
    """The physical blocks of ``table`` whose every position is older than the window of the next
    token: position ``length`` attends to length − window + 1 .. length, and logical block j holds
    positions j · block_size .. (j + 1) · block_size − 1. The keywords are the named mistakes."""
    oldest = length - window + 1 if first_kept is None else first_kept(length, window)
    if test == "last":                                   # its last position is older than the window
        old = [j for j in range(len(table)) if (j + 1) * block_size <= oldest]
    else:                                                # its first position is (wrong)
        old = [j for j in range(len(table)) if j * block_size < oldest]
    return [table[j] if physical else j for j in old]


FREE_ARGS = ("table", "length", "window", "block_size")


def replay_free(fn, table, length, window, block_size):
    """The learner's blocks in increasing order (the order does not matter), padded with −1 to the
    table's length: a long tensor of shape (len(table),) unless more blocks came back."""
    out = fn(list(table), length, window, block_size)
    if isinstance(out, torch.Tensor):
        out = out.reshape(-1).tolist()
    if not isinstance(out, (list, tuple, set)):
        raise TypeError(f"blocks_to_free must return a list of block numbers, not {type(out).__name__}")
    try:
        blocks = sorted(int(b) for b in out)
    except (TypeError, ValueError) as error:
        raise TypeError(f"blocks_to_free must return whole block numbers ({error})") from None
    return torch.tensor(blocks + [-1] * (len(table) - len(blocks)), dtype=torch.long)


def _reference_104(*inputs):
    return replay_free(blocks_to_free, *inputs)


def _wrong_104(**kw):
    return lambda *inputs: replay_free(lambda *a: blocks_to_free(*a, **kw), *inputs)


def _random_104():
    g = _gen(1040)
    block_size = (4, 8, 16)[int(torch.randint(0, 3, (1,), generator=g))]
    length = int(torch.randint(3 * block_size, 12 * block_size, (1,), generator=g))
    window = int(torch.randint(block_size + 1, length - block_size, (1,), generator=g))
    table = torch.randperm(64, generator=g)[:math.ceil(length / block_size)].tolist()
    return table, length, window, block_size


FREE_HINTS = (
    "The next token sits at position length and sees the window positions length − window + 1 to "
    "length; nothing older is ever read again. A block can go back to the pool when every position "
    "it holds, including slots not written yet, is older than that. The table maps a logical block "
    "(its place in the sequence) to the physical block in the pool: the pool wants physical ones.",
    "Logical block j holds positions j · block_size to (j + 1) · block_size − 1. It is free to go "
    "when (j + 1) · block_size − 1 < length − window + 1. Return table[j] for every such j.",
    "One comprehension over j in range(len(table)) with that condition; the answer is a list of "
    "ints, possibly empty.",
)

SLIDING = Exercise(
    id="10.4",
    title="The blocks a sliding window gives back",
    function_name="blocks_to_free",
    arg_names=FREE_ARGS,
    signature="blocks_to_free(table: list[int], length: int, window: int, block_size: int) -> list[int]",
    reference=_reference_104,
    cases=(
        Case("block size 4, 17 tokens, window 8", lambda: ([7, 2, 9, 4, 0], 17, 8, 4), 2, "fixed"),
        Case("block size 4, 14 tokens, window 8: the oldest kept position ends a block",
             lambda: ([3, 8, 1, 6], 14, 8, 4), 2, "fixed"),
        Case("block size 4, 13 tokens, window 6: the oldest kept position starts a block",
             lambda: ([5, 1, 3, 2], 13, 6, 4), 2, "fixed"),
        Case("random: a longer table", _random_104, 2, "random"),
        Case("edge: the window reaches back past position 0", lambda: ([4, 1, 6], 10, 16, 4), 1, "edge"),
        Case("edge: window 1, the next token starts a new block", lambda: ([2, 0, 5], 12, 1, 4), 1, "edge"),
    ),
    mistakes=(
        Mistake("position length − window is outside the window",
                _wrong_104(first_kept=lambda length, window: length - window), hint=1),
        Mistake("position length − window + 1 is still in the window",
                _wrong_104(first_kept=lambda length, window: length - window + 2), hint=1),
        Mistake("a block goes only when its last position is old",
                _wrong_104(test="first"), hint=2),
        Mistake("return physical blocks table[j], not indices j", _wrong_104(physical=False), hint=1),
    ),
    level=WARM_UP,
    hints=FREE_HINTS,
    adapt=_function_adapter("blocks_to_free", FREE_ARGS, replay_free),
)

EXERCISES = (APPEND, PAGED, SCHEDULE, SLIDING)
