"""The Redis Cluster bus: the Redis bus's streams and scripts, live delivery by sharded pub/sub.

Each channel's stream, live pub/sub name and job record share one hash tag, so one publish is
one script on one shard (publish.lua with `SPUBLISH`). Live delivery is `ShardedSubscriptions`
(one connection per shard); a channel subscribed again after a loss (failover, slot migration,
reconnect) triggers the recovery a Redis restart triggers on one Redis: the hub re-reads the
stream after the last id it dispatched, holding live events back until it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from redis.exceptions import RedisError, ResponseError

from gateway.backends.bus import Bus, JobUpdate
from gateway.backends.redis_bus import RedisBus
from gateway.backends.redis_cluster_connection import RedisClusterConnection
from gateway.backends.redis_cluster_pubsub import ShardedSubscriptions
from gateway.backends.redis_keys import bus_channel, publish_call, published
from gateway.errors import BackendUnavailable, ReplicasBehind
from gateway.events import Event
from gateway.metrics import METRICS
from gateway.settings import ReplicaWait, Settings


class RedisClusterBus(RedisBus):
    kind = "redis-cluster"

    def __init__(self, settings: Settings, connection: RedisClusterConnection) -> None:
        Bus.__init__(self, settings)  # not RedisBus's: no one-server pub/sub client here
        self._connection = connection
        self._cluster = connection
        self._redis = connection.redis
        self._subscribed: dict[bytes, str] = {}
        """Subscribed channels by their sharded pub/sub name."""
        self._recoveries: set[asyncio.Future[None]] = set()
        self._closing = False
        self.reconnects = 0
        self.subscriptions = ShardedSubscriptions(
            connection, settings.pubsub_probe, self._heard, self._resubscribed
        )

    async def start(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._cluster.initialize()

    async def close(self) -> None:
        self._closing = True
        await self.subscriptions.close()

    async def ping(self) -> bool:
        shards = await self.shard_status()
        return bool(shards) and all(shards.values())

    async def shard_status(self) -> dict[str, bool]:
        """Each master of the slot map and whether it answers a PING, and each shard this
        process holds subscriptions on: unreachable while its reader is reconnecting."""
        shards = await self._cluster.shard_health()
        for label, live in self.subscriptions.readers_live().items():
            shards[label] = shards.get(label, True) and live
        return shards

    def _heard(self, name: bytes, payload: bytes) -> None:
        try:
            event = Event.from_envelope(payload)
        except (ValueError, KeyError):
            return
        self._deliver(event)

    def _resubscribed(self, names: set[bytes]) -> None:
        """One shard's channels are subscribed again: only they missed anything, only they
        are re-read (every channel of the process was, before)."""
        self.reconnects += 1
        METRICS.redis_reconnects.inc()
        channels = [self._subscribed[name] for name in names if name in self._subscribed]
        recovery = self._recovered(channels)
        if recovery is not None:
            self._recoveries.add(recovery)
            recovery.add_done_callback(self._recoveries.discard)

    async def publish(
        self,
        channel: str,
        type_: str,
        data: Any,
        *,
        source: str | None = None,
        job: JobUpdate | None = None,
    ) -> Event | None:
        keys, args, tail = publish_call(self.settings, channel, type_, data, source, job)
        rule = self.settings.replica_wait_for(channel)
        started = time.perf_counter()
        try:
            shard = self._cluster.owner_of(keys[0])
        except RedisError:
            shard = ("?", 0)
        try:
            if rule is None:
                entry_id = await self._connection.publish(keys=keys, args=args)
            else:
                entry_id = await self._publish_acknowledged(channel, keys, args, rule)
        except BackendUnavailable:
            raise
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"publish to {channel}: {exc}") from exc
        METRICS.shard_publish_seconds.labels(f"{shard[0]}:{shard[1]}").observe(
            time.perf_counter() - started
        )
        return published(channel, type_, tail, entry_id)

    async def _publish_acknowledged(
        self, channel: str, keys: list[str], args: list[Any], rule: ReplicaWait
    ) -> Any:
        """The script and `WAIT` on one connection to the slot's master (`WAIT` counts the
        writes of its own connection); a stale slot map is read again once."""
        for attempt in range(2):
            host, port = self._cluster.owner_of(keys[0])
            client = self._cluster.node_client(host, port)
            try:
                async with client.pipeline(transaction=False) as pipe:
                    pipe.eval(self._connection.publish_lua, len(keys), *keys, *args)
                    pipe.execute_command("WAIT", rule.replicas, rule.timeout_ms)
                    entry_id, acknowledged = await pipe.execute()
            except ResponseError as exc:
                if attempt == 0 and str(exc).startswith(("MOVED", "ASK", "CLUSTERDOWN")):
                    await self._cluster.refresh_slots()
                    continue
                raise
            except (RedisError, OSError):
                if attempt == 0:
                    await self._cluster.refresh_slots()
                    continue
                raise
            if entry_id is not None and int(acknowledged) < rule.replicas:
                raise ReplicasBehind(
                    f"publish to {channel}: acknowledged by {acknowledged} of {rule.replicas} "
                    f"replicas within {rule.timeout_ms} ms"
                )
            return entry_id
        raise BackendUnavailable(f"publish to {channel}: the cluster's slot map keeps changing")

    async def publish_live(self, channel: str, type_: str, data: Any) -> Event:
        event = Event.live_only(channel, type_, data)
        await self._connection.call(
            "publish live", self._redis.spublish(bus_channel(channel), event.envelope)
        )
        return event

    async def subscribe(self, channel: str) -> None:
        name = bus_channel(channel).encode()
        self._subscribed[name] = channel
        await self.subscriptions.add(name)

    async def unsubscribe(self, channel: str) -> None:
        name = bus_channel(channel).encode()
        self._subscribed.pop(name, None)
        await self.subscriptions.remove(name)
