"""The control bus on a Redis Cluster: the same channel and revocation set as on one Redis
(`gw:{control}`, `gw:{control}:revoked`, one slot), with commands on **sharded** pub/sub.

`SPUBLISH` reaches every process subscribed (`SSUBSCRIBE`) on the slot's master and answers how
many they are, which `send` needs to know how many answers to wait for; a plain `PUBLISH` on a
Cluster is broadcast to every node but counts only the receivers of the node it was sent to.
The subscription follows the slot like a channel's (`ShardedSubscriptions`); after it was lost
the revocation list is read again whole, as on one Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import orjson
from redis.exceptions import RedisError

from gateway.backends.control import ControlBus
from gateway.backends.redis_cluster_connection import RedisClusterConnection
from gateway.backends.redis_cluster_pubsub import ShardedSubscriptions
from gateway.backends.redis_control import CONTROL_CHANNEL, RedisControl
from gateway.settings import Settings

log = logging.getLogger("gateway.redis")


class RedisClusterControl(RedisControl):
    kind = "redis-cluster"

    def __init__(self, settings: Settings, connection: RedisClusterConnection) -> None:
        ControlBus.__init__(self)  # not RedisControl's: no one-server pub/sub client here
        self.settings = settings
        self.disconnects_kept = float(settings.max_token_ttl)
        self._connection = connection
        self._redis = connection.redis
        self._subscribed = asyncio.Event()
        self._answers: set[asyncio.Task[None]] = set()
        self._reloads: set[asyncio.Task[None]] = set()
        self._closing = False
        self.reconnects = 0
        self._subscriptions = ShardedSubscriptions(
            connection, settings.pubsub_probe, self._message, self._resubscribed
        )

    async def start(self) -> None:
        await self._subscriptions.add(CONTROL_CHANNEL.encode(), timeout=5.0)
        with contextlib.suppress(RedisError, OSError):
            await self._reload()
        self.reconnects += 1
        self._subscribed.set()

    async def close(self) -> None:
        self._closing = True
        await self._subscriptions.close()
        for task in [*self._answers, *self._reloads]:
            task.cancel()

    def _message(self, name: bytes, payload: bytes) -> None:
        try:
            command = orjson.loads(payload)
        except orjson.JSONDecodeError:
            log.error("dropping a malformed control message")
            return
        if isinstance(command, dict):
            self._heard(command)

    def _resubscribed(self, names: set[bytes]) -> None:
        task = asyncio.get_running_loop().create_task(self._reload_after_loss())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _reload_after_loss(self) -> None:
        delay = 0.05
        while not self._closing:
            try:
                await self._reload()
                self.reconnects += 1
                log.info("control channel back; revocation list reread")
                return
            except (RedisError, OSError) as exc:
                log.warning("revocation list unreadable (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _publish(self, message: Mapping[str, Any]) -> int:
        reached = await self._connection.call(
            "control command", self._redis.spublish(CONTROL_CHANNEL, orjson.dumps(message))
        )
        return int(reached)

    async def _send_answer(self, message: dict[str, Any]) -> None:
        try:
            await self._redis.spublish(CONTROL_CHANNEL, orjson.dumps(message))
        except (RedisError, OSError) as exc:
            log.warning("control answer lost: %s", exc)
