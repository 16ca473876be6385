"""A WebSocket frame sent right behind the upgrade request, before the 101 came back.

A client may pipeline its first message with the handshake (RFC 6455 lets it send as soon as it
has sent the request; the bytes often share one TCP segment). uvicorn's HTTP protocols hand the
WebSocket protocol a head rebuilt from the parsed request and drop whatever followed it, so such
a message was lost without a trace, under every `--ws` protocol.
"""

from __future__ import annotations

import base64
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from tests.support import GatewayProcess
from tests.transports.test_read_budget import OP_TEXT, client_frame, server_frames


def upgrade_request(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: gateway.v1\r\n\r\n"
    ).encode()


def answers_after(sock: socket.socket, count: int, timeout: float = 10.0) -> list[Any]:
    """The first `count` text frames after the 101 (the whole head is checked to be a 101)."""
    deadline = time.monotonic() + timeout
    received = bytearray()
    while b"\r\n\r\n" not in received:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        assert chunk, f"closed during the handshake: {bytes(received)!r}"
        received += chunk
    head, _, rest = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    buffer, texts = bytearray(rest), []
    while True:
        texts += [orjson.loads(p) for op, p in server_frames(buffer) if op == OP_TEXT]
        if len(texts) >= count:
            return texts
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        assert chunk, f"closed before {count} answers; got {texts}"
        buffer += chunk


@pytest.mark.parametrize("ws_impl", ["lean", "websockets-sansio", "websockets"])
@pytest.mark.parametrize("http_impl", ["lean", "httptools"])
def test_a_frame_in_the_same_write_as_the_upgrade_is_answered(
    gateway_factory: Callable[..., GatewayProcess], ws_impl: str, http_impl: str
) -> None:
    gateway = gateway_factory(args=["--ws", ws_impl, "--http", http_impl])
    first = client_frame(OP_TEXT, b'{"op":"ping","ref":1}')
    second = client_frame(OP_TEXT, b'{"op":"ping","ref":2}')
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(upgrade_request(gateway.port) + first + second)  # one write, one segment
        answers = answers_after(sock, 2)
    assert [(a.get("op"), a.get("ref")) for a in answers] == [("pong", 1), ("pong", 2)], answers
