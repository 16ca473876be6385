"""WebSocket transport: `/ws`, subprotocol `gateway.v1`, JSON text frames (DESIGN §5).

Thin I/O: messages read from the socket go to `gateway.protocol.v1` to become commands, the
commands to `gateway.channels.ChannelService` and the hub, and the answers, encoded by
`gateway.protocol.v1`, to the connection's outbound path (`gateway.outbound`). A client that
falls behind is closed with 4008 and resumes with `since`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any, ClassVar

from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.auth import TOKEN_REVOKED, bearer_of, token_of
from gateway.control import REVOKED_REASON
from gateway.errors import BackendUnavailable, Forbidden, OpError, ProtocolError
from gateway.events import Event, decode_presence_cursor, ws_text, ws_wire_frame
from gateway.limits import ReadBudget, TokenBucket
from gateway.metrics import METRICS
from gateway.outbound import Item, Outbound, Subscriber, count_events
from gateway.presence import new_client_id, valid_client_id
from gateway.protocol import v1
from gateway.protocol.v1 import (
    SUBPROTOCOL,
    Command,
    PresenceList,
    PresenceStatsQuery,
    Publish,
    Subscribe,
    Unsubscribe,
)
from gateway.services import Services, services_of
from gateway.tokens import ChannelToken
from gateway.transports.wire import RAW_SEND, WebSocketWire, websocket_wire
from gateway.vocabulary import CloseCode

__all__ = [
    "EVICT_GRACE",
    "FAIR_SHARE",
    "SUBPROTOCOL",
    "Connection",
    "websocket_app",
    "websocket_endpoint",
]

log = logging.getLogger("gateway.ws")

EVICT_GRACE = 5.0
"""Seconds a slow consumer's 4008 close may wait behind unread data before the drop."""
FAIR_SHARE = 64
"""Ops read from one client in a row before letting others run (frames arrive in bursts)."""
DELIVERED = METRICS.delivered
WRITES = METRICS.socket_writes


