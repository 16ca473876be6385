"""WebSocket transport: `/ws`, subprotocol `gateway.v1`, JSON text frames (DESIGN §5).

Two tasks per connection: the reader parses client ops; the writer drains the subscriber's
queue. A client that falls behind is closed with 4008 and resumes with `since`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.auth import Forbidden, bearer_of, token_of
from gateway.backends.base import BackendUnavailable
from gateway.events import (
    EVENT_TYPE_RE,
    Event,
    InvalidChannel,
    InvalidEventId,
    encode_ws_message,
    parse_event_id,
    validate_channel,
)
from gateway.hub import Subscriber
from gateway.metrics import METRICS
from gateway.services import Services, services_of
from gateway.tokens import ChannelToken

log = logging.getLogger("gateway.ws")
SUBPROTOCOL = "gateway.v1"

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013
CLOSE_SLOW_CONSUMER = 4008
CLOSE_PROTOCOL = 4400


class OpError(Exception):
    """A client op that cannot be done; becomes an `error` frame, the connection stays open."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra


class Connection:
    """One WebSocket client: its subscriber, its writer task, and the handling of its ops."""

    def __init__(self, websocket: WebSocket, services: Services) -> None:
        self.websocket = websocket
        self.services = services
        self.subscriber = Subscriber("ws", services.settings.slow_consumer_queue)
        self._evicted: asyncio.Future[None] | None = None
        scope = websocket.scope
        self.api_key = services.api_keys.match(bearer_of(websocket.headers))
        self._connection_token = token_of(scope, api_key_value=self.api_key)
        self._publish_bucket = services.limits.publish.bucket()
        self._expiry: asyncio.TimerHandle | None = None
        self._closing: tuple[int, str] | None = None

    async def run(self) -> None:
        offered = self.websocket.scope.get("subprotocols", [])
        await self.websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        hub = self.services.hub
        hub.connect(self.subscriber)
        writer = asyncio.create_task(self._write_forever())
        reader = asyncio.create_task(self._read_forever())

        def evict() -> None:
            # The writer may be blocked sending to a client that stopped reading: stop it, so
            # the close goes out now rather than after the socket drains.
            writer.cancel()
            self._evicted = asyncio.ensure_future(
                self._close(CLOSE_SLOW_CONSUMER, "slow consumer: resume with since")
            )

        self.subscriber.on_overflow = evict
        try:
            await self._subscribe_from_query()
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.warning("websocket task ended with %r", task.exception())
        finally:
            if self._expiry is not None:
                self._expiry.cancel()
            for task in (reader, writer):
                task.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)
            if self._evicted is not None:
                await asyncio.gather(self._evicted, return_exceptions=True)
            await hub.disconnect(self.subscriber)

    async def _subscribe_from_query(self) -> None:
        params = self.websocket.query_params
        since = params.get("since")
        for channel in params.getlist("channel"):
            await self._handle({"op": "subscribe", "channel": channel, "since": since})

    async def _write_forever(self) -> None:
        subscriber = self.subscriber
        send = self.websocket.send
        while True:
            await subscriber.wait()
            if subscriber.overflowed:
                await self._close(CLOSE_SLOW_CONSUMER, "slow consumer: resume with since")
                return
            items = subscriber.take()
            for item in items:
                text = item.ws_frame if isinstance(item, Event) else item
                await send({"type": "websocket.send", "text": text})
            if items:
                METRICS.frames_delivered.labels("ws").inc(len(items))
                METRICS.observe_lag("ws", items[-1])
            if self._closing is not None:
                await self._close(*self._closing)
                return
            if subscriber.closed:
                code = CLOSE_GOING_AWAY if self.services.hub.draining else CLOSE_NORMAL
                await self._close(code, "the gateway is restarting")
                return

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
            await self.websocket.close(code=code, reason=reason)

    async def _read_forever(self) -> None:
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            size = len(text) if text is not None else len(message.get("bytes") or b"")
            if size > self.services.settings.max_message:
                # uvicorn's ws_max_size normally closes first; this holds under other servers.
                await self._close(CLOSE_TOO_BIG, "message too big (GATEWAY_MAX_MESSAGE)")
                return
            if text is None:
                self._error(None, "binary_not_supported", "send JSON text frames, not binary")
                continue
            try:
                op = orjson.loads(text)
            except orjson.JSONDecodeError:
                self._error(None, "invalid_json", "the frame is not valid JSON")
                continue
            if not isinstance(op, dict):
                self._error(None, "invalid_op", 'frames are JSON objects like {"op": "ping"}')
                continue
            await self._handle(op)

    async def _handle(self, op: dict[str, Any]) -> None:
        ref = op.get("ref")
        if ref is not None and not isinstance(ref, int | str):
            ref = None
        try:
            name = op.get("op")
            if name == "subscribe":
                await self._subscribe(op, ref)
            elif name == "unsubscribe":
                await self._unsubscribe(op, ref)
            elif name == "publish":
                await self._publish(op, ref)
            elif name == "ping":
                self._send("pong", ref=ref)
            else:
                raise OpError("unknown_op", "op must be subscribe, unsubscribe, publish or ping")
        except OpError as exc:
            self._error(ref, exc.code, exc.message, **exc.extra)
        except Forbidden as exc:
            self._error(ref, exc.code, str(exc))
        except BackendUnavailable as exc:
            log.warning("op %r failed: %s", op.get("op"), exc)
            self._error(ref, "unavailable", "the event bus is unavailable; try again")

    def _channel(self, op: dict[str, Any]) -> str:
        try:
            return validate_channel(op.get("channel"))  # type: ignore[arg-type]
        except InvalidChannel as exc:
            raise OpError("invalid_channel", str(exc)) from None

    async def _subscribe(self, op: dict[str, Any], ref: Any) -> None:
        channel = self._channel(op)
        since = op.get("since")
        if since is not None:
            try:
                parse_event_id(since)
            except InvalidEventId as exc:
                raise OpError("invalid_since", str(exc)) from None
        token = self._token(op)
        if self.api_key is None:
            self.services.policy.check_subscribe(channel, token)
        else:
            self.services.policy.check_namespace(channel)
        if channel in self.subscriber.channels:
            self._send("ack", ref=ref, channel=channel, recovered=True, already=True)
            return
        limit = self.services.settings.max_subscriptions
        if len(self.subscriber.channels) >= limit:
            raise OpError("too_many_subscriptions", f"at most {limit} subscriptions per connection")
        if token is not None and self.api_key is None:
            self._end_at(token.exp)

        def acknowledge(complete: bool) -> None:
            self._send("ack", ref=ref, channel=channel, recovered=complete)

        await self.services.hub.attach(self.subscriber, channel, since, on_history=acknowledge)

    async def _unsubscribe(self, op: dict[str, Any], ref: Any) -> None:
        channel = self._channel(op)
        if channel not in self.subscriber.channels:
            raise OpError("not_subscribed", f"not subscribed to {channel}")
        await self.services.hub.detach(self.subscriber, channel)
        self._send("ack", ref=ref, channel=channel)

    async def _publish(self, op: dict[str, Any], ref: Any) -> None:
        channel = self._channel(op)
        type_ = op.get("type", "message")
        if not isinstance(type_, str) or not EVENT_TYPE_RE.match(type_):
            raise OpError("invalid_type", "type must be 1-100 characters of [A-Za-z0-9_.:-]")
        token = self._token(op)
        if self.api_key is None:
            self.services.policy.check_client_publish(channel, token)
            self._take_publish(token)
        else:
            self.services.policy.check_namespace(channel)
        event = await self.services.backend.publish(channel, type_, op.get("data"))
        self._send("ack", ref=ref, channel=channel, id=event.id if event else None)

    def _send(self, op: str, **fields: Any) -> None:
        self.subscriber.put(encode_ws_message(op, **fields).decode())

    def _error(self, ref: Any, code: str, message: str, **extra: Any) -> None:
        self._send("error", ref=ref, code=code, message=message, **extra)

    def _token(self, op: dict[str, Any]) -> ChannelToken | None:
        """The op's own token, else the connection's (`?token=` or cookie); verified unless the
        gateway runs open, where tokens are not needed and a stale one should not get in the way.
        """
        raw = op.get("token", self._connection_token)
        if raw is not None and not isinstance(raw, str):
            raise OpError("invalid_token", "token must be a string")
        if self.services.policy.open_mode or self.api_key is not None:
            return None
        return self.services.policy.verify(raw)

    def _take_publish(self, token: ChannelToken | None) -> None:
        """Token buckets per connection and per token: one noisy client cannot flood a room."""
        wait = self._publish_bucket.take()
        if wait == 0 and token is not None:
            wait = self.services.limits.publish.take("token:" + token.raw)
        if wait > 0:
            raise OpError(
                "rate_limited", "publishing too fast; slow down", retry_after=round(wait, 3)
            )

    def _end_at(self, expires_at: float) -> None:
        """End the connection when the earliest token it subscribed with expires: an error frame
        saying why, then close 1008, rather than events silently continuing or stopping."""
        loop = asyncio.get_running_loop()
        when = loop.time() + max(0.0, expires_at - time.time())
        if self._expiry is not None:
            if self._expiry.when() <= when:
                return
            self._expiry.cancel()
        self._expiry = loop.call_at(when, self._expire)

    def _expire(self) -> None:
        self._closing = (CLOSE_POLICY, "token expired")
        self._error(None, "token_expired", "the token expired; reconnect with a new one")


async def websocket_endpoint(websocket: WebSocket) -> None:
    await Connection(websocket, services_of(websocket)).run()
