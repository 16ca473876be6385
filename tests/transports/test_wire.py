"""The fan-out fast path (`gateway.transports.wire`) and the ASGI path it falls back to.

Each test runs the same app under three uvicorn stacks, in this process so the hub can be
inspected: the gateway's own lean protocols (what `gateway serve` runs), uvicorn's stock
httptools + websockets-sansio (also fast), and h11 + the legacy websockets protocol, where no
`Wire` applies and every frame goes through ASGI. The client sees the same thing on all three.
"""

from __future__ import annotations

import asyncio
import contextlib
import warnings
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import uvicorn
from websockets.frames import Frame, Opcode

from gateway.app import create_app
from gateway.events import http_chunk, ws_text_frame
from gateway.hub import Hub
from gateway.settings import Settings
from gateway.transports.server import LeanHttpToolsProtocol, LeanWebSocketProtocol
from tests.support import (
    GatewayProcess,
    async_wait_until,
    collect_sse,
    free_port,
    ws_client,
    ws_recv,
    ws_send,
)

STACKS: dict[str, tuple[dict[str, Any], bool]] = {
    "lean": ({"http": LeanHttpToolsProtocol, "ws": LeanWebSocketProtocol}, True),
    "stock": ({"http": "httptools", "ws": "websockets-sansio"}, True),
    "generic": ({"http": "h11", "ws": "websockets"}, False),
}


class Served:
    def __init__(self, url: str, hub: Hub, fast: bool) -> None:
        self.url = url
        self.ws_url = url.replace("http", "ws", 1) + "/ws"
        self.hub = hub
        self.fast = fast

    def sinks(self, transport: str) -> list[bool]:
        return [s.sink is not None for s in self.hub.connections if s.transport == transport]


@pytest.fixture(params=list(STACKS))
async def served(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Served]:
    """The app on Redis (history reads really wait, so live events arrive mid-subscribe) with
    an embedded worker, under one of the uvicorn stacks."""
    options, fast = STACKS[request.param]
    settings = Settings.from_env(
        # Rooms keep 500 events of the backlog test's 16 KB (more than the default 4 MiB).
        {
            "GATEWAY_LOG_LEVEL": "warning",
            "REDIS_URL": redis_url,
            "GATEWAY_RETENTION": "job=10000/86400 room=500/3600/16777216",
        },
        embedded_worker=True,
    )
    app = create_app(settings)
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        lifespan="on",
        log_level="warning",
        ws_per_message_deflate=False,
        **options,
    )
    server = uvicorn.Server(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # uvicorn's legacy websockets
        task = asyncio.create_task(server.serve())
        await async_wait_until(lambda: server.started, 10, "uvicorn to start")
    try:
        yield Served(f"http://127.0.0.1:{port}", app.state.services.hub, fast)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


def test_frames_are_what_the_protocol_libraries_would_write() -> None:
    for size in (0, 1, 125, 126, 65535, 65536, 70000):
        payload = b"x" * size
        expected = Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])
        assert ws_text_frame(payload) == expected, size
    assert http_chunk(b"id: 1-0\n\n") == b"9\r\nid: 1-0\n\n\r\n"


async def test_websocket_gets_every_event_once_in_order(served: Served) -> None:
    async with ws_client(served.ws_url) as ws, httpx.AsyncClient(base_url=served.url) as http:
        await ws_send(ws, {"op": "subscribe", "channel": "room:wire", "ref": 1})
        assert (await ws_recv(ws))["op"] == "ack"
        assert served.sinks("ws") == [served.fast]
        for n in range(50):
            response = await http.post("/channels/room:wire/events", json={"data": n})
            assert response.status_code == 202
        seen = [(await ws_recv(ws))["data"] for _ in range(50)]
    assert seen == list(range(50))


async def test_backlog_and_live_events_interleave_without_loss(served: Served) -> None:
    """A client that stalls while a long history is replayed and live events keep coming: the
    socket fills, frames queue, the queue drains as the client reads, and live events written
    directly must never overtake queued ones (nor be lost or repeated)."""
    pad = "x" * 16_000  # 300 of these outgrow the socket buffers while the client stalls
    async with httpx.AsyncClient(base_url=served.url) as http:
        for n in range(300):
            await http.post("/channels/room:mixed/events", json={"data": {"n": n, "pad": pad}})
        first = (await http.get("/channels/room:mixed/events?limit=1")).json()["events"][0]

        async def publish_more() -> None:
            for n in range(300, 500):
                await http.post("/channels/room:mixed/events", json={"data": {"n": n, "pad": pad}})

        publisher = asyncio.create_task(publish_more())
        async with ws_client(served.ws_url, max_queue=1, max_size=None) as ws:
            await ws_send(ws, {"op": "subscribe", "channel": "room:mixed", "since": first["id"]})
            await asyncio.sleep(0.5)  # the stall itself is the point: nothing to wait for
            assert (await ws_recv(ws))["op"] == "ack"  # the ack goes ahead of the replay
            seen = []
            while len(seen) < 499:
                frame = await ws_recv(ws)
                assert frame["op"] == "event", frame
                seen.append(frame["data"]["n"])
            await publisher
    assert seen == list(range(1, 500))


async def test_sse_job_stream_ends_after_the_terminal_event(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.url) as http:
        job = (
            await http.post("/jobs", json={"type": "sleep", "data": {"seconds": 0.3, "steps": 3}})
        ).json()
    events = await collect_sse(f"{served.url}/jobs/{job['id']}/events", timeout=15)
    assert [e.event for e in events][-1] == "job.completed"
    assert [e.event for e in events][:2] == ["job.queued", "job.started"]


async def test_sse_room_stream_is_live(served: Served) -> None:
    received: list[Any] = []

    async def follow() -> None:
        events = await collect_sse(
            f"{served.url}/events?channel=room:sse-wire",
            until=lambda e: e.json()["data"] == 19,
            timeout=15,
        )
        received.extend(e.json()["data"] for e in events)

    reader = asyncio.create_task(follow())
    await async_wait_until(lambda: served.hub.subscriber_count("room:sse-wire") == 1, 10, "SSE")
    assert served.sinks("sse") == [served.fast]
    async with httpx.AsyncClient(base_url=served.url) as http:
        for n in range(20):
            await http.post("/channels/room:sse-wire/events", json={"data": n})
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(reader, 15)
    assert received == list(range(20))


async def test_serve_runs_on_the_protocols_it_is_given(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    """`gateway serve --http h11 --ws websockets`: no fast path, same behaviour."""
    gateway = gateway_factory(args=["--http", "h11", "--ws", "websockets"])
    async with ws_client(gateway.ws_url) as ws, httpx.AsyncClient(base_url=gateway.url) as http:
        await ws_send(ws, {"op": "subscribe", "channel": "room:cli", "ref": 1})
        assert (await ws_recv(ws))["op"] == "ack"
        job = (
            await http.post("/jobs", json={"type": "sleep", "data": {"seconds": 0, "steps": 1}})
        ).json()
        events = await collect_sse(f"{gateway.url}/jobs/{job['id']}/events", timeout=15)
        assert [e.event for e in events][-1] == "job.completed"
        await http.post("/channels/room:cli/events", json={"data": "hi"})
        assert (await ws_recv(ws))["data"] == "hi"
        metrics = (await http.get("/metrics")).text
    assert 'gateway_frames_delivered_total{path="direct",transport="ws"} 0.0' in metrics
