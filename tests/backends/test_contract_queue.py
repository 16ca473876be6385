"""The job queue contract: every test runs against the memory queue and a real redis-server,
each with one partition and with three (`GATEWAY_QUEUE_PARTITIONS`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.backends.bundle import Backend
from gateway.backends.redis_keys import queue_keys, queue_partition
from gateway.backends.stores import Attempt, Delivery, JobQueue, JobStore
from gateway.backends.url import open_backend
from tests.conftest import make_settings

PARTITIONED = 3


@pytest.fixture(
    params=[("memory", 1), ("redis", 1), ("memory", PARTITIONED), ("redis", PARTITIONED)],
    ids=["memory", "redis", f"memory-{PARTITIONED}", f"redis-{PARTITIONED}"],
)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """The conftest's backend, also with a partitioned queue."""
    kind, partitions = request.param
    url = request.getfixturevalue("redis_url") if kind == "redis" else ""
    instance = open_backend(make_settings(url, queue_partitions=partitions))
    await instance.start()
    yield instance
    await instance.close()


def ids_over_partitions(prefix: str, partitions: int, each: int = 2) -> list[str]:
    """Job ids covering every partition, `each` per partition, in id order."""
    found: dict[int, list[str]] = {p: [] for p in range(partitions)}
    n = 0
    while any(len(ids) < each for ids in found.values()):
        job_id = f"{prefix}{n}"
        n += 1
        if len(found[queue_partition(job_id, partitions)]) < each:
            found[queue_partition(job_id, partitions)].append(job_id)
    return [job_id for ids in found.values() for job_id in ids]


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


async def test_each_job_is_queued_on_its_partition_in_order(queue: JobQueue) -> None:
    job_ids = ids_over_partitions("order", queue.partitions, each=3)
    for job_id in job_ids:
        await queue.enqueue(job_id)
    for partition in range(queue.partitions):
        taken = await queue.claim_many("w", partition, 100, block=0)
        expected = [j for j in job_ids if queue_partition(j, queue.partitions) == partition]
        assert [d.job_id for d in taken] == expected, "one partition keeps its own order"
        assert {d.partition for d in taken} == {partition}
        await queue.ack_many(taken)
    assert await queue.claim("w", block=0.05) is None


async def test_claim_many_takes_no_more_than_asked_and_never_waits_at_zero(
    queue: JobQueue,
) -> None:
    job_ids = ids_over_partitions("count", queue.partitions, each=4)
    for job_id in job_ids:
        await queue.enqueue(job_id)
    taken = await queue.claim_many("w", 0, 3, block=0)
    assert len(taken) == 3
    rest = await queue.claim_many("w", 0, 100, block=0)
    assert len(rest) == 1
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await queue.claim_many("w", 0, 10, block=0) == []
    assert loop.time() - began < 0.5
    await queue.ack_many([*taken, *rest])


async def test_claim_finds_jobs_of_every_partition(queue: JobQueue) -> None:
    job_ids = ids_over_partitions("any", queue.partitions, each=1)
    for job_id in job_ids:
        await queue.enqueue(job_id)
    claimed: list[Delivery] = []
    for _ in job_ids:
        delivery = await queue.claim("w", block=2)
        assert delivery is not None
        claimed.append(delivery)
    assert sorted(d.job_id for d in claimed) == sorted(job_ids)
    await queue.ack_many(claimed)


async def test_delayed_jobs_wait_on_their_own_partition(queue: JobQueue) -> None:
    job_ids = ids_over_partitions("delayed", queue.partitions, each=1)
    for job_id in job_ids:
        await queue.enqueue(job_id, delay=0.3)
    for job_id in job_ids:
        partition = queue_partition(job_id, queue.partitions)
        assert await queue.claim_many("w", partition, 10, block=0) == []
    for job_id in job_ids:
        partition = queue_partition(job_id, queue.partitions)
        taken = await queue.claim_many("w", partition, 10, block=3)
        assert [d.job_id for d in taken] == [job_id]
        await queue.ack_many(taken)


async def test_reclaim_touch_ack_and_requeue_span_partitions(queue: JobQueue) -> None:
    job_ids = ids_over_partitions("stall", queue.partitions, each=1)
    for job_id in job_ids:
        await queue.enqueue(job_id)
    held = [
        delivery
        for partition in range(queue.partitions)
        for delivery in await queue.claim_many("dead", partition, 10, block=0)
    ]
    assert sorted(d.job_id for d in held) == sorted(job_ids)
    await asyncio.sleep(0.15)
    reclaimed = await queue.reclaim("live", min_idle=0.1, count=100)
    assert sorted(d.job_id for d in reclaimed) == sorted(job_ids)
    await queue.touch_many("live", reclaimed)
    assert await queue.reclaim("thief", min_idle=1) == []
    # A requeued delivery comes back on its own partition; the rest are finished.
    again = reclaimed[-1]
    await queue.requeue(again)
    await queue.ack_many(reclaimed[:-1])
    taken = await queue.claim_many("live", again.partition, 10, block=2)
    assert [d.job_id for d in taken] == [again.job_id]
    await queue.ack_many(taken)
    assert await queue.reclaim("thief", min_idle=0) == []


async def test_redis_partitions_use_their_own_keys(backend: Backend, redis_url: str) -> None:
    """Producers write the fixed format: `XADD <partition stream> * job <id>`, delayed jobs
    `ZADD <partition delayed> <due ms> <id>` (CONTRACT.md); workers read it from there."""
    if backend.kind != "redis" or backend.queue.partitions == 1:
        pytest.skip("the partition keys of a partitioned Redis queue")
    import redis.asyncio as aioredis

    queue = backend.queue
    client = aioredis.Redis.from_url(redis_url)
    try:
        job_ids = ids_over_partitions("keys", queue.partitions, each=1)
        for job_id in job_ids:
            await queue.enqueue(job_id)
            await queue.enqueue(job_id + "-later", delay=60)
        for job_id in job_ids:
            stream, delayed = queue_keys(queue_partition(job_id, queue.partitions))
            entries = await client.xrange(stream)
            assert [fields[b"job"].decode() for _id, fields in entries] == [job_id]
            later = queue_keys(queue_partition(job_id + "-later", queue.partitions))[1]
            assert await client.zscore(later, job_id + "-later") is not None
            assert delayed.startswith(stream)
    finally:
        await client.aclose()


async def test_wait_for_jobs_wakes_on_a_new_job_and_takes_none(queue: JobQueue) -> None:
    job_ids = [j for j in ids_over_partitions("wake", queue.partitions, each=5)]
    partition = queue_partition(job_ids[0], queue.partitions)
    mine = [j for j in job_ids if queue_partition(j, queue.partitions) == partition]
    loop = asyncio.get_running_loop()
    began = loop.time()
    await queue.wait_for_jobs(partition, 0.2)
    assert loop.time() - began >= 0.15, "nothing came: it waited its timeout"
    waiter = asyncio.create_task(queue.wait_for_jobs(partition, 10))
    began = loop.time()
    queued: list[str] = []
    for job_id in mine:  # until the waiter is surely waiting and wakes
        queued.append(job_id)
        await queue.enqueue(job_id)
        done, _ = await asyncio.wait({waiter}, timeout=0.3)
        if done:
            break
    assert waiter.done() and loop.time() - began < 5
    taken = await queue.claim_many("w", partition, 10, block=0)
    assert [d.job_id for d in taken] == queued, "waiting took none of them"
    await queue.ack_many(taken)