class Connection(Outbound):
    """One WebSocket client: reads its ops and writes through `Outbound`.

    The connection's own coroutine reads client ops. Outbound frames go straight to the socket
    when the server allows it (`WebSocketWire`) and nothing is waiting before them; otherwise
    they queue and a drain task, started only while there is a backlog, sends them through
    ASGI. An idle connection therefore holds no task of its own beyond the server's.
    """

    __slots__ = (
        "_abort",
        "_client_id",
        "_closing",
        "_connection_token",
        "_evicted",
        "_expiry",
        "_held",
        "_publish_bucket",
        "_read_budget",
        "_tasks",
        "_wire",
        "api_key",
        "channels",
        "services",
        "websocket",
    )

    transport = "ws"
    gone_errors: ClassVar[tuple[type[BaseException], ...]] = (
        RuntimeError,
        OSError,
        WebSocketDisconnect,
    )

    def __init__(self, websocket: WebSocket, services: Services) -> None:
        super().__init__(Subscriber("ws", services.settings.slow_consumer_queue))
        self.websocket = websocket
        self.services = services
        self.channels = services.channels
        self._evicted: asyncio.Future[None] | None = None
        scope = websocket.scope
        self.api_key = services.api_keys.match(bearer_of(websocket.headers))
        self._connection_token = token_of(scope, api_key_value=self.api_key)
        self._publish_bucket: TokenBucket | None = None  # made on the first publish
        self._expiry: asyncio.TimerHandle | None = None
        self._closing: tuple[int, str] | None = None
        self._wire: WebSocketWire | None = None
        self._abort: asyncio.TimerHandle | None = None
        self._read_budget: ReadBudget | None = None
        self._client_id = websocket.query_params.get("client")
        """Who this client is in presence (`?client=`: the same id after a reconnect within
        `GATEWAY_PRESENCE_GRACE` makes no leave and no join); checked in `run`."""
        self._held: dict[str, asyncio.TimerHandle] | None = None
        """Server-side subscriptions waiting for the client to resume them (`_release`); made
        only for a connection that has some (memory per idle connection is a target)."""
        self._tasks: set[asyncio.Task[None]] | None = None

    async def run(self) -> None:
        offered = self.websocket.scope.get("subprotocols", [])
        await self.websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        hub = self.services.hub
        self._wire = websocket_wire(self.websocket.scope)
        self.attach(self._write_now if self._wire is not None else None)
        hub.connect(self.subscriber)
        if not _server_budgets_reads(self.websocket.scope):
            loop = asyncio.get_running_loop()
            self._read_budget = ReadBudget.from_settings(self.services.settings, loop.time())
        try:
            self._check_client_id()
            if await self._subscribe_server_side():
                await self._subscribe_from_query()
                await self._read_forever()
        finally:
            self.services.control.sessions.forget(self)
            for timer in (self._held or {}).values():
                timer.cancel()
            for task in self._tasks or ():
                task.cancel()
            if self._expiry is not None:
                self._expiry.cancel()
            await self.stop()
            if self._evicted is not None:
                # A 4008 close stuck behind unread data ends by the abort timer at the latest.
                await asyncio.gather(self._evicted, return_exceptions=True)
            if self._abort is not None:
                self._abort.cancel()
            await hub.disconnect(self.subscriber)

    def _check_client_id(self) -> None:
        given = self._client_id
        if given is not None and not valid_client_id(given):
            refused = ProtocolError(
                "client must be 1-64 letters, digits, '-' or '_'; using one of the gateway's",
                "invalid_client",
            )
            self._send(v1.error_frame(None, refused))
            given = None
        self._client_id = given or new_client_id()

    async def _subscribe_server_side(self) -> bool:
        """Subscribe to the channels the connection's token lists (and the personal channel),
        each announced with a `subscribed` frame. Each is held until the client resumes it
        with `subscribe` + `since`, or for `GATEWAY_SERVER_SUBSCRIPTION_HOLD` seconds, then
        replayed from the start as a `subscribe` without `since` would be.

        False when the token was revoked: the connection is closed with 4001. A token that
        does not verify for another reason is left to the ops made with it, as before.
        """
        try:
            token = self.channels.connection_token(self._connection_token, api_key=self.api_key)
        except Forbidden as exc:
            if exc.code != TOKEN_REVOKED:
                return True
            self._closing = (CloseCode.DISCONNECTED, REVOKED_REASON)
            await self._close(CloseCode.DISCONNECTED, REVOKED_REASON)
            return False
        if token is None:
            return True
        self.services.control.sessions.track(self, token)
        channels = self.channels.policy.server_subscriptions(token)
        if not channels:
            return True
        loop = asyncio.get_running_loop()
        hold = self.services.settings.server_subscription_hold
        held = self._held = {}
        for channel in channels[: self.services.settings.max_subscriptions]:
            try:
                self.channels.authorize_read(channel, api_key=None, token=token)
                member = None
                if self.services.settings.tracks(channel):
                    member = self.services.presence.member_for(
                        self._client_id, token, self._connection_token
                    )
                await self.services.hub.hold(self.subscriber, channel, member)
            except Forbidden as exc:
                refused = Forbidden(f"server-side subscription to {channel}: {exc}", exc.code)
                self._send(v1.error_frame(None, refused))
                continue
            except v1.ANSWERED as exc:
                self._send(v1.error_frame(None, exc))
                continue
            self._send(v1.subscribed(channel))
            held[channel] = loop.call_later(hold, self._hold_ended, channel)
        if not self.channels.policy.open_mode:
            self._end_at(token.exp)
        return True

    def _hold_ended(self, channel: str) -> None:
        """The client did not resume a server-side subscription: replay it from the start."""
        if self._unhold(channel):
            self._spawn(self._release(channel, None, None))

    async def _release(self, channel: str, since: str | None, ref: v1.Ref | None) -> None:
        def acknowledge(complete: bool) -> None:
            self._send(v1.ack(ref, channel, recovered=complete, already=True))

        try:
            await self.services.hub.release(
                self.subscriber, channel, since, on_history=None if ref is None else acknowledge
            )
        except v1.ANSWERED as exc:
            self._send(v1.error_frame(ref, exc))

    def _unhold(self, channel: str) -> bool:
        """Stop holding the channel (cancelling its timer); False if it was not held."""
        timer = self._held.pop(channel, None) if self._held else None
        if timer is None:
            return False
        timer.cancel()
        return True

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        if self._tasks is None:
            self._tasks = set()
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- control (gateway.control.Session) --------------------------------------------------

    def disconnect(self, code: int, reason: str) -> None:
        """Close with `code` and `reason` after what is queued; nothing more is delivered."""
        if self._closing is not None:
            return
        self._closing = (code, reason)
        self.subscriber.close()
        self.finish()

    def server_unsubscribe(self, channel: str, reason: str) -> bool:
        """Detach the channel, then say so: `unsubscribed` is the channel's last frame."""
        if channel not in self.subscriber.channels:
            return False
        self._unhold(channel)

        async def unsubscribe() -> None:
            await self.services.hub.detach(self.subscriber, channel)
            self._send(v1.unsubscribed(channel, reason))

        self._spawn(unsubscribe())
        return True

    async def _subscribe_from_query(self) -> None:
        params = self.websocket.query_params
        since = params.get("since")
        for channel in params.getlist("channel"):
            op = {"op": "subscribe", "channel": channel, "since": since}
            try:
                command = v1.from_object(op)
            except ProtocolError as exc:
                self._send(v1.error_frame(exc.ref, exc))
                continue
            await self._handle(command)

    # --- outbound -------------------------------------------------------------------------

    def _write_now(self, items: list[Item]) -> bool:
        """The subscriber's sink: the items' wire frames to the socket in one write (several
        frames back to back, as they would arrive one by one), if it can take them now."""
        assert self._wire is not None
        if self._closing is not None:
            return False
        if len(items) == 1:
            item = items[0]
            if isinstance(item, Event):
                if not self._wire.write(item.ws_wire):
                    return False
                DELIVERED["ws"] += 1
            elif not self._wire.write(ws_wire_frame(item)):
                return False
        else:
            if not self._wire.write(b"".join(map(ws_wire_frame, items))):
                return False
            DELIVERED["ws"] += count_events(items)
        WRITES["ws"] += 1
        return True

    async def write_batch(self, items: list[Item]) -> int | None:
        """With a `Wire` the whole backlog goes out as one write (the frames are the same bytes
        either way), so a client that fell behind costs one syscall per batch, not per frame.
        Without one, each frame is an ASGI send, which waits while the socket is paused."""
        events = count_events(items)
        wire = self._wire
        if wire is not None:
            await wire.writable()
            if not wire.write(b"".join(map(ws_wire_frame, items))):
                return None  # closed meanwhile: the reader sees the disconnect
        else:
            send = self.websocket.send
            for item in items:
                await send({"type": "websocket.send", "text": ws_text(item)})
        return events

    async def drained(self) -> None:
        subscriber = self.subscriber
        if subscriber.overflowed:
            return
        if self._closing is not None:
            await self._close(*self._closing)
        elif subscriber.closed:
            code = CloseCode.GOING_AWAY if self.services.hub.draining else CloseCode.NORMAL
            await self._close(code, "the gateway is restarting")

    def evicted(self) -> None:
        """A slow consumer: close it with 4008 so it resumes with `since`.

        The close frame waits behind whatever the client has not read; if it has not gone out
        after `EVICT_GRACE` seconds, the connection is dropped.
        """
        self._evicted = asyncio.ensure_future(
            self._close(CloseCode.SLOW_CONSUMER, "slow consumer: resume with since")
        )
        if self._wire is not None:
            self._abort = asyncio.get_running_loop().call_later(EVICT_GRACE, self._wire.abort)

    def _finish(self, code: int, reason: str) -> None:
        """Close after what is already queued has been sent."""
        self._closing = (code, reason)
        self.finish()

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
            await self.websocket.close(code=code, reason=reason)

    def _send(self, frame: bytes) -> None:
        """Queue an answer: replies to a client's own ops are batched by the drain task."""
        self.subscriber.put(frame.decode(), direct=False)

    # --- inbound --------------------------------------------------------------------------

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
            data = message.get("bytes") or b""
            size = len(text) if text is not None else len(data)
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
            try:
                command = v1.parse(data, binary=True) if text is None else v1.parse(text)
            except ProtocolError as exc:
                self._send(v1.error_frame(exc.ref, exc))
                continue
            await self._handle(command)

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

    async def _handle(self, command: Command) -> None:
        try:
            if isinstance(command, Subscribe):
                await self._subscribe(command)
            elif isinstance(command, Unsubscribe):
                await self._unsubscribe(command)
            elif isinstance(command, Publish):
                await self._publish(command)
            elif isinstance(command, PresenceList):
                await self._presence(command)
            elif isinstance(command, PresenceStatsQuery):
                await self._presence_stats(command)
            else:
                self._send(v1.pong(command.ref))
        except v1.ANSWERED as exc:
            if isinstance(exc, BackendUnavailable):
                log.warning("op %r failed: %s", type(command).__name__.lower(), exc)
            self._send(v1.error_frame(command.ref, exc))

    async def _subscribe(self, command: Subscribe) -> None:
        channel, ref = command.channel, command.ref
        token = self._token(command.token)
        self.channels.authorize_read(channel, api_key=self.api_key, token=token)
        if self._unhold(channel):  # the client resumes a server-side subscription
            await self._release(channel, command.since, ref)
            return
        if channel in self.subscriber.channels:
            self._send(v1.ack(ref, channel, recovered=True, already=True))
            return
        limit = self.services.settings.max_subscriptions
        if len(self.subscriber.channels) >= limit:
            raise OpError("too_many_subscriptions", f"at most {limit} subscriptions per connection")
        if token is not None and self.api_key is None:
            self._end_at(token.exp)

        def acknowledge(complete: bool) -> None:
            self._send(v1.ack(ref, channel, recovered=complete))

        member = None
        if self.services.settings.tracks(channel):
            raw = self._connection_token if command.token is v1.CONNECTION_TOKEN else command.token
            assert not isinstance(raw, v1.Inherit)
            member = self.services.presence.member_for(self._client_id, token, raw)
        await self.services.hub.attach(
            self.subscriber, channel, command.since, on_history=acknowledge, member=member
        )

    async def _unsubscribe(self, command: Unsubscribe) -> None:
        channel = command.channel
        if channel not in self.subscriber.channels:
            raise OpError("not_subscribed", f"not subscribed to {channel}")
        self._unhold(channel)
        await self.services.hub.detach(self.subscriber, channel)
        self._send(v1.ack(command.ref, channel))

    async def _publish(self, command: Publish) -> None:
        channel = command.channel
        token = self._token(command.token)
        if self.api_key is None and self._publish_bucket is None:
            self._publish_bucket = self.channels.connection_bucket()
        self.channels.authorize_publish(
            channel, api_key=self.api_key, token=token, connection=self._publish_bucket
        )
        event = await self.channels.publish(channel, command.type, command.data)
        self._send(v1.ack(command.ref, channel, id=event.id if event else None))

    async def _presence(self, command: PresenceList) -> None:
        after = decode_presence_cursor(command.cursor) if command.cursor is not None else None
        clients, following = await self.services.presence.members(
            command.channel,
            after,
            command.limit,
            api_key=self.api_key,
            token=self._token(command.token),
        )
        self._send(v1.presence_page(command.ref, command.channel, clients, following))

    async def _presence_stats(self, command: PresenceStatsQuery) -> None:
        stats = await self.services.presence.stats(
            command.channel, api_key=self.api_key, token=self._token(command.token)
        )
        self._send(v1.presence_stats(command.ref, command.channel, stats.clients, stats.users))

    def _token(self, given: v1.TokenField) -> ChannelToken | None:
        """The op's own token, else the connection's (`?token=` or cookie)."""
        raw = self._connection_token if given is v1.CONNECTION_TOKEN else given
        assert not isinstance(raw, v1.Inherit)
        token = self.channels.token(raw, api_key=self.api_key)
        self.services.control.sessions.track(self, token)
        return token

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
        expired = Forbidden("the token expired; reconnect with a new one", "token_expired")
        self._send(v1.error_frame(None, expired))
        self._finish(CloseCode.POLICY, "token expired")


def _server_budgets_reads(scope: Scope) -> bool:
    """Whether the server protocol charges this connection's frames itself (the gateway's
    uvicorn protocol, `gateway.transports.server`), where they are cheaper to stop."""
    protocol = getattr(scope.get(RAW_SEND), "__self__", None)
    return getattr(protocol, "read_budget", None) is not None


async def websocket_endpoint(websocket: WebSocket) -> None:
    await Connection(websocket, services_of(websocket)).run()


async def websocket_app(scope: Scope, receive: Receive, send: Send) -> None:
    """`/ws` as a bare ASGI app, for `GatewayApp`'s direct route (no router in between)."""
    websocket = WebSocket(scope, receive, send)
    await Connection(websocket, services_of(websocket)).run()
