"""The Redis Cluster bus beyond the shared contract: one sharded subscription connection per
shard, channels that follow a failover and a slot migration (re-read from history, once, in
order), the gap a failover's lost writes leave, and `GATEWAY_REPLICA_WAIT`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection
from typing import Any

import pytest
import redis

from gateway.backends.bundle import Backend
from gateway.backends.redis_cluster_bus import RedisClusterBus
from gateway.backends.redis_cluster_connection import RedisClusterConnection
from gateway.backends.redis_cluster_pubsub import ShardedSubscriptions
from gateway.backends.redis_keys import bus_channel, stream_key
from gateway.backends.redis_sync import sync_redis
from gateway.backends.url import open_backend
from gateway.errors import BackendUnavailable, ReplicasBehind
from gateway.events import Event
from gateway.settings import ReplicaWait
from tests.conftest import make_settings
from tests.redis_cluster import LocalRedisCluster, slot_of
from tests.support import async_wait_until, free_port


async def open_cluster(url: str, **changes: Any) -> Backend:
    backend = open_backend(make_settings(url, pubsub_probe=0.5, **changes))
    await backend.start()
    return backend


@pytest.fixture
async def cluster_backend(redis_cluster_url: str) -> AsyncIterator[Backend]:
    backend = await open_cluster(redis_cluster_url)
    yield backend
    await backend.close()


def channels_on_every_shard(cluster: LocalRedisCluster, per_shard: int) -> dict[int, list[str]]:
    """`per_shard` room channels served by each master (by port)."""
    found: dict[int, list[str]] = {master.port: [] for master in cluster.masters()}
    owners = cluster.slot_owners()
    n = 0
    while any(len(names) < per_shard for names in found.values()):
        channel = f"room:spread-{n}"
        names = found[owners[slot_of(stream_key(channel))].port]
        if len(names) < per_shard:
            names.append(channel)
        n += 1
    return found


def pubsub_connections(cluster: LocalRedisCluster) -> dict[int, int]:
    """Pub/sub connections per master (by port), as each master lists its clients."""
    counts = {}
    for master in cluster.masters():
        clients = master.client().client_list(_type="pubsub")
        counts[master.port] = len(clients)
    return counts


async def test_one_subscription_connection_per_shard(
    redis_cluster: LocalRedisCluster, cluster_backend: Backend
) -> None:
    bus = cluster_backend.bus
    assert isinstance(bus, RedisClusterBus)
    spread = channels_on_every_shard(redis_cluster, 5)
    heard: list[Event] = []
    bus.add_listener(heard.append)
    for names in spread.values():
        for channel in names:
            await bus.subscribe(channel)
    assert pubsub_connections(redis_cluster) == {port: 1 for port in spread}
    assert sorted(bus.subscriptions.subscriptions_by_shard().values()) == [5, 5, 5]
    published = [await bus.publish(c, "m", 1) for names in spread.values() for c in names]
    await async_wait_until(lambda: len(heard) == 15, 5, "every channel's event")
    assert {e.id for e in heard} == {e.id for e in published if e is not None}
    # Unsubscribing the last channel of a shard closes its connection.
    for channel in spread[next(iter(spread))]:
        await bus.unsubscribe(channel)
    await async_wait_until(
        lambda: sorted(pubsub_connections(redis_cluster).values()) == [0, 1, 1],
        5,
        "the emptied shard's connection to close",
    )


async def publish_until_accepted(bus: Any, channel: str, n: int) -> str:
    """Publish, retrying while the channel's shard is failing over."""
    for _ in range(400):
        try:
            event = await bus.publish(channel, "m", {"n": n})
            assert event is not None
            return str(event.id)
        except BackendUnavailable:
            await asyncio.sleep(0.05)
    raise AssertionError(f"publish {n} to {channel} never accepted")


@pytest.fixture
def healed(redis_cluster: LocalRedisCluster) -> Any:
    """Nodes a test kills are started again after it, and the cluster made whole."""
    yield redis_cluster
    for node in redis_cluster.nodes:
        if not node.running:
            node.start()
        redis_cluster.mend_replication(node)
    redis_cluster.wait_healthy(60)


