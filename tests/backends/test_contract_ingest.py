"""`Bus.publish_many` and `Bus.submit_jobs`: the batched ways in, held to the same promises as
one publish and one `create_job`, against both backends (the `backend` fixture)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.exceptions import ResponseError

from gateway.backends.bundle import Backend
from gateway.backends.bus import Publication
from gateway.backends.redis_keys import PUBLISH_SHA
from gateway.errors import EventTooLarge
from gateway.events import Event
from gateway.jobs.model import create_jobs, load_job, new_job, submission
from tests.conftest import make_settings
from tests.support import RedisServer, async_wait_until


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


async def test_concurrent_writes_share_round_trips(redis_url: str) -> None:
    """Publishes and submissions issued together go out as one pipeline (auto-pipelining), each
    answered with its own event, every event stored exactly once."""
    from gateway.backends.redis_bus import RedisBus
    from gateway.backends.url import open_backend

    backend = open_backend(make_settings(redis_url))
    await backend.start()
    try:
        assert isinstance(backend.bus, RedisBus) and backend.bus._auto is not None
        auto = backend.bus._auto
        records = [new_job("sleep", {"seconds": 0, "n": n}) for n in range(20)]
        before = auto.round_trips
        answers = await asyncio.gather(
            *(backend.bus.publish(f"room:{n % 3}", "message", n) for n in range(40)),
            *(backend.bus.submit_jobs([submission(record, 1000)]) for record in records),
        )
        assert auto.round_trips - before <= 2  # one, unless the connection opened in between
        events = [answer for answer in answers[:40] if isinstance(answer, Event)]
        assert len({(event.channel, event.id) for event in events}) == 40
        for room in range(3):
            history = await backend.bus.history(f"room:{room}", None)
            mine = [e.id for n, e in enumerate(events) if n % 3 == room]
            assert sorted(e.id for e in history.events) == sorted(mine)
        for record, submitted in zip(records, answers[40:], strict=True):
            assert isinstance(submitted, list)
            stored = await load_job(backend, record.id)
            assert stored is not None and stored.last_event_id == submitted[0].id
        assert (await backend.queue.reclaim("probe", 0, 100)) == []  # queued, not yet read
    finally:
        await backend.close()


async def test_auto_pipeline_reloads_a_flushed_script_running_nothing_twice(
    redis_url: str,
) -> None:
    """`SCRIPT FLUSH` between batches: the refused publishes and submissions' events run once
    after the reload, and nothing that ran runs again."""
    import redis.asyncio as aioredis

    from gateway.backends.redis_bus import RedisBus
    from gateway.backends.redis_keys import JOB_STREAM
    from gateway.backends.url import open_backend

    backend = open_backend(make_settings(redis_url))
    await backend.start()
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert isinstance(backend.bus, RedisBus) and backend.bus._auto is not None
        auto = backend.bus._auto
        await backend.bus.publish("room:warm", "message", 0)  # the script is loaded
        await client.script_flush()
        before = auto.round_trips
        answers = await asyncio.gather(
            *(backend.bus.publish("room:f", "message", n) for n in range(5))
        )
        assert auto.round_trips - before == 2  # refused, then loaded and run
        history = await backend.bus.history("room:f", None)
        assert [e.id for e in history.events] == [a.id for a in answers if a is not None]
        assert len(history.events) == 5
        await client.script_flush()
        records = [new_job("sleep", {"seconds": 0, "n": n}) for n in range(3)]
        await asyncio.gather(
            backend.bus.submit_jobs([submission(record, 1000) for record in records[:2]]),
            backend.bus.submit_jobs([submission(records[2], 1000)]),
        )
        for record in records:
            job_history = await backend.bus.history(f"job:{record.id}", None)
            assert [e.type for e in job_history.events] == ["job.queued"]
        assert await client.xlen(JOB_STREAM) == 3
        assert await client.script_exists(PUBLISH_SHA) == [True]
    finally:
        await client.aclose()
        await backend.close()


async def test_auto_pipeline_answers_each_caller_its_own_error(redis_url: str) -> None:
    """An error reply fails only the caller whose command it answers."""
    from gateway.backends.redis_autopipeline import AutoPipeline
    from gateway.backends.redis_bus import RedisBus
    from gateway.backends.url import open_backend

    backend = open_backend(make_settings(redis_url))
    await backend.start()
    try:
        assert isinstance(backend.bus, RedisBus)
        auto = backend.bus._auto
        assert isinstance(auto, AutoPipeline)
        await auto.execute([("SET", "plain", "x")])
        good, bad = await asyncio.gather(
            auto.execute([("INCR", "counter"), ("INCR", "counter")]),
            auto.execute([("INCR", "plain")]),
        )
        assert good == [1, 2]
        assert isinstance(bad[0], ResponseError)
    finally:
        await backend.close()


async def test_auto_pipeline_survives_a_redis_restart(tmp_path: Path) -> None:
    """Its connection, closed by a restarted Redis while idle, is reopened before the next
    batch: no request fails for it; while Redis is down a request is BackendUnavailable."""
    from gateway.backends.redis_bus import RedisBus
    from gateway.backends.url import open_backend
    from gateway.errors import BackendUnavailable

    server = RedisServer(tmp_path)
    server.start()
    backend = open_backend(make_settings(server.url))
    await backend.start()
    try:
        assert isinstance(backend.bus, RedisBus) and backend.bus._auto is not None
        auto = backend.bus._auto
        await backend.bus.publish("room:r", "message", 1)
        reader = auto._connection._reader
        server.restart()
        await async_wait_until(
            lambda: reader.at_eof() or reader.exception() is not None,
            5,
            "the closed (or reset) connection seen by the loop",
        )
        event = await backend.bus.publish("room:r", "message", 2)
        assert event is not None
        assert [e.id for e in (await backend.bus.history("room:r", None)).events] == [event.id]
        server.kill()
        with pytest.raises(BackendUnavailable):
            await backend.bus.publish("room:r", "message", 3)
    finally:
        await backend.close()
        server.stop()
