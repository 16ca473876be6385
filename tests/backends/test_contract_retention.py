"""Retention in bytes and the event size limit: the bus contract, held against both buses."""

from __future__ import annotations

import pytest

from gateway.backends.bus import Bus
from gateway.errors import EventTooLarge
from gateway.events import Event, splice_envelope
from gateway.settings import Retention

BUDGET = 5000


def stored_size(event: Event) -> int:
    """What an event counts towards a byte budget: its envelope without the id."""
    return len(event.envelope) - len(splice_envelope(event.id, b""))


def with_tiny_namespace(bus: Bus, budget: int = BUDGET, max_event: int = BUDGET) -> None:
    settings = bus.settings
    bus.settings = settings.replace(
        retention={**settings.retention, "tiny": Retention(1000, 60, budget)},
        max_event_size={**settings.max_event_size, "tiny": max_event},
    )


async def test_history_is_trimmed_to_its_byte_budget_from_the_oldest(bus: Bus) -> None:
    with_tiny_namespace(bus)
    published = []
    for n in range(40):
        event = await bus.publish("tiny:bytes", "message", {"n": n, "pad": "x" * (300 + n)})
        assert event is not None
        published.append(event)
        history = await bus.history("tiny:bytes", None)
        assert sum(stored_size(e) for e in history.events) <= BUDGET, f"after {n + 1} events"
    kept = (await bus.history("tiny:bytes", None)).events
    assert [e.id for e in kept] == [e.id for e in published[-len(kept) :]], "the newest, in order"
    dropped = published[-len(kept) - 1]
    assert sum(stored_size(e) for e in [dropped, *kept]) > BUDGET, "no more trimmed than needed"


async def test_gap_signal_after_byte_trimming(bus: Bus) -> None:
    with_tiny_namespace(bus)
    published = [
        await bus.publish("tiny:gap", "message", {"n": n, "pad": "y" * 400}) for n in range(30)
    ]
    ids = [e.id for e in published if e is not None]
    kept = (await bus.history("tiny:gap", None)).events
    first_kept = ids.index(kept[0].id)
    assert first_kept > 0
    behind = await bus.history("tiny:gap", ids[0])
    assert not behind.complete, "events after the position were trimmed: a gap"
    assert [e.id for e in behind.events] == ids[first_kept:]
    exact = await bus.history("tiny:gap", ids[first_kept - 1])
    assert exact.complete, "the position is right before the oldest kept event: no gap"
    assert [e.id for e in exact.events] == ids[first_kept:]
    assert not (await bus.history("tiny:gap", None)).complete


async def test_an_event_over_the_budget_is_kept_alone_when_unlimited(bus: Bus) -> None:
    with_tiny_namespace(bus, max_event=0)
    await bus.publish("tiny:huge", "message", {"pad": "z" * 100})
    huge = await bus.publish("tiny:huge", "message", {"pad": "z" * (BUDGET * 2)})
    assert huge is not None
    assert [e.id for e in (await bus.history("tiny:huge", None)).events] == [huge.id]
    after = await bus.publish("tiny:huge", "message", {"pad": "small"})
    assert after is not None
    assert [e.id for e in (await bus.history("tiny:huge", None)).events] == [after.id]


async def test_an_event_over_the_size_limit_is_refused_and_not_stored(bus: Bus) -> None:
    with_tiny_namespace(bus, max_event=1000)
    kept = await bus.publish("tiny:limit", "message", {"pad": "a" * 800})
    assert kept is not None and stored_size(kept) <= 1000
    bus.add_listener(lambda event: pytest.fail(f"{event} was delivered"))
    await bus.subscribe("tiny:limit")
    with pytest.raises(EventTooLarge) as refused:
        await bus.publish("tiny:limit", "message", {"pad": "a" * 1000})
    assert refused.value.limit == 1000 and refused.value.size > 1000
    assert "GATEWAY_MAX_EVENT_SIZE" in str(refused.value)
    assert [e.id for e in (await bus.history("tiny:limit", None)).events] == [kept.id]


async def test_rooms_take_64_kib_events_by_default_and_jobs_any(bus: Bus) -> None:
    await bus.publish("room:default", "message", {"pad": "b" * 60_000})
    with pytest.raises(EventTooLarge):
        await bus.publish("room:default", "message", {"pad": "b" * 70_000})
    with pytest.raises(EventTooLarge):
        await bus.publish("news:default", "message", {"pad": "b" * 70_000})
    assert await bus.publish("job:default", "job.progress", {"pad": "b" * 200_000})


async def test_redis_entries_from_before_byte_totals_go_first(redis_url: str) -> None:
    """Streams written by an older gateway (no running totals) are trimmed oldest first too."""
    import redis.asyncio as aioredis

    from gateway.backends.redis import open_redis
    from gateway.backends.redis_keys import stream_key
    from gateway.events import envelope_tail
    from tests.conftest import make_settings

    client = aioredis.Redis.from_url(redis_url)
    prev, legacy = "", []
    for n in range(5):
        tail = envelope_tail("tiny:legacy", "message", {"n": n, "pad": "q" * 1000})
        entry: bytes = await client.xadd(stream_key("tiny:legacy"), {"e": tail, "p": prev})
        prev = entry.decode()
        legacy.append(prev)
    await client.aclose()
    backend = open_redis(make_settings(redis_url))
    bus = backend.bus
    with_tiny_namespace(bus)
    await backend.start()
    try:
        first = await bus.publish("tiny:legacy", "message", {"pad": "r" * 400})
        history = await bus.history("tiny:legacy", None)
        assert [e.id for e in history.events] == [*legacy, first.id]  # type: ignore[union-attr]
        for _ in range(12):
            await bus.publish("tiny:legacy", "message", {"pad": "r" * 400})
        history = await bus.history("tiny:legacy", None)
        assert not set(legacy) & {e.id for e in history.events}
        assert sum(stored_size(e) for e in history.events) <= BUDGET
        assert not (await bus.history("tiny:legacy", legacy[-1])).complete
    finally:
        await backend.close()
