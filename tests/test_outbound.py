"""`Outbound`: the write path WebSocket and SSE share (drain on backlog, finish, evict)."""

from __future__ import annotations

import asyncio

from gateway.events import Event
from gateway.outbound import ChannelState, DueWrites, Item, Outbound, Subscriber
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


class Socket:
    """A sink that records each write (a list of items) and can refuse, like a paused socket."""

    def __init__(self) -> None:
        self.writes: list[list[Item]] = []
        self.open = True

    def __call__(self, items: list[Item]) -> bool:
        if not self.open:
            return False
        self.writes.append(list(items))
        return True


async def test_a_direct_sink_skips_the_queue() -> None:
    out = Recorder()
    socket = Socket()
    out.attach(socket)
    out.subscriber.put(b"x")  # no hub's `DueWrites`: written at once
    assert socket.writes == [[b"x"]] and out.drainer is None


def coalescing(limit: int = 4) -> tuple[Recorder, Socket]:
    out = Recorder(limit)
    socket = Socket()
    out.attach(socket)
    out.subscriber.due_writes = DueWrites()
    return out, socket


async def test_items_due_in_one_loop_iteration_go_out_in_one_write() -> None:
    out, socket = coalescing()
    for item in (b"a", b"b", b"c"):
        out.subscriber.put(item)
    assert socket.writes == []  # due, not written yet: the iteration is still running
    await async_wait_until(lambda: bool(socket.writes), timeout=5)
    assert socket.writes == [[b"a", b"b", b"c"]]
    out.subscriber.put(b"d")  # a later iteration's single item: a write of its own
    await async_wait_until(lambda: len(socket.writes) == 2, timeout=5)
    assert socket.writes[1] == [b"d"] and out.written == [] and out.drainer is None


async def test_items_due_never_exceed_the_limit_unwritten() -> None:
    out, socket = coalescing(limit=3)
    for item in (b"1", b"2", b"3", b"4"):
        out.subscriber.put(item)
    assert socket.writes == [[b"1", b"2", b"3"]]  # the limit-th is written at once
    await async_wait_until(lambda: len(socket.writes) == 2, timeout=5)
    assert socket.writes[1] == [b"4"] and not out.subscriber.overflowed


async def test_a_refused_write_goes_to_the_queue_in_order() -> None:
    out, socket = coalescing(limit=10)
    socket.open = False  # paused by flow control when the iteration ends
    out.blocked.clear()  # and the drain's send waits for the socket
    for item in (b"a", b"b"):
        out.subscriber.put(item)
    await async_wait_until(lambda: out.drainer is not None, timeout=5)
    socket.open = True
    out.subscriber.put(b"c")  # the socket would take it, but it must not overtake the backlog
    out.blocked.set()
    await async_wait_until(lambda: sum(map(len, out.written)) == 3, timeout=5)
    assert [item for batch in out.written for item in batch] == [b"a", b"b", b"c"]
    assert socket.writes == []


async def test_a_queued_reply_goes_after_the_items_due_before_it() -> None:
    out, socket = coalescing()
    out.subscriber.put(b"event")
    out.subscriber.put(b"reply", direct=False)
    assert socket.writes == [[b"event"]]  # written first, then the reply queued for the drain
    await async_wait_until(lambda: bool(out.written), timeout=5)
    assert out.written == [[b"reply"]]


async def test_finish_writes_what_is_due_before_ending() -> None:
    out, socket = coalescing()
    out.subscriber.put(b"last")
    out.finish()
    await async_wait_until(lambda: out.ended, timeout=5)
    assert [*socket.writes, *out.written] == [[b"last"]]


async def test_an_evicted_subscriber_drops_what_was_due() -> None:
    """A client that stops reading mid-replay is cut off by live events passed over; what was
    due for it then is dropped with the queue, not written to a connection being evicted."""
    out, socket = coalescing(limit=2)
    writes = out.subscriber.due_writes
    assert writes is not None
    out.subscriber.put(b"1")
    state = ChannelState(None)
    for n in range(1, 4):
        event = Event(b"{}", id=f"{n}-0", channel="room:r", type="t")
        out.subscriber.pass_over(state, event)
    assert out.subscriber.overflowed and out.evictions == 1
    assert out.subscriber.due is None and out.subscriber.queue == []
    await async_wait_until(lambda: not writes.subscribers, timeout=5)
    assert socket.writes == []
