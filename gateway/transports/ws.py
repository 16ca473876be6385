"""WebSocket transport: `/ws`, subprotocol `gateway.v1`, JSON text frames (DESIGN §5).

The connection's coroutine reads client ops; frames to the client are written directly or, when
the socket is busy, by a drain task (see `Connection`). A client that falls behind is closed
with 4008 and resumes with `since`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.auth import bearer_of, token_of
from gateway.errors import (
    BackendUnavailable,
    EventTooLarge,
    Forbidden,
    InvalidChannel,
    InvalidEventId,
    OpError,
)
from gateway.events import (
    EVENT_TYPE_RE,
    Event,
    encode_ws_message,
    parse_event_id,
    validate_channel,
    ws_text_frame,
)
from gateway.hub import Item, Subscriber
from gateway.limits import ReadBudget, TokenBucket
from gateway.metrics import METRICS
from gateway.services import Services, services_of
from gateway.tokens import ChannelToken
from gateway.transports.wire import RAW_SEND, WebSocketWire, websocket_wire
from gateway.vocabulary import CloseCode

log = logging.getLogger("gateway.ws")
SUBPROTOCOL = "gateway.v1"


EVICT_GRACE = 5.0
"""Seconds a slow consumer's 4008 close may wait behind unread data before the drop."""
FAIR_SHARE = 64
"""Ops read from one client in a row before letting others run (frames arrive in bursts)."""
DELIVERED = METRICS.delivered
DRAINED = METRICS.drained


