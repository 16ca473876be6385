"""SIGTERM: every WebSocket client is told to go with 1001, after everything it was owed.

uvicorn closes whatever connection is still open with a bare 1012 once its main loop sees the
signal, on a 0.1 s tick. When that tick was already due as the signal came in (a process that
did not get the CPU for a while, as on a loaded machine), it ran in the same loop iteration as
the gateway's drain, ahead of the tasks that send the 1001 closes.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import httpx
import orjson
import websockets

from tests.support import GatewayProcess, ws_client, ws_recv, ws_send

CLIENTS = 20
EVENTS = 10
PAYLOAD = "x" * 50_000
"""A backlog (20 clients x 10 x 50 kB) that must go out ahead of the close."""


async def test_sigterm_closes_websockets_with_1001_after_their_backlog(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gateway = gateway_factory()
    subscribed = 0
    all_subscribed = asyncio.Event()
    go = asyncio.Event()

    async def follow() -> tuple[int, int]:
        nonlocal subscribed
        received = 0
        async with ws_client(gateway.ws_url, max_size=None) as ws:
            await ws_send(ws, {"op": "subscribe", "channel": "room:bye", "ref": 1})
            assert (await ws_recv(ws))["op"] == "ack"
            subscribed += 1
            if subscribed == CLIENTS:
                all_subscribed.set()
            await go.wait()  # read nothing while the backlog builds up
            try:
                while True:
                    if orjson.loads(await ws.recv())["op"] == "event":
                        received += 1
            except websockets.ConnectionClosed as exc:
                return (exc.rcvd.code if exc.rcvd else 1006), received

    clients = [asyncio.create_task(follow()) for _ in range(CLIENTS)]
    await asyncio.wait_for(all_subscribed.wait(), 30)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        for n in range(EVENTS):
            response = await http.post("/channels/room:bye/events", json={"data": [n, PAYLOAD]})
            assert response.status_code == 202, response.text
    # Frozen past uvicorn's tick, the gateway finds the tick due when it sees the signal.
    gateway.signal(signal.SIGSTOP)
    await asyncio.sleep(0.3)
    gateway.signal(signal.SIGTERM)
    gateway.signal(signal.SIGCONT)
    go.set()
    results = await asyncio.wait_for(asyncio.gather(*clients), 60)
    assert results == [(1001, EVENTS)] * CLIENTS
    assert gateway.stop(15) in (0, -signal.SIGTERM), "a clean, prompt shutdown on SIGTERM"
