"""Chapter 10 (copy-on-write appends, batched paged sliding-window attention, continuous against static
batching, the blocks a sliding window frees): learner code the grader has never seen."""

from __future__ import annotations

import heapq
import math

import torch
import torch.nn.functional as F

from riverbank.heads import repeat_kv

# --- 10.1 append_slot -----------------------------------------------------------------------------


def ch10_append_branches(table, length, refcounts, free, block_size):
    if length == len(table) * block_size:          # every block full, or none
        if len(free) == 0:
            raise ValueError("pool exhausted")
        new = free.pop(-1)
        refcounts[new] += 1
        table.append(new)
        return new, 0, None
    slot = length - (len(table) - 1) * block_size
    old = table[-1]
    if refcounts[old] > 1:
        if len(free) == 0:
            raise ValueError("pool exhausted")
        new = free.pop(-1)
        refcounts[old] -= 1
        refcounts[new] = 1
        table[len(table) - 1] = new
        return (new, slot, old)
    return (old, slot, None)


def ch10_append_divmod(table, length, refcounts, free, block_size):
    full_blocks, slot = divmod(length, block_size)
    needs_new = slot == 0
    shared = not needs_new and refcounts[table[full_blocks]] > 1
    if (needs_new or shared) and not free:
        raise ValueError
    if needs_new:
        b = free.pop()
        refcounts[b] = 1
        table.append(b)
        return b, slot, None
    if not shared:
        return table[full_blocks], slot, None
    b, src = free.pop(), table[full_blocks]
    refcounts[src], refcounts[b] = refcounts[src] - 1, 1
    table[full_blocks] = b
    return b, slot, src


def ch10_append_helper(table, length, refcounts, free, block_size):
    def fresh():
        if not free:
            raise ValueError("out of blocks")
        block = free.pop()
        refcounts[block] = 1
        return block

    slot = length % block_size
    if not table or slot == 0:
        table.append(fresh())
        return table[-1], 0, None
    if refcounts[table[-1]] == 1:
        return table[-1], slot, None
    source = table[-1]
    table[-1] = fresh()
    refcounts[source] -= 1
    return table[-1], slot, source


def ch10_append_no_cow(table, length, refcounts, free, block_size):
    slot = length % block_size
    if slot == 0:
        if not free:
            raise ValueError
        b = free.pop()
        refcounts[b] = 1
        table.append(b)
        return b, 0, None
    return table[-1], slot, None


def ch10_append_keeps_count(table, length, refcounts, free, block_size):
    slot = length % block_size
    if slot == 0 or refcounts[table[-1]] > 1:
        if not free:
            raise ValueError
        b = free.pop()
        refcounts[b] = 1
        copied = table[-1] if slot else None
        if slot:
            table[-1] = b
        else:
            table.append(b)
        return b, slot, copied
    return table[-1], slot, None


def ch10_append_pop_front(table, length, refcounts, free, block_size):
    slot = length % block_size
    if slot and refcounts[table[-1]] == 1:
        return table[-1], slot, None
    if not free:
        raise ValueError
    b = free.pop(0)
    refcounts[b] = 1
    if slot == 0:
        table.append(b)
        return b, 0, None
    old, table[-1] = table[-1], b
    refcounts[old] -= 1
    return b, slot, old


def ch10_append_index_error(table, length, refcounts, free, block_size):
    # never checks the free list: pop() on an empty list
    slot = length % block_size
    if slot and refcounts[table[-1]] == 1:
        return table[-1], slot, None
    b = free.pop()
    refcounts[b] = 1
    if slot == 0:
        table.append(b)
        return b, 0, None
    old, table[-1] = table[-1], b
    refcounts[old] -= 1
    return b, slot, old


def ch10_append_copy_appended(table, length, refcounts, free, block_size):
    # on a copy, the new block is appended after the shared one instead of replacing it
    slot = length % block_size
    if slot and refcounts[table[-1]] == 1:
        return table[-1], slot, None
    if not free:
        raise ValueError
    b = free.pop()
    refcounts[b] = 1
    if slot:
        refcounts[table[-1]] -= 1
        old = table[-1]
        table.append(b)
        return b, slot, old
    table.append(b)
    return b, 0, None


def ch10_append_copies_full_shared(table, length, refcounts, free, block_size):
    # sharing tested before fullness: a full shared block is copied and replaced
    slot = length % block_size
    if table and refcounts[table[-1]] > 1:
        if not free:
            raise ValueError
        b, old = free.pop(), table[-1]
        refcounts[old] -= 1
        refcounts[b] = 1
        table[-1] = b
        return b, slot, old
    if slot == 0:
        if not free:
            raise ValueError
        b = free.pop()
        refcounts[b] = 1
        table.append(b)
        return b, 0, None
    return table[-1], slot, None


