"""Backend contract for the job API's store: index, idempotency keys, webhook schedule, retention.

Runs against the memory backend and a real Redis server (the `backend` fixture).
"""

from __future__ import annotations

import asyncio

from gateway.backends.base import Backend
from gateway.jobs.model import create_job, load_job, transition


async def test_job_index_is_newest_first_and_pages_by_position(backend: Backend) -> None:
    for ms, job_id in [(1000, "a"), (2000, "b"), (2000, "c"), (3000, "d")]:
        await backend.index_job(job_id, ms)
    assert await backend.job_index(None, 10) == [(3000, "d"), (2000, "c"), (2000, "b"), (1000, "a")]
    first = await backend.job_index(None, 2)
    assert first == [(3000, "d"), (2000, "c")]
    assert await backend.job_index(first[-1], 2) == [(2000, "b"), (1000, "a")]
    assert await backend.job_index((1000, "a"), 2) == []
    await backend.unindex_jobs(["c", "unknown"])
    assert [job_id for _ms, job_id in await backend.job_index(None, 10)] == ["d", "b", "a"]


async def test_create_job_stores_publishes_queued_and_enqueues(backend: Backend) -> None:
    """`create_job` uses `store_job` and `publish_and_enqueue` (one round trip each on Redis):
    the record exists, `job.queued` is the job's first event, and a worker can claim it."""
    record = await create_job(backend, "sleep", {"seconds": 0})
    stored = await load_job(backend, record.id)
    assert stored is not None and stored.status == "queued"
    assert stored.last_event_id == record.last_event_id is not None
    history = await backend.history(f"job:{record.id}", None)
    assert [e.type for e in history.events] == ["job.queued"]
    assert history.events[0].id == record.last_event_id
    delivery = await backend.claim("w", block=2)
    assert delivery is not None and delivery.job_id == record.id
    await backend.ack(delivery)


async def test_create_job_indexes_it(backend: Backend) -> None:
    first = await create_job(backend, "sleep", {})
    second = await create_job(backend, "sleep", {})
    ids = [job_id for _ms, job_id in await backend.job_index(None, 10)]
    assert set(ids) == {first.id, second.id}


async def test_idempotency_key_claim_finish_abandon(backend: Backend) -> None:
    assert await backend.idempotency_begin("k1", b"claim", 60) is None
    assert await backend.idempotency_begin("k1", b"other", 60) == b"claim"
    await backend.idempotency_finish("k1", b"done", 60)
    assert await backend.idempotency_begin("k1", b"again", 60) == b"done"
    await backend.idempotency_abandon("k1")
    assert await backend.idempotency_begin("k1", b"fresh", 60) is None


async def test_idempotency_key_expires(backend: Backend) -> None:
    assert await backend.idempotency_begin("short", b"claim", 1) is None
    await asyncio.sleep(1.1)  # the TTL itself is what is under test
    assert await backend.idempotency_begin("short", b"second", 1) is None


async def test_only_one_concurrent_claim_wins(backend: Backend) -> None:
    results = await asyncio.gather(
        *(backend.idempotency_begin("race", f"c{i}".encode(), 60) for i in range(20))
    )
    assert sum(result is None for result in results) == 1


async def test_webhook_schedule_claims_due_deliveries_with_a_lease(backend: Backend) -> None:
    import time

    now = time.time()
    await backend.schedule_webhook("due", b"payload-1", now - 1)
    await backend.schedule_webhook("later", b"payload-2", now + 3600)
    assert await backend.claim_webhooks(10, lease=0.3) == [("due", b"payload-1")]
    assert await backend.claim_webhooks(10, lease=0.3) == []  # leased to the first claimer
    await asyncio.sleep(0.4)  # the lease running out is what is under test
    assert await backend.claim_webhooks(10, lease=30) == [("due", b"payload-1")]
    await backend.finish_webhook("due")
    await backend.schedule_webhook("later", b"payload-3", time.time() - 1)
    assert await backend.claim_webhooks(10, lease=30) == [("later", b"payload-3")]


async def test_terminal_job_takes_its_history_with_it(backend: Backend) -> None:
    record = await create_job(backend, "sleep", {})
    await transition(backend, record.id, "job.started", {})
    await transition(backend, record.id, "job.completed", {}, expire=1)
    assert len((await backend.history(record.channel, None)).events) == 3
    deadline = asyncio.get_running_loop().time() + 5
    while asyncio.get_running_loop().time() < deadline:
        gone = await load_job(backend, record.id) is None
        if gone and not (await backend.history(record.channel, None)).events:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the job record and its history should expire after the job TTL")
