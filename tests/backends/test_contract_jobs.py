"""The job store contract, and the job model on top of a whole backend.

Runs against the memory implementation and a real Redis server (the `backend` fixture).
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.backends.bundle import Backend
from gateway.backends.redis_keys import stream_key
from gateway.backends.stores import Attempt, JobFlow, JobStart, JobStep, JobStore
from gateway.jobs.model import (
    BusJobFlow,
    create_job,
    job_changes,
    job_channel,
    load_job,
    transition,
)


async def test_job_index_is_newest_first_and_pages_by_position(jobs: JobStore) -> None:
    for ms, job_id in [(1000, "a"), (2000, "b"), (2000, "c"), (3000, "d")]:
        await jobs.index(job_id, ms)
    assert await jobs.job_index(None, 10) == [(3000, "d"), (2000, "c"), (2000, "b"), (1000, "a")]
    first = await jobs.job_index(None, 2)
    assert first == [(3000, "d"), (2000, "c")]
    assert await jobs.job_index(first[-1], 2) == [(2000, "b"), (1000, "a")]
    assert await jobs.job_index((1000, "a"), 2) == []
    await jobs.unindex(["c", "unknown"])
    assert [job_id for _ms, job_id in await jobs.job_index(None, 10)] == ["d", "b", "a"]


async def test_records_are_created_read_and_updated(jobs: JobStore) -> None:
    assert await jobs.get("r1") is None
    await jobs.update("r1", {"status": "running"})
    assert await jobs.get("r1") is None, "update never creates a record"
    await jobs.create("r1", {"id": "r1", "status": "queued"})
    await jobs.update("r1", {"status": "running", "extra": "x"})
    assert await jobs.get("r1") == {"id": "r1", "status": "running", "extra": "x"}


async def test_create_with_a_time_indexes_the_job(jobs: JobStore) -> None:
    await jobs.create("unlisted", {"id": "unlisted"})
    await jobs.create("listed", {"id": "listed"}, created_ms=5000)
    assert await jobs.job_index(None, 10) == [(5000, "listed")]
    assert await jobs.get("listed") == {"id": "listed"}


async def test_create_job_stores_publishes_queued_and_enqueues(backend: Backend) -> None:
    """`create_job` uses `jobs.create` and `bus.publish_and_enqueue` (one round trip each on Redis):
    the record exists, `job.queued` is the job's first event, and a worker can claim it."""
    record = await create_job(backend, "sleep", {"seconds": 0})
    stored = await load_job(backend, record.id)
    assert stored is not None and stored.status == "queued"
    assert stored.last_event_id == record.last_event_id is not None
    history = await backend.bus.history(f"job:{record.id}", None)
    assert [e.type for e in history.events] == ["job.queued"]
    assert history.events[0].id == record.last_event_id
    delivery = await backend.queue.claim("w", block=2)
    assert delivery is not None and delivery.job_id == record.id
    await backend.queue.ack(delivery)


async def test_create_job_indexes_it(backend: Backend) -> None:
    first = await create_job(backend, "sleep", {})
    second = await create_job(backend, "sleep", {})
    ids = [job_id for _ms, job_id in await backend.jobs.job_index(None, 10)]
    assert set(ids) == {first.id, second.id}


async def test_terminal_job_takes_its_history_with_it(backend: Backend) -> None:
    record = await create_job(backend, "sleep", {})
    await transition(backend, record.id, "job.started", {})
    await transition(backend, record.id, "job.completed", {}, expire=1)
    assert len((await backend.bus.history(record.channel, None)).events) == 3
    deadline = asyncio.get_running_loop().time() + 5
    while asyncio.get_running_loop().time() < deadline:
        gone = await load_job(backend, record.id) is None
        if gone and not (await backend.bus.history(record.channel, None)).events:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the job record and its history should expire after the job TTL")


def job_flow(backend: Backend) -> JobFlow:
    """The backend's batched flow (Redis), else the one-at-a-time one (memory)."""
    return backend.flow or BusJobFlow(backend)


async def test_job_flow_starts_jobs_with_their_attempt_and_event(backend: Backend) -> None:
    records = [await create_job(backend, "sleep", {}) for _ in range(3)]
    flow = job_flow(backend)
    fields = job_changes("job.started", {"progress": "0.0"})
    await transition(backend, records[2].id, "job.cancelled", {})
    started = await flow.start_many(
        [JobStart(record.id, 1, 3, fields) for record in records]
        + [JobStart("no-such-job", 1, 3, fields)]
    )
    assert [s.attempt for s in started] == [Attempt(1, True), Attempt(1, True), None, None]
    for record, result in zip(records[:2], started, strict=False):
        stored = await load_job(backend, record.id)
        assert stored is not None
        assert (stored.status, stored.attempts, stored.last_event_id) == (
            "running",
            1,
            result.event_id,
        )
        history = await backend.bus.history(job_channel(record.id), None)
        last = history.events[-1].to_dict()
        assert (last["type"], last["id"], last["data"]) == (
            "job.started",
            result.event_id,
            {"job_id": record.id, "attempt": 1},
        )
    # Out of attempts: refused, the count stays.
    [refused] = await flow.start_many([JobStart(records[0].id, 2, 1, fields)])
    assert refused.attempt == Attempt(1, granted=False) and refused.event_id is None