async def test_channels_follow_a_failover_and_the_bus_recovers(
    healed: LocalRedisCluster, cluster_backend: Backend
) -> None:
    bus = cluster_backend.bus
    assert isinstance(bus, RedisClusterBus)
    spread = channels_on_every_shard(healed, 1)
    victim_port, other_port = list(spread)[:2]
    doomed, spared = spread[victim_port][0], spread[other_port][0]
    heard: list[Event] = []
    bus.add_listener(heard.append)
    recoveries: list[int] = []

    async def recovered(_channels: Collection[str] | None) -> None:
        recoveries.append(1)

    bus.add_recovery_listener(recovered)
    await bus.subscribe(doomed)
    await bus.subscribe(spared)
    await asyncio.to_thread(healed.kill_master, healed.node(victim_port))
    await async_wait_until(lambda: bool(recoveries), 20, "the bus to re-subscribe and recover")
    after = await publish_until_accepted(bus, doomed, 1)
    spared_id = await publish_until_accepted(bus, spared, 2)
    await async_wait_until(lambda: len(heard) >= 2, 5, "live events after the failover")
    assert sorted(e.id for e in heard) == sorted([after, spared_id])
    assert await bus.ping()


async def test_a_shard_reader_coming_back_recovers_only_its_shards_channels(
    redis_cluster: LocalRedisCluster, cluster_backend: Backend
) -> None:
    bus = cluster_backend.bus
    assert isinstance(bus, RedisClusterBus)
    spread = channels_on_every_shard(redis_cluster, 2)
    for names in spread.values():
        for channel in names:
            await bus.subscribe(channel)
    recovered: list[set[str]] = []

    async def recovery(channels: Collection[str] | None) -> None:
        recovered.append(set(channels) if channels is not None else {"every channel"})

    bus.add_recovery_listener(recovery)
    port = next(iter(spread))
    redis_cluster.node(port).client().client_kill_filter(_type="pubsub")
    await async_wait_until(lambda: bool(recovered), 10, "the shard's reader to come back")
    assert recovered == [set(spread[port])]


async def test_a_reader_reaching_a_replica_subscribes_on_the_master_and_recovers(
    redis_cluster: LocalRedisCluster, cluster_backend: Backend
) -> None:
    """A shard reader that reconnects to a node that is a replica now (an old master restarted
    after its failover) must not subscribe there: a replica accepts SSUBSCRIBE for its master's
    slots but hears nothing until the master counts it as a replica, which left a gateway's
    clients deaf in the failover test. Here a live channel is put on a replica's reader, as
    a reconnect after a failover does: it must end on its master, with a recovery."""
    bus = cluster_backend.bus
    assert isinstance(bus, RedisClusterBus)
    channel = "room:on-a-replica"
    master = redis_cluster.master_of_key(stream_key(channel))
    replica = redis_cluster.replicas_of(master)[0]
    heard: list[Event] = []
    bus.add_listener(heard.append)
    recoveries: list[int] = []

    async def recovered(_channels: Collection[str] | None) -> None:
        recoveries.append(1)

    bus.add_recovery_listener(recovered)
    await bus.subscribe(channel)
    subscriptions = bus.subscriptions
    name = bus_channel(channel).encode()
    assert subscriptions.home[name].shard == ("127.0.0.1", master.port)
    await subscriptions.move(name, subscriptions.home[name], ("127.0.0.1", replica.port))
    await async_wait_until(
        lambda: subscriptions.home[name].shard == ("127.0.0.1", master.port) and bool(recoveries),
        10,
        "the channel to be subscribed on its master again, and recovered",
    )
    assert subscriptions.subscriptions_by_shard() == {f"127.0.0.1:{master.port}": 1}
    assert replica.client().client_list(_type="pubsub") == []
    event = await bus.publish(channel, "m", 1)
    assert event is not None
    await async_wait_until(lambda: [e.id for e in heard] == [event.id], 5, "the live event")


