"""The worker's batches over a partitioned queue: every job of every partition runs once with
its events, a worker never holds more jobs than it has slots, handlers that finish without
waiting keep the retry rules, and the cancel poll (one read for all running jobs) stops them.

Each test runs on the memory backend and on a real redis-server, with three partitions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis import Redis as SyncRedis

from gateway.backends.bundle import Backend
from gateway.backends.redis_keys import queue_partition
from gateway.backends.url import open_backend
from gateway.errors import HandlerError
from gateway.jobs.model import create_job, job_channel, load_job, transition
from gateway.jobs.registry import HandlerRegistry, JobContext, handler
from gateway.jobs.worker import Worker
from gateway.settings import Settings
from tests.conftest import make_settings

PARTITIONS = 3


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    instance = open_backend(settings(url))
    await instance.start()
    yield instance
    await instance.close()


def settings(url: str = "", **changes: Any) -> Settings:
    base: dict[str, Any] = {
        "queue_partitions": PARTITIONS,
        "concurrency": 8,
        "job_ttl": 60,
        "visibility_timeout": 5.0,
        "cancel_grace": 0.5,
    }
    return make_settings(url, **{**base, **changes})


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def run_until(worker: Worker, condition: Callable[[], Awaitable[bool]], what: str) -> None:
    task = asyncio.create_task(worker.run(grace=5))
    try:
        await wait_for(condition, 20, what)
    finally:
        worker.stop()
        await asyncio.wait_for(task, timeout=15)


async def event_types(backend: Backend, job_id: str) -> list[str]:
    history = await backend.bus.history(job_channel(job_id), None)
    return [event.type for event in history.events]


async def all_ended(backend: Backend, job_ids: list[str]) -> bool:
    for job_id in job_ids:
        record = await load_job(backend, job_id)
        if record is None or not record.terminal:
            return False
    return True


async def test_every_job_of_every_partition_runs_once_with_its_events(backend: Backend) -> None:
    registry = HandlerRegistry()
    runs: list[str] = []

    @handler("quick", registry=registry)
    async def quick(ctx: JobContext) -> dict[str, Any]:
        runs.append(ctx.job_id)
        return {"n": len(runs)}

    job_ids = [(await create_job(backend, "quick", {})).id for _ in range(60)]
    assert {queue_partition(j, PARTITIONS) for j in job_ids} == set(range(PARTITIONS))
    worker = Worker(backend, registry, backend.bus.settings, name="batches")
    await run_until(worker, lambda: all_ended(backend, job_ids), "every job to end")
    assert sorted(runs) == sorted(job_ids)
    for job_id in job_ids:
        record = await load_job(backend, job_id)
        assert record is not None
        assert (record.status, record.attempts) == ("completed", 1)
        assert record.last_event_id is not None
        assert await event_types(backend, job_id) == ["job.queued", "job.started", "job.completed"]
    assert await backend.queue.reclaim("after", min_idle=0) == [], "every delivery was acked"


async def test_a_worker_never_holds_more_jobs_than_slots(backend: Backend) -> None:
    registry = HandlerRegistry()
    running = 0
    most = 0

    @handler("slow", registry=registry)
    async def slow(ctx: JobContext) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.05)
        running -= 1

    job_ids = [(await create_job(backend, "slow", {})).id for _ in range(15)]
    worker = Worker(backend, registry, settings(concurrency=2), name="two-slots")
    held: list[int] = []

    async def done() -> bool:
        held.append(len(worker._held))
        return await all_ended(backend, job_ids)

    await run_until(worker, done, "every job to end")
    assert max(held) <= 2 and most <= 2
    assert most == 2, "both slots were used"


async def test_a_handler_failing_without_waiting_is_retried_then_failed(
    backend: Backend,
) -> None:
    registry = HandlerRegistry()

    @handler("broken", registry=registry, max_attempts=2, backoff_base=0.01, backoff_cap=0.01)
    async def broken(ctx: JobContext) -> None:
        raise HandlerError(f"broken on attempt {ctx.attempt}")

    job_id = (await create_job(backend, "broken", {})).id
    worker = Worker(backend, registry, backend.bus.settings, name="retries")
    await run_until(worker, lambda: all_ended(backend, [job_id]), "the job to fail")
    record = await load_job(backend, job_id)
    assert record is not None and record.error is not None
    assert (record.status, record.attempts) == ("failed", 2)
    assert record.error["message"] == "broken on attempt 2"
    assert await event_types(backend, job_id) == [
        "job.queued",
        "job.started",
        "job.retrying",
        "job.started",
        "job.failed",
    ]


async def test_the_cancel_poll_stops_running_handlers(backend: Backend) -> None:
    registry = HandlerRegistry()
    saw_cancel: set[str] = set()
    started: set[str] = set()

    @handler("patient", registry=registry)
    async def patient(ctx: JobContext) -> None:
        started.add(ctx.job_id)
        await asyncio.wait_for(ctx.cancelled.wait(), timeout=30)
        saw_cancel.add(ctx.job_id)

    @handler("stubborn", registry=registry)
    async def stubborn(ctx: JobContext) -> None:
        started.add(ctx.job_id)
        await asyncio.sleep(30)

    job_ids = [(await create_job(backend, "patient", {})).id for _ in range(4)]
    job_ids.append((await create_job(backend, "stubborn", {})).id)
    worker = Worker(backend, registry, backend.bus.settings, name="cancels")
    task = asyncio.create_task(worker.run(grace=5))
    try:

        async def all_started() -> bool:
            return started == set(job_ids)

        await wait_for(all_started, 20, "every handler to start")
        for job_id in job_ids:
            await transition(backend, job_id, "job.cancelled", {}, expire=60)

        async def all_stopped() -> bool:
            return not worker._held

        await wait_for(all_stopped, 20, "the worker to let go of every job")
    finally:
        worker.stop()
        await asyncio.wait_for(task, timeout=15)
    assert saw_cancel == set(job_ids[:4]), "the cooperative handlers saw the cancel"
    for job_id in job_ids:
        assert (await event_types(backend, job_id))[-1] == "job.cancelled"
    assert await backend.queue.reclaim("after", min_idle=0) == [], "every delivery was acked"


async def test_a_worker_on_many_partitions_keeps_connections_for_its_jobs(
    redis_url: str,
) -> None:
    """More partitions than the process's command pool has connections: each reader may hold
    one in a blocking read, and the jobs' own commands still get theirs at once."""
    many = settings(redis_url, queue_partitions=100, concurrency=4)
    backend = open_backend(many)
    await backend.start()
    registry = HandlerRegistry()

    @handler("quick", registry=registry)
    async def quick(ctx: JobContext) -> None:
        return None

    try:
        job_ids = [(await create_job(backend, "quick", {})).id for _ in range(10)]
        worker = Worker(backend, registry, many, name="many")
        began = time.monotonic()
        await run_until(worker, lambda: all_ended(backend, job_ids), "every job to end")
        # Readers blocked 0.5 s each on 100 partitions, a pool of 64 would delay the jobs'
        # commands by whole seconds.
        assert time.monotonic() - began < 3
    finally:
        await backend.close()


