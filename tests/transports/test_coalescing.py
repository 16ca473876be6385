"""Frames due for one connection in the same loop iteration go out in one socket write.

A real gateway on a real Redis, real WebSocket and SSE clients each subscribed to many
channels. A burst published in one Redis pipeline reaches the gateway's bus reader in one read,
so one event per channel is due for each client in the same iteration: each client gets them
in fewer writes than frames (`gateway_socket_writes_total` against frames delivered), in
order. A lone event is still written on its own, at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import httpx
import redis

from gateway.backends.redis_keys import PUBLISH_LUA, publish_call
from gateway.settings import Settings
from tests.support import (
    GatewayProcess,
    SSEEvent,
    async_wait_until,
    sse_events,
    ws_client,
    ws_recv,
    ws_send,
)
from tests.test_metrics import sample

CHANNELS = [f"room:busy-{n}" for n in range(20)]


def publish_burst(redis_url: str, events: list[tuple[str, int]]) -> None:
    """Publish with the gateway's own script, all in one pipeline (one round trip)."""
    settings = Settings(redis_url=redis_url)
    client = redis.Redis.from_url(redis_url)
    try:
        pipe = client.pipeline(transaction=False)
        for channel, n in events:
            keys, args, _ = publish_call(settings, channel, "message", {"n": n}, None, None)
            pipe.eval(PUBLISH_LUA, len(keys), *keys, *args)
        pipe.execute()
    finally:
        client.close()


def counters(text: str, transport: str) -> tuple[float, float]:
    """(socket writes, frames delivered) on the direct path."""
    labels = f'transport="{transport}"'
    writes = sample(text, "gateway_socket_writes_total", labels)
    frames = sample(text, "gateway_frames_delivered_total", labels + ',path="direct"')
    return writes, frames


async def test_a_burst_for_one_connection_is_written_at_once_and_a_lone_event_alone(
    gateway_factory: Callable[..., GatewayProcess], redis_url: str
) -> None:
    gateway = gateway_factory(REDIS_URL=redis_url, GATEWAY_SSE_PING="3600")
    query = "&".join(f"channel={channel}" for channel in CHANNELS)
    sse_seen: list[SSEEvent] = []

    async def read_sse(client: httpx.AsyncClient) -> None:
        async for event in sse_events(client, f"{gateway.url}/events?{query}"):
            sse_seen.append(event)

    async with (
        httpx.AsyncClient(base_url=gateway.url, timeout=10) as http,
        ws_client(gateway.ws_url) as ws,
    ):
        for ref, channel in enumerate(CHANNELS):
            await ws_send(ws, {"op": "subscribe", "channel": channel, "ref": ref})
        assert all([(await ws_recv(ws))["op"] == "ack" for _ in CHANNELS])
        sse = asyncio.create_task(read_sse(http))
        try:

            async def subscriptions() -> float:
                return sample((await http.get("/metrics")).text, "gateway_subscriptions")

            for _ in range(200):  # both clients attached to every channel
                if await subscriptions() == 2 * len(CHANNELS):
                    break
                await asyncio.sleep(0.05)
            assert await subscriptions() == 2 * len(CHANNELS)
            before = (await http.get("/metrics")).text

            # One event on each channel, all due for both clients in the same iteration.
            burst = [(channel, n) for n, channel in enumerate(CHANNELS)]
            await asyncio.to_thread(publish_burst, redis_url, burst)
            ws_seen = [(await ws_recv(ws))["data"]["n"] for _ in burst]
            await async_wait_until(lambda: len(sse_seen) == len(burst), 10, "the SSE burst")
            assert ws_seen == list(range(len(burst)))
            assert [event.json()["data"]["n"] for event in sse_seen] == list(range(len(burst)))
            after = (await http.get("/metrics")).text
            for transport in ("ws", "sse"):
                writes = counters(after, transport)[0] - counters(before, transport)[0]
                frames = counters(after, transport)[1] - counters(before, transport)[1]
                assert frames == len(burst), transport
                assert 1 <= writes <= len(burst) // 2, (transport, writes)

            # A lone event: one frame, one write of its own, without waiting for company.
            await asyncio.to_thread(publish_burst, redis_url, [(CHANNELS[3], 100)])
            assert (await ws_recv(ws))["data"]["n"] == 100
            await async_wait_until(lambda: len(sse_seen) == len(burst) + 1, 10, "the SSE event")
            assert sse_seen[-1].json()["data"]["n"] == 100
            last = (await http.get("/metrics")).text
            for transport in ("ws", "sse"):
                writes, frames = counters(last, transport)
                assert (writes, frames) == tuple(n + 1 for n in counters(after, transport)), (
                    transport
                )
        finally:
            sse.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sse