async def test_a_migrated_slot_takes_its_subscribers_along(
    redis_cluster: LocalRedisCluster, cluster_backend: Backend
) -> None:
    bus = cluster_backend.bus
    assert isinstance(bus, RedisClusterBus)
    channel = "room:migrating"
    slot = slot_of(stream_key(channel))
    source = redis_cluster.master_of_slot(slot)
    target = next(m for m in redis_cluster.masters() if m is not source)
    heard: list[Event] = []
    bus.add_listener(heard.append)
    recoveries: list[int] = []

    async def recovered(_channels: Collection[str] | None) -> None:
        recoveries.append(1)

    bus.add_recovery_listener(recovered)
    await bus.subscribe(channel)
    before = await bus.publish(channel, "m", 0)
    await async_wait_until(lambda: len(heard) == 1, 5, "the event before the move")
    await asyncio.to_thread(redis_cluster.move_slot, slot, target)
    await async_wait_until(lambda: bool(recoveries), 10, "the re-subscription on the new owner")
    after = await publish_until_accepted(bus, channel, 1)
    await async_wait_until(lambda: len(heard) == 2, 5, "the event after the move")
    assert [e.id for e in heard] == [before.id if before else None, after]
    assert bus.subscriptions.subscriptions_by_shard() == {f"127.0.0.1:{target.port}": 1}
    history = await bus.history(channel, None)
    assert [e.id for e in history.events] == [e.id for e in heard] and history.complete
    redis_cluster.move_slot(slot, source)  # as it was, for the tests that follow


async def test_writes_lost_in_a_failover_are_a_gap_never_silence(
    healed: LocalRedisCluster, cluster_backend: Backend
) -> None:
    """The replica promoted did not have the last acknowledged publishes: a reader resuming
    from any of them is told the history is incomplete (the `p` chain is broken)."""
    bus = cluster_backend.bus
    channel = "room:lossy"
    master = healed.master_of_key(stream_key(channel))
    replica = healed.replicas_of(master)[0]
    kept = await bus.publish(channel, "m", 1)
    assert kept is not None
    wait = master.client().execute_command("WAIT", 1, 2000)
    assert wait == 1, "the first event reached the replica"
    healed.cut_replication(master, replica)
    lost = [await bus.publish(channel, "m", n) for n in (2, 3)]
    assert all(lost)
    await asyncio.to_thread(healed.kill_master, master)
    healed.mend_replication(replica)
    after_lost = await publish_until_accepted(bus, channel, 4)
    for event in lost:
        assert event is not None
        history = await bus.history(channel, event.id)
        assert not history.complete, f"resuming from lost {event.id} is a gap"
        assert [e.id for e in history.events] == [after_lost]
    history = await bus.history(channel, kept.id)
    assert history.complete and [e.id for e in history.events] == [after_lost]


async def test_replica_wait_makes_a_publish_count_only_once_replicated(
    redis_cluster_url: str,
) -> None:
    backend = await open_cluster(
        redis_cluster_url,
        replica_wait={"room": ReplicaWait(1, 2000), "news": ReplicaWait(2, 100)},
    )
    try:
        bus = backend.bus
        event = await bus.publish("room:durable", "m", 1)
        assert event is not None
        # One replica per master: two acknowledgements never come; the publish does not count.
        with pytest.raises(ReplicasBehind, match="acknowledged by 1 of 2 replicas"):
            await bus.publish("news:durable", "m", 1)
        assert (await bus.history("news:durable", None)).events, "stored on the master all the same"
        assert await bus.publish("other:fast", "m", 1) is not None
    finally:
        await backend.close()


async def test_replica_wait_refuses_a_publish_whose_replica_is_cut_off(
    healed: LocalRedisCluster, redis_cluster_url: str
) -> None:
    backend = await open_cluster(redis_cluster_url, replica_wait={"room": ReplicaWait(1, 200)})
    try:
        channel = "room:cutoff"
        master = healed.master_of_key(stream_key(channel))
        healed.cut_replication(master, healed.replicas_of(master)[0])
        with pytest.raises(ReplicasBehind, match="0 of 1"):
            await backend.bus.publish(channel, "m", 1)
    finally:
        await backend.close()


