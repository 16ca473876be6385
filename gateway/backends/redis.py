"""The Redis backend: many gateway and worker processes sharing one Redis.

`open_redis` builds the bus and the stores on one connection pool and script set; the other
`redis_*` modules are the only code that talks to Redis.
"""

from __future__ import annotations

from gateway.backends.bundle import Backend
from gateway.backends.redis_bus import RedisBus
from gateway.backends.redis_connection import RedisConnection
from gateway.backends.redis_control import RedisControl
from gateway.backends.redis_presence import RedisPresenceStore
from gateway.backends.redis_stores import (
    RedisIdempotencyStore,
    RedisJobFlow,
    RedisJobQueue,
    RedisJobStore,
    RedisWebhookSchedule,
)
from gateway.settings import Settings


def open_redis(settings: Settings) -> Backend:
    connection = RedisConnection(settings.redis_url, blocking_readers=settings.queue_partitions)
    return Backend(
        bus=RedisBus(settings, connection),
        jobs=RedisJobStore(connection),
        queue=RedisJobQueue(connection, settings.queue_partitions),
        idempotency=RedisIdempotencyStore(connection),
        webhooks=RedisWebhookSchedule(connection),
        control=RedisControl(settings, connection),
        release=connection.close,
        presence=RedisPresenceStore(connection),
        flow=RedisJobFlow(settings, connection),
    )
