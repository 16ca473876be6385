"""What every proxy in deploy/ must carry, run against its URL (HTTP or HTTPS).

`verify` is the TLS context the clients trust (the proxy's certificate authority), or None for
plain HTTP.
"""

from __future__ import annotations

import asyncio
import ssl
import uuid
from typing import Any

import httpx
import orjson
import websockets

from tests.deploy.stack import Publisher, Stack, long_poll_job, restart, sequence_of
from tests.support import SSEEvent, sse_events, ws_client, ws_send, ws_until

STORY = ["job.queued", "job.started", "job.progress", "job.progress", "job.completed"]


def ws_url_of(base_url: str) -> str:
    return base_url.replace("http", "ws", 1) + "/ws"


def _tls(verify: ssl.SSLContext | None) -> dict[str, Any]:
    return {} if verify is None else {"ssl": verify}


async def job_over_sse_websocket_and_long_poll(
    base_url: str, verify: ssl.SSLContext | None = None
) -> None:
    """One job, followed at once over SSE, WebSocket and long polling, all through the proxy."""
    trust: Any = verify if verify is not None else True
    response = httpx.post(
        base_url + "/jobs",
        json={"type": "sleep", "data": {"seconds": 0.4, "steps": 2}},
        verify=trust,
    )
    assert response.status_code == 202, response.text
    job = response.json()

    async def over_sse() -> list[str | None]:
        seen: list[str | None] = []
        async with httpx.AsyncClient(verify=trust, timeout=20) as client:
            async for event in sse_events(client, f"{base_url}/jobs/{job['id']}/events"):
                seen.append(event.event)
                if event.event == STORY[-1]:
                    return seen
        return seen

    async def over_websocket() -> list[str]:
        async with ws_client(ws_url_of(base_url), **_tls(verify)) as ws:
            await ws_send(ws, {"op": "subscribe", "channel": job["channel"], "since": "0-0"})
            frames = await ws_until(ws, lambda f: f.get("type") == STORY[-1])
        return [f["type"] for f in frames if f["op"] == "event"]

    sse, ws, polled = await asyncio.wait_for(
        asyncio.gather(
            over_sse(), over_websocket(), long_poll_job(base_url, job["id"], verify=trust)
        ),
        30,
    )
    assert sse == STORY
    assert ws == STORY
    assert polled[-1]["status"] == "completed" and polled[-1]["progress"] == 1.0


async def follow_sse(
    url: str, verify: ssl.SSLContext | None, until: str
) -> tuple[list[SSEEvent], int]:
    """Follow an SSE stream from the channel's first event as EventSource does, reconnecting
    with `Last-Event-ID` until an event of type `until`; returns the events and how many
    connections it took."""
    events: list[SSEEvent] = []
    last_id = "0-0"
    connections = 0
    trust: Any = verify if verify is not None else True
    async with httpx.AsyncClient(verify=trust, timeout=httpx.Timeout(10, read=30)) as client:
        while True:
            connections += 1
            try:
                async for event in sse_events(client, url, {"Last-Event-ID": last_id}):
                    events.append(event)
                    last_id = event.id or last_id
                    if event.event == until:
                        return events, connections
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)  # EventSource's reconnection delay, shortened


async def follow_ws(
    ws_url: str, channel: str, verify: ssl.SSLContext | None, until: str
) -> tuple[list[dict[str, Any]], list[int]]:
    """Follow a channel over WebSocket from its first event, subscribing again with `since`
    after each disconnect, until an event of type `until`; returns the event frames and the
    close codes seen."""
    events: list[dict[str, Any]] = []
    codes: list[int] = []
    last_id = "0-0"
    while True:
        try:
            async with ws_client(ws_url, **_tls(verify)) as ws:
                await ws_send(ws, {"op": "subscribe", "channel": channel, "since": last_id})
                while True:
                    frame = orjson.loads(await ws.recv())
                    if frame["op"] == "event":
                        events.append(frame)
                        last_id = frame["id"]
                        if frame["type"] == until:
                            return events, codes
        except websockets.ConnectionClosed as exc:
            codes.append(exc.rcvd.code if exc.rcvd else 1006)
        except OSError:
            pass
        await asyncio.sleep(0.1)


async def rolling_restart_loses_no_event(
    stack: Stack, base_url: str, verify: ssl.SSLContext | None = None
) -> None:
    """Both gateways restart in turn while events flow: an SSE and a WebSocket follower (which
    reconnect through the proxy and resume from their last id) get every event once, in order;
    a long poll of a job running meanwhile sees it complete, with no error answer."""
    channel = "room:rolling-" + uuid.uuid4().hex[:8]
    trust: Any = verify if verify is not None else True
    job = httpx.post(
        base_url + "/jobs",
        json={"type": "sleep", "data": {"seconds": 3, "steps": 12}},
        verify=trust,
    ).json()
    with Publisher(stack.redis.url, channel) as publisher:
        followers = asyncio.gather(
            follow_sse(f"{base_url}/events?channel={channel}", verify, "end"),
            follow_ws(ws_url_of(base_url), channel, verify, "end"),
            long_poll_job(base_url, job["id"], verify=trust),
        )
        try:
            for gateway in stack.gateways:
                await publisher.more(5)
                await asyncio.to_thread(restart, gateway)
            await publisher.more(10)
            sent = publisher.finish()
            (sse, connections), (frames, codes), polled = await asyncio.wait_for(followers, 30)
        finally:
            followers.cancel()
    assert sequence_of(event.json() for event in sse) == list(range(sent))
    assert sequence_of(iter(frames)) == list(range(sent))
    # Each follower was cut at least once (by a gateway's shutdown) and resumed.
    assert connections >= 2 and codes, (connections, codes)
    assert polled[-1]["status"] == "completed"
