"""Scale-out: two gateway processes and a separate worker sharing one (private) Redis."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable

import httpx

from tests.support import (
    GatewayProcess,
    RedisServer,
    WorkerProcess,
    collect_sse,
    gateway_env,
    ws_client,
    ws_recv,
    ws_send,
    ws_until,
)

STORY = [
    "job.queued",
    "job.started",
    "job.progress",
    "job.progress",
    "job.progress",
    "job.completed",
]


async def test_job_on_one_gateway_is_seen_on_both(
    redis_url: str,
    gateway_factory: Callable[..., GatewayProcess],
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    first = gateway_factory(REDIS_URL=redis_url)
    second = gateway_factory(REDIS_URL=redis_url)
    worker = worker_factory(REDIS_URL=redis_url)
    job = httpx.post(
        first.url + "/jobs", json={"type": "sleep", "data": {"seconds": 0.6, "steps": 3}}
    ).json()
    on_first, on_second = await asyncio.gather(
        collect_sse(f"{first.url}/jobs/{job['id']}/events"),
        collect_sse(f"{second.url}/jobs/{job['id']}/events"),
    )
    assert [e.event for e in on_first] == STORY
    assert [e.id for e in on_first] == [e.id for e in on_second]
    status = httpx.get(f"{second.url}/jobs/{job['id']}").json()
    assert status["status"] == "completed"
    assert worker.process is not None and worker.process.poll() is None
    # The job ran in the worker process, not in a gateway (no embedded worker with Redis).
    assert "embedded_worker=False" in first.output() and "embedded_worker=False" in second.output()


async def test_chat_crosses_gateways(
    redis_url: str, gateway_factory: Callable[..., GatewayProcess]
) -> None:
    first = gateway_factory(REDIS_URL=redis_url)
    second = gateway_factory(REDIS_URL=redis_url)
    async with ws_client(second.ws_url) as listener, ws_client(first.ws_url) as talker:
        await ws_send(listener, {"op": "subscribe", "channel": "room:lobby", "ref": 1})
        assert (await ws_recv(listener))["op"] == "ack"
        await ws_send(
            talker,
            {
                "op": "publish",
                "channel": "room:lobby",
                "type": "message",
                "data": {"text": "across"},
                "ref": 2,
            },
        )
        ack = await ws_until(talker, lambda f: f.get("ref") == 2)
        got = await ws_until(listener, lambda f: f["op"] == "event")
        assert got[-1]["data"] == {"text": "across"} and got[-1]["id"] == ack[-1]["id"]


async def test_cli_and_python_publishers_reach_websocket_clients(
    redis_server: RedisServer, redis_url: str, gateway_factory: Callable[..., GatewayProcess]
) -> None:
    gateway = gateway_factory(REDIS_URL=redis_url)
    async with ws_client(gateway.ws_url) as ws:
        await ws_send(ws, {"op": "subscribe", "channel": "room:cli", "ref": 1})
        assert (await ws_recv(ws))["op"] == "ack"
        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "publish",
                "room:cli",
                "--type",
                "message",
                "--data",
                '{"text":"from cli"}',
            ],
            env=gateway_env(REDIS_URL=redis_url),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert cli.returncode == 0, cli.stderr
        event = (await ws_until(ws, lambda f: f["op"] == "event"))[-1]
        assert event["data"] == {"text": "from cli"} and event["id"] == cli.stdout.strip()
        code = (
            "import gateway; print(gateway.publish('room:cli', 'message', {'text': 'from python'},"
            f" redis_url={redis_url!r}))"
        )
        py = subprocess.run(
            [sys.executable, "-c", code],
            env=gateway_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert py.returncode == 0, py.stderr
        event = (await ws_until(ws, lambda f: f["op"] == "event"))[-1]
        assert event["data"] == {"text": "from python"} and event["id"] == py.stdout.strip()


def test_cli_publish_without_redis_posts_to_the_gateway(
    embedded_gateway: GatewayProcess,
) -> None:
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "publish",
            "room:http",
            "--data",
            '{"n": 1}',
            "--url",
            embedded_gateway.url,
        ],
        env=gateway_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert cli.returncode == 0, cli.stderr
    history = httpx.get(f"{embedded_gateway.url}/channels/room:http/events").json()
    assert [e["id"] for e in history["events"]] == [cli.stdout.strip()]


def test_worker_without_redis_refuses_clearly() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "worker"],
        env=gateway_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0 and "REDIS_URL" in result.stderr


def test_bad_setting_stops_start_with_a_clear_message() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve"],
        env=gateway_env(GATEWAY_MAX_ATTEMPTS="lots"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0 and "GATEWAY_MAX_ATTEMPTS" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--workers", "2"],
        env=gateway_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0 and "REDIS_URL" in result.stderr


async def test_serve_with_several_worker_processes(
    redis_url: str,
    gateway_factory: Callable[..., GatewayProcess],
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    gateway = gateway_factory(REDIS_URL=redis_url, args=["--workers", "2"])
    worker_factory(REDIS_URL=redis_url)
    job = httpx.post(
        gateway.url + "/jobs", json={"type": "sleep", "data": {"seconds": 0.3, "steps": 3}}
    ).json()
    streams = await asyncio.gather(
        *(collect_sse(f"{gateway.url}/jobs/{job['id']}/events") for _ in range(4))
    )
    for events in streams:
        assert [e.event for e in events] == STORY
    assert gateway.output().count("gateway ready") == 2


async def test_a_burst_of_subscribers_all_get_their_ack(
    redis_url: str, gateway_factory: Callable[..., GatewayProcess]
) -> None:
    """Hundreds of clients subscribing at once queue for Redis; none is told `unavailable`."""
    gateway = gateway_factory(
        REDIS_URL=redis_url,
        GATEWAY_MAX_CONNECTIONS_PER_CLIENT="10000",
        GATEWAY_CONNECT_RATE="0",  # 400 connections at once from one address
    )
    httpx.post(f"{gateway.url}/channels/room:burst/events", json={"data": "history"})

    async def subscribe() -> str:
        async with ws_client(f"{gateway.ws_url}?channel=room:burst") as ws:
            return str((await ws_recv(ws, timeout=30))["op"])

    replies = await asyncio.gather(*(subscribe() for _ in range(400)))
    assert replies.count("ack") == 400, {r: replies.count(r) for r in set(replies)}
