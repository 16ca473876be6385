"""`Outbound`: the write path WebSocket and SSE share (drain on backlog, finish, evict)."""

from __future__ import annotations

import asyncio

from gateway.outbound import Item, Outbound, Subscriber
from tests.support import async_wait_until


class Recorder(Outbound):
    """Writes batches into a list; `blocked` holds writes to model a slow socket."""

    __slots__ = ("blocked", "ended", "evictions", "written")
    transport = "ws"

    def __init__(self, limit: int = 4) -> None:
        super().__init__(Subscriber("ws", limit))
        self.written: list[list[Item]] = []
        self.blocked = asyncio.Event()
        self.blocked.set()
        self.ended = False
        self.evictions = 0

    async def write_batch(self, items: list[Item]) -> int | None:
        await self.blocked.wait()
        self.written.append(items)
        return 0

    async def drained(self) -> None:
        if self.finishing:
            self.ended = True

    def evicted(self) -> None:
        self.evictions += 1


async def test_a_backlog_is_drained_in_batches_and_the_task_ends() -> None:
    out = Recorder()
    out.attach(None)
    out.subscriber.put(b"a")
    out.subscriber.put(b"b")
    assert out.drainer is not None  # started by the first item; the second joins its batch
    await async_wait_until(lambda: out.drainer is None, timeout=5)
    assert out.written == [[b"a", b"b"]]


async def test_finish_ends_after_what_is_queued() -> None:
    out = Recorder()
    out.attach(None)
    out.subscriber.put(b"a")
    out.finish()
    await async_wait_until(lambda: out.ended, timeout=5)
    assert out.written == [[b"a"]]


async def test_a_slow_consumer_is_evicted_once_and_its_writer_stopped() -> None:
    out = Recorder(limit=2)
    out.attach(None)
    out.blocked.clear()
    for item in (b"1", b"2", b"3", b"4", b"5"):
        out.subscriber.put(item)
    assert out.subscriber.overflowed and out.evictions == 1
    drainer = out.drainer
    await out.stop()
    assert drainer is not None and drainer.cancelled()
    assert out.written == []
    out.kick()  # nothing more is drained for an evicted subscriber
    assert out.drainer is drainer


async def test_a_direct_sink_skips_the_queue() -> None:
    out = Recorder()
    sent: list[Item] = []
    out.attach(lambda item: sent.append(item) is None)
    out.subscriber.put(b"x")
    assert sent == [b"x"] and out.drainer is None
