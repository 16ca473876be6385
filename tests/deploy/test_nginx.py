"""deploy/nginx/gateway.conf, run by Debian's nginx in front of two gateways on one Redis.

SSE, WebSocket and long polling go through nginx; a rolling restart of both gateways behind
it loses no event (clients resume through nginx on whichever process answers); the gateways
see the client's address, not nginx's nor one the client made up.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.deploy.proxies import ProxyProcess, start_nginx
from tests.deploy.stack import (
    Publisher,
    Stack,
    logged,
    long_poll_job,
    restart,
    sequence_of,
    start_stack,
)
from tests.support import (
    RedisServer,
    collect_sse,
    follow_sse_resuming,
    follow_ws_resuming,
    ws_client,
    ws_send,
    ws_until,
)

STORY = ["job.queued", "job.started", "job.progress", "job.progress", "job.completed"]


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(redis_server, tmp_path_factory.mktemp("nginx-stack"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def nginx(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of nginx running the documented configuration."""
    process: ProxyProcess
    process, port = start_nginx(tmp_path_factory.mktemp("nginx"), stack.ports)
    yield f"http://127.0.0.1:{port}"
    process.stop()


async def test_a_job_over_sse_websocket_and_long_polling(nginx: str) -> None:
    response = httpx.post(
        nginx + "/jobs", json={"type": "sleep", "data": {"seconds": 0.4, "steps": 2}}
    )
    assert response.status_code == 202, response.text
    job = response.json()
    channel = job["channel"]

    async def over_websocket() -> list[str]:
        async with ws_client(nginx.replace("http", "ws") + "/ws") as ws:
            await ws_send(ws, {"op": "subscribe", "channel": channel, "since": "0-0", "ref": 1})
            frames = await ws_until(ws, lambda f: f.get("type") == "job.completed")
        return [f["type"] for f in frames if f["op"] == "event"]

    sse, ws, polled = await asyncio.gather(
        collect_sse(f"{nginx}/jobs/{job['id']}/events", until=lambda e: e.event in STORY[-1:]),
        over_websocket(),
        long_poll_job(nginx, job["id"]),
    )
    assert [event.event for event in sse] == STORY
    assert ws == STORY
    assert polled[-1]["status"] == "completed" and polled[-1]["progress"] == 1.0


def test_requests_are_balanced_over_both_gateways(stack: Stack, nginx: str) -> None:
    marker = "balance-" + uuid.uuid4().hex
    with httpx.Client(base_url=nginx) as http:
        for index in range(4):
            assert http.get(f"/jobs/{marker}-{index}").status_code == 404
    assert sorted({index for index, _ in logged(stack, marker)}) == [0, 1]


def test_the_gateway_sees_the_client_address_not_a_claimed_one(stack: Stack, nginx: str) -> None:
    """nginx forwards the address the client connects from (here 127.0.0.7) and drops the
    X-Forwarded-For the client sent; the gateway believes nginx because it is a trusted proxy."""
    marker = "address-" + uuid.uuid4().hex
    transport = httpx.HTTPTransport(local_address="127.0.0.7")
    with httpx.Client(base_url=nginx, transport=transport) as http:
        response = http.get(f"/jobs/{marker}", headers={"X-Forwarded-For": "203.0.113.9"})
    assert response.status_code == 404
    lines = [line for _, line in logged(stack, marker)]
    assert len(lines) == 1 and "127.0.0.7:" in lines[0] and "203.0.113.9" not in lines[0], lines


async def test_a_rolling_restart_behind_nginx_loses_no_event(stack: Stack, nginx: str) -> None:
    """Both gateways restart in turn while events flow: the SSE and WebSocket followers (which
    reconnect through nginx and resume from their last id) get every event once, in order; a
    long poll of a job running meanwhile sees it complete without an error answer."""
    channel = "room:rolling-" + uuid.uuid4().hex[:8]
    job = httpx.post(
        nginx + "/jobs", json={"type": "sleep", "data": {"seconds": 3, "steps": 12}}
    ).json()
    with Publisher(stack.redis.url, channel) as publisher:
        sse_task = asyncio.create_task(
            follow_sse_resuming(f"{nginx}/events?channel={channel}", lambda e: e.event == "end")
        )
        ws_task = asyncio.create_task(
            follow_ws_resuming(
                nginx.replace("http", "ws") + "/ws", channel, lambda f: f["type"] == "end"
            )
        )
        poll_task = asyncio.create_task(long_poll_job(nginx, job["id"]))
        for gateway in stack.gateways:
            await publisher.more(5)
            await asyncio.to_thread(restart, gateway)
        await publisher.more(10)
        sent = publisher.finish()
        (sse, connections), (frames, codes), polled = await asyncio.gather(
            sse_task, ws_task, poll_task
        )
    assert sequence_of(event.json() for event in sse) == list(range(sent))
    assert sequence_of(f for f in frames if f["op"] == "event") == list(range(sent))
    # Each follower was cut at least once (by a gateway's shutdown) and resumed.
    assert connections >= 2 and codes, (connections, codes)
    assert polled[-1]["status"] == "completed"
