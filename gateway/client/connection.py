"""One `gateway.v1` WebSocket shared by every subscription of a client, kept alive for them.

The connection is a loop: connect, subscribe each channel from its position, read frames and
hand them to the subscriptions, and when the connection ends, decide from the close code
whether and when to connect again (docs/websocket.md's table): at once after a slow-consumer
cut-off (4008) or `4002`, after the announced delay after a `shutdown` frame, with backoff and
jitter after anything else, and never after `4001` or `1008`, which end every subscription
with `Disconnected`.

A link that dies silently (no FIN, no RST: a NAT dropping state, a cable pulled) is noticed by
its silence: a `ping` op goes out every `heartbeat` seconds and the gateway answers each, so
`2 * heartbeat` seconds without any frame means the link is dead, and it is dropped and
replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import urlencode, urlsplit, urlunsplit

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from gateway.client.items import Event, Gap
from gateway.client.refusals import RETRY_CODES, refusal_of_frame
from gateway.client.subscription import Subscription
from gateway.errors import ClientError, Disconnected, RequestForbidden, RequestInvalid
from gateway.vocabulary import CloseCode

log = logging.getLogger("gateway.client")

SUBPROTOCOL: Final = Subprotocol("gateway.v1")
RECONNECT_INITIAL: Final = 0.5
RECONNECT_MAX: Final = 10.0
HEARTBEAT: Final = 4.0
"""Seconds between `ping` ops; twice that without a frame means the link is dead."""
MAX_MESSAGE: Final = 16 * 2**20
"""The largest frame read: above any `GATEWAY_MAX_EVENT_SIZE` worth having, and a bound."""
DISCONNECTED: Final = 4001
"""Close code: the gateway disconnected this user and asks it not to reconnect."""
DISCONNECTED_RECONNECT: Final = 4002
"""Close code: the gateway disconnected this user; reconnect (with a new token, say)."""
FINAL_CLOSE_CODES: Final = frozenset({DISCONNECTED, CloseCode.POLICY})
AT_ONCE_CLOSE_CODES: Final = frozenset({DISCONNECTED_RECONNECT, CloseCode.SLOW_CONSUMER})

State = Literal["connecting", "open", "reconnecting", "closed"]


@dataclass(frozen=True, slots=True)
class ConnectionStatus:
    """Where the connection is, for `on_status` callbacks and `Client.status`.

    `reconnecting` says why the last connection ended (`reason`, and the close `code` when the
    gateway sent one; `restarting` when it announced a shutdown) and `retry_in` when the next
    attempt starts. Subscriptions do not need any of this: they resume on their own.
    """

    state: State
    reason: str = ""
    code: int | None = None
    retry_in: float | None = None
    restarting: bool = False


@dataclass(slots=True)
class _Ending:
    """How one connection ended."""

    reason: str
    code: int | None = None
    retry_hint: float | None = None
    fatal: ClientError | None = None
    was_open: bool = False


class Connection:
    """The WebSocket and its subscriptions; started by the first subscription."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None,
        token: Callable[[], str | None],
        heartbeat: float = HEARTBEAT,
        buffer: int,
        on_status: Callable[[ConnectionStatus], None] | None = None,
    ) -> None:
        self.url = url
        self.api_key = api_key
        self._token = token
        self.heartbeat = heartbeat
        self.buffer = buffer
        self.on_status = on_status
        self.status = ConnectionStatus("connecting")
        self.subscriptions: dict[str, Subscription] = {}
        self.failure: ClientError | None = None
        self._announced: asyncio.Queue[Subscription | None] = asyncio.Queue()
        self._ws: ClientConnection | None = None
        self._refs = itertools.count(1)
        self._unanswered: dict[int, Subscription | None] = {}
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        self._closed = False
        self.connections = 0
        """How many WebSocket connections were opened (for tests and status pages)."""

    # --- the API the client uses ---------------------------------------------------------------

    def start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._run(), name="gateway.client connection")

    def subscribe(
        self, channel: str, since: str | None, token: str | None, *, server: bool = False
    ) -> Subscription:
        if self.failure is not None:
            raise self.failure
        existing = self.subscriptions.get(channel)
        if existing is not None:
            raise RequestInvalid(
                f"{channel} is subscribed already on this client; iterate that subscription",
                code="already_subscribed",
            )
        subscription = Subscription(
            channel,
            since=since,
            token=token,
            server=server,
            limit=self.buffer,
            on_room=self._resume,
            on_close=self._forget,
        )
        self.subscriptions[channel] = subscription
        if not server:
            self._request_subscribe(subscription)
        self.start()
        return subscription

    async def server_subscriptions(self) -> AsyncIterator[Subscription]:
        """Each subscription the gateway makes for this connection (`subscribed` with
        `server: true`), once, as it is announced; ends when the client closes."""
        self.start()
        while True:
            subscription = await self._announced.get()
            if subscription is None:
                self._announced.put_nowait(None)  # for any other reader
                return
            yield subscription

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._tasks):
            task.cancel()
        for subscription in list(self.subscriptions.values()):
            subscription.end(None)
        self.subscriptions.clear()
        self._announced.put_nowait(None)
        self._set_status(ConnectionStatus("closed", "closed by the client"))

    # --- the loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = RECONNECT_INITIAL
        while not self._closed:
            ending = await self._connect_once()
            if ending.fatal is not None:
                self._fail_all(ending.fatal)
                return
            if ending.was_open:
                delay = RECONNECT_INITIAL
            if ending.retry_hint is not None:
                wait = ending.retry_hint + random.uniform(0, 0.25)
            elif ending.code in AT_ONCE_CLOSE_CODES:
                wait = random.uniform(0, 0.1)
            else:
                wait = random.uniform(delay / 2, delay)
                delay = min(delay * 2, RECONNECT_MAX)
            self._set_status(
                ConnectionStatus(
                    "reconnecting",
                    ending.reason,
                    ending.code,
                    retry_in=wait,
                    restarting=ending.retry_hint is not None,
                )
            )
            await asyncio.sleep(wait)

    async def _connect_once(self) -> _Ending:
        try:
            ws = await connect(
                self._ws_url(),
                subprotocols=[SUBPROTOCOL],
                additional_headers=self._headers(),
                open_timeout=max(10.0, 2 * self.heartbeat),
                ping_interval=None,  # the heartbeat is the protocol's own `ping` op, below
                close_timeout=1.0,
                max_size=MAX_MESSAGE,
                max_queue=None,  # frames are taken off the socket at once; the buffers bound
                compression=None,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            reason = f"the gateway answered the upgrade with HTTP {status}"
            if status in (401, 403):
                return _Ending(reason, fatal=RequestForbidden(reason, status=status))
            return _Ending(reason)
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            return _Ending(f"cannot connect: {exc!r}")
        self.connections += 1
        self._ws = ws
        self._unanswered.clear()
        self._set_status(ConnectionStatus("open"))
        heartbeat = asyncio.create_task(self._beat(ws))
        ending = _Ending("", was_open=False)
        try:
            for subscription in list(self.subscriptions.values()):
                if not subscription.paused and not (
                    subscription.server and subscription.position is None
                ):
                    self._request_subscribe(subscription)
            while True:
                try:
                    async with asyncio.timeout(2 * self.heartbeat):
                        message = await ws.recv()
                except TimeoutError:
                    ws.transport.abort()
                    ending.reason = f"no frame for {2 * self.heartbeat:g} s (dead link)"
                    return ending
                ending.was_open = True
                await self._dispatch(message, ending)
                if ending.fatal is not None:
                    return ending
        except ConnectionClosed as exc:
            received = exc.rcvd
            if received is None:
                ending.reason = ending.reason or "the connection dropped"
                return ending
            ending.code, ending.reason = received.code, received.reason or ending.reason
            if received.code in FINAL_CLOSE_CODES:
                ending.fatal = Disconnected(received.code, received.reason)
            return ending
        finally:
            self._ws = None
            heartbeat.cancel()
            with contextlib.suppress(ConnectionClosed, OSError):
                await ws.close()

    async def _beat(self, ws: ClientConnection) -> None:
        ping = orjson.dumps({"op": "ping"}).decode()
        with contextlib.suppress(ConnectionClosed, OSError):
            while True:
                await asyncio.sleep(self.heartbeat)
                await ws.send(ping)

    # --- frames --------------------------------------------------------------------------------

    async def _dispatch(self, message: str | bytes, ending: _Ending) -> None:
        try:
            frame = orjson.loads(message)
        except orjson.JSONDecodeError:
            log.warning("ignored a frame that is not JSON: %r", message[:200])
            return
        if not isinstance(frame, dict):
            return
        op = frame.get("op")
        if op == "event":
            subscription = self.subscriptions.get(frame.get("channel", ""))
            if subscription is None:
                return
            del frame["op"]
            if not subscription.take_event(Event.from_envelope(frame)):
                await self._pause(subscription)
            elif subscription.half_full:
                # `recv` returns without yielding while frames are buffered in the socket: let
                # the consumer run before its buffer fills, so only a slow one is paused.
                await asyncio.sleep(0)
        elif op == "ack":
            self._acknowledge(frame)
        elif op == "error":
            await self._refused(frame, ending)
        elif op == "gap":
            subscription = self.subscriptions.get(frame.get("channel", ""))
            if subscription is not None:
                subscription.take_gap(Gap(subscription.channel, str(frame.get("since"))))
        elif op == "subscribed":
            channel = frame.get("channel")
            if isinstance(channel, str) and channel not in self.subscriptions:
                subscription = self.subscribe(channel, None, None, server=True)
                subscription.acknowledged()
                self._announced.put_nowait(subscription)
        elif op == "unsubscribed":
            ended = self.subscriptions.pop(frame.get("channel", ""), None)
            if ended is not None:
                ended.end(str(frame.get("reason") or "unsubscribed by the gateway"))
        elif op == "shutdown":
            retry = frame.get("retry")
            seconds = float(retry) / 1000 if isinstance(retry, int | float) else 1.0
            ending.retry_hint = min(max(seconds, 0.0), RECONNECT_MAX)
            ending.reason = str(frame.get("message") or "the gateway is restarting")

    def _acknowledge(self, frame: dict[str, Any]) -> None:
        ref = frame.get("ref")
        if not isinstance(ref, int):
            return
        subscription = self._unanswered.pop(ref, None)
        if subscription is not None and subscription.pending_ref == ref:
            subscription.acknowledged()

    async def _refused(self, frame: dict[str, Any], ending: _Ending) -> None:
        ref = frame.get("ref")
        subscription = self._unanswered.pop(ref, None) if isinstance(ref, int) else None
        if subscription is None or subscription.pending_ref != ref:
            if ref is None:
                # Unprompted: `token_expired` ahead of a 1008 close, which then ends the client.
                ending.reason = str(frame.get("message", ""))
            return
        if frame.get("code") in RETRY_CODES:
            self._spawn(self._resubscribe_later(subscription))
            return
        self.subscriptions.pop(subscription.channel, None)
        subscription.fail(refusal_of_frame(frame, f"subscribe {subscription.channel}"))

    # --- ops -----------------------------------------------------------------------------------

    def _request_subscribe(self, subscription: Subscription) -> None:
        """Subscribe from the subscription's position on the open connection (or on the next
        one). Synchronous up to the send, so the op is bound to the connection it was made
        for: one that dropped meanwhile loses it, and the next one sends its own."""
        ref = next(self._refs)
        subscription.pending_ref = ref
        ws = self._ws
        if ws is None:
            return  # sent when the connection opens
        op: dict[str, Any] = {"op": "subscribe", "channel": subscription.channel, "ref": ref}
        if subscription.position is not None:
            op["since"] = subscription.position
        if subscription.token is not None:
            op["token"] = subscription.token
        self._unanswered[ref] = subscription
        self._spawn(self._send(ws, op))

    async def _resubscribe_later(self, subscription: Subscription) -> None:
        ws = self._ws
        await asyncio.sleep(RECONNECT_INITIAL + random.uniform(0, RECONNECT_INITIAL))
        if self._ws is ws and self.subscriptions.get(subscription.channel) is subscription:
            self._request_subscribe(subscription)

    async def _pause(self, subscription: Subscription) -> None:
        """The consumer fell behind: have the gateway stop sending this channel until it has
        caught up (`_resume`); its history keeps what is skipped meanwhile."""
        ws = self._ws
        if ws is not None:
            ref = next(self._refs)
            self._unanswered[ref] = None
            await self._send(ws, {"op": "unsubscribe", "channel": subscription.channel, "ref": ref})

    def _resume(self, subscription: Subscription) -> None:
        if self.subscriptions.get(subscription.channel) is subscription:
            self._request_subscribe(subscription)

    def _forget(self, subscription: Subscription) -> None:
        if self.subscriptions.get(subscription.channel) is not subscription:
            return
        del self.subscriptions[subscription.channel]
        ws = self._ws
        if ws is not None:
            op = {"op": "unsubscribe", "channel": subscription.channel, "ref": next(self._refs)}
            self._spawn(self._send(ws, op))

    async def _send(self, ws: ClientConnection, op: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionClosed, OSError):
            await ws.send(orjson.dumps(op).decode())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- state ---------------------------------------------------------------------------------

    def _fail_all(self, error: ClientError) -> None:
        self.failure = error
        for subscription in list(self.subscriptions.values()):
            subscription.fail(error)
        self.subscriptions.clear()
        self._announced.put_nowait(None)
        code = error.close_code if isinstance(error, Disconnected) else None
        self._set_status(ConnectionStatus("closed", str(error), code))

    def _set_status(self, status: ConnectionStatus) -> None:
        self.status = status
        if self.on_status is not None:
            try:
                self.on_status(status)
            except Exception:
                # A failing callback must not stop the connection its subscriptions rely on.
                log.exception("the on_status callback failed")

    def _headers(self) -> dict[str, str]:
        credential = self.api_key or self._token()
        return {"Authorization": f"Bearer {credential}"} if credential else {}

    def _ws_url(self) -> str:
        parts = urlsplit(self.url)
        scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
        token = self._token()
        query = urlencode({"token": token}) if self.api_key and token else ""
        return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/ws", query, ""))
