"""The control bus on Redis: one pub/sub channel for commands, a sorted set for revocations
(and one for user disconnects).

Commands and answers travel on `gw:{control}` (each gateway process subscribes on a pub/sub
connection of its own, so `PUBLISH` says how many processes heard a command). Revocations are
a sorted set `gw:{control}:revoked` of token ids scored by their expiry: members past their
expiry are dropped at every revocation, and the whole key expires once the longest-lived token
it could name would have (`GATEWAY_MAX_TOKEN_TTL`), so it holds at most the revocations of one
token lifetime. User disconnects are kept the same way in `gw:{control}:disconnected`
(members `{"user", "code", "reason"}` scored by when they were sent), for processes that were
cut off when one was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Mapping
from typing import Any, Final

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from gateway.backends.control import ControlBus, Disconnect
from gateway.backends.redis_connection import RedisConnection
from gateway.errors import BackendUnavailable
from gateway.settings import Settings

log = logging.getLogger("gateway.redis")

CONTROL_CHANNEL: Final = "gw:{control}"
REVOKED_KEY: Final = "gw:{control}:revoked"
DISCONNECTED_KEY: Final = "gw:{control}:disconnected"


class RedisControl(ControlBus):
    kind = "redis"

    def __init__(self, settings: Settings, connection: RedisConnection) -> None:
        super().__init__()
        self.settings = settings
        self.disconnects_kept = float(settings.max_token_ttl)
        self._connection = connection
        self._redis = connection.redis
        self._client = aioredis.Redis.from_url(
            connection.url,
            decode_responses=False,
            retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=2,
        )
        self._reader: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._answers: set[asyncio.Task[None]] = set()
        self._closing = False
        self.reconnects = 0

    async def start(self) -> None:
        self._reader = asyncio.create_task(self._read_forever(), name="gateway-control-reader")
        # Commands sent before the subscription is confirmed would not reach this process.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), timeout=5.0)

    async def close(self) -> None:
        self._closing = True
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                await self._reader
        for task in list(self._answers):
            task.cancel()
        await self._client.aclose()

    async def _publish(self, message: Mapping[str, Any]) -> int:
        payload = orjson.dumps(message)
        reached = await self._connection.call(
            "control command", self._redis.publish(CONTROL_CHANNEL, payload)
        )
        return int(reached)

    def _answer(self, request: str, connections: int) -> None:
        message = {"op": "reply", "request": request, "connections": connections}
        task = asyncio.get_running_loop().create_task(self._send_answer(message))
        self._answers.add(task)
        task.add_done_callback(self._answers.discard)

    async def _send_answer(self, message: dict[str, Any]) -> None:
        try:
            await self._redis.publish(CONTROL_CHANNEL, orjson.dumps(message))
        except (RedisError, OSError) as exc:
            log.warning("control answer lost: %s", exc)

    async def _store_revocation(self, jti: str, exp: float) -> None:
        keep = self.settings.max_token_ttl + 60
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zadd(REVOKED_KEY, {jti: exp})
                pipe.zremrangebyscore(REVOKED_KEY, "-inf", time.time())
                pipe.expire(REVOKED_KEY, int(keep))
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"store revocation: {exc}") from exc

    async def _store_disconnect(self, disconnect: Disconnect) -> None:
        keep = self.settings.max_token_ttl
        member = orjson.dumps(
            {"user": disconnect.user, "code": disconnect.code, "reason": disconnect.reason}
        )
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zadd(DISCONNECTED_KEY, {member: disconnect.at})
                pipe.zremrangebyscore(DISCONNECTED_KEY, "-inf", disconnect.at - keep)
                pipe.expire(DISCONNECTED_KEY, int(keep + 60))
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"store disconnect: {exc}") from exc

    async def _reload(self) -> None:
        now = time.time()
        entries: Any = await self._redis.zrangebyscore(REVOKED_KEY, now, "+inf", withscores=True)
        kept: Any = await self._redis.zrangebyscore(
            DISCONNECTED_KEY, now - self.settings.max_token_ttl, "+inf", withscores=True
        )
        disconnects = []
        for member, at in kept:
            with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                fields = orjson.loads(member)
                disconnects.append(
                    Disconnect(
                        str(fields["user"]), int(fields["code"]), str(fields["reason"]), float(at)
                    )
                )
        self._reread({member.decode(): float(score) for member, score in entries}, disconnects)

    async def _read_forever(self) -> None:
        """Subscribe, reread the revocation list, then hear commands; on any failure reconnect
        with backoff and jitter (and reread the list, closing the connections whose token was
        revoked meanwhile: announcements may have been missed)."""
        delay = 0.05
        while not self._closing:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(CONTROL_CHANNEL)
                await self._confirm(pubsub)
                await self._reload()
                if self.reconnects:
                    log.info("control channel back; revocation list reread")
                self.reconnects += 1
                self._subscribed.set()
                delay = 0.05
                await self._read_messages(pubsub)
            except (RedisError, OSError) as exc:
                log.warning("control channel lost (%s); reconnecting in %.2fs", exc, delay)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 5.0)
            finally:
                with contextlib.suppress(RedisError, OSError, RuntimeError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _confirm(self, pubsub: aioredis.client.PubSub) -> None:
        answer = await pubsub.parse_response(block=False, timeout=5.0)
        if answer is None or answer[0] != b"subscribe":
            raise RedisConnectionError("no confirmation of the control channel subscription")

    async def _read_messages(self, pubsub: aioredis.client.PubSub) -> None:
        probe = self.settings.pubsub_probe
        awaiting_pong = False
        while not self._closing:
            message = await pubsub.parse_response(block=False, timeout=probe)
            if message is None:
                if awaiting_pong:
                    raise RedisConnectionError("control channel silent: no answer to a ping")
                awaiting_pong = True
                await pubsub.ping()
                continue
            awaiting_pong = False
            if message[0] != b"message":
                continue
            try:
                command = orjson.loads(message[2])
            except orjson.JSONDecodeError:
                log.error("dropping a malformed control message")
                continue
            if isinstance(command, dict):
                self._heard(command)
