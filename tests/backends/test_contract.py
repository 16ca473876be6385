"""One contract, two backends: every test runs against memory and a real redis-server."""

from __future__ import annotations

import asyncio

import pytest

from gateway.backends.base import Attempt, Backend, JobUpdate
from gateway.events import Event, parse_event_id


async def test_publish_assigns_increasing_stream_style_ids(backend: Backend) -> None:
    ids = []
    for n in range(50):
        event = await backend.publish("room:order", "message", {"n": n})
        assert event is not None
        ids.append(event.id)
    keys = [parse_event_id(i) for i in ids]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


async def test_envelope_follows_cloudevents_names(backend: Backend) -> None:
    event = await backend.publish("room:env", "message", {"text": "hi"})
    assert event is not None
    body = event.to_dict()
    assert body["specversion"] == "1.0"
    assert body["id"] == event.id
    assert body["type"] == "message"
    assert body["channel"] == "room:env"
    assert body["source"] == "/channels/room:env"
    assert body["data"] == {"text": "hi"}
    assert body["time"].endswith("Z")


async def test_history_after_an_id_is_exactly_what_followed(backend: Backend) -> None:
    events = [await backend.publish("room:hist", "message", {"n": n}) for n in range(10)]
    assert all(events)
    history = await backend.history("room:hist", events[3].id)  # type: ignore[union-attr]
    assert [e.to_dict()["data"]["n"] for e in history.events] == list(range(4, 10))
    assert history.complete
    everything = await backend.history("room:hist", None)
    assert [e.id for e in everything.events] == [e.id for e in events]  # type: ignore[union-attr]
    assert everything.complete


async def test_history_at_the_latest_id_is_empty_and_complete(backend: Backend) -> None:
    last = await backend.publish("room:latest", "message", 1)
    assert last is not None
    history = await backend.history("room:latest", last.id)
    assert history.events == [] and history.complete


async def test_history_pages_with_limit(backend: Backend) -> None:
    for n in range(7):
        await backend.publish("room:pages", "message", n)
    first = await backend.history("room:pages", None, limit=3)
    assert len(first.events) == 3 and first.more
    second = await backend.history("room:pages", first.events[-1].id, limit=10)
    assert [e.to_dict()["data"] for e in second.events] == [3, 4, 5, 6] and not second.more


async def test_trimmed_history_reports_a_gap(backend: Backend) -> None:
    # room: keeps 500 events by default; the test retention for `tiny:` keeps 5.
    backend.settings = backend.settings.replace(
        retention={
            **backend.settings.retention,
            "tiny": type(backend.settings.retention_for("x:y"))(5, 60),
        }
    )
    first = await backend.publish("tiny:a", "message", 0)
    assert first is not None
    for n in range(1, 300):
        await backend.publish("tiny:a", "message", n)
    history = await backend.history("tiny:a", first.id)
    assert not history.complete
    assert history.events and history.events[-1].to_dict()["data"] == 299


async def test_unknown_position_or_lost_history_reports_a_gap(backend: Backend) -> None:
    history = await backend.history("room:never", "1700000000000-0")
    assert not history.complete
    assert (await backend.history("room:never", None)).complete


async def test_live_delivery_only_while_subscribed(backend: Backend) -> None:
    received: list[Event] = []
    arrived = asyncio.Event()

    def listener(event: Event) -> None:
        received.append(event)
        arrived.set()

    backend.set_listener(listener)
    await backend.publish("room:live", "message", "before")
    await backend.subscribe("room:live")
    published = await backend.publish("room:live", "message", "during")
    await asyncio.wait_for(arrived.wait(), 5)
    assert [e.id for e in received] == [published.id]  # type: ignore[union-attr]
    assert received[0].envelope == published.envelope  # type: ignore[union-attr]
    await backend.unsubscribe("room:live")
    await backend.publish("room:live", "message", "after")
    sentinel = await backend.publish("room:other", "message", "x")
    await backend.subscribe("room:other")
    await backend.publish("room:other", "message", "y")
    await asyncio.sleep(0.2)
    assert [e.channel for e in received] == ["room:live", "room:other"]
    assert sentinel is not None


async def test_job_events_update_the_record_and_stop_after_terminal(backend: Backend) -> None:
    await backend.create_job("j1", {"id": "j1", "type": "sleep", "status": "queued"})
    started = await backend.publish(
        "job:j1", "job.started", {}, job=JobUpdate("j1", {"status": "running"})
    )
    assert started is not None
    record = await backend.get_job("j1")
    assert record is not None and record["status"] == "running"
    assert record["last_event_id"] == started.id
    done = await backend.publish(
        "job:j1", "job.completed", {}, job=JobUpdate("j1", {"status": "completed"}, expire=60)
    )
    assert done is not None
    late = await backend.publish(
        "job:j1", "job.progress", {}, job=JobUpdate("j1", {"status": "running"})
    )
    assert late is None
    record = await backend.get_job("j1")
    assert record is not None and record["status"] == "completed"
    assert record["last_event_id"] == done.id
    assert await backend.publish("job:nope", "job.started", {}, job=JobUpdate("nope", {})) is None


async def test_job_queue_claim_ack_and_attempts(backend: Backend) -> None:
    await backend.create_job("q1", {"id": "q1", "type": "sleep", "status": "queued"})
    await backend.enqueue("q1")
    delivery = await backend.claim("w1", block=2)
    assert delivery is not None and delivery.job_id == "q1"
    assert await backend.begin_attempt("q1", max_attempts=3) == Attempt(1, granted=True)
    assert await backend.claim("w1", block=0.1) is None
    await backend.ack(delivery)
    assert await backend.reclaim("w2", min_idle=0) == []


async def test_unacked_delivery_is_reclaimed_after_idle(backend: Backend) -> None:
    await backend.enqueue("q2")
    delivery = await backend.claim("dead-worker", block=2)
    assert delivery is not None
    assert await backend.reclaim("w2", min_idle=5) == []
    await asyncio.sleep(0.15)
    reclaimed = await backend.reclaim("w2", min_idle=0.1)
    assert [d.job_id for d in reclaimed] == ["q2"]
    await backend.touch("w2", reclaimed[0])
    assert await backend.reclaim("w3", min_idle=1) == []
    await backend.ack(reclaimed[0])


async def test_delayed_enqueue_waits_until_due(backend: Backend) -> None:
    await backend.enqueue("later", delay=0.4)
    assert await backend.claim("w", block=0.1) is None
    delivery = await backend.claim("w", block=3)
    assert delivery is not None and delivery.job_id == "later"
    await backend.ack(delivery)


@pytest.mark.parametrize("publishers", [8])
async def test_concurrent_publishers_keep_one_total_order(
    backend: Backend, publishers: int
) -> None:
    async def publish_many(p: int) -> None:
        for n in range(25):
            await backend.publish("room:race", "message", {"p": p, "n": n})

    await asyncio.gather(*(publish_many(p) for p in range(publishers)))
    history = await backend.history("room:race", None, limit=1000)
    assert len(history.events) == publishers * 25
    keys = [e.key for e in history.events]
    assert keys == sorted(keys)
    for p in range(publishers):
        assert [
            e.to_dict()["data"]["n"] for e in history.events if e.to_dict()["data"]["p"] == p
        ] == list(range(25))
