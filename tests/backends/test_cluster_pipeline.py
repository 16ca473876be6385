"""The Cluster's routed pipelines (gateway/backends/redis_cluster_pipeline.py) on a real
cluster: a slot moved under a client whose map is stale (`MOVED`), a slot half-migrated
(`ASK`), no `COMMAND GETKEYS` on the way, a connection lost mid-batch (nothing re-sent), and
`gateway.publish_many` through a resharding."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

import gateway
from gateway.backends.redis_cluster_connection import RedisClusterConnection
from gateway.backends.redis_cluster_pipeline import OutcomeUnknown
from gateway.backends.redis_keys import stream_key
from tests.redis_cluster import ClusterNode, LocalRedisCluster, slot_of
from tests.support import async_wait_until


def getkeys_calls(cluster: LocalRedisCluster) -> int:
    """`COMMAND GETKEYS` calls summed over the masters (redis-py's key lookups)."""
    total = 0
    for master in cluster.masters():
        stats = master.client().info("commandstats")
        total += int(stats.get("cmdstat_command|getkeys", {}).get("calls", 0))
    return total


def another_master(cluster: LocalRedisCluster, key: str) -> ClusterNode:
    source = cluster.master_of_key(key)
    return next(master for master in cluster.masters() if master is not source)


@pytest.fixture
def monkeypatched_url(redis_cluster_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("REDIS_URL", redis_cluster_url)
    yield redis_cluster_url


async def test_a_pipeline_follows_moved_and_ask_without_command_getkeys(
    redis_cluster: LocalRedisCluster, redis_cluster_url: str
) -> None:
    connection = RedisClusterConnection(redis_cluster_url)
    await connection.initialize()
    try:
        keys = [f"gw:{{room:pipe-{i}}}:n" for i in range(24)]
        assert len({redis_cluster.master_of_key(key).port for key in keys}) == 3
        moved, asked = keys[0], keys[1]
        before = getkeys_calls(redis_cluster)

        # MOVED: the slot of `moved` goes to another master; the client's map still says not.
        target = another_master(redis_cluster, moved)
        redis_cluster.move_slot(slot_of(moved), target)
        # ASK: the slot of `asked` half-migrated; a key not yet on its old master goes to the
        # importing one (after ASKING), a key still there is served where it is.
        source = redis_cluster.master_of_key(asked)
        importer = another_master(redis_cluster, asked)
        source.client().set(asked, 10)
        importer.command("CLUSTER", "SETSLOT", slot_of(asked), "IMPORTING", source.node_id())
        source.command("CLUSTER", "SETSLOT", slot_of(asked), "MIGRATING", importer.node_id())
        fresh = "gw:{room:pipe-1}:fresh"  # the same slot, on neither node yet

        pipe = connection.redis.pipeline(transaction=False)
        for key in keys:
            pipe.incr(key)
        pipe.incr(fresh)
        replies = await pipe.execute()
        assert replies == [1, 11, *[1] * 22, 1]
        assert target.client().get(moved) == b"1"
        slot = slot_of(asked)  # `fresh` was written on the importer, `asked` stayed put
        assert importer.command("CLUSTER", "COUNTKEYSINSLOT", slot) == 1
        assert source.command("CLUSTER", "COUNTKEYSINSLOT", slot) == 1
        redis_cluster.move_slot(slot, importer)
        assert importer.client().mget(asked, fresh) == [b"11", b"1"]
        # A stream read's keys are placed locally too (the worker's claims).
        await connection.redis.xread({stream_key("room:pipe-0"): "0"}, count=1)
        assert getkeys_calls(redis_cluster) == before
    finally:
        await connection.close()
        redis_cluster.move_slot(slot_of(keys[1]), importer)  # finish the migration


async def test_a_connection_lost_mid_batch_sends_nothing_again(
    redis_cluster: LocalRedisCluster, redis_cluster_url: str
) -> None:
    """redis-py's ClusterPipeline sends the whole batch again after a connection error, so the
    INCR (a stand-in for a publish script) would run twice; here it runs once and the command
    whose reply never came is `OutcomeUnknown`."""
    connection = RedisClusterConnection(redis_cluster_url)
    await connection.initialize()
    counter, queue = "gw:{room:lost}:count", "gw:{room:lost}:queue"
    node = redis_cluster.master_of_key(counter)
    admin = node.client()
    try:
        pipe = connection.redis.pipeline(transaction=False)
        pipe.incr(counter)
        pipe.blpop([queue], timeout=5)
        running = asyncio.ensure_future(pipe.execute(raise_on_error=False))

        def blocked() -> list[Any]:
            return [c for c in admin.client_list() if c.get("cmd") == "blpop"]

        await async_wait_until(lambda: bool(blocked()), 5, "the BLPOP to block")
        admin.client_kill_filter(_id=blocked()[0]["id"])
        replies = await asyncio.wait_for(running, 5)
        assert replies[0] == 1 and isinstance(replies[1], OutcomeUnknown)
        assert admin.get(counter) == b"1"
    finally:
        admin.close()
        await connection.close()


def test_publish_many_through_a_resharding(
    redis_cluster: LocalRedisCluster, monkeypatched_url: str
) -> None:
    channels = [f"room:many-{i}" for i in range(12)]
    first = gateway.publish_many([(channel, "m", {"n": 1}) for channel in channels])
    assert len(first) == 12
    before = getkeys_calls(redis_cluster)
    moved = stream_key(channels[0])
    target = another_master(redis_cluster, moved)
    redis_cluster.move_slot(slot_of(moved), target)  # the publisher's map is now stale
    second = gateway.publish_many([(channel, "m", {"n": 2}) for channel in channels])
    assert len(second) == 12
    history = target.client().xrange(moved)
    assert [entry_id.decode() for entry_id, _fields in history] == [first[0], second[0]]
    assert getkeys_calls(redis_cluster) == before


def test_submit_many_on_a_cluster_answers_each_job(
    redis_cluster: LocalRedisCluster, monkeypatched_url: str
) -> None:
    """`gateway.submit_many` writes through the routed pipeline too (records, index, the first
    event, the queue entry: several slots, one pipeline per master)."""
    before = getkeys_calls(redis_cluster)
    job = {"type": "sleep", "data": {"seconds": 0}}
    answers = gateway.submit_many([job] * 6)
    assert [answer.get("status") for answer in answers] == ["queued"] * 6
    for answer in answers:
        key = f"gw:{{job:{answer['id']}}}:log"
        history = redis_cluster.master_of_key(key).client().xrange(key)
        assert [entry_id.decode() for entry_id, _fields in history] == [answer["last_event_id"]]
    assert getkeys_calls(redis_cluster) == before
