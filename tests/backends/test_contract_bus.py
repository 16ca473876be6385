"""The bus contract: every test runs against the memory bus and a real redis-server."""

from __future__ import annotations

import asyncio

import pytest

from gateway.backends.bus import Bus, JobUpdate
from gateway.backends.stores import JobStore
from gateway.events import Event, parse_event_id


async def test_publish_assigns_increasing_stream_style_ids(bus: Bus) -> None:
    ids = []
    for n in range(50):
        event = await bus.publish("room:order", "message", {"n": n})
        assert event is not None
        ids.append(event.id)
    keys = [parse_event_id(i) for i in ids]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


async def test_envelope_follows_cloudevents_names(bus: Bus) -> None:
    event = await bus.publish("room:env", "message", {"text": "hi"})
    assert event is not None
    body = event.to_dict()
    assert body["specversion"] == "1.0"
    assert body["id"] == event.id
    assert body["type"] == "message"
    assert body["channel"] == "room:env"
    assert body["source"] == "/channels/room:env"
    assert body["data"] == {"text": "hi"}
    assert body["time"].endswith("Z")


async def test_history_after_an_id_is_exactly_what_followed(bus: Bus) -> None:
    events = [await bus.publish("room:hist", "message", {"n": n}) for n in range(10)]
    assert all(events)
    history = await bus.history("room:hist", events[3].id)  # type: ignore[union-attr]
    assert [e.to_dict()["data"]["n"] for e in history.events] == list(range(4, 10))
    assert history.complete
    everything = await bus.history("room:hist", None)
    assert [e.id for e in everything.events] == [e.id for e in events]  # type: ignore[union-attr]
    assert everything.complete


async def test_history_at_the_latest_id_is_empty_and_complete(bus: Bus) -> None:
    last = await bus.publish("room:latest", "message", 1)
    assert last is not None
    history = await bus.history("room:latest", last.id)
    assert history.events == [] and history.complete


async def test_history_pages_with_limit(bus: Bus) -> None:
    for n in range(7):
        await bus.publish("room:pages", "message", n)
    first = await bus.history("room:pages", None, limit=3)
    assert len(first.events) == 3 and first.more
    second = await bus.history("room:pages", first.events[-1].id, limit=10)
    assert [e.to_dict()["data"] for e in second.events] == [3, 4, 5, 6] and not second.more


async def test_trimmed_history_reports_a_gap(bus: Bus) -> None:
    # room: keeps 500 events by default; the test retention for `tiny:` keeps 5.
    bus.settings = bus.settings.replace(
        retention={
            **bus.settings.retention,
            "tiny": type(bus.settings.retention_for("x:y"))(5, 60),
        }
    )
    first = await bus.publish("tiny:a", "message", 0)
    assert first is not None
    for n in range(1, 300):
        await bus.publish("tiny:a", "message", n)
    history = await bus.history("tiny:a", first.id)
    assert not history.complete
    assert history.events and history.events[-1].to_dict()["data"] == 299


async def test_unknown_position_or_lost_history_reports_a_gap(bus: Bus) -> None:
    history = await bus.history("room:never", "1700000000000-0")
    assert not history.complete
    assert (await bus.history("room:never", None)).complete


async def test_live_delivery_only_while_subscribed(bus: Bus) -> None:
    received: list[Event] = []
    arrived = asyncio.Event()

    def listener(event: Event) -> None:
        received.append(event)
        arrived.set()

    bus.add_listener(listener)
    await bus.publish("room:live", "message", "before")
    await bus.subscribe("room:live")
    published = await bus.publish("room:live", "message", "during")
    await asyncio.wait_for(arrived.wait(), 5)
    assert [e.id for e in received] == [published.id]  # type: ignore[union-attr]
    assert received[0].envelope == published.envelope  # type: ignore[union-attr]
    await bus.unsubscribe("room:live")
    await bus.publish("room:live", "message", "after")
    sentinel = await bus.publish("room:other", "message", "x")
    await bus.subscribe("room:other")
    await bus.publish("room:other", "message", "y")
    await asyncio.sleep(0.2)
    assert [e.channel for e in received] == ["room:live", "room:other"]
    assert sentinel is not None