async def _monitor(redis_url: str, seen: list[dict[str, Any]], ready: asyncio.Event) -> None:
    """Every command the server runs, as MONITOR shows them, until cancelled."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        async with client.monitor() as monitor:
            ready.set()
            while True:
                seen.append(await monitor.next_command())
    finally:
        await client.aclose()


async def test_a_batch_reads_its_records_in_the_start_and_acks_with_the_next_read(
    redis_url: str,
) -> None:
    """Three round trips a batch on Redis: the queue read (the last batch's acks in front of
    it, one pipeline), start_job.lua, which reads the record it starts (no HGETALL of the
    worker's own), and the completions. An ack never travels behind a script in one pipeline:
    a script that met NOSCRIPT would have been skipped while the ack behind it still ran."""
    one = settings(redis_url, queue_partitions=1, concurrency=50)
    backend = open_backend(one)
    await backend.start()
    registry = HandlerRegistry()
    ran: list[str] = []

    @handler("quick", registry=registry)
    async def quick(ctx: JobContext) -> None:
        ran.append(ctx.job_id)

    seen: list[dict[str, Any]] = []
    ready = asyncio.Event()
    monitor = asyncio.create_task(_monitor(redis_url, seen, ready))
    try:
        job_ids = [(await create_job(backend, "quick", {})).id for _ in range(20)]
        await asyncio.wait_for(ready.wait(), 10)
        worker = Worker(backend, registry, one, name="trips")
        task = asyncio.create_task(worker.run(grace=5))
        try:
            # The test's own reads would show in the log: wait on the worker's state instead.
            async def finished() -> bool:
                return sorted(ran) == sorted(job_ids) and not worker._held

            await wait_for(finished, 20, "every job to end")
        finally:
            worker.stop()
            await asyncio.wait_for(task, timeout=15)
            monitor.cancel()
            await asyncio.gather(monitor, return_exceptions=True)
        assert await all_ended(backend, job_ids)
        assert await backend.queue.reclaim("after", min_idle=0) == [], "every delivery acked"
    finally:
        monitor.cancel()
        await backend.close()
    sent = [
        (c["client_address"], c["client_port"], c["command"].split(" ")[0].upper())
        for c in seen
        if c.get("client_type") != "lua"
    ]
    assert not [name for *_, name in sent if name == "HGETALL"], "records read in the start"
    by_connection: dict[tuple[str, str], list[str]] = {}
    for address, port, name in sent:
        by_connection.setdefault((address, port), []).append(name)
    acks = 0
    for names in by_connection.values():
        for at, name in enumerate(names):
            if name == "XACK":
                acks += 1
                assert names[at - 1 : at] != ["EVALSHA"], "no ack behind a script"
                following = names[at + 1 : at + 4]
                # In front of a read, or the last acks sent when the worker stopped.
                assert following in (["XDEL", "EVALSHA", "XREADGROUP"], ["XDEL"]), following
    assert acks >= 1


async def test_completions_whose_script_the_server_lost_are_published_before_the_ack(
    redis_url: str,
) -> None:
    """Scripts flushed while a batch runs (Redis restarted, `SCRIPT FLUSH`): the completions
    meet NOSCRIPT, are sent again with the script loaded, and only then acked; every job
    ends completed with each event once and nothing is left pending."""
    one = settings(redis_url, queue_partitions=1, concurrency=10)
    backend = open_backend(one)
    await backend.start()
    registry = HandlerRegistry()
    flusher = SyncRedis.from_url(redis_url)

    @handler("flushing", registry=registry)
    async def flushing(ctx: JobContext) -> None:
        flusher.script_flush()  # blocking, no await: the handler finishes in its batch

    try:
        job_ids = [(await create_job(backend, "flushing", {})).id for _ in range(10)]
        worker = Worker(backend, registry, one, name="noscript")
        await run_until(worker, lambda: all_ended(backend, job_ids), "every job to end")
        for job_id in job_ids:
            record = await load_job(backend, job_id)
            assert record is not None and (record.status, record.attempts) == ("completed", 1)
            assert await event_types(backend, job_id) == [
                "job.queued",
                "job.started",
                "job.completed",
            ]
        assert await backend.queue.reclaim("after", min_idle=0) == [], "every delivery acked"
    finally:
        flusher.close()
        await backend.close()
