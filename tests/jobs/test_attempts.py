"""`GATEWAY_MAX_ATTEMPTS` is a hard limit: a job never runs more often than it allows.

The race these tests drive: a job whose worker died stays pending in the queue; a live worker
re-claims it after the visibility timeout. A re-claimed delivery that waits for a free slot
must not go idle again and be re-claimed a second time (by the same worker or another one),
or the job runs twice at once and one copy fails it while the other is still running.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from gateway.backends.bundle import Backend
from gateway.backends.redis import open_redis
from gateway.backends.stores import Attempt, Delivery
from gateway.jobs.model import create_job, job_channel, load_job, transition
from gateway.jobs.registry import HandlerRegistry, JobContext, handler
from gateway.jobs.worker import Worker
from gateway.settings import Settings
from tests.conftest import make_settings

VISIBILITY = 0.4
"""Shorter than the 1 s a worker's slots block waiting for new jobs: the window of the race."""


class Probe:
    """A handler that counts its runs and takes long enough for several re-claim rounds."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.runs: list[int] = []
        self.registry = HandlerRegistry()
        handler("probe", registry=self.registry)(self.run)

    async def run(self, ctx: JobContext) -> dict[str, Any]:
        self.runs.append(ctx.attempt)
        await asyncio.sleep(self.seconds)
        return {"attempt": ctx.attempt}


def worker_settings(max_attempts: int = 2) -> Settings:
    return make_settings(
        visibility_timeout=VISIBILITY, max_attempts=max_attempts, concurrency=4, job_ttl=60
    )


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def stalled_job(backend: Backend, attempts_done: int) -> tuple[str, Delivery]:
    """A job a dead worker took and started `attempts_done` times: pending, never acked."""
    record = await create_job(backend, "probe", {})
    delivery = await backend.queue.claim("dead-worker", block=2)
    assert delivery is not None and delivery.job_id == record.id
    await transition(
        backend,
        record.id,
        "job.started",
        {"attempt": attempts_done},
        {"attempts": str(attempts_done)},
    )
    return record.id, delivery


async def run_until_terminal(workers: list[Worker], backend: Backend, job_id: str) -> None:
    tasks = [asyncio.create_task(worker.run(grace=5)) for worker in workers]

    async def ended() -> bool:
        record = await load_job(backend, job_id)
        return record is not None and record.terminal

    try:
        await wait_for(ended, 20, f"job {job_id} to end")
        # Several more re-claim rounds: a duplicate delivery would show up here.
        await asyncio.sleep(6 * VISIBILITY)
    finally:
        for worker in workers:
            worker.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=15)


async def event_types(backend: Backend, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    history = await backend.bus.history(job_channel(job_id), None)
    return [(event.type, event.to_dict()["data"]) for event in history.events]


@pytest.fixture
async def redis_backends(redis_url: str) -> AsyncIterator[list[Backend]]:
    """Two workers' own connections to one real redis-server (two consumers in the group)."""
    backends = [open_redis(make_settings(redis_url)) for _ in range(2)]
    for backend in backends:
        await backend.start()
    yield backends
    for backend in backends:
        await backend.close()


async def test_reclaimed_delivery_waiting_for_a_slot_runs_once(backend: Backend) -> None:
    """One worker, four idle slots blocked in a 1 s claim: the re-claimed job runs once."""
    probe = Probe(seconds=4 * VISIBILITY)
    job_id, _stalled = await stalled_job(backend, attempts_done=1)
    worker = Worker(backend, probe.registry, worker_settings(max_attempts=2), name="live")
    await run_until_terminal([worker], backend, job_id)
    record = await load_job(backend, job_id)
    assert record is not None
    assert (record.status, record.attempts, probe.runs) == ("completed", 2, [2])
    assert [t for t, _ in await event_types(backend, job_id)] == [
        "job.queued",
        "job.started",
        "job.started",
        "job.completed",
    ]