class Connection:
    """One WebSocket client: its subscriber, the handling of its ops, and its outbound path.

    The connection's own coroutine reads client ops. Outbound frames go straight to the socket
    when the server allows it (`WebSocketWire`) and nothing is waiting before them; otherwise
    they queue and a drain task, started only while there is a backlog, sends them through
    ASGI. An idle connection therefore holds no task of its own beyond the server's.
    """

    __slots__ = (
        "_abort",
        "_closing",
        "_connection_token",
        "_drainer",
        "_evicted",
        "_expiry",
        "_publish_bucket",
        "_read_budget",
        "_wire",
        "api_key",
        "services",
        "subscriber",
        "websocket",
    )

    def __init__(self, websocket: WebSocket, services: Services) -> None:
        self.websocket = websocket
        self.services = services
        self.subscriber = Subscriber("ws", services.settings.slow_consumer_queue)
        self._evicted: asyncio.Future[None] | None = None
        scope = websocket.scope
        self.api_key = services.api_keys.match(bearer_of(websocket.headers))
        self._connection_token = token_of(scope, api_key_value=self.api_key)
        self._publish_bucket: TokenBucket | None = None  # made on the first publish
        self._expiry: asyncio.TimerHandle | None = None
        self._closing: tuple[int, str] | None = None
        self._drainer: asyncio.Task[None] | None = None
        self._wire: WebSocketWire | None = None
        self._abort: asyncio.TimerHandle | None = None
        self._read_budget: ReadBudget | None = None

    async def run(self) -> None:
        offered = self.websocket.scope.get("subprotocols", [])
        await self.websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        hub = self.services.hub
        subscriber = self.subscriber
        self._wire = websocket_wire(self.websocket.scope)
        if self._wire is not None:
            subscriber.sink = self._write_now
        subscriber.on_pending = self._kick
        subscriber.on_overflow = self._evict
        hub.connect(subscriber)
        if not _server_budgets_reads(self.websocket.scope):
            loop = asyncio.get_running_loop()
            self._read_budget = ReadBudget.from_settings(self.services.settings, loop.time())
        try:
            await self._subscribe_from_query()
            await self._read_forever()
        finally:
            if self._expiry is not None:
                self._expiry.cancel()
            subscriber.on_pending = None
            if self._drainer is not None:
                self._drainer.cancel()
                await asyncio.gather(self._drainer, return_exceptions=True)
            if self._evicted is not None:
                # A 4008 close stuck behind unread data ends by the abort timer at the latest.
                await asyncio.gather(self._evicted, return_exceptions=True)
            if self._abort is not None:
                self._abort.cancel()
            await hub.disconnect(subscriber)

    async def _subscribe_from_query(self) -> None:
        params = self.websocket.query_params
        since = params.get("since")
        for channel in params.getlist("channel"):
            await self._handle({"op": "subscribe", "channel": channel, "since": since})

    def _write_now(self, item: Item) -> bool:
        """The subscriber's sink: the item's wire frame to the socket, if it can take it now."""
        assert self._wire is not None
        if self._closing is not None:
            return False
        if isinstance(item, Event):
            if not self._wire.write(item.ws_wire):
                return False
            DELIVERED["ws"] += 1
            return True
        return self._wire.write(_wire_frame(item))

    def _kick(self) -> None:
        """Items were queued (or the connection is ending): make sure a drain task runs."""
        if self._drainer is None and not self.subscriber.overflowed:
            self._drainer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        """Send the backlog once the socket can take it, then end the connection if due.

        With a `Wire` the whole backlog goes out as one write (the frames are the same bytes
        either way), so a client that fell behind costs one syscall per batch, not per frame.
        Without one, each frame is an ASGI send, which waits while the socket is paused.
        """
        subscriber = self.subscriber
        send = self.websocket.send
        wire = self._wire
        try:
            while items := subscriber.take():
                subscriber.writing = True
                events = sum(isinstance(item, Event) for item in items)
                if wire is not None:
                    await wire.writable()
                    if not wire.write(b"".join(map(_wire_frame, items))):
                        return  # closed meanwhile: the reader sees the disconnect
                else:
                    for item in items:
                        await send({"type": "websocket.send", "text": _text_frame(item)})
                subscriber.writing = False
                DRAINED["ws"] += events
                METRICS.observe_lag("ws", items[-1])
            if subscriber.overflowed:
                return
            if self._closing is not None:
                await self._close(*self._closing)
            elif subscriber.closed:
                code = CloseCode.GOING_AWAY if self.services.hub.draining else CloseCode.NORMAL
                await self._close(code, "the gateway is restarting")
        except (RuntimeError, OSError, WebSocketDisconnect):
            pass  # the client is gone; the reader sees the disconnect
        finally:
            subscriber.writing = False
            self._drainer = None

    def _evict(self) -> None:
        """A slow consumer: stop its writer and close it with 4008 so it resumes with `since`.

        The close frame waits behind whatever the client has not read; if it has not gone out
        after `EVICT_GRACE` seconds, the connection is dropped.
        """
        if self._drainer is not None:
            self._drainer.cancel()
        self._evicted = asyncio.ensure_future(
            self._close(CloseCode.SLOW_CONSUMER, "slow consumer: resume with since")
        )
        if self._wire is not None:
            self._abort = asyncio.get_running_loop().call_later(EVICT_GRACE, self._wire.abort)

    def _finish(self, code: int, reason: str) -> None:
        """Close after what is already queued has been sent."""
        self._closing = (code, reason)
        self._kick()

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
            await self.websocket.close(code=code, reason=reason)

    async def _read_forever(self) -> None:
        # An evicted client is not read any more: its close is on the way, and a client that
        # floods ops without reading the answers must not keep the gateway busy meanwhile.
        read = 0
        while not self.subscriber.overflowed:
            read += 1
            if read % FAIR_SHARE == 0:
                await asyncio.sleep(0)
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            size = len(text) if text is not None else len(message.get("bytes") or b"")
            if size > self.services.settings.max_message:
                # uvicorn's ws_max_size normally closes first; this holds under other servers.
                await self._close(CloseCode.TOO_BIG, "message too big (GATEWAY_MAX_MESSAGE)")
                return
            if self._read_budget is not None and (limit := self._over_read_budget(size)):
                METRICS.ws_read_budget_exceeded.labels(limit).inc()
                await self._close(
                    CloseCode.READ_BUDGET, f"read budget exceeded: too many {limit}/s"
                )
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

    def _over_read_budget(self, size: int) -> str | None:
        """Which read limit a message of `size` exceeds, if any. Only under servers that do not
        budget reads themselves (see `server.py`): there control frames and fragments are not
        seen here, so this bounds the ops a client has handled, not what parsing them costs."""
        budget = self._read_budget
        assert budget is not None
        budget.refill(asyncio.get_running_loop().time())
        if not budget.spend_frames(1):
            return "frames"
        if not budget.spend_bytes(size):
            return "bytes"
        return None

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
        if not isinstance(type_, str) or not EVENT_TYPE_RE.fullmatch(type_):
            raise OpError("invalid_type", "type must be 1-100 characters of [A-Za-z0-9_.:-]")
        token = self._token(op)
        if self.api_key is None:
            self.services.policy.check_client_publish(channel, token)
            self._take_publish(token)
        else:
            self.services.policy.check_namespace(channel)
        try:
            event = await self.services.backend.bus.publish(channel, type_, op.get("data"))
        except EventTooLarge as exc:
            raise OpError("event_too_large", str(exc), max_event_size=exc.limit) from None
        self._send("ack", ref=ref, channel=channel, id=event.id if event else None)

    def _send(self, op: str, **fields: Any) -> None:
        self.subscriber.put(encode_ws_message(op, **fields).decode(), direct=False)

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
        if self._publish_bucket is None:
            self._publish_bucket = self.services.limits.publish.bucket()
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
        self._error(None, "token_expired", "the token expired; reconnect with a new one")
        self._finish(CloseCode.POLICY, "token expired")


def _server_budgets_reads(scope: Scope) -> bool:
    """Whether the server protocol charges this connection's frames itself (the gateway's
    uvicorn protocol, `gateway.transports.server`), where they are cheaper to stop."""
    protocol = getattr(scope.get(RAW_SEND), "__self__", None)
    return getattr(protocol, "read_budget", None) is not None


def _wire_frame(item: Item) -> bytes:
    """An item as the bytes of its WebSocket frame (events: encoded once, shared)."""
    if isinstance(item, Event):
        return item.ws_wire
    return ws_text_frame(item.encode() if isinstance(item, str) else item)


def _text_frame(item: Item) -> str:
    """An item as the text of an ASGI `websocket.send`."""
    if isinstance(item, Event):
        return item.ws_frame
    return item if isinstance(item, str) else item.decode()


async def websocket_endpoint(websocket: WebSocket) -> None:
    await Connection(websocket, services_of(websocket)).run()


async def websocket_app(scope: Scope, receive: Receive, send: Send) -> None:
    """`/ws` as a bare ASGI app, for `GatewayApp`'s direct route (no router in between)."""
    websocket = WebSocket(scope, receive, send)
    await Connection(websocket, services_of(websocket)).run()
