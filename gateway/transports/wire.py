"""Direct writes to the socket under uvicorn, for the fan-out fast path.

Going through ASGI costs a coroutine hop per frame per subscriber (the ASGI `send` and every
middleware's wrapper around it). Under uvicorn's `websockets-sansio` WebSocket protocol and its
`httptools` HTTP protocol, the bytes a frame becomes are the same for every connection (server
WebSocket frames are not masked; an SSE frame is one HTTP chunk), so the gateway encodes them
once per event and hands them to each transport's `write` synchronously, like
`websockets.broadcast` does. A `Wire` only writes while the transport is open and not paused by
flow control; otherwise it refuses and the caller queues the frame for the ASGI path, which
waits for the socket to drain. Under any other server there is no `Wire` and every frame takes
the ASGI path: same bytes on the wire, just slower.

`GatewayApp` (app.py) puts the server's own `send` callable in the scope under `RAW_SEND`,
before any middleware wraps it; that callable is a bound method of uvicorn's protocol object
(WebSocket) or request cycle (HTTP), which is how the transport is found.

Every uvicorn attribute read here is declared in `internals.INTERNALS` (groups `ws-fast`,
`sse-fast`); if the installed uvicorn lacks one, the first connection logs one warning and
every frame takes the ASGI path.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import Scope

from gateway.transports.internals import available

RAW_SEND = "gateway.raw_send"


class Wire:
    """Writes encoded bytes to a connection's socket when it can take them now."""

    __slots__ = ("_owner", "transport")

    def __init__(self, owner: Any, transport: asyncio.Transport) -> None:
        self._owner = owner
        self.transport = transport

    def write(self, data: bytes) -> bool:
        raise NotImplementedError

    def abort(self) -> None:
        """Drop the connection now, without waiting for buffered data (a stalled client)."""
        self.transport.abort()


class WebSocketWire(Wire):
    """uvicorn's `WebSocketsSansIOProtocol`: frames go out as-is (no permessage-deflate)."""

    __slots__ = ()

    def write(self, data: bytes) -> bool:
        protocol = self._owner
        # A lost connection's transport is closing too: no separate `disconnected` check.
        if protocol.close_sent or not protocol.writable.is_set() or self.transport.is_closing():
            return False
        self.transport.write(data)
        return True

    async def writable(self) -> None:
        """Wait until flow control lets the transport take more (at once if it can). uvicorn
        sets it again when the connection is lost, so this never waits for one that is gone."""
        await self._owner.writable.wait()


class ChunkedWire(Wire):
    """uvicorn's httptools `RequestResponseCycle` of a started, chunked response."""

    __slots__ = ()

    def write(self, data: bytes) -> bool:
        cycle = self._owner
        if (
            cycle.disconnected
            or cycle.response_complete
            or cycle.flow.write_paused
            or self.transport.is_closing()
        ):
            return False
        self.transport.write(data)
        return True

    def nudge(self) -> None:
        """Wake the request's pending `receive()`, so its handler looks at its own state."""
        self._owner.message_event.set()


def websocket_wire(scope: Scope) -> WebSocketWire | None:
    """The fast path of an accepted WebSocket, when the server is uvicorn's sans-I/O one."""
    if not available("ws-fast"):
        return None
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    except ImportError:  # pragma: no cover - uvicorn without websockets
        return None
    protocol = getattr(scope.get(RAW_SEND), "__self__", None)
    if not isinstance(protocol, WebSocketsSansIOProtocol):
        return None
    extensions = getattr(protocol.conn, "extensions", None)
    if extensions or protocol.transport is None:
        return None  # a negotiated extension (compression) rewrites frames per connection
    return WebSocketWire(protocol, protocol.transport)


def chunked_wire(scope: Scope) -> ChunkedWire | None:
    """The fast path of a started response, when uvicorn's httptools cycle sends it chunked."""
    if not available("sse-fast"):
        return None
    try:
        from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
    except ImportError:  # pragma: no cover - uvicorn without httptools
        return None
    cycle = getattr(scope.get(RAW_SEND), "__self__", None)
    if not isinstance(cycle, RequestResponseCycle) or not cycle.chunked_encoding:
        return None
    if scope.get("method") != "GET":
        return None
    return ChunkedWire(cycle, cycle.transport)
