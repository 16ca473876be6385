"""uvicorn's HTTP (httptools) and WebSocket (websockets sans-I/O) protocols, made lighter per
connection. `gateway serve` runs uvicorn with these.

Memory per idle connection is a target (see `bench/`), and a good share of it was empty
`collections.deque`s: every `asyncio.Event` and `asyncio.Queue` allocates a 64-slot block
(~760 bytes) up front, and uvicorn keeps five of them per WebSocket connection and three per
HTTP connection, plus the parsed handshake after the WebSocket is open. These subclasses swap
in list-backed equivalents (an open connection has at most one waiter per event) and drop the
handshake once it is answered. Behaviour is uvicorn's own. Every uvicorn (and asyncio) name
these classes reach is declared in `internals.INTERNALS` and checked when `gateway serve`
starts: one the protocols need refuses the start, naming it; if a swap's target is gone, the
swap is skipped with one warning and only the memory saving is lost.

The HTTP protocol also guards the connections themselves, before any request exists
(`GuardedHttpToolsProtocol`): uvicorn would keep a connection that never sends a complete
request head open forever, and count none of them.

The WebSocket protocol also enforces each connection's read budget (`ReadBudget`: frames and
bytes per second, control frames and fragments included) where the bytes arrive, before they
are parsed: a client flooding empty pings or one-byte fragments is closed with 4029 after a
second's worth of frames, instead of holding the event loop for whole socket reads of them.
It closes a text message that is not UTF-8 with 1007 quietly (uvicorn logs a traceback).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State

from gateway.limits import ConnectionCounter, ConnectionGate, ReadBudget
from gateway.metrics import METRICS
from gateway.problems import PROBLEM_TYPE_BASE, PROBLEM_TYPES
from gateway.settings import Settings
from gateway.transports.internals import available
from gateway.vocabulary import CloseCode

log = logging.getLogger("gateway.ws")

MIN_CLIENT_FRAME = 6
"""Bytes in the smallest frame a client can send: a 2-byte header and the 4-byte mask key."""
CLOSE_GRACE = 1.0
"""Seconds a connection we closed is kept (not read) so that the close frame reaches the
client, before it is dropped."""
READ_BUDGET_EXCEEDED = METRICS.ws_read_budget_exceeded


LIST_WAITERS: Final = available("asyncio")
"""asyncio.Event keeps its waiters in `_waiters` and only appends to and removes from it."""


class LeanEvent(asyncio.Event):
    """An `asyncio.Event` whose waiters live in a list, allocated as needed."""

    def __init__(self, value: bool = False) -> None:
        super().__init__()
        if LIST_WAITERS:
            self._waiters = []  # type: ignore[assignment]
        if value:
            self.set()


class LeanQueue:
    """The part of `asyncio.Queue` uvicorn's WebSocket protocol uses, for its single reader."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Any:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)


class _Pipeline(list[Any]):
    """uvicorn's pipelined-request deque (`appendleft`/`pop`), as a list."""

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


MAX_HEAD_BYTES: Final = 64 * 1024
"""A request head still unfinished after this many bytes is refused with 431 (the parser
itself would buffer without end). Complete heads over 32 KB get 431 from `BodyLimit`."""


