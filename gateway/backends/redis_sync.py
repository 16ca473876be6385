"""A blocking Redis client for code outside the server's event loop (`gateway.publish`): the one
place that turns a `REDIS_URL` into one, so every blocking caller reaches the same Redis the
async backend does."""

from __future__ import annotations

from functools import cache
from typing import Any

import redis


@cache
def sync_redis(redis_url: str) -> Any:
    """One client (with its pool) per URL for the life of the process."""
    return redis.Redis.from_url(redis_url)