async def test_job_flow_start_refuses_a_stale_count_on_redis(backend: Backend) -> None:
    """The Redis flow builds `job.started` for the attempt the worker read; if the count moved
    (another delivery of the job started it meanwhile) it does nothing and says so."""
    if backend.flow is None:
        pytest.skip("the one-at-a-time flow counts and publishes with the count it finds")
    record = await create_job(backend, "sleep", {})
    assert await backend.jobs.begin_attempt(record.id, 3) == Attempt(1, granted=True)
    fields = job_changes("job.started", {"progress": "0.0"})
    [stale] = await backend.flow.start_many([JobStart(record.id, 1, 3, fields)])
    assert stale.conflict and stale.attempt is None
    stored = await load_job(backend, record.id)
    assert stored is not None and (stored.attempts, stored.status) == (1, "queued")


async def test_job_flow_finishes_jobs_once_and_cuts_their_history(backend: Backend) -> None:
    records = [await create_job(backend, "sleep", {}) for _ in range(2)]
    flow = job_flow(backend)
    steps = [
        JobStep(
            record.id,
            "job.completed",
            {"result": {"n": n}},
            job_changes("job.completed", {"result": f'{{"n":{n}}}'}),
            expire=30,
        )
        for n, record in enumerate(records)
    ]
    first = await flow.finish_many(steps)
    assert all(first)
    assert await flow.finish_many(steps) == [None, None], "nothing follows a terminal event"
    for n, record in enumerate(records):
        stored = await load_job(backend, record.id)
        assert stored is not None
        assert (stored.status, stored.result, stored.last_event_id) == (
            "completed",
            {"n": n},
            first[n],
        )
        history = await backend.bus.history(job_channel(record.id), None)
        assert [e.type for e in history.events] == ["job.queued", "job.completed"]
    if backend.kind == "redis":
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(backend.bus.settings.redis_url)
        try:
            ttl = await client.ttl(stream_key(job_channel(records[0].id)))
            assert 0 < ttl <= 30
        finally:
            await client.aclose()


async def test_job_flow_loads_its_scripts_again_after_a_script_flush(backend: Backend) -> None:
    """A Redis that lost its scripts (restarted, SCRIPT FLUSH) answers NOSCRIPT to every call of
    the batch: none ran, so each runs once after the script is loaded again."""
    if backend.flow is None:
        pytest.skip("scripts are a Redis matter")
    records = [await create_job(backend, "sleep", {}) for _ in range(3)]
    # The backend's own command client: on a Cluster, SCRIPT FLUSH goes to every master.
    client = backend.flow._redis  # type: ignore[attr-defined]
    await client.script_flush()
    fields = job_changes("job.started", {"progress": "0.0"})
    started = await backend.flow.start_many([JobStart(r.id, 1, 3, fields) for r in records])
    assert [s.attempt for s in started] == [Attempt(1, granted=True)] * 3
    await client.script_flush()
    done = job_changes("job.completed", {"result": "null"})
    steps = [JobStep(r.id, "job.completed", {"result": None}, done) for r in records]
    assert all(await backend.flow.finish_many(steps))
    for record in records:
        history = await backend.bus.history(job_channel(record.id), None)
        assert [e.type for e in history.events] == ["job.queued", "job.started", "job.completed"]


async def test_job_flow_reads_and_starts_jobs_in_one_step(backend: Backend) -> None:
    """A worker's batch: each record read and, for a type given a limit and no webhook, its
    attempt counted and `job.started` published with the count found (the same event as
    `start_many`'s); the others read only; ended or missing jobs neither."""
    fresh = await create_job(backend, "sleep", {"n": 1})
    again = await create_job(backend, "sleep", {})
    assert await backend.jobs.begin_attempt(again.id, 3) == Attempt(1, granted=True)
    spent = await create_job(backend, "fail", {})
    assert await backend.jobs.begin_attempt(spent.id, 1) == Attempt(1, granted=True)
    other = await create_job(backend, "noop", {})
    hooked = await create_job(backend, "sleep", {}, callback_url="https://example.com/hook")
    ended = await create_job(backend, "sleep", {})
    await transition(backend, ended.id, "job.cancelled", {})
    fields = job_changes("job.started", {"progress": "0.0"})
    ids = [fresh.id, again.id, spent.id, other.id, hooked.id, ended.id, "no-such-job"]
    read = await job_flow(backend).read_and_start_many(ids, {"sleep": 3, "fail": 1}, fields)
    assert [r.started.attempt if r.started else "read" for r in read] == [
        Attempt(1, granted=True),
        Attempt(2, granted=True),
        Attempt(1, granted=False),
        "read",
        "read",
        None,
        None,
    ]
    assert [r.record is None for r in read] == [False] * 5 + [True] * 2
    assert read[0].record is not None
    before = (read[0].record["status"], read[0].record["attempts"], read[0].record["data"])
    assert before == ("queued", "0", '{"n":1}'), "the record as it was before the start"
    for record, result, attempt in [(fresh, read[0], 1), (again, read[1], 2)]:
        assert result.started is not None
        stored = await load_job(backend, record.id)
        assert stored is not None
        assert (stored.status, stored.attempts, stored.last_event_id) == (
            "running",
            attempt,
            result.started.event_id,
        )
        history = await backend.bus.history(job_channel(record.id), None)
        last = history.events[-1]
        assert (last.type, last.id, last.to_dict()["data"]) == (
            "job.started",
            result.started.event_id,
            {"job_id": record.id, "attempt": attempt},
        )
    for untouched in (spent, other, hooked):
        history = await backend.bus.history(job_channel(untouched.id), None)
        assert [e.type for e in history.events] == ["job.queued"]
