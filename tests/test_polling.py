"""riverbank.polling: a wait for a kernel's message that misses its wake-up recovers within a slice."""

from __future__ import annotations

import asyncio
import time
from queue import Empty

import pytest

from riverbank.polling import slice_waits, sliced


class LostWakeup:
    """A channel whose first wait misses the message that is already there (a consumed edge):
    it sleeps out its whole timeout and raises Empty; the next wait finds the message."""

    def __init__(self):
        self.calls = []

    async def get_msg(self, timeout=None):
        self.calls.append(timeout)
        if len(self.calls) == 1:
            await asyncio.sleep(timeout if timeout is not None else 3600)
            raise Empty
        return {"msg": "here"}


def test_a_missed_wakeup_costs_one_slice_not_the_whole_limit():
    channel = LostWakeup()
    start = time.monotonic()
    msg = asyncio.run(asyncio.wait_for(sliced(channel.get_msg, step=0.2)(timeout=None), 10))
    assert msg == {"msg": "here"}
    assert time.monotonic() - start < 1.0  # unsliced, this wait would never end
    assert channel.calls == [0.2, 0.2]


def test_the_overall_limit_still_holds():
    async def never(timeout=None):
        await asyncio.sleep(timeout)
        raise Empty

    start = time.monotonic()
    with pytest.raises(Empty):
        asyncio.run(sliced(never, step=0.2)(timeout=0.7))
    assert 0.65 <= time.monotonic() - start < 1.2


def test_slicing_a_client_twice_wraps_once():
    class Channel:
        async def get_msg(self, timeout=None):
            return timeout

    class Client:
        shell_channel, iopub_channel = Channel(), Channel()

    client = Client()
    slice_waits(client, step=0.5)
    first = client.shell_channel.get_msg
    slice_waits(client)
    assert client.shell_channel.get_msg is first
    assert asyncio.run(client.iopub_channel.get_msg(timeout=3)) == 0.5
