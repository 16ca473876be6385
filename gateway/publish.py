"""Publish events from any Python program: Celery or RQ tasks, cron scripts, other services.

    import gateway
    gateway.publish("room:lobby", "message", {"text": "hi"})
    gateway.publish_many([("room:a", "message", {"n": 1}), ("room:b", "message", {"n": 2})])

With `REDIS_URL` naming Redis (or `redis_url=` given) the events go straight into Redis with
the same atomic script the gateway uses; without it (or with `memory://`), they are posted to a
running gateway's HTTP API (`GATEWAY_URL`, default http://127.0.0.1:8000), which is where the
in-memory backend lives. The scheme is read by `gateway.backends.url.backend_kind`, the same
function the gateway opens its backend with.

The settings that shape an event (retention, size limits: `GATEWAY_*`) are read from the
environment as the gateway reads them, and kept while those variables stay the same: a call
costs a look at the environment, not a parse of it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any
from urllib.parse import quote

import hiredis
import httpx
import redis

from gateway.backends.redis_cluster_pipeline import execute_routed_blocking
from gateway.backends.redis_keys import publish_call
from gateway.backends.redis_sync import publish_acknowledged, publish_script_text, sync_redis
from gateway.backends.url import REDIS, backend_kind, is_cluster_url
from gateway.errors import EventTooLarge
from gateway.errors import EventTooLargeError as EventTooLargeError
from gateway.errors import PublishError as PublishError
from gateway.events import validate_channel
from gateway.settings import Settings

DEFAULT_URL = "http://127.0.0.1:8000"
BATCH_LIMIT = 1000
"""Items per request to a gateway's batch routes (their cap): longer lists go in several."""

EventItem = tuple[str, str, Any] | Mapping[str, Any]
"""An event of `publish_many`: `(channel, type, data)` or `{"channel", "type", "data"}`."""

_settings_cache: dict[tuple[str, tuple[tuple[bytes, bytes], ...]], Settings] = {}


def _gateway_environ() -> tuple[tuple[bytes, bytes], ...]:
    """The `GATEWAY_*` variables as they are now (the raw table: a few µs, not a parse)."""
    raw: Mapping[bytes, bytes] | None = getattr(os.environ, "_data", None)
    if raw is None:  # not CPython's os.environ: read it the portable way
        return tuple(
            (k.encode(), v.encode()) for k, v in os.environ.items() if k.startswith("GATEWAY_")
        )
    return tuple((k, v) for k, v in raw.items() if k[:8] == b"GATEWAY_")


def settings_for(redis_url: str) -> Settings:
    """`Settings.from_env(redis_url=...)`, parsed again only when a `GATEWAY_*` variable
    changed (so a test or a program that sets one between calls is heard)."""
    key = (redis_url, _gateway_environ())
    settings = _settings_cache.get(key)
    if settings is None:
        if len(_settings_cache) > 16:
            _settings_cache.clear()
        settings = _settings_cache[key] = Settings.from_env(redis_url=redis_url)
    return settings


@cache
def _kind(redis_url: str) -> str:
    return backend_kind(redis_url)


def redis_url_of(redis_url: str | None) -> str | None:
    """The Redis URL to write to directly, or None: post to a gateway instead."""
    url = redis_url if redis_url is not None else os.environ.get("REDIS_URL", "")
    return url if _kind(url) == REDIS else None


