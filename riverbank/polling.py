"""Waiting for a kernel's messages in short slices, so that a missed wake-up costs a second.

jupyter_client's asyncio channels wait on a ZeroMQ socket's file descriptor, which is
edge-triggered: if the edge is consumed elsewhere, a message that has arrived does not wake the
waiter, and it is found only when the wait times out and the socket is checked once more. A run
then sits idle, kernel and client both in epoll, for exactly its time limit, and goes on as if
nothing happened (seen in ``make colab`` on 2026-11-25 and 2026-12-01, 300 s each). Waiting in
slices of a second checks the socket every second instead, whatever the overall limit.

Used by the grader's worker and by ``make colab``'s runner. Standard library only.
"""

from __future__ import annotations

import time
from queue import Empty

STEP = 1.0  # seconds per slice


def sliced(get_msg, step: float = STEP):
    """``get_msg(timeout=...)`` (an async channel's) made to wait at most ``step`` at a time."""

    async def get_msg_in_slices(timeout: float | None = None, **kwargs):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = step if deadline is None else min(step, max(deadline - time.monotonic(), 0.0))
            try:
                return await get_msg(timeout=left, **kwargs)
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    get_msg_in_slices.__wrapped__ = get_msg
    return get_msg_in_slices


def slice_waits(kernel_client, step: float = STEP) -> None:
    """Make the shell and IOPub channels of an async kernel client wait in slices (idempotent)."""
    for channel in (kernel_client.shell_channel, kernel_client.iopub_channel):
        if not hasattr(channel.get_msg, "__wrapped__"):
            channel.get_msg = sliced(channel.get_msg, step)