async def test_two_workers_racing_for_a_stalled_delivery_run_it_once(
    redis_backends: list[Backend],
) -> None:
    """Two live workers (two consumers) re-claim the same stalled entry: one of them runs it."""
    probe = Probe(seconds=4 * VISIBILITY)
    job_id, _stalled = await stalled_job(redis_backends[0], attempts_done=1)
    workers = [
        Worker(backend, probe.registry, worker_settings(max_attempts=2), name=f"live-{n}")
        for n, backend in enumerate(redis_backends)
    ]
    await run_until_terminal(workers, redis_backends[0], job_id)
    record = await load_job(redis_backends[0], job_id)
    assert record is not None
    assert (record.status, record.attempts, probe.runs) == ("completed", 2, [2])


@pytest.mark.serial  # a heartbeat every 0.13 s against a 0.4 s visibility: alone under xdist
async def test_delivery_held_by_a_live_worker_is_never_reclaimed_by_another(
    backend: Backend,
) -> None:
    """Another consumer polls for stalled deliveries every 20 ms, in any phase against the
    worker's own re-claim ticks: while the live worker holds the job, waiting for a slot or
    running, it is never stalled, so no other worker gets a copy to run."""
    probe = Probe(seconds=4 * VISIBILITY)
    job_id, _stalled = await stalled_job(backend, attempts_done=1)
    worker = Worker(backend, probe.registry, worker_settings(max_attempts=2), name="live")
    stolen: list[Delivery] = []

    async def worker_holds_it() -> bool:
        return bool(worker._held)

    async def steal() -> None:
        await wait_for(worker_holds_it, 10, "the live worker to re-claim the job")
        while True:
            stolen.extend(await backend.queue.reclaim("thief", VISIBILITY))
            await asyncio.sleep(0.02)

    thief = asyncio.create_task(steal())
    try:
        await run_until_terminal([worker], backend, job_id)
    finally:
        thief.cancel()
        await asyncio.gather(thief, return_exceptions=True)
    record = await load_job(backend, job_id)
    assert record is not None
    assert stolen == []
    assert (record.status, record.attempts, probe.runs) == ("completed", 2, [2])


async def test_job_out_of_attempts_is_failed_without_running(backend: Backend) -> None:
    """The delivery after the last allowed attempt fails the job; no handler starts."""
    probe = Probe(seconds=0)
    job_id, _stalled = await stalled_job(backend, attempts_done=2)
    worker = Worker(backend, probe.registry, worker_settings(max_attempts=2), name="live")
    await run_until_terminal([worker], backend, job_id)
    record = await load_job(backend, job_id)
    assert record is not None and record.error is not None
    assert (record.status, record.attempts, probe.runs) == ("failed", 2, [])
    assert record.error["type"] == "too_many_deliveries"
    events = await event_types(backend, job_id)
    assert events[-1][0] == "job.failed" and events[-1][1]["attempts"] == 2
    assert [t for t, _ in events].count("job.started") == 1


async def test_begin_attempt_holds_the_limit_under_concurrent_deliveries(
    backend: Backend,
) -> None:
    """Forty deliveries of one job asking at once: exactly `max_attempts` are let through."""
    record = await create_job(backend, "probe", {})
    answers = await asyncio.gather(*(backend.jobs.begin_attempt(record.id, 3) for _ in range(40)))
    granted = sorted(a.number for a in answers if a is not None and a.granted)
    refused = [a for a in answers if a is not None and not a.granted]
    assert granted == [1, 2, 3]
    assert refused == [Attempt(3, granted=False)] * 37
    stored = await load_job(backend, record.id)
    assert stored is not None and stored.attempts == 3


async def test_begin_attempt_refuses_an_ended_or_missing_job(backend: Backend) -> None:
    record = await create_job(backend, "probe", {})
    assert await backend.jobs.begin_attempt(record.id, 3) == Attempt(1, granted=True)
    await transition(backend, record.id, "job.cancelled", {})
    assert await backend.jobs.begin_attempt(record.id, 3) is None
    stored = await load_job(backend, record.id)
    assert stored is not None and stored.attempts == 1
    assert await backend.jobs.begin_attempt("no-such-job", 3) is None
