"""A blocking Redis client for code outside the server's event loop (`gateway.publish`): the one
place that turns a `REDIS_URL` into one, so every blocking caller reaches the same Redis the
async backend does: a `redis.Redis` for one server, a `redis.RedisCluster` for a
`redis+cluster://` URL (scripts registered on either route by their keys)."""

from __future__ import annotations

from functools import cache
from typing import Any

import redis
from redis.cluster import ClusterNode

from gateway.backends.redis_keys import PUBLISH_LUA, SHARDED_PUBLISH_LUA
from gateway.backends.url import cluster_address, is_cluster_url


@cache
def sync_redis(redis_url: str) -> Any:
    """One client (with its pool) per URL for the life of the process."""
    if is_cluster_url(redis_url):
        address = cluster_address(redis_url)
        return redis.RedisCluster(
            startup_nodes=[
                ClusterNode(host, port)  # type: ignore[no-untyped-call]
                for host, port in address.seeds
            ],
            username=address.username,
            password=address.password,
            socket_connect_timeout=2,
            socket_timeout=10,
        )
    return redis.Redis.from_url(redis_url)


def publish_acknowledged(
    redis_url: str, keys: list[str], args: list[Any], replicas: int, timeout_ms: int
) -> tuple[Any, int]:
    """Run publish.lua then `WAIT replicas timeout_ms` on one connection to the master of the
    stream's slot (`WAIT` counts the writes of its own connection), for
    `GATEWAY_REPLICA_WAIT`. Returns the script's answer and the replicas that acknowledged.
    A stale slot map (`MOVED`) is read again once."""
    cluster = sync_redis(redis_url)
    for attempt in range(2):
        node = cluster.get_node_from_key(keys[0])
        pipe = cluster.get_redis_connection(node).pipeline(transaction=False)
        pipe.eval(publish_script_text(redis_url), len(keys), *keys, *args)
        pipe.execute_command("WAIT", replicas, timeout_ms)
        try:
            entry_id, acknowledged = pipe.execute()
        except redis.ResponseError as exc:
            if attempt == 0 and str(exc).startswith(("MOVED", "ASK")):
                cluster.nodes_manager.initialize()
                continue
            raise
        return entry_id, int(acknowledged)
    raise redis.exceptions.ClusterError("the cluster's slot map keeps changing")


def publish_script_text(redis_url: str) -> str:
    """publish.lua as this URL's Redis runs it: `SPUBLISH` on a Cluster, `PUBLISH` otherwise."""
    return SHARDED_PUBLISH_LUA if is_cluster_url(redis_url) else PUBLISH_LUA
