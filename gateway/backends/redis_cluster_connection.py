"""The Redis Cluster command client that the Cluster bus and stores share, and plain clients of
single nodes (for sharded pub/sub and for `WAIT`).

The command client is redis-py's `RedisCluster`: it routes each command, script and pipeline
by its keys' hash slot, follows `MOVED`/`ASK` and refreshes its slot map when the cluster
changes. It stands where the one-Redis client stands (`RedisConnection.redis`), so the stores
written for one Redis work unchanged: every script and MULTI/EXEC of theirs touches one slot.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, PipelineStrategy, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.backends.redis_cluster_pipeline import cluster_slot, execute_routed
from gateway.backends.redis_connection import RedisConnection
from gateway.backends.redis_keys import (
    BEGIN_ATTEMPT_LUA,
    CLAIM_WEBHOOKS_LUA,
    PROMOTE_LUA,
    SHARDED_PUBLISH_LUA,
    SHARDED_START_JOB_LUA,
)
from gateway.backends.url import ClusterAddress, cluster_address

CLUSTER_POOL_SIZE = 256
"""Connections per node the command client may open (it fails, not waits, past that)."""


def unreachable(exc: RedisClusterException) -> RedisConnectionError:
    """redis-py reports a cluster it cannot reach (no node answers, a slot nobody serves) with
    `RedisClusterException`, which is not a `RedisError`: as a connection error, every
    `except RedisError` written for one Redis covers it (503, retry, reconnect)."""
    return RedisConnectionError(f"Redis Cluster unreachable: {exc}")


class ReachableCluster(RedisCluster):
    """`RedisCluster` whose failures to reach the cluster are `RedisError`s (`unreachable`)."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except RedisClusterException as exc:
            raise unreachable(exc) from exc

    async def initialize(self, *args: Any, **kwargs: Any) -> RedisCluster:
        try:
            return await super().initialize(*args, **kwargs)
        except RedisClusterException as exc:
            raise unreachable(exc) from exc

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> Any:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)
        return ReachablePipeline(self, transaction)  # type: ignore[abstract]

    async def _determine_slot(self, command: str, *args: Any) -> int:
        """`XREAD`/`XREADGROUP` placed here: redis-py asks the server (`COMMAND GETKEYS`, a
        round trip before every claim of the worker) since their keys move."""
        if command.upper() in ("XREAD", "XREADGROUP"):
            slot = cluster_slot((command, *args), {})
            if slot is not None:
                return slot
        return int(await super()._determine_slot(command, *args))


class ReachablePipeline(ClusterPipeline):
    """A non-transactional pipeline goes by `execute_routed` (one plain pipeline per master,
    redirects followed, nothing that may have run sent twice); a transaction, or a command it
    cannot route, by redis-py's `ClusterPipeline`."""

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> Any:
        strategy = self._execution_strategy
        if isinstance(strategy, PipelineStrategy) and strategy._command_queue:
            try:
                replies = await execute_routed(self.cluster_client, strategy._command_queue)
            except RedisClusterException as exc:
                await self.reset()  # type: ignore[no-untyped-call]
                raise unreachable(exc) from exc
            if replies is not None:
                await self.reset()  # type: ignore[no-untyped-call]
                if raise_on_error:
                    for reply in replies:
                        if isinstance(reply, Exception):
                            raise reply
                return replies
        try:
            return await super().execute(raise_on_error, allow_redirections)
        except RedisClusterException as exc:
            raise unreachable(exc) from exc


