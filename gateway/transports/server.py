"""uvicorn's HTTP (httptools) and WebSocket (websockets sans-I/O) protocols, made lighter per
connection. `gateway serve` runs uvicorn with these.

Memory per idle connection is a target (see `bench/`), and a good share of it was empty
`collections.deque`s: every `asyncio.Event` and `asyncio.Queue` allocates a 64-slot block
(~760 bytes) up front, and uvicorn keeps five of them per WebSocket connection and three per
HTTP connection, plus the parsed handshake after the WebSocket is open. These subclasses swap
in list-backed equivalents (an open connection has at most one waiter per event) and drop the
handshake once it is answered. Behaviour is uvicorn's own; if a future uvicorn renames what
is swapped here, the swap is skipped and only the memory saving is lost.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


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


class LeanHttpToolsProtocol(HttpToolsProtocol):
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
