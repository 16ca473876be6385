"""Paged replay in the hub: a page at a time as the connection writes, shared between subscribers,
counted against the slow-consumer limit, with gaps signalled mid-replay (memory backend)."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.backends.bundle import Backend
from gateway.backends.bus import History
from gateway.backends.memory import open_memory
from gateway.events import Event
from gateway.hub import REPLAY_FIRST_PAGE, REPLAY_PAGE_BYTES, Hub
from gateway.outbound import Item, Subscriber
from gateway.settings import Retention, Settings
from tests.support import async_wait_until


def events_of(items: list[Item]) -> list[Event]:
    return [item for item in items if isinstance(item, Event)]


async def filled(channel: str, count: int, settings: Settings | None = None) -> Backend:
    backend = open_memory(settings or Settings())
    for n in range(count):
        await backend.bus.publish(channel, "message", {"n": n})
    return backend


async def drain_all(subscriber: Subscriber, until: int, timeout: float = 5.0) -> list[Item]:
    """Read like a connection does: take what is queued, wait, take again."""
    items: list[Item] = []

    def more() -> bool:
        items.extend(subscriber.take())
        return len(events_of(items)) >= until

    await async_wait_until(more, timeout, f"{until} events")
    return items


async def test_history_is_queued_a_page_at_a_time_as_it_is_written() -> None:
    backend = await filled("room:paged", 300)
    hub = Hub(backend.bus)
    subscriber = Subscriber("ws", 1000)
    await hub.attach(subscriber, "room:paged", None)
    first = subscriber.take()  # as a connection's drain task does: take, then write
    subscriber.writing = True
    assert len(first) == REPLAY_FIRST_PAGE
    await asyncio.sleep(0.05)  # the replay may run now: nothing more until the write is done
    assert subscriber.queue == []
    subscriber.writing = False
    await async_wait_until(lambda: bool(subscriber.queue), 5, "the second page")
    rest = await drain_all(subscriber, 300 - REPLAY_FIRST_PAGE)
    data = [e.to_dict()["data"]["n"] for e in events_of(first + rest)]
    assert data == list(range(300))
    await backend.bus.publish("room:paged", "message", {"n": "live"})
    assert [e.to_dict()["data"] for e in events_of(subscriber.take())] == [{"n": "live"}]


async def test_pages_of_large_events_hold_fewer_of_them() -> None:
    settings = Settings(retention={"room": Retention(500, 3600, 64 * 1024 * 1024)})
    backend = open_memory(settings)
    for n in range(100):
        await backend.bus.publish("room:large", "message", {"n": n, "pad": "x" * 60_000})
    hub = Hub(backend.bus)
    subscriber = Subscriber("ws", 1000)
    await hub.attach(subscriber, "room:large", None)
    first = events_of(subscriber.take())
    await async_wait_until(lambda: bool(subscriber.queue), 5, "the second page")
    second = subscriber.take()
    assert len(first) == REPLAY_FIRST_PAGE
    assert len(second) == REPLAY_PAGE_BYTES // len(first[0].envelope) == 4
    await hub.detach_all(subscriber)


async def test_live_events_during_a_later_page_read_are_neither_lost_nor_doubled() -> None:
    backend = await filled("room:seam2", 40)
    hub = Hub(backend.bus)
    original = backend.bus.history
    reads = 0

    async def history_with_publish(channel: str, since: str | None, limit: int = 1000) -> History:
        nonlocal reads
        reads += 1
        result = await original(channel, since, limit)
        if reads == 2:  # while the second (and last) page is read
            await backend.bus.publish("room:seam2", "message", {"n": "during"})
        return result

    backend.bus.history = history_with_publish  # type: ignore[method-assign]
    subscriber = Subscriber("ws", 1000)
    await hub.attach(subscriber, "room:seam2", None)
    items = await drain_all(subscriber, 41)
    await backend.bus.publish("room:seam2", "message", {"n": "after"})
    items += subscriber.take()
    data = [e.to_dict()["data"]["n"] for e in events_of(items)]
    assert data == [*range(40), "during", "after"]


async def test_a_subscriber_that_stops_reading_mid_replay_is_a_slow_consumer() -> None:
    backend = await filled("room:stalled", 200)
    hub = Hub(backend.bus)
    stalled = Subscriber("ws", 50)
    evicted: list[bool] = []
    stalled.on_overflow = lambda: evicted.append(True)
    await hub.attach(stalled, "room:stalled", None)  # its first page is never taken
    for n in range(34):
        await backend.bus.publish("room:stalled", "message", {"live": n})
    assert not evicted, "16 queued + 34 live events not replayed yet: 50 pending, the limit"
    await backend.bus.publish("room:stalled", "message", {"live": 34})
    assert evicted == [True] and stalled.overflowed and stalled.queue == []
    await hub.detach_all(stalled)


async def test_live_events_the_replay_caught_up_with_do_not_count() -> None:
    backend = await filled("room:reading", 20)
    hub = Hub(backend.bus)
    reader = Subscriber("ws", 50)  # pages of at most 25: half the limit
    await hub.attach(reader, "room:reading", None)
    seen = reader.take()  # the first page, 16 events
    reader.writing = True  # being written
    for n in range(30):
        await backend.bus.publish("room:reading", "message", {"live": n})
    reader.writing = False  # written: 30 live events not replayed yet, none pending
    await async_wait_until(lambda: len(reader.queue) == 25, 5, "the second page")
    # That page held 4 stored and 21 of the live events: 25 pending, 9 live not replayed yet.
    for n in range(30, 46):
        await backend.bus.publish("room:reading", "message", {"live": n})
    assert not reader.overflowed, "25 queued + 25 live not replayed yet is within the limit"
    seen += await drain_all(reader, 66 - len(events_of(seen)))
    data = [e.to_dict()["data"] for e in events_of(seen)]
    assert data == [*({"n": n} for n in range(20)), *({"live": n} for n in range(46))]


async def test_history_trimmed_ahead_of_a_replay_is_signalled_as_a_gap() -> None:
    settings = Settings(retention={"room": Retention(100, 3600, 1 << 20)})
    backend = await filled("room:overtaken", 100, settings)
    hub = Hub(backend.bus)
    subscriber = Subscriber("sse", 10_000)
    await hub.attach(subscriber, "room:overtaken", None)
    first = events_of(subscriber.take())
    for n in range(150):  # trims everything the replay has not read yet
        await backend.bus.publish("room:overtaken", "message", {"n": 100 + n})
    items = await drain_all(subscriber, 100)
    gaps = [item for item in items if isinstance(item, bytes) and b'"type":"gap"' in item]
    assert len(gaps) == 1 and first[-1].id.encode() in gaps[0]
    data = [e.to_dict()["data"]["n"] for e in first + events_of(items)]
    assert data == [*range(REPLAY_FIRST_PAGE), *range(150, 250)]


async def test_subscribers_replaying_from_the_same_place_share_reads_and_events() -> None:
    backend = await filled("room:shared", 300)
    hub = Hub(backend.bus)
    subscribers = [Subscriber("ws", 1000) for _ in range(5)]
    await asyncio.gather(*(hub.attach(s, "room:shared", None) for s in subscribers))
    batches: list[list[Event]] = [[] for _ in subscribers]

    def all_read() -> bool:
        for subscriber, batch in zip(subscribers, batches, strict=True):
            batch += events_of(subscriber.take())
        return all(len(batch) == 300 for batch in batches)

    await async_wait_until(all_read, 5, "every subscriber's replay")
    ids = [[e.id for e in batch] for batch in batches]
    assert all(batch_ids == ids[0] for batch_ids in ids)
    # Pages of 16, 100, 100, then the last 84: the first three are read once and their Event
    # objects (with their encoded frames) shared; the last page, which may still grow, is
    # read by each subscriber after it started holding live events.
    first = batches[0][:216]
    assert all(e is f for batch in batches[1:] for e, f in zip(batch[:216], first, strict=True))
    assert hub.pages.reads == 3 + len(subscribers), hub.pages.reads


async def test_a_detached_replay_stops_and_holds_nothing() -> None:
    backend = await filled("room:left", 300)
    hub = Hub(backend.bus)
    subscriber = Subscriber("ws", 1000)
    await hub.attach(subscriber, "room:left", None)
    state: Any = subscriber.channels["room:left"]
    replay = state.replay
    assert replay is not None
    await hub.detach_all(subscriber)
    await asyncio.gather(replay, return_exceptions=True)
    assert replay.done() and hub.subscriber_count() == 0


async def test_a_subscriber_that_joined_anothers_read_of_the_last_page_reads_it_again() -> None:
    """The last page may have grown after the read was sent, while the joiner was not yet
    holding live events: it must not go live on that page alone."""
    backend = await filled("room:joined", 40)
    hub = Hub(backend.bus)
    a, b = Subscriber("ws", 1000), Subscriber("ws", 1000)
    await hub.attach(a, "room:joined", None)
    await hub.attach(b, "room:joined", None)
    original = backend.bus.history
    gate = asyncio.Event()

    async def held_history(channel: str, since: str | None, limit: int = 1000) -> History:
        result = await original(channel, since, limit)
        if not gate.is_set():
            await gate.wait()  # the answer is on its way back
        return result

    backend.bus.history = held_history  # type: ignore[method-assign]
    seen_a = a.take()
    await async_wait_until(lambda: hub.pages.reads == 2, 5, "a's read of the last page")
    await backend.bus.publish("room:joined", "message", {"n": "after the read"})  # b passes it over
    seen_b = b.take()  # b's next read is a's, still in flight: b joins it
    for _ in range(5):
        await asyncio.sleep(0)
    assert hub.pages.reads == 2
    gate.set()
    seen_a += await drain_all(a, 41 - len(events_of(seen_a)))
    seen_b += await drain_all(b, 41 - len(events_of(seen_b)))
    for seen in (seen_a, seen_b):
        assert [e.to_dict()["data"]["n"] for e in events_of(seen)] == [*range(40), "after the read"]