class Recorder:
    """A listener that keeps what it hears and lets a test wait, bounded, for a count."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Event()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()

    async def wait_for(self, count: int) -> list[str]:
        async with asyncio.timeout(5):
            while len(self.events) < count:
                self._changed.clear()
                await self._changed.wait()
        return [event.id for event in self.events]


async def test_every_listener_hears_every_event(bus: Bus) -> None:
    first, second = Recorder(), Recorder()
    bus.add_listener(first)
    bus.add_listener(second)
    await bus.subscribe("room:two")
    published = [await bus.publish("room:two", "message", n) for n in range(20)]
    ids = [event.id for event in published if event is not None]
    assert await first.wait_for(20) == ids
    assert await second.wait_for(20) == ids
    assert first.events[0] is second.events[0], "one event object, shared by the listeners"


async def test_a_removed_listener_hears_nothing_more(bus: Bus) -> None:
    staying, leaving = Recorder(), Recorder()
    bus.add_listener(leaving)
    bus.add_listener(staying)
    await bus.subscribe("room:leave")
    before = await bus.publish("room:leave", "message", "before")
    await staying.wait_for(1)
    bus.remove_listener(leaving)
    after = await bus.publish("room:leave", "message", "after")
    assert before is not None and after is not None
    assert await staying.wait_for(2) == [before.id, after.id]
    assert [event.id for event in leaving.events] == [before.id]


async def test_a_failing_listener_does_not_starve_the_others(bus: Bus) -> None:
    def failing(event: Event) -> None:
        raise RuntimeError("listener bug")

    recorder = Recorder()
    bus.add_listener(failing)
    bus.add_listener(recorder)
    await bus.subscribe("room:fail")
    published = [await bus.publish("room:fail", "message", n) for n in range(3)]
    assert await recorder.wait_for(3) == [e.id for e in published if e is not None]


async def test_job_events_update_the_record_and_stop_after_terminal(
    bus: Bus, jobs: JobStore
) -> None:
    await jobs.create("j1", {"id": "j1", "type": "sleep", "status": "queued"})
    started = await bus.publish(
        "job:j1", "job.started", {}, job=JobUpdate("j1", {"status": "running"})
    )
    assert started is not None
    record = await jobs.get("j1")
    assert record is not None and record["status"] == "running"
    assert record["last_event_id"] == started.id
    done = await bus.publish(
        "job:j1", "job.completed", {}, job=JobUpdate("j1", {"status": "completed"}, expire=60)
    )
    assert done is not None
    late = await bus.publish(
        "job:j1", "job.progress", {}, job=JobUpdate("j1", {"status": "running"})
    )
    assert late is None
    record = await jobs.get("j1")
    assert record is not None and record["status"] == "completed"
    assert record["last_event_id"] == done.id
    assert await bus.publish("job:nope", "job.started", {}, job=JobUpdate("nope", {})) is None


@pytest.mark.parametrize("publishers", [8])
async def test_concurrent_publishers_keep_one_total_order(bus: Bus, publishers: int) -> None:
    async def publish_many(p: int) -> None:
        for n in range(25):
            await bus.publish("room:race", "message", {"p": p, "n": n})

    await asyncio.gather(*(publish_many(p) for p in range(publishers)))
    history = await bus.history("room:race", None, limit=1000)
    assert len(history.events) == publishers * 25
    keys = [e.key for e in history.events]
    assert keys == sorted(keys)
    for p in range(publishers):
        assert [
            e.to_dict()["data"]["n"] for e in history.events if e.to_dict()["data"]["p"] == p
        ] == list(range(25))
