"""After the bus reconnects, what live delivery missed is recovered from history, in order.

The race: once the new pub/sub connection is subscribed, live events flow again while the hub
still reads the missed ones from history. A live event delivered first moves each subscriber
past the missed ones, which are then dropped as already seen: a silent hole in the stream
(`tests/test_faults.py::test_redis_killed_mid_job_loses_nothing` lost events this way).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection

import pytest
import redis.asyncio as aioredis

from gateway.backends.bundle import Backend
from gateway.backends.memory import open_memory
from gateway.backends.redis import open_redis
from gateway.backends.redis_bus import RedisBus
from gateway.events import Event
from gateway.hub import Hub
from gateway.outbound import Subscriber
from gateway.settings import Settings
from tests.conftest import make_settings


def received(subscriber: Subscriber) -> list[str]:
    return [item.id for item in subscriber.queue if isinstance(item, Event)]


async def test_live_event_ahead_of_the_recovery_read_loses_nothing() -> None:
    """Deterministic: the backend reports the reconnect, a live event arrives before the hub
    has read the history, then the recovery runs."""
    backend = open_memory(Settings())
    hub = Hub(backend.bus)
    subscriber = Subscriber("ws", 1000)
    await hub.attach(subscriber, "room:r", None)
    first = await backend.bus.publish("room:r", "message", 1)
    await backend.bus.unsubscribe("room:r")  # the bus connection is down: live delivery stops
    missed = [await backend.bus.publish("room:r", "message", n) for n in (2, 3)]
    await backend.bus.subscribe("room:r")  # reconnected and re-subscribed
    recovery = hub.recover()  # what the backend calls right then
    live = await backend.bus.publish("room:r", "message", 4)  # live again, ahead of the recovery
    await recovery
    expected = [e.id for e in (first, *missed, live) if e is not None]
    assert received(subscriber) == expected


async def test_a_recovery_of_some_channels_holds_back_only_them() -> None:
    """A Cluster shard's reader came back: its channels are re-read, the others stay live
    (held back until a recovery that never concerned them, they would go quiet for it)."""
    backend = open_memory(Settings())
    hub = Hub(backend.bus)
    on_a, on_b = Subscriber("ws", 1000), Subscriber("ws", 1000)
    await hub.attach(on_a, "room:a", None)
    await hub.attach(on_b, "room:b", None)
    await backend.bus.unsubscribe("room:a")  # room:a's shard is down
    missed = await backend.bus.publish("room:a", "message", 1)
    await backend.bus.subscribe("room:a")
    recovery = hub.recover(["room:a"])
    live_b = await backend.bus.publish("room:b", "message", 2)
    assert live_b is not None and received(on_b) == [live_b.id]  # not held back
    live_a = await backend.bus.publish("room:a", "message", 3)
    assert received(on_a) == []  # held until room:a's history is read
    await recovery
    assert received(on_a) == [e.id for e in (missed, live_a) if e is not None]


@pytest.fixture
async def bus_and_publisher(redis_url: str) -> AsyncIterator[tuple[Backend, Backend]]:
    backends = [open_redis(make_settings(redis_url)) for _ in range(2)]
    for backend in backends:
        await backend.start()
    yield backends[0], backends[1]
    for backend in backends:
        await backend.close()


async def test_pubsub_connection_killed_repeatedly_while_publishing_loses_nothing(
    redis_url: str, bus_and_publisher: tuple[Backend, Backend]
) -> None:
    """A real redis-server drops the hub's pub/sub connection (CLIENT KILL) twenty times while
    another connection publishes an event every millisecond: every event arrives, in order."""
    backend, publisher = bus_and_publisher
    hub = Hub(backend.bus)
    bus = backend.bus
    assert isinstance(bus, RedisBus)
    subscriber = Subscriber("ws", 1_000_000)
    await hub.attach(subscriber, "room:storm", None)
    admin = aioredis.Redis.from_url(redis_url)
    published: list[str] = []
    stop = asyncio.Event()

    async def publish_forever() -> None:
        n = 0
        while not stop.is_set():
            event = await publisher.bus.publish("room:storm", "message", n)
            assert event is not None
            published.append(event.id)
            n += 1
            await asyncio.sleep(0.001)

    async def wait_live(reconnects: int) -> None:
        deadline = time.monotonic() + 10
        while bus.reconnects <= reconnects or not await bus.ping():
            assert time.monotonic() < deadline, "the bus did not reconnect within 10 s"
            await asyncio.sleep(0.01)

    publishing = asyncio.create_task(publish_forever())
    try:
        for _ in range(20):
            reconnects = bus.reconnects
            await asyncio.sleep(0.05)
            await admin.client_kill_filter(_type="pubsub")
            await wait_live(reconnects)
    finally:
        stop.set()
        await publishing
        await admin.aclose()
    deadline = time.monotonic() + 10
    while received(subscriber)[-1:] != published[-1:]:
        assert time.monotonic() < deadline, "the last event never arrived"
        await asyncio.sleep(0.01)
    got = received(subscriber)
    assert len(got) == len(published)
    assert got == published


async def test_every_recovery_listener_is_called_after_a_reconnect(
    redis_url: str, bus_and_publisher: tuple[Backend, Backend]
) -> None:
    """A bus has room for more than the hub: each recovery listener hears of the reconnect."""
    bus = bus_and_publisher[0].bus
    called: list[str] = []
    both = asyncio.Event()

    def recovery(name: str) -> Callable[[Collection[str] | None], Awaitable[None]]:
        def recover(_channels: Collection[str] | None) -> Awaitable[None]:
            called.append(name)
            if len(called) == 2:
                both.set()
            return asyncio.sleep(0)

        return recover

    bus.add_recovery_listener(recovery("hub"))
    bus.add_recovery_listener(recovery("bridge"))
    await bus.subscribe("room:reconnect")  # returns once the reader is connected and confirmed
    admin = aioredis.Redis.from_url(redis_url)
    try:
        await admin.client_kill_filter(_type="pubsub")
        await asyncio.wait_for(both.wait(), 10)
    finally:
        await admin.aclose()
    assert sorted(called) == ["bridge", "hub"]