def test_replica_wait_holds_for_gateway_publish_too(
    redis_cluster_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway

    monkeypatch.setenv("GATEWAY_REPLICA_WAIT", "room=1/2000 news=2/100")
    assert gateway.publish("room:sync-durable", "m", 1, redis_url=redis_cluster_url)
    with pytest.raises(gateway.PublishError, match="acknowledged by 1 of 2 replicas"):
        gateway.publish("news:sync-durable", "m", 1, redis_url=redis_cluster_url)


def test_sharded_publish_reaches_ssubscribe_only(redis_cluster_url: str) -> None:
    """The sync publisher (`gateway.publish`) uses SPUBLISH on a cluster: a plain SUBSCRIBE
    hears nothing, an SSUBSCRIBE on the slot's master does."""
    import gateway

    client = sync_redis(redis_cluster_url)
    assert isinstance(client, redis.RedisCluster)
    name = bus_channel("room:sharded")
    node = client.get_node_from_key(name)
    plain = redis.Redis(host=node.host, port=node.port)
    sharded = plain.pubsub()
    sharded.ssubscribe(name)
    broadcast = plain.pubsub()
    broadcast.subscribe(name)
    assert sharded.get_sharded_message(timeout=2)["type"] == "ssubscribe"
    assert broadcast.get_message(timeout=2)["type"] == "subscribe"
    event_id = gateway.publish("room:sharded", "m", {"x": 1}, redis_url=redis_cluster_url)
    message = sharded.get_sharded_message(timeout=2)
    assert message is not None and event_id.encode() in message["data"]
    assert broadcast.get_message(timeout=0.5) is None
    plain.close()


async def test_an_unreachable_cluster_is_unavailable_not_an_error() -> None:
    """No node answers (the gateway is cut off from the cluster): every part says
    `BackendUnavailable` (503, retried), as with one Redis down, and readiness fails."""
    seed = f"127.0.0.1:{free_port()}"
    backend = open_backend(make_settings(f"redis+cluster://{seed}"))
    await backend.start()
    try:
        with pytest.raises(BackendUnavailable):
            await backend.bus.publish("room:nowhere", "m", 1)
        with pytest.raises(BackendUnavailable):
            await backend.bus.subscribe("room:nowhere")
        with pytest.raises(BackendUnavailable):
            await backend.bus.history("room:nowhere", None)
        with pytest.raises(BackendUnavailable):
            await backend.jobs.get("0123456789abcdef")
        with pytest.raises(BackendUnavailable):
            await backend.queue.enqueue("0123456789abcdef")
        assert not await backend.bus.ping()
        assert await backend.bus.shard_status() == {seed: False}
    finally:
        await backend.close()


async def test_a_shard_reader_that_fails_comes_back_and_reports_its_channels(
    redis_cluster_url: str,
) -> None:
    """A reader must never die silently: whatever fails in it (here the message callback,
    once), it reconnects, subscribes its channels again and reports them re-subscribed (the
    bus then re-reads what was missed); before, a non-Redis error ended its task and its
    channels stayed deaf while readiness stayed green."""
    connection = RedisClusterConnection(redis_cluster_url)
    heard: list[bytes] = []
    resubscribed: list[set[bytes]] = []
    failures = [RuntimeError("a callback failing once")]

    def on_message(_name: bytes, payload: bytes) -> None:
        if failures:
            raise failures.pop()
        heard.append(payload)

    subscriptions = ShardedSubscriptions(connection, 0.5, on_message, resubscribed.append)
    name = bus_channel("room:faulty-callback").encode()
    publisher = sync_redis(redis_cluster_url)
    try:
        await subscriptions.add(name)
        publisher.execute_command("SPUBLISH", name, b"first")
        await async_wait_until(lambda: resubscribed == [{name}], 10, "the reader to come back")
        assert subscriptions.live()
        publisher.execute_command("SPUBLISH", name, b"second")
        await async_wait_until(lambda: heard == [b"second"], 5, "the next message")
    finally:
        await subscriptions.close()
        await connection.close()