def gateway_of(url: str | None, api_key: str | None) -> tuple[str, dict[str, str]]:
    """The gateway to post to and the headers that carry its API key."""
    base = (url or os.environ.get("GATEWAY_URL") or DEFAULT_URL).rstrip("/")
    key = api_key or os.environ.get("GATEWAY_API_KEY")
    return base, ({"Authorization": f"Bearer {key}"} if key else {})


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
    direct = redis_url_of(redis_url)
    if direct is not None:
        settings = settings_for(direct)
        try:
            keys, args, _tail = publish_call(settings, channel, type, data, source, None)
        except EventTooLarge as exc:
            raise EventTooLargeError(f"publish to {channel}: {exc}", exc.limit) from None
        rule = settings.replica_wait_for(channel) if is_cluster_url(direct) else None
        try:
            if rule is None:
                event_id = _run_publish_script(direct, keys, args)
            else:
                event_id, acknowledged = publish_acknowledged(
                    direct, keys, args, rule.replicas, rule.timeout_ms
                )
                if acknowledged < rule.replicas:
                    raise PublishError(
                        f"publish to {channel}: acknowledged by {acknowledged} of "
                        f"{rule.replicas} replicas within {rule.timeout_ms} ms "
                        "(GATEWAY_REPLICA_WAIT); stored on the master, not durable"
                    )
        except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
            # RedisClusterException: a Redis Cluster none of whose nodes answer.
            raise PublishError(f"publish to {channel} via {direct}: {exc}") from exc
        return str(event_id.decode())
    base, headers = gateway_of(url, api_key)
    try:
        response = httpx.post(
            f"{base}/channels/{quote(channel, safe=':')}/events",
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


class _Links(threading.local):
    """One connection per thread for single publishes, outside the pool: a publish is then a
    packed command written and one reply read, without the pool checkout, retry wrapper and
    telemetry hooks redis-py runs around each command (two thirds of a publish's CPU)."""

    connection: Any = None
    pid = 0
    """The process that opened `connection`: a forked child (Celery's prefork pool) opens its
    own instead of writing to its parent's socket."""


@cache
def _links(redis_url: str) -> _Links:
    return _Links()


def _connection(redis_url: str) -> Any:
    """This thread's own connection to `redis_url` (a new one in a forked child)."""
    link = _links(redis_url)
    if link.connection is None or link.pid != os.getpid():
        link.connection = sync_redis(redis_url).connection_pool.make_connection()
        link.pid = os.getpid()
    return link.connection


def run_commands(redis_url: str, commands: list[tuple[Any, ...]]) -> list[Any] | None:
    """Send `commands` as one pipeline (packed by hiredis, one write) on this thread's
    connection and read every reply (an error reply comes back as its exception). On a Cluster,
    one such pipeline per master (`execute_routed_blocking`), or None when a command cannot be
    routed that way: use the client's pipeline instead. A connection found closed before any
    reply came (a restarted Redis) is reopened and the commands sent again once."""
    client = sync_redis(redis_url)
    if not isinstance(client, redis.Redis):
        return execute_routed_blocking(client, commands)
    packed = b"".join(hiredis.pack_command(command) for command in commands)
    connection = _connection(redis_url)
    for attempt in range(2):
        replies: list[Any] = []
        try:
            connection.send_packed_command([packed])
            for _command in commands:
                try:
                    replies.append(connection.read_response())
                except redis.ResponseError as exc:
                    replies.append(exc)
            return replies
        except (redis.ConnectionError, redis.TimeoutError):
            connection.disconnect()
            if attempt or replies:
                raise
    raise redis.RedisError("unreachable")


def _run_publish_script(redis_url: str, keys: list[str], args: list[Any]) -> Any:
    """The publish script by hash on this thread's connection (its source when Redis lost it);
    one reconnect and resend when the connection was found closed, as redis-py's own retry
    does. A Cluster client takes its own path (it routes by key)."""
    client = sync_redis(redis_url)
    script = _redis_script(redis_url)
    if not isinstance(client, redis.Redis):
        return script(keys=keys, args=args)
    connection = _connection(redis_url)
    command: tuple[Any, ...] = ("EVALSHA", script.sha, len(keys), *keys, *args)
    for attempt in range(3):
        try:
            # Packed here (hiredis, C): redis-py's packer re-checks every argument in Python
            # first, a fifth of a publish's CPU.
            packable: Any = command
            connection.send_packed_command([hiredis.pack_command(packable)], check_health=False)
            return connection.read_response()
        except redis.exceptions.NoScriptError:
            command = ("EVAL", publish_script_text(redis_url), len(keys), *keys, *args)
        except (redis.ConnectionError, redis.TimeoutError):
            connection.disconnect()
            if attempt:
                raise
    raise redis.RedisError("the publish script could not be run")


def _event_of(item: EventItem) -> tuple[str, str, Any]:
    if isinstance(item, Mapping):
        return item["channel"], item.get("type", "message"), item.get("data")
    channel, type_, data = item
    return channel, type_, data


def publish_many(
    events: Iterable[EventItem],
    *,
    redis_url: str | None = None,
    url: str | None = None,
    api_key: str | None = None,
    source: str | None = None,
) -> list[str]:
    """Publish many events, on any channels, and return their ids in order.

    Straight to Redis: one pipeline of the publish script (each event atomic on its channel,
    events of one channel stored in the order given). Otherwise `POST /events/batch` on the
    gateway, 1000 events a request. All are checked first: a bad channel name raises
    `InvalidChannel` and an event over its size limit `EventTooLargeError`, before anything is
    published. `PublishError` when they could not be delivered (then some may have been).
    """
    items = [_event_of(item) for item in events]
    for channel, _type, _data in items:
        validate_channel(channel)
    if not items:
        return []
    direct = redis_url_of(redis_url)
    if direct is not None:
        return _publish_many_direct(direct, items, source)
    base, headers = gateway_of(url, api_key)
    ids: list[str] = []
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        for start in range(0, len(items), BATCH_LIMIT):
            chunk = items[start : start + BATCH_LIMIT]
            body = {"events": [{"channel": c, "type": t, "data": d} for c, t, d in chunk]}
            try:
                response = client.post("/events/batch", json=body)
            except httpx.HTTPError as exc:
                raise PublishError(f"publish {len(chunk)} events via {base}: {exc}") from exc
            if response.status_code != 200:
                raise PublishError(
                    f"publish {len(chunk)} events via {base}: "
                    f"{response.status_code} {response.text}"
                )
            for (channel, _type, _data), answer in zip(
                chunk, response.json()["events"], strict=True
            ):
                if "id" not in answer:
                    if answer.get("status") == 413:
                        raise EventTooLargeError(
                            f"publish to {channel} via {base}: {answer.get('detail')}",
                            answer.get("max_event_size"),
                        )
                    raise PublishError(f"publish to {channel} via {base}: {answer.get('detail')}")
                ids.append(str(answer["id"]))
    return ids


def _publish_many_direct(
    redis_url: str, items: list[tuple[str, str, Any]], source: str | None
) -> list[str]:
    settings = settings_for(redis_url)
    calls = []
    for channel, type_, data in items:
        try:
            keys, args, _tail = publish_call(settings, channel, type_, data, source, None)
        except EventTooLarge as exc:
            raise EventTooLargeError(f"publish to {channel}: {exc}", exc.limit) from None
        calls.append((keys, args))
    script = _redis_script(redis_url)
    client = sync_redis(redis_url)
    ids: list[Any] = [None] * len(calls)
    pending = list(range(len(calls)))
    try:
        for _attempt in range(2):
            commands = []
            for index in pending:
                keys, args = calls[index]
                commands.append(("EVALSHA", script.sha, len(keys), *keys, *args))
            replies = run_commands(redis_url, commands)
            if replies is None:
                pipe = client.pipeline(transaction=False)
                for command in commands:
                    pipe.execute_command(*command)
                replies = pipe.execute(raise_on_error=False)
            missing = []
            for index, reply in zip(pending, replies, strict=True):
                if isinstance(reply, redis.exceptions.NoScriptError):
                    missing.append(index)  # refused before it ran: nothing was written
                elif isinstance(reply, Exception):
                    raise reply
                else:
                    ids[index] = reply.decode()
            if not missing:
                return [str(event_id) for event_id in ids]
            client.script_load(publish_script_text(redis_url))
            pending = missing
    except redis.RedisError as exc:
        raise PublishError(f"publish {len(items)} events via {redis_url}: {exc}") from exc
    raise PublishError(f"publish via {redis_url}: Redis keeps losing the publish script")
