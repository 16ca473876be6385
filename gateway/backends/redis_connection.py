"""The connection pool and registered scripts that the Redis bus and stores share."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.backends.redis_autopipeline import AutoPipeline
from gateway.backends.redis_keys import (
    BEGIN_ATTEMPT_LUA,
    CLAIM_WEBHOOKS_LUA,
    PROMOTE_LUA,
    PUBLISH_LUA,
    START_JOB_LUA,
)
from gateway.errors import BackendUnavailable

ScriptCall = tuple[Sequence[str], Sequence[Any]]
"""One run of a script: (keys, args)."""


async def evalsha_each(
    sha: str,
    calls: Sequence[ScriptCall],
    send: Callable[[list[tuple[Any, ...]], bool], Awaitable[Sequence[Any]]],
    what: str,
) -> list[Any]:
    """The script `sha` run once per call, as `send(commands, reload)` pipelines them; the
    calls the server refused `NOSCRIPT` (restarted or flushed: nothing of them ran) go again
    once, with `reload` set so `send` loads the script first, and the others never twice. An
    error reply is raised as its exception (a `RedisError`)."""
    replies: list[Any] = [None] * len(calls)
    todo = list(range(len(calls)))
    for reload in (False, True):
        commands = []
        for index in todo:
            keys, args = calls[index]
            commands.append(("EVALSHA", sha, len(keys), *keys, *args))
        answers = await send(commands, reload)
        missing = []
        for index, answer in zip(todo, answers, strict=True):
            if isinstance(answer, NoScriptError) or (
                isinstance(answer, ResponseError) and str(answer).startswith("NOSCRIPT")
            ):
                missing.append(index)
            elif isinstance(answer, Exception):
                raise answer
            else:
                replies[index] = answer
        if not missing:
            return replies
        todo = missing
    raise BackendUnavailable(f"{what}: Redis keeps losing the script")


REDIS_POOL_SIZE = 64
"""Connections one process opens for commands, plus one per queue partition for a worker's
readers waiting for new jobs (`blocking_readers`)."""


class HiredisPacking:
    """Commands packed by hiredis (C), as redis-py's blocking client already packs them: the
    async client packs in Python, argument by argument, which was a third of the CPU of a
    job submission (a record is a dozen fields). Mixed in front of whatever connection class
    the URL chose (TCP, TLS, Unix socket)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        command = args[0]
        if isinstance(command, str):
            args = (*command.encode().split(), *args[1:])
        elif b" " in command:
            args = (*command.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            packable: Any = tuple(
                bytes(arg) if isinstance(arg, bytearray | memoryview) else arg for arg in args
            )
            try:
                return [hiredis.pack_command(packable)]
            except TypeError as exc:
                raise DataError(str(exc)) from None


def with_hiredis_packing(pool: Any) -> None:
    base = pool.connection_class
    if not issubclass(base, HiredisPacking):
        pool.connection_class = type(f"Hiredis{base.__name__}", (HiredisPacking, base), {})


class RedisConnection:
    """One command client (a bounded pool) and the Lua scripts registered on it."""

    def __init__(self, url: str, blocking_readers: int = 0) -> None:
        """`blocking_readers`: connections a worker's queue readers may each hold in a
        blocking read (one per queue partition), on top of `REDIS_POOL_SIZE`, so they never
        leave the rest of the process waiting for a connection."""
        self.url = url
        # After a Redis restart every pooled connection is stale; retry so that costs a
        # reconnect, not a failed request per connection.
        retry = Retry(ExponentialBackoff(cap=0.5, base=0.02), 3)
        # A bounded pool that makes callers wait for a free connection: a burst of a thousand
        # subscribers must queue for history reads, not open a thousand connections at once
        # (which times out and answers them `unavailable`).
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=REDIS_POOL_SIZE + blocking_readers,
            timeout=20,
            health_check_interval=0,
            socket_timeout=10,
            socket_connect_timeout=2,
            retry=retry,
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        with_hiredis_packing(pool)
        self.redis = aioredis.Redis(
            connection_pool=pool,
            retry=retry,
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        self.auto = AutoPipeline(pool)
        """The hot path's writes (publishes, submissions), auto-pipelined on a connection of
        their own."""
        self.publish_lua = PUBLISH_LUA
        """publish.lua's text as this Redis runs it (pipelines send it with EVAL)."""
        self.publish = self.redis.register_script(PUBLISH_LUA)
        load: Any = ("SCRIPT", "LOAD", PUBLISH_LUA)
        self.load_publish = hiredis.pack_command(load)
        """`SCRIPT LOAD` of publish.lua, packed once: the auto-pipeline's `preload`."""
        self.promote = self.redis.register_script(PROMOTE_LUA)
        self.begin_attempt = self.redis.register_script(BEGIN_ATTEMPT_LUA)
        self.claim_webhooks = self.redis.register_script(CLAIM_WEBHOOKS_LUA)
        self.start_job = self.redis.register_script(START_JOB_LUA)

    async def call(self, what: str, command: Any) -> Any:
        """Await one command; Redis failing becomes `BackendUnavailable` (answered 503)."""
        try:
            return await command
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"{what}: {exc}") from exc

    async def close(self) -> None:
        await self.auto.close()
        await self.redis.aclose()
