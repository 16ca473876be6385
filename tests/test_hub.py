"""The hub: one backend subscription per channel, shared frames, seamless replay-to-live."""

from __future__ import annotations

import asyncio

from gateway.backends.memory import MemoryBus, MemoryJobQueue, MemoryJobStore, open_memory
from gateway.hub import Hub
from gateway.outbound import Subscriber
from gateway.settings import Settings


class CountingBus(MemoryBus):
    def __init__(self) -> None:
        super().__init__(Settings(), MemoryJobStore(), MemoryJobQueue())
        self.calls: list[tuple[str, str]] = []

    async def subscribe(self, channel: str) -> None:
        self.calls.append(("subscribe", channel))
        await super().subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        self.calls.append(("unsubscribe", channel))
        await super().unsubscribe(channel)


async def test_backend_subscription_is_refcounted_per_channel() -> None:
    bus = CountingBus()
    hub = Hub(bus)
    subscribers = [Subscriber("ws", 100) for _ in range(3)]
    await asyncio.gather(*(hub.attach(s, "room:a", None) for s in subscribers))
    assert bus.calls == [("subscribe", "room:a")]
    await hub.detach(subscribers[0], "room:a")
    await hub.detach(subscribers[1], "room:a")
    assert bus.calls == [("subscribe", "room:a")]
    await hub.detach(subscribers[2], "room:a")
    assert bus.calls == [("subscribe", "room:a"), ("unsubscribe", "room:a")]
    assert hub.subscriber_count() == 0


async def test_every_subscriber_gets_the_same_frame_bytes() -> None:
    backend = open_memory(Settings())
    hub = Hub(backend.bus)
    ws = [Subscriber("ws", 100) for _ in range(2)]
    sse = [Subscriber("sse", 100) for _ in range(2)]
    for subscriber in ws + sse:
        await hub.attach(subscriber, "room:frames", None)
    await backend.bus.publish("room:frames", "message", {"x": 1})
    items = [s.take() for s in ws + sse]
    events = [batch[0] for batch in items]
    assert all(event is events[0] for event in events), "one Event object for all subscribers"
    frames = {id(e.ws_frame) for e in events}  # type: ignore[union-attr]
    assert len(frames) == 1, "the WebSocket frame is encoded once"
    assert len({id(e.sse_frame) for e in events}) == 1  # type: ignore[union-attr]


async def test_live_events_during_replay_are_neither_lost_nor_doubled() -> None:
    backend = open_memory(Settings())
    hub = Hub(backend.bus)
    for n in range(5):
        await backend.bus.publish("room:seam", "message", n)
    subscriber = Subscriber("ws", 1000)
    original_history = backend.bus.history

    async def history_with_publish(channel: str, since: str | None, limit: int = 1000):  # type: ignore[no-untyped-def]
        result = await original_history(channel, since, limit)
        await backend.bus.publish("room:seam", "message", "during replay")
        return result

    backend.bus.history = history_with_publish  # type: ignore[method-assign]
    await hub.attach(subscriber, "room:seam", None)
    backend.bus.history = original_history  # type: ignore[method-assign]
    await backend.bus.publish("room:seam", "message", "after")
    datas = [item.to_dict()["data"] for item in subscriber.take()]  # type: ignore[union-attr]
    assert datas == [0, 1, 2, 3, 4, "during replay", "after"]


async def test_overflow_marks_the_subscriber_and_frees_its_queue() -> None:
    backend = open_memory(Settings())
    hub = Hub(backend.bus)
    slow = Subscriber("ws", 10)
    evicted: list[bool] = []
    slow.on_overflow = lambda: evicted.append(True)
    await hub.attach(slow, "room:slow", None)
    for n in range(50):
        await backend.bus.publish("room:slow", "message", n)
    assert slow.overflowed and evicted == [True]
    assert len(slow.queue) == 0


async def test_a_held_subscription_keeps_nothing_and_starts_without_gap() -> None:
    """Live events while a server-side subscription is held are let go (history has them), so
    a busy channel cannot grow a held connection's memory; release replays them in order."""
    backend = open_memory(Settings())
    hub = Hub(backend.bus)
    subscriber = Subscriber("ws", 5000)
    await hub.hold(subscriber, "room:held")
    for n in range(3000):
        await backend.bus.publish("room:held", "message", n)
    state = subscriber.channels["room:held"]
    assert not state.buffer, "a held subscription buffers nothing"
    assert subscriber.take() == []
    await hub.release(subscriber, "room:held", None)
    for _ in range(200):
        if subscriber.channels["room:held"].live:
            break
        await asyncio.sleep(0.01)
    await backend.bus.publish("room:held", "message", "after")
    datas: list[object] = []
    for _ in range(200):
        datas += [item.to_dict()["data"] for item in subscriber.take()]  # type: ignore[union-attr]
        if datas and datas[-1] == "after":
            break
        await asyncio.sleep(0.01)
    retained = Settings().retention_for("room:held").size
    assert datas == [*range(3000 - retained, 3000), "after"]
