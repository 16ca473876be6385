"""`Bus.publish_many` and `Bus.submit_jobs`: the batched ways in, held to the same promises as
one publish and one `create_job`, against both backends (the `backend` fixture)."""

from __future__ import annotations

import pytest

from gateway.backends.bundle import Backend
from gateway.backends.bus import Publication
from gateway.backends.redis_keys import PUBLISH_SHA
from gateway.errors import EventTooLarge
from gateway.events import Event
from gateway.jobs.model import create_jobs, load_job, new_job, submission
from tests.conftest import make_settings
from tests.support import async_wait_until


async def test_publish_many_publishes_each_in_order_across_channels(backend: Backend) -> None:
    items = [Publication(f"room:{name}", "message", {"n": n}) for n, name in enumerate("abab")]
    answers = await backend.bus.publish_many(items)
    assert all(isinstance(answer, Event) for answer in answers)
    for channel in ("room:a", "room:b"):
        history = await backend.bus.history(channel, None)
        sent = [answer for answer in answers if isinstance(answer, Event)]
        assert [e.id for e in history.events] == [e.id for e in sent if e.channel == channel]
        assert history.complete
    stored = (await backend.bus.history("room:a", None)).events
    assert [e.type for e in stored] == ["message", "message"]
    assert b'"data":{"n":0}' in stored[0].envelope and b'"data":{"n":2}' in stored[1].envelope


async def test_publish_many_delivers_live(backend: Backend) -> None:
    heard: list[Event] = []
    backend.bus.add_listener(heard.append)
    await backend.bus.subscribe("room:live")
    answers = await backend.bus.publish_many(
        [Publication("room:live", "message", i) for i in (1, 2)]
    )
    await async_wait_until(lambda: len(heard) >= 2, 5, "both events heard live")
    assert [e.id for e in heard] == [a.id for a in answers if isinstance(a, Event)]


async def test_publish_many_refuses_only_the_event_too_large(redis_url: str) -> None:
    """One oversized event comes back as its `EventTooLarge`; the others are published."""
    from gateway.backends.url import open_backend

    for url in ("", redis_url):
        backend = open_backend(make_settings(url, max_event_size={"room": 300}))
        await backend.start()
        try:
            answers = await backend.bus.publish_many(
                [
                    Publication("room:s", "message", "small"),
                    Publication("room:s", "message", "x" * 1000),
                    Publication("room:s", "message", "small again"),
                ]
            )
            assert isinstance(answers[0], Event) and isinstance(answers[2], Event)
            assert isinstance(answers[1], EventTooLarge) and answers[1].limit == 300
            history = await backend.bus.history("room:s", None)
            assert [e.id for e in history.events] == [answers[0].id, answers[2].id]
        finally:
            await backend.close()


async def test_publish_many_reloads_a_script_redis_lost(redis_url: str) -> None:
    """After `SCRIPT FLUSH` (a restarted Redis) every event still lands, exactly once."""
    import redis.asyncio as aioredis

    from gateway.backends.url import open_backend

    backend = open_backend(make_settings(redis_url))
    await backend.start()
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.script_flush()
        answers = await backend.bus.publish_many(
            [Publication("room:f", "message", i) for i in range(3)]
        )
        history = await backend.bus.history("room:f", None)
        assert [e.id for e in history.events] == [a.id for a in answers if isinstance(a, Event)]
        assert len(history.events) == 3
        assert await client.script_exists(PUBLISH_SHA) == [True]
    finally:
        await client.aclose()
        await backend.close()


@pytest.mark.parametrize("count", [1, 3])
async def test_submit_jobs_stores_announces_and_queues_each(backend: Backend, count: int) -> None:
    records = [new_job("sleep", {"seconds": 0, "n": n}) for n in range(count)]
    events = await backend.bus.submit_jobs(
        [submission(record, 1000 + n) for n, record in enumerate(records)]
    )
    assert [e.type for e in events] == ["job.queued"] * count
    for record, event in zip(records, events, strict=True):
        stored = await load_job(backend, record.id)
        assert stored is not None and stored.status == "queued"
        assert stored.last_event_id == event.id and stored.data == record.data
        history = await backend.bus.history(f"job:{record.id}", None)
        assert [e.id for e in history.events] == [event.id]
        assert b'"job_id":"' + record.id.encode() in event.envelope
    indexed = {job_id for _ms, job_id in await backend.jobs.job_index(None, 10)}
    assert indexed == {record.id for record in records}
    claimed = []
    for _ in range(count):
        delivery = await backend.queue.claim("w", block=2)
        assert delivery is not None
        claimed.append(delivery.job_id)
        await backend.queue.ack(delivery)
    assert claimed == [record.id for record in records], "queued in the order submitted"


async def test_submit_jobs_after_redis_lost_its_scripts(redis_url: str) -> None:
    """A batch sends the script once (`SCRIPT LOAD`) and runs it by hash: a server that lost
    its scripts still gets every job's event before the job is queued."""
    import redis.asyncio as aioredis

    from gateway.backends.url import open_backend

    backend = open_backend(make_settings(redis_url))
    await backend.start()
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.script_flush()
        records = await create_jobs(backend, [new_job("sleep", {}) for _ in range(3)])
        for record in records:
            history = await backend.bus.history(f"job:{record.id}", None)
            assert [e.type for e in history.events] == ["job.queued"]
    finally:
        await client.aclose()
        await backend.close()


async def test_submit_jobs_refuses_all_before_writing_when_an_event_is_too_large(
    redis_url: str,
) -> None:
    from gateway.backends.url import open_backend

    for url in ("", redis_url):
        backend = open_backend(make_settings(url, max_event_size={"job": 100}))
        await backend.start()
        try:
            records = [new_job("sleep", {}), new_job("x" * 200, {})]
            with pytest.raises(EventTooLarge):
                await backend.bus.submit_jobs([submission(record, 1) for record in records])
            assert await load_job(backend, records[0].id) is None
            assert await backend.jobs.job_index(None, 10) == []
        finally:
            await backend.close()
