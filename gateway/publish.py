"""Publish events from any Python program: Celery or RQ tasks, cron scripts, other services.

    import gateway
    gateway.publish("room:lobby", "message", {"text": "hi"})

With `REDIS_URL` naming Redis (or `redis_url=` given) the event goes straight into Redis with
the same atomic script the gateway uses; without it (or with `memory://`), it is posted to a
running gateway's HTTP API (`GATEWAY_URL`, default http://127.0.0.1:8000), which is where the
in-memory backend lives. The scheme is read by `gateway.backends.url.backend_kind`, the same
function the gateway opens its backend with.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any
from urllib.parse import quote

import httpx
import redis

from gateway.backends.redis_keys import publish_call
from gateway.backends.redis_sync import publish_acknowledged, publish_script_text, sync_redis
from gateway.backends.url import REDIS, backend_kind, is_cluster_url
from gateway.errors import EventTooLarge
from gateway.errors import EventTooLargeError as EventTooLargeError
from gateway.errors import PublishError as PublishError
from gateway.events import validate_channel
from gateway.settings import Settings

DEFAULT_URL = "http://127.0.0.1:8000"


@cache
def _redis_script(redis_url: str) -> Any:
    return sync_redis(redis_url).register_script(publish_script_text(redis_url))


def publish(
    channel: str,
    type: str,
    data: Any = None,
    *,
    redis_url: str | None = None,
    url: str | None = None,
    api_key: str | None = None,
    source: str | None = None,
) -> str:
    """Publish one event and return its id.

    Raises `EventTooLargeError` for an event over its namespace's size limit (checked here
    with the same settings as the gateway's when publishing to Redis, by the gateway's 413
    otherwise), and `PublishError` when the event could not be delivered.
    """
    validate_channel(channel)
    redis_url = redis_url if redis_url is not None else os.environ.get("REDIS_URL", "")
    if backend_kind(redis_url) == REDIS:
        settings = Settings.from_env(redis_url=redis_url)
        try:
            keys, args, _tail = publish_call(settings, channel, type, data, source, None)
        except EventTooLarge as exc:
            raise EventTooLargeError(f"publish to {channel}: {exc}", exc.limit) from None
        rule = settings.replica_wait_for(channel) if is_cluster_url(redis_url) else None
        try:
            if rule is None:
                event_id = _redis_script(redis_url)(keys=keys, args=args)
            else:
                event_id, acknowledged = publish_acknowledged(
                    redis_url, keys, args, rule.replicas, rule.timeout_ms
                )
                if acknowledged < rule.replicas:
                    raise PublishError(
                        f"publish to {channel}: acknowledged by {acknowledged} of "
                        f"{rule.replicas} replicas within {rule.timeout_ms} ms "
                        "(GATEWAY_REPLICA_WAIT); stored on the master, not durable"
                    )
        except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
            # RedisClusterException: a Redis Cluster none of whose nodes answer.
            raise PublishError(f"publish to {channel} via {redis_url}: {exc}") from exc
        return str(event_id.decode())
    base = url or os.environ.get("GATEWAY_URL") or DEFAULT_URL
    key = api_key or os.environ.get("GATEWAY_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.post(
            f"{base.rstrip('/')}/channels/{quote(channel, safe=':')}/events",
            json={"type": type, "data": data},
            headers=headers,
            timeout=10,
        )
    except httpx.HTTPError as exc:
        raise PublishError(f"publish to {channel} via {base}: {exc}") from exc
    if response.status_code == 413:
        problem = (
            response.json() if response.headers.get("content-type", "").endswith("json") else {}
        )
        raise EventTooLargeError(
            f"publish to {channel} via {base}: {problem.get('detail', response.text)}",
            problem.get("max_event_size"),
        )
    if response.status_code != 202:
        raise PublishError(
            f"publish to {channel} via {base}: {response.status_code} {response.text}"
        )
    return str(response.json()["id"])
