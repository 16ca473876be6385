"""The connection pool and registered scripts that the Redis bus and stores share."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.backends.redis_keys import (
    BEGIN_ATTEMPT_LUA,
    CLAIM_WEBHOOKS_LUA,
    PROMOTE_LUA,
    PUBLISH_LUA,
)
from gateway.errors import BackendUnavailable

REDIS_POOL_SIZE = 64
"""Connections one process opens for commands; blocking job reads hold one each."""


class RedisConnection:
    """One command client (a bounded pool) and the Lua scripts registered on it."""

    def __init__(self, url: str) -> None:
        self.url = url
        # After a Redis restart every pooled connection is stale; retry so that costs a
        # reconnect, not a failed request per connection.
        retry = Retry(ExponentialBackoff(cap=0.5, base=0.02), 3)
        # A bounded pool that makes callers wait for a free connection: a burst of a thousand
        # subscribers must queue for history reads, not open a thousand connections at once
        # (which times out and answers them `unavailable`).
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=REDIS_POOL_SIZE,
            timeout=20,
            health_check_interval=0,
            socket_timeout=10,
            socket_connect_timeout=2,
            retry=retry,
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        self.redis = aioredis.Redis(
            connection_pool=pool,
            retry=retry,
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        self.publish_lua = PUBLISH_LUA
        """publish.lua's text as this Redis runs it (pipelines send it with EVAL)."""
        self.publish = self.redis.register_script(PUBLISH_LUA)
        self.promote = self.redis.register_script(PROMOTE_LUA)
        self.begin_attempt = self.redis.register_script(BEGIN_ATTEMPT_LUA)
        self.claim_webhooks = self.redis.register_script(CLAIM_WEBHOOKS_LUA)

    async def call(self, what: str, command: Any) -> Any:
        """Await one command; Redis failing becomes `BackendUnavailable` (answered 503)."""
        try:
            return await command
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"{what}: {exc}") from exc

    async def close(self) -> None:
        await self.redis.aclose()