# --- 10.2 paged_window_attention --------------------------------------------------------------------


def ch10_paged_loop(queries, key_pool, value_pool, block_tables, lengths, window):
    # one sequence, one position at a time: the slow way, still correct
    batch, n_heads, head_dim = queries.shape
    n_kv, bs = key_pool.shape[1], key_pool.shape[2]
    out = torch.zeros_like(queries)
    for b in range(batch):
        n = int(lengths[b])
        positions = range(max(0, n - window), n)
        k = torch.stack([key_pool[int(block_tables[b, p // bs]), :, p % bs] for p in positions], 1)
        v = torch.stack([value_pool[int(block_tables[b, p // bs]), :, p % bs] for p in positions], 1)
        for h in range(n_heads):
            kv = h // (n_heads // n_kv)
            w = torch.softmax(k[kv] @ queries[b, h] / math.sqrt(head_dim), dim=0)
            out[b, h] = w @ v[kv]
    return out


def ch10_paged_online(queries, key_pool, value_pool, block_tables, lengths, window):
    # block by block, with an online softmax: a running max m, denominator l and sum acc
    batch, n_heads, head_dim = queries.shape
    n_kv, bs = key_pool.shape[1], key_pool.shape[2]
    group = n_heads // n_kv
    q = queries.view(batch, n_kv, group, head_dim) / math.sqrt(head_dim)
    m = torch.full((batch, n_kv, group), float("-inf"), dtype=queries.dtype)
    l = torch.zeros(batch, n_kv, group, dtype=queries.dtype)
    acc = torch.zeros_like(q)
    for j in range(block_tables.shape[1]):
        idx = block_tables[:, j]
        k, v = key_pool[idx.clamp(min=0)], value_pool[idx.clamp(min=0)]  # (batch, kv, bs, hd)
        s = torch.einsum("bkgd,bksd->bkgs", q, k)
        pos = (j * bs + torch.arange(bs))[None, :]
        valid = (pos < lengths[:, None]) & (pos + window >= lengths[:, None]) & (idx >= 0)[:, None]
        s = s.masked_fill(~valid[:, None, None, :], float("-inf"))
        m_new = torch.maximum(m, s.amax(-1))
        safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
        p = torch.exp(s - safe[..., None])
        corr = torch.exp(m - safe)
        l = l * corr + p.sum(-1)
        acc = acc * corr[..., None] + torch.einsum("bkgs,bksd->bkgd", p, v)
        m = m_new
    return (acc / l[..., None]).reshape(batch, n_heads, head_dim)


def ch10_paged_sdpa(queries, key_pool, value_pool, block_tables, lengths, window):
    batch, n_heads, head_dim = queries.shape
    n_blocks, n_kv, bs, _ = key_pool.shape
    flat_k = key_pool.permute(1, 0, 2, 3).reshape(n_kv, n_blocks * bs, head_dim)
    flat_v = value_pool.permute(1, 0, 2, 3).reshape(n_kv, n_blocks * bs, head_dim)
    slots = torch.arange(block_tables.shape[1] * bs)
    phys = block_tables.clamp(min=0)[:, slots // bs] * bs + slots % bs      # (batch, slots)
    k = flat_k[:, phys].transpose(0, 1)                                     # (batch, kv, slots, hd)
    v = flat_v[:, phys].transpose(0, 1)
    k, v = repeat_kv(k, n_heads // n_kv), repeat_kv(v, n_heads // n_kv)
    age = lengths[:, None] - 1 - slots[None, :]                             # 0 for the new token
    mask = ((age >= 0) & (age < window))[:, None, None, :]
    out = F.scaled_dot_product_attention(queries[:, :, None], k, v, attn_mask=mask)
    return out[:, :, 0]


def _window_mask(block_tables, lengths, bs, lo_shift=0, use_window=True, use_length=True):
    pos = torch.arange(block_tables.shape[1] * bs)[None, :]
    keep = torch.ones_like(pos, dtype=torch.bool).expand(block_tables.shape[0], -1)
    if use_length:
        keep = keep & (pos < lengths[:, None])
    if use_window:
        keep = keep & (pos >= lengths[:, None] - lo_shift)
    return keep


def _dense(queries, key_pool, value_pool, tables, keep, modulo=False, scale=True):
    g = queries.shape[1] // key_pool.shape[1]
    k = key_pool[tables].transpose(1, 2).flatten(2, 3)
    v = value_pool[tables].transpose(1, 2).flatten(2, 3)
    if modulo:
        k, v = k.repeat(1, g, 1, 1), v.repeat(1, g, 1, 1)
    else:
        k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    s = torch.einsum("bhd,bhsd->bhs", queries, k)
    if scale:
        s = s / math.sqrt(queries.shape[-1])
    s = s.masked_fill(~keep[:, None], float("-inf"))
    return torch.einsum("bhs,bhsd->bhd", s.softmax(-1), v)


def ch10_paged_window_plus_one(queries, key_pool, value_pool, block_tables, lengths, window):
    keep = _window_mask(block_tables, lengths, key_pool.shape[2], lo_shift=window + 1)
    return _dense(queries, key_pool, value_pool, block_tables.clamp(min=0), keep)


def ch10_paged_window_minus_one(queries, key_pool, value_pool, block_tables, lengths, window):
    keep = _window_mask(block_tables, lengths, key_pool.shape[2], lo_shift=window - 1)
    return _dense(queries, key_pool, value_pool, block_tables.clamp(min=0), keep)


def ch10_paged_reads_minus_one(queries, key_pool, value_pool, block_tables, lengths, window):
    # trusts the table: −1 entries index the pool's last block, only the length is masked
    keep = _window_mask(block_tables, lengths, key_pool.shape[2], use_window=False)
    return _dense(queries, key_pool, value_pool, block_tables, keep)


def ch10_paged_modulo(queries, key_pool, value_pool, block_tables, lengths, window):
    keep = _window_mask(block_tables, lengths, key_pool.shape[2], lo_shift=window)
    return _dense(queries, key_pool, value_pool, block_tables.clamp(min=0), keep, modulo=True)


def ch10_paged_unscaled(queries, key_pool, value_pool, block_tables, lengths, window):
    return ch10_paged_sdpa(queries * math.sqrt(queries.shape[-1]), key_pool, value_pool, block_tables,
                           lengths, window)


def ch10_paged_no_length(queries, key_pool, value_pool, block_tables, lengths, window):
    keep = _window_mask(block_tables, lengths, key_pool.shape[2], lo_shift=window, use_length=False)
    return _dense(queries, key_pool, value_pool, block_tables.clamp(min=0), keep)


def ch10_paged_float64(queries, key_pool, value_pool, block_tables, lengths, window):
    return ch10_paged_loop(queries.double(), key_pool.double(), value_pool.double(), block_tables, lengths,
                           window)


def ch10_paged_unwindowed_clamped(queries, key_pool, value_pool, block_tables, lengths, window):
    # −1 clamped to block 0 and no window: another sequence's keys are attended
    keep = _window_mask(block_tables, lengths, key_pool.shape[2], use_window=False)
    return _dense(queries, key_pool, value_pool, block_tables.clamp(min=0), keep)


# --- 10.3 continuous_speedup ------------------------------------------------------------------------
# Written from the exercise's text alone: an event-driven simulation, a per-step one, and one that
# tracks every request's state.

from riverbank.grading.exercises.ch10 import WORKLOAD  # noqa: E402  (the list printed in the exercise)


def _static(workload, batch=8, wait_first=False, extra=0):
    t = 0
    for i in range(0, len(workload), batch):
        group = workload[i:i + batch]
        arrive = [a for a, _, _ in group]
        t = max(t, min(arrive) if wait_first else max(arrive)) + max(o for *_, o in group) + extra
    return t


def _continuous_heap(workload, n_blocks=80, bs=16, batch=8, check=True, floor=False, skip=False, extra=0):
    queue = list(enumerate(workload))
    leaving = []                              # heap of (leaves before step, blocks)
    free, t, finish = n_blocks, 0, 0
    while queue or leaving:
        while leaving and leaving[0][0] <= t:
            free += heapq.heappop(leaving)[1]
        k = 0
        while k < len(queue) and len(leaving) < batch:
            _, (a, p, o) = queue[k]
            if a > t:
                break
            need = (p + o) // bs if floor else -(-(p + o) // bs)
            if check and need > free:
                if skip:
                    k += 1
                    continue
                break
            queue.pop(k)
            free -= need if check else 0
            heapq.heappush(leaving, (t + o + extra, need))
            finish = max(finish, t + o + extra)
        t += 1
    return finish


def ch10_speedup_heap():
    tokens = sum(o for *_, o in WORKLOAD)
    return round((tokens / _continuous_heap(WORKLOAD)) / (tokens / _static(WORKLOAD)), 4)


def ch10_speedup_states():
    remaining = {i: o for i, (_, _, o) in enumerate(WORKLOAD)}
    held, waiting, running, free, t, last = {}, list(range(len(WORKLOAD))), [], 80, 0, 0
    while waiting or running:
        for i in [i for i in running if remaining[i] == 0]:
            running.remove(i)
            free += held.pop(i)
        while waiting and WORKLOAD[waiting[0]][0] <= t and len(running) < 8:
            _, p, o = WORKLOAD[waiting[0]]
            if math.ceil((p + o) / 16) > free:
                break
            i = waiting.pop(0)
            held[i] = math.ceil((p + o) / 16)
            free -= held[i]
            running.append(i)
        for i in running:
            remaining[i] -= 1
        if running:
            last = t
        t += 1
    static = _static(WORKLOAD)
    return round(static / (last + 1), 4)


def ch10_speedup_unrounded():
    return _static(WORKLOAD) / _continuous_heap(WORKLOAD)


def ch10_speedup_padded():
    tokens = sum(o for *_, o in WORKLOAD)
    padded = sum(len(WORKLOAD[i:i + 8]) * max(o for *_, o in WORKLOAD[i:i + 8]) for i in range(0, 32, 8))
    return round((tokens / _continuous_heap(WORKLOAD)) / (padded / _static(WORKLOAD)), 4)


def ch10_speedup_no_block_check():
    return round(_static(WORKLOAD) / _continuous_heap(WORKLOAD, check=False), 4)


def ch10_speedup_skips_ahead():
    return round(_static(WORKLOAD) / _continuous_heap(WORKLOAD, skip=True), 4)


def ch10_speedup_floor():
    return round(_static(WORKLOAD) / _continuous_heap(WORKLOAD, floor=True), 4)


def ch10_speedup_static_early():
    return round(_static(WORKLOAD, wait_first=True) / _continuous_heap(WORKLOAD), 4)


def ch10_speedup_inverted():
    return round(_continuous_heap(WORKLOAD) / _static(WORKLOAD), 4)


# --- 10.4 blocks_to_free ----------------------------------------------------------------------------


def ch10_free_count(table, length, window, block_size):
    n = max(0, (length - window + 1) // block_size)
    return table[:n]


def ch10_free_loop(table, length, window, block_size):
    out = []
    for j, block in enumerate(table):
        last_position = j * block_size + block_size - 1
        if length - last_position >= window:      # the next token is more than window − 1 later
            out.append(block)
    return out


def ch10_free_tensor(table, length, window, block_size):
    t = torch.tensor(table, dtype=torch.long)
    ends = (torch.arange(len(table)) + 1) * block_size
    return t[ends <= length - window + 1]


def ch10_free_one_more_kept(table, length, window, block_size):
    return table[:max(0, (length - window) // block_size)]


def ch10_free_too_early(table, length, window, block_size):
    return table[:max(0, (length - window + 2) // block_size)]


def ch10_free_first_position(table, length, window, block_size):
    return [b for j, b in enumerate(table) if j * block_size < length - window + 1]


def ch10_free_logical(table, length, window, block_size):
    return list(range(max(0, (length - window + 1) // block_size)))


def ch10_free_none(table, length, window, block_size):
    return []


def ch10_free_kept_ones(table, length, window, block_size):
    n = max(0, (length - window + 1) // block_size)
    return table[n:]


CORRECT = {
    "10.1": [ch10_append_branches, ch10_append_divmod, ch10_append_helper],
    "10.2": [ch10_paged_loop, ch10_paged_online, ch10_paged_sdpa],
    "10.3": [ch10_speedup_heap, ch10_speedup_states, ch10_speedup_unrounded],
    "10.4": [ch10_free_count, ch10_free_loop, ch10_free_tensor],
}

WRONG = {
    "10.1": [
        (ch10_append_no_cow, "shared block was written"),
        (ch10_append_keeps_count, "decrease by 1"),
        (ch10_append_pop_front, "free.pop()"),
        (ch10_append_index_error, "raise ValueError"),
        (ch10_append_copies_full_shared, "full shared block stays shared"),
        (ch10_append_copy_appended, None),
    ],
    "10.2": [
        (ch10_paged_window_plus_one, "window + 1 keys"),
        (ch10_paged_window_minus_one, "window − 1 keys"),
        (ch10_paged_reads_minus_one, "pool's last block"),
        (ch10_paged_modulo, "h % n_kv_heads"),
        (ch10_paged_unscaled, "√head_dim"),
        (ch10_paged_no_length, "no length mask"),
        (ch10_paged_float64, None),
        (ch10_paged_unwindowed_clamped, None),
    ],
    "10.3": [
        (ch10_speedup_padded, "padding is not throughput"),
        (ch10_speedup_no_block_check, "without checking"),
        (ch10_speedup_skips_ahead, "first come, first served"),
        (ch10_speedup_floor, "ceil"),
        (ch10_speedup_static_early, "waits for its last request"),
        (ch10_speedup_inverted, None),
    ],
    "10.4": [
        (ch10_free_one_more_kept, "outside the window"),
        (ch10_free_too_early, "still in the window"),
        (ch10_free_first_position, "last position is old"),
        (ch10_free_logical, "not indices j"),
        (ch10_free_none, None),
        (ch10_free_kept_ones, None),
    ],
}
