"""uvicorn's HTTP (httptools) and WebSocket (websockets sans-I/O) protocols, made lighter per
connection. `gateway serve` runs uvicorn with these.

Memory per idle connection is a target (see `bench/`), and a good share of it was empty
`collections.deque`s: every `asyncio.Event` and `asyncio.Queue` allocates a 64-slot block
(~760 bytes) up front, and uvicorn keeps five of them per WebSocket connection and three per
HTTP connection, plus the parsed handshake after the WebSocket is open. These subclasses swap
in list-backed equivalents (an open connection has at most one waiter per event) and drop the
handshake once it is answered. Behaviour is uvicorn's own; if a future uvicorn renames what
is swapped here, the swap is skipped and only the memory saving is lost.

The HTTP protocol also guards the connections themselves, before any request exists
(`GuardedHttpToolsProtocol`): uvicorn would keep a connection that never sends a complete
request head open forever, and count none of them.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from gateway.limits import ConnectionCounter, ConnectionGate
from gateway.metrics import METRICS
from gateway.problems import PROBLEM_TYPE_BASE


class LeanEvent(asyncio.Event):
    """An `asyncio.Event` whose waiters live in a list, allocated as needed."""

    def __init__(self, value: bool = False) -> None:
        super().__init__()
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


def _problem_bytes(status: int, reason: str, code: str, detail: str, *extra: str) -> bytes:
    """A whole `application/problem+json` response that closes the connection, for answers
    written by the protocol before (or instead of) any ASGI request."""
    body = orjson.dumps(
        {"type": PROBLEM_TYPE_BASE + code, "title": reason, "status": status, "detail": detail}
    )
    head = [
        f"HTTP/1.1 {status} {reason}",
        "content-type: application/problem+json",
        f"content-length: {len(body)}",
        "connection: close",
        *extra,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


TOO_MANY_CONNECTIONS: Final = _problem_bytes(
    429,
    "Too Many Requests",
    "too-many-connections",
    "too many open connections from this address (GATEWAY_MAX_CONNECTIONS_PER_CLIENT)",
    "retry-after: 5",
)
REQUEST_TIMEOUT: Final = _problem_bytes(
    408,
    "Request Timeout",
    "request-timeout",
    "the request head did not arrive in time (GATEWAY_HEADER_TIMEOUT)",
)
HEAD_TOO_LARGE: Final = _problem_bytes(
    431,
    "Request Header Fields Too Large",
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

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        gate = self.gate
        if gate is None:
            return
        key = gate.key_for(self.client[0]) if self.client else None
        if key is not None:
            if not gate.counter.acquire(key):
                METRICS.connections_refused.labels("per_address").inc()
                transport.write(TOO_MANY_CONNECTIONS)
                transport.close()
                return
            self.counted_as = key
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
            super().data_received(data)
            return
        if self.head_timer is None and (self.cycle is None or self.cycle.response_complete):
            # The first byte after a finished request: its head is due in time too (uvicorn's
            # keep-alive timer stops at any byte, even ones that begin no request).
            self.head_bytes = 0
            self.head_timer = self.loop.call_later(gate.header_timeout, self.head_timed_out)
        timer = self.head_timer
        super().data_received(data)
        if timer is not None and self.head_timer is timer:  # the whole chunk was head
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
                self._stop_head_timer()
                self._close_with(HEAD_TOO_LARGE)

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
        key, self.counted_as = self.counted_as, None
        if key is not None and self.gate is not None:
            protocol = self.transport.get_protocol()
            release = _ReleaseOnLoss(protocol.connection_lost, self.gate.counter, key)
            setattr(protocol, "connection_lost", release)  # noqa: B010 (mypy: method assign)

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
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if hasattr(self, "pipeline"):
            self.pipeline = _Pipeline()  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        flow = self.flow
        event = getattr(flow, "_is_writable_event", None)
        if isinstance(event, asyncio.Event):
            flow._is_writable_event = LeanEvent(event.is_set())

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        event = getattr(cycle, "message_event", None)
        if isinstance(event, asyncio.Event) and not isinstance(event, LeanEvent):
            cycle.message_event = LeanEvent(event.is_set())


class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = LeanQueue()  # type: ignore[assignment]
        self.writable = LeanEvent(self.writable.is_set())

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
