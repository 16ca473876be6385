"""The job queue contract: every test runs against the memory queue and a real redis-server."""

from __future__ import annotations

import asyncio

from gateway.backends.stores import Attempt, JobQueue, JobStore


async def test_job_queue_claim_ack_and_attempts(queue: JobQueue, jobs: JobStore) -> None:
    await jobs.create("q1", {"id": "q1", "type": "sleep", "status": "queued"})
    await queue.enqueue("q1")
    delivery = await queue.claim("w1", block=2)
    assert delivery is not None and delivery.job_id == "q1"
    assert await jobs.begin_attempt("q1", max_attempts=3) == Attempt(1, granted=True)
    assert await queue.claim("w1", block=0.1) is None
    await queue.ack(delivery)
    assert await queue.reclaim("w2", min_idle=0) == []


async def test_unacked_delivery_is_reclaimed_after_idle(queue: JobQueue) -> None:
    await queue.enqueue("q2")
    delivery = await queue.claim("dead-worker", block=2)
    assert delivery is not None
    assert await queue.reclaim("w2", min_idle=5) == []
    await asyncio.sleep(0.15)
    reclaimed = await queue.reclaim("w2", min_idle=0.1)
    assert [d.job_id for d in reclaimed] == ["q2"]
    await queue.touch("w2", reclaimed[0])
    assert await queue.reclaim("w3", min_idle=1) == []
    await queue.ack(reclaimed[0])


async def test_delayed_enqueue_waits_until_due(queue: JobQueue) -> None:
    await queue.enqueue("later", delay=0.4)
    assert await queue.claim("w", block=0.1) is None
    delivery = await queue.claim("w", block=3)
    assert delivery is not None and delivery.job_id == "later"
    await queue.ack(delivery)


async def test_requeue_leaves_one_delivery_of_the_job(queue: JobQueue) -> None:
    await queue.enqueue("again")
    first = await queue.claim("stopping-worker", block=2)
    assert first is not None
    await queue.requeue(first)
    second = await queue.claim("w", block=2)
    assert second is not None and second.job_id == "again" and second.token != first.token
    # The first delivery is finished: a re-claim finds only the new one, never a second copy.
    reclaimed = await queue.reclaim("w2", min_idle=0)
    assert [d.token for d in reclaimed] == [second.token]
    await queue.ack(reclaimed[0])


async def test_requeue_with_a_delay_waits_until_due(queue: JobQueue) -> None:
    await queue.enqueue("retry")
    first = await queue.claim("w", block=2)
    assert first is not None
    await queue.requeue(first, delay=0.4)
    assert await queue.claim("w", block=0.1) is None
    assert await queue.reclaim("w2", min_idle=0) == []
    later = await queue.claim("w", block=3)
    assert later is not None and later.job_id == "retry"
    await queue.ack(later)
