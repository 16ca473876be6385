"""A client that stops reading is cut off; the others on its channel are not slowed down."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support import GatewayProcess, wait_until, ws_client, ws_recv, ws_send

pytestmark = pytest.mark.serial  # measures latency under load: alone under xdist

EVENTS = 1000
PADDING = "x" * 8000  # 1,000 of these outgrow the kernel socket buffers (4 MiB)


def stalled_connection(port: int, request: str) -> socket.socket:
    """Open a connection with a tiny receive buffer, send the request, and never read again."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(request.encode())
    return sock


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """Drain what the server sent; True once it closed the connection (EOF or reset)."""
    deadline = time.monotonic() + timeout
    sock.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_slow_clients_are_disconnected_and_others_get_everything_promptly(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gateway = gateway_factory(GATEWAY_SLOW_CONSUMER_QUEUE="100")
    channel = "room:slow"
    slow_ws = stalled_connection(
        gateway.port,
        f"GET /ws?channel={channel} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: gateway.v1\r\n\r\n",
    )
    slow_sse = stalled_connection(
        gateway.port, f"GET /events?channel={channel} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    )
    assert gateway.process is not None
    pid = gateway.process.pid
    async with ws_client(gateway.ws_url) as fast_a, ws_client(gateway.ws_url) as fast_b:
        for ws in (fast_a, fast_b):
            await ws_send(ws, {"op": "subscribe", "channel": channel, "ref": 1})
            assert (await ws_recv(ws))["op"] == "ack"
        rss_before = rss_kb(pid)

        async def receive_all(ws: object) -> list[int]:
            seen: list[int] = []
            while len(seen) < EVENTS:
                frame = await ws_recv(ws, timeout=30)
                if frame["op"] == "event":
                    seen.append(frame["data"]["n"])
            return seen

        readers = [asyncio.create_task(receive_all(ws)) for ws in (fast_a, fast_b)]
        async with httpx.AsyncClient() as client:
            for n in range(EVENTS):
                response = await client.post(
                    f"{gateway.url}/channels/{channel}/events",
                    json={"data": {"n": n, "pad": PADDING}},
                )
                assert response.status_code == 202
        published_at = time.monotonic()
        results = await asyncio.wait_for(asyncio.gather(*readers), 30)
        lag = time.monotonic() - published_at
    assert all(seen == list(range(EVENTS)) for seen in results)
    assert lag < 10, f"fast clients finished {lag:.1f}s after the last publish"
    assert closed_by_server(slow_ws, 20), "the stalled WebSocket client was not disconnected"
    assert closed_by_server(slow_sse, 30), "the stalled SSE client was not disconnected"
    growth_mb = (rss_kb(pid) - rss_before) / 1024
    assert growth_mb < 100, f"gateway memory grew by {growth_mb:.0f} MB"
    metrics = httpx.get(gateway.url + "/metrics").text
    assert 'gateway_slow_consumer_disconnects_total{transport="ws"} 1.0' in metrics
    assert 'gateway_slow_consumer_disconnects_total{transport="sse"} 1.0' in metrics
    slow_ws.close()
    slow_sse.close()


def ws_connections(url: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith('gateway_connections{transport="ws"}'):
            return float(line.split()[-1])
    return 0.0


async def test_evicted_client_that_keeps_sending_is_still_dropped(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    """The 4008 close waits behind data the client never reads; the connection is dropped after
    a grace period even if the client keeps sending (it is not read any more meanwhile)."""
    gateway = gateway_factory(GATEWAY_SLOW_CONSUMER_QUEUE="50")
    channel = "room:evicted"
    stalled = stalled_connection(
        gateway.port,
        f"GET /ws?channel={channel} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: gateway.v1\r\n\r\n",
    )
    wait_until(lambda: ws_connections(gateway.url) == 1, 10, "the stalled client to connect")
    async with httpx.AsyncClient() as client:
        for n in range(EVENTS):  # outgrows the socket buffers: the client is evicted
            await client.post(
                f"{gateway.url}/channels/{channel}/events", json={"data": {"n": n, "pad": PADDING}}
            )
    metrics = httpx.get(gateway.url + "/metrics").text
    assert 'gateway_slow_consumer_disconnects_total{transport="ws"} 1.0' in metrics
    op = b'{"op":"ping"}'
    stalled.sendall(b"\x81" + bytes([0x80 | len(op)]) + b"\x00\x00\x00\x00" + op)  # zero mask
    # EVICT_GRACE (5 s) plus margin; the client never reads a byte.
    wait_until(lambda: ws_connections(gateway.url) == 0, 15, "the evicted client to be dropped")
    stalled.close()
