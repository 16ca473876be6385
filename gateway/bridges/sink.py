"""Publish a bridged message's event into Redis exactly once per (source, message id).

The dedup key is checked and set in the same Lua script as the publish (bridge_publish.lua), so
there is no moment where the event is in the channel but the key is not, or the reverse.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from redis.exceptions import RedisError

from gateway.backends.redis_keys import (
    BRIDGE_PUBLISH_LUA,
    SHARDED_BRIDGE_PUBLISH_LUA,
    bridged_key,
    publish_call,
)
from gateway.backends.url import is_cluster_url, open_redis_connection
from gateway.bridges.routes import Mapped
from gateway.errors import BackendUnavailable
from gateway.settings import Settings

MAX_ID_LENGTH = 200
"""Longer message ids are hashed: a key stays small whatever the broker sends."""


@dataclass(frozen=True, slots=True)
class Outcome:
    event_id: str
    duplicate: bool


class RedisSink:
    """One Redis client shared by every source of a bridge process: the one the gateways'
    backend would make of the same URL (`open_redis_connection`), so a Redis Cluster
    (`redis+cluster://`) works as for `gateway serve`; there the event goes live by `SPUBLISH`,
    which the gateways' shard readers hear."""

    def __init__(self, settings: Settings, dedup_ttl: int) -> None:
        self.settings = settings
        self.dedup_ttl = dedup_ttl
        self._connection = open_redis_connection(settings.redis_url)
        self._redis = self._connection.redis
        sharded = is_cluster_url(settings.redis_url)
        script = SHARDED_BRIDGE_PUBLISH_LUA if sharded else BRIDGE_PUBLISH_LUA
        self._script = self._redis.register_script(script)

    async def publish(self, source: str, message_id: str, event: Mapped) -> Outcome:
        """Raises `EventTooLarge` (the message is malformed for this gateway) or
        `BackendUnavailable` (Redis is down: do not ack, reconnect)."""
        keys, args, _tail = publish_call(
            self.settings, event.channel, event.type, event.data, f"/bridges/{source}", None
        )
        if len(message_id) > MAX_ID_LENGTH:
            message_id = "sha256:" + hashlib.sha256(message_id.encode()).hexdigest()
        keys.append(bridged_key(event.channel, source, message_id))
        args.append(self.dedup_ttl)
        try:
            event_id, duplicate = await self._script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"publish to {event.channel}: {exc}") from exc
        return Outcome(event_id.decode(), bool(duplicate))

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"redis: {exc}") from exc

    async def close(self) -> None:
        await self._connection.close()
