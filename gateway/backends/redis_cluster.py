"""The Redis Cluster backend (`redis+cluster://host:port[,host:port...]`).

The stores are the one-Redis stores on a `RedisCluster` client (every script and MULTI/EXEC of
theirs touches one hash slot; work across slots is a non-transactional pipeline, which the
cluster client splits per node). The bus and the control bus deliver live by sharded pub/sub.
"""

from __future__ import annotations

from gateway.backends.bundle import Backend
from gateway.backends.redis_cluster_bus import RedisClusterBus
from gateway.backends.redis_cluster_connection import RedisClusterConnection
from gateway.backends.redis_cluster_control import RedisClusterControl
from gateway.backends.redis_presence import RedisPresenceStore
from gateway.backends.redis_stores import (
    RedisIdempotencyStore,
    RedisJobQueue,
    RedisJobStore,
    RedisWebhookSchedule,
)
from gateway.settings import Settings


def open_redis_cluster(settings: Settings) -> Backend:
    connection = RedisClusterConnection(settings.redis_url)
    return Backend(
        bus=RedisClusterBus(settings, connection),
        jobs=RedisJobStore(connection),
        queue=RedisJobQueue(connection),
        idempotency=RedisIdempotencyStore(connection),
        webhooks=RedisWebhookSchedule(connection),
        control=RedisClusterControl(settings, connection),
        release=connection.close,
        presence=RedisPresenceStore(connection),
    )