class RedisClusterConnection(RedisConnection):
    """A `RedisCluster` command client with the scripts registered on it (publish.lua with
    `SPUBLISH`), and one plain client per node, made on demand."""

    def __init__(self, url: str) -> None:
        # Not RedisConnection's __init__ (a one-server pool): the same fields, a cluster client.
        self.url = url
        self.address: ClusterAddress = cluster_address(url)
        retry = Retry(ExponentialBackoff(cap=0.5, base=0.02), 3)
        self.redis: Any = ReachableCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in self.address.seeds],
            username=self.address.username,
            password=self.address.password,
            max_connections=CLUSTER_POOL_SIZE,
            socket_timeout=10,
            socket_connect_timeout=2,
            retry=retry,
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        self.publish_lua = SHARDED_PUBLISH_LUA
        self.publish = self.redis.register_script(SHARDED_PUBLISH_LUA)
        self.promote = self.redis.register_script(PROMOTE_LUA)
        self.begin_attempt = self.redis.register_script(BEGIN_ATTEMPT_LUA)
        self.claim_webhooks = self.redis.register_script(CLAIM_WEBHOOKS_LUA)
        self.start_job = self.redis.register_script(SHARDED_START_JOB_LUA)
        self._node_clients: dict[str, aioredis.Redis] = {}
        self._refreshing: asyncio.Task[None] | None = None

    def node_client(self, host: str, port: int) -> aioredis.Redis:
        """A plain client of one node (no redirects followed), cached per address."""
        name = f"{host}:{port}"
        client = self._node_clients.get(name)
        if client is None:
            client = self._node_clients[name] = aioredis.Redis(
                host=host,
                port=port,
                username=self.address.username,
                password=self.address.password,
                socket_connect_timeout=2,
                socket_timeout=10,
                retry=Retry(NoBackoff(), 0),
            )
        return client

    def subscriber_client(self, host: str, port: int) -> aioredis.Redis:
        """A new plain client of one node for a pub/sub connection (the caller closes it)."""
        return aioredis.Redis(
            host=host,
            port=port,
            username=self.address.username,
            password=self.address.password,
            socket_connect_timeout=2,
            retry=Retry(NoBackoff(), 0),
        )

    async def initialize(self) -> None:
        """Learn the slot map (once; commands do it themselves when it is missing)."""
        await self.redis.initialize()

    async def refresh_slots(self) -> None:
        """Read the slot map again (after a failover or a `MOVED`); concurrent callers share one
        refresh. Raises `RedisConnectionError` when no node answers (redis-py raises
        `RedisClusterException`, which is no `RedisError`: callers catching `RedisError`, such
        as a shard reader reconnecting, would die of it while the gateway is partitioned)."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self.redis.nodes_manager.initialize())
        try:
            await asyncio.shield(self._refreshing)
        except RedisClusterException as exc:
            raise unreachable(exc) from exc

    def owner_of(self, key: str | bytes) -> tuple[str, int]:
        """The master serving `key`'s slot, as the slot map last read says; a connection
        error when the map has no master for it (not read yet, or the slot is uncovered)."""
        try:
            node = self.redis.get_node_from_key(key)
        except RedisClusterException as exc:
            raise unreachable(exc) from exc
        if node is None:
            raise RedisConnectionError(f"no master serves the slot of {key!r}")
        return node.host, int(node.port)

    def shards(self) -> list[tuple[str, int]]:
        """Every master the slot map names."""
        return sorted((node.host, int(node.port)) for node in self.redis.get_primaries())

    async def shard_health(self, timeout: float = 2.0) -> dict[str, bool]:
        """Each master (`host:port`) and whether it answers a PING within `timeout`."""
        # A partitioned gateway reaches no node: the refresh then fails after a connect timeout
        # per seed; bounded, so /readyz answers 503 promptly rather than many seconds later.
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await asyncio.wait_for(self.refresh_slots(), timeout)
        # Never read (no node answered yet): the seeds stand for the cluster.
        shards = self.shards() or list(self.address.seeds)

        async def answers(host: str, port: int) -> bool:
            try:
                return bool(await asyncio.wait_for(self.node_client(host, port).ping(), timeout))
            except (RedisError, OSError, TimeoutError):
                return False

        results = await asyncio.gather(*(answers(host, port) for host, port in shards))
        return {f"{host}:{port}": ok for (host, port), ok in zip(shards, results, strict=True)}

    async def close(self) -> None:
        for client in self._node_clients.values():
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()
        await self.redis.aclose()