def _problem_bytes(code: str, detail: str, *extra: str) -> bytes:
    """A whole `application/problem+json` response that closes the connection, for answers
    written by the protocol before (or instead of) any ASGI request. Status and title come from
    the problem's entry in `PROBLEM_TYPES` (a code missing there fails at import)."""
    problem = PROBLEM_TYPES[code]
    assert problem.status is not None, code
    body = orjson.dumps(
        {
            "type": PROBLEM_TYPE_BASE + code,
            "title": problem.title,
            "status": problem.status,
            "detail": detail,
        }
    )
    head = [
        f"HTTP/1.1 {problem.status} {problem.title}",
        "content-type: application/problem+json",
        f"content-length: {len(body)}",
        "connection: close",
        *extra,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


TOO_MANY_CONNECTIONS: Final = _problem_bytes(
    "too-many-connections",
    "too many open connections from this address (GATEWAY_MAX_CONNECTIONS_PER_CLIENT)",
    "retry-after: 5",
)
CONNECTING_TOO_FAST: Final = _problem_bytes(
    "rate-limited",
    "too many new connections from this address (GATEWAY_CONNECT_RATE); reconnect with backoff",
    "retry-after: 1",
)
REQUEST_TIMEOUT: Final = _problem_bytes(
    "request-timeout",
    "the request head did not arrive in time (GATEWAY_HEADER_TIMEOUT)",
)
HEAD_TOO_LARGE: Final = _problem_bytes(
    "headers-too-large",
    f"the request head is over {MAX_HEAD_BYTES} bytes",
)


class _ReleaseOnLoss:
    """Stands in for an upgraded (WebSocket) protocol's `connection_lost`, so the TCP
    connection's count is released when the connection ends, whichever protocol has it then."""

    __slots__ = ("counter", "key", "lost")

    def __init__(self, lost: Any, counter: ConnectionCounter, key: str) -> None:
        self.lost = lost
        self.counter = counter
        self.key = key

    def __call__(self, exc: Exception | None) -> None:
        lost, self.lost = self.lost, None  # also breaks the protocol -> self -> protocol cycle
        if lost is None:
            return
        self.counter.release(self.key)
        lost(exc)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the checks a connection faces before its requests.

    - Every TCP connection counts against `GATEWAY_MAX_CONNECTIONS_PER_CLIENT` under its
      peer's address (trusted proxies excepted, see `ConnectionGate`), from `connection_made`
      until it ends, across a WebSocket upgrade. One over the limit is answered 429 and
      closed at once, before anything is read: it costs a file descriptor for microseconds.
    - New connections per peer address are rate limited (`GATEWAY_CONNECT_RATE`, a token
      bucket of `GATEWAY_CONNECT_BURST`), refused the same way: a client that reconnects as
      soon as it is cut (for flooding its WebSocket, say) is held to that rate.
    - A request head must be complete `GATEWAY_HEADER_TIMEOUT` seconds after the connection
      opened, or after the first byte that follows a finished keep-alive request; otherwise
      the connection is closed (with a 408 if part of a head came). Idle keep-alive between
      requests is uvicorn's `timeout_keep_alive`.
    - A head still unfinished after `MAX_HEAD_BYTES` is answered 431 and closed.

    Without a `gate` (uvicorn run by hand, in-process tests) it is plain httptools.
    """

    def __init__(self, *args: Any, gate: ConnectionGate | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = gate
        self.counted_as: str | None = None
        self.head_timer: asyncio.TimerHandle | None = None
        self.head_bytes = 0
        self.head_begun = False
        self.upgrade_tail = b""
        """What followed the head of an upgrade request in the same read, for the WebSocket."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        gate = self.gate
        if gate is None:
            return
        refusal, self.counted_as = gate.admit(self.client[0]) if self.client else (None, None)
        if refusal is not None:
            METRICS.connections_refused.labels(refusal).inc()
            transport.write(CONNECTING_TOO_FAST if refusal == "rate" else TOO_MANY_CONNECTIONS)
            transport.close()
            return
        self.head_timer = self.loop.call_later(gate.header_timeout, self.head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        key, self.counted_as = self.counted_as, None
        if key is not None and self.gate is not None:
            self.gate.counter.release(key)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        gate = self.gate
        if gate is None:
            self._parse(data)
            return
        if self.head_timer is None and (self.cycle is None or self.cycle.response_complete):
            # The first byte after a finished request: its head is due in time too (uvicorn's
            # keep-alive timer stops at any byte, even ones that begin no request).
            self.head_bytes = 0
            self.head_timer = self.loop.call_later(gate.header_timeout, self.head_timed_out)
        timer = self.head_timer
        self._parse(data)
        if timer is not None and self.head_timer is timer:  # the whole chunk was head
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
                self._stop_head_timer()
                self._close_with(HEAD_TOO_LARGE)

    def _parse(self, data: bytes) -> None:
        """uvicorn's `data_received`, except that the bytes after an upgrade request's head go
        to the WebSocket protocol. uvicorn hands it a head rebuilt from the parsed request and
        drops the rest, so a client frame sent right behind the upgrade request, before the
        101 came back (in the same TCP segment), was lost without a trace."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
        except httptools.HttpParserUpgrade as upgrade:
            if self._should_upgrade():
                offset = upgrade.args[0] if upgrade.args else len(data)
                self.upgrade_tail = data[offset:] if isinstance(offset, int) else b""
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.head_begun = True
        gate = self.gate
        if gate is not None and self.head_timer is None:  # a pipelined request
            self.head_bytes = 0
            self.head_timer = self.loop.call_later(gate.header_timeout, self.head_timed_out)

    def on_headers_complete(self) -> None:
        self._stop_head_timer()
        super().on_headers_complete()

    def handle_websocket_upgrade(self) -> None:
        super().handle_websocket_upgrade()
        protocol = self.transport.get_protocol()
        key, self.counted_as = self.counted_as, None
        if key is not None and self.gate is not None:
            release = _ReleaseOnLoss(protocol.connection_lost, self.gate.counter, key)
            setattr(protocol, "connection_lost", release)  # noqa: B010 (mypy: method assign)
        tail, self.upgrade_tail = self.upgrade_tail, b""
        closing = self.transport.is_closing()
        if tail and not closing and protocol is not self and isinstance(protocol, asyncio.Protocol):
            protocol.data_received(tail)

    def head_timed_out(self) -> None:
        """No complete request head in time: close, with a 408 when part of one came."""
        self.head_timer = None
        if self.transport.is_closing():
            return
        METRICS.head_timeouts.inc()
        self._close_with(REQUEST_TIMEOUT if self.head_begun else b"")

    def _close_with(self, answer: bytes) -> None:
        """Close, answering first unless a response is being written (a pipelined head)."""
        if answer and (self.cycle is None or self.cycle.response_complete):
            self.transport.write(answer)
        self.transport.close()

    def _stop_head_timer(self) -> None:
        self.head_begun = False
        timer, self.head_timer = self.head_timer, None
        if timer is not None:
            timer.cancel()


class LeanHttpToolsProtocol(GuardedHttpToolsProtocol):
    """Without the `http-lean` internals (one warning), it is `GuardedHttpToolsProtocol`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lean = available("http-lean")
        if self.lean:
            self.pipeline = _Pipeline()  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.lean:
            flow = self.flow
            flow._is_writable_event = LeanEvent(flow._is_writable_event.is_set())

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle  # None before the first request's cycle (a WebSocket upgrade)
        if self.lean and cycle is not None and not isinstance(cycle.message_event, LeanEvent):
            cycle.message_event = LeanEvent(cycle.message_event.is_set())


class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = LeanQueue()  # type: ignore[assignment]
        self.writable = LeanEvent(self.writable.is_set())
        settings = settings_of(self.app)
        self.read_budget = (
            ReadBudget.from_settings(settings, self.loop.time()) if settings is not None else None
        )

    def data_received(self, data: bytes) -> None:
        """Charge the read budget, then parse; over budget, close with 4029.

        A read is parsed in slices that hold at most one frame more than the budget has left
        (no client frame is shorter than `MIN_CLIENT_FRAME`), so a flood is cut after the
        budget's worth of frames, not after a whole socket read of them (~43,000 empty pings
        in 256 KB, ~0.2 s of parsing).
        """
        budget = self.read_budget
        if budget is None:
            super().data_received(data)
            return
        budget.refill(self.loop.time())
        if not budget.spend_bytes(len(data)):
            self._exceed_read_budget("bytes")
            return
        conn = self.conn
        start, size = 0, len(data)
        while start < size:
            end = start + MIN_CLIENT_FRAME * (budget.frames_left() + 1)
            conn.receive_data(data if start == 0 and end >= size else data[start:end])
            start = end
            if conn.parser_exc is not None:
                self.handle_parser_exception()
                return
            events = conn.events_received()
            frames = sum(isinstance(event, Frame) for event in events)
            if frames and not budget.spend_frames(frames):
                self._exceed_read_budget("frames")
                return
            self._dispatch(events)
            if self.transport.is_closing():
                return

    def _dispatch(self, events: list[Any]) -> None:
        """uvicorn's `handle_events`, with the pongs of a batch of pings written at once."""
        pings = False
        for event in events:
            if self.transport.is_closing():
                return  # closed by an earlier event (a close frame, invalid UTF-8)
            if isinstance(event, Request):
                self.handle_connect(event)
            elif isinstance(event, Frame):
                opcode = event.opcode
                if opcode is Opcode.PING:
                    pings = True  # websockets has queued the pong
                elif opcode is Opcode.CONT:
                    self.handle_cont(event)
                elif opcode is Opcode.TEXT:
                    self.handle_text(event)
                elif opcode is Opcode.BINARY:
                    self.handle_bytes(event)
                elif opcode is Opcode.PONG:
                    self.handle_pong(event)
                elif opcode is Opcode.CLOSE:
                    self.handle_close(event)
        if pings and not self.transport.is_closing():
            self.handle_ping()  # writes everything queued: the pongs, in order

    def send_receive_event_to_app(self) -> None:
        """uvicorn's, except that a text message that is not UTF-8 is closed with 1007 without
        logging a traceback: it is the client's error, not the gateway's."""
        if self.curr_msg_data_type != "text":
            super().send_receive_event_to_app()
            return
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            return
        try:
            text = data.decode()
        except UnicodeDecodeError:
            self._close_now(CloseCode.INVALID_DATA, "text message is not valid UTF-8")
            return
        self.queue.put_nowait({"type": "websocket.receive", "text": text})
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def _exceed_read_budget(self, limit: str) -> None:
        READ_BUDGET_EXCEEDED.labels(limit).inc()
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "client"
        log.info(
            "%s - WebSocket closed %d: over its read budget (%s)",
            client,
            CloseCode.READ_BUDGET,
            limit,
        )
        self._close_now(CloseCode.READ_BUDGET, f"read budget exceeded: too many {limit}/s")

    def _close_now(self, code: int, reason: str) -> None:
        """Close on our side at once: nothing more is read, the close frame (if the handshake
        was answered) goes out followed by a FIN, and the connection is dropped after
        `CLOSE_GRACE`. Closing the socket at once would send a reset instead, as the client's
        unread flood is still in it, and a reset can destroy the close frame before the client
        reads it."""
        transport = self.transport
        if transport.is_closing():
            return
        transport.pause_reading()
        self.read_paused = False  # so that uvicorn's `receive` does not resume reading
        conn = self.conn
        if conn.state is State.OPEN:
            conn.fail(code, reason)  # a close frame; the parser discards all that follows
            transport.write(b"".join(conn.data_to_send()))
        if not self.close_sent:  # else the app closed already, and knows
            self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
            self.close_sent = True
        if transport.can_write_eof():
            transport.write_eof()
        else:
            transport.close()
        if self.close_timer is not None:
            self.close_timer.cancel()
        self.close_timer = self.loop.call_later(CLOSE_GRACE, transport.abort)

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            # The handshake is answered; its parsed request and response are not used again.
            # (websockets' parser generator keeps the request for the connection's life, so
            # its headers are emptied in place; the ASGI scope has its own copy.)
            request = getattr(self, "request", None)
            if request is not None:
                request.headers.clear()
            self.request = None  # type: ignore[assignment]
            self.response = None  # type: ignore[assignment]


def settings_of(app: Any) -> Settings | None:
    """The gateway's settings, found through the wrappers uvicorn puts around the app (each
    keeps the next as `.app`); None for an app that is not the gateway's."""
    for _ in range(10):
        services = getattr(getattr(app, "state", None), "services", None)
        if services is not None:
            settings: Settings = services.settings
            return settings
        app = getattr(app, "app", None)
        if app is None:
            break
    return None


def websocket_protocol(name: str) -> type[asyncio.Protocol] | str:
    """uvicorn's `ws` option for `gateway serve --ws NAME`: the gateway's own protocols where
    it has them (`lean`; `websockets`, uvicorn's legacy one with the read budget), else the
    name for uvicorn to resolve (its own `websockets-sansio`, kept as it is for comparison)."""
    if name == "lean":
        return LeanWebSocketProtocol
    if name == "websockets":
        from gateway.transports.legacy_ws import BudgetedLegacyWebSocketProtocol

        return BudgetedLegacyWebSocketProtocol
    return name
