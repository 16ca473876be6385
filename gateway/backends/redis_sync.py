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


def publish_script_text(redis_url: str) -> str:
    """publish.lua as this URL's Redis runs it: `SPUBLISH` on a Cluster, `PUBLISH` otherwise."""
    return SHARDED_PUBLISH_LUA if is_cluster_url(redis_url) else PUBLISH_LUA
