"""Real faults: redis-server SIGKILLed and restarted, workers SIGKILLed, gateways restarted."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import (
    GatewayProcess,
    RedisServer,
    WorkerProcess,
    async_wait_until,
    collect_sse,
    follow_sse_resuming,
    follow_ws_resuming,
    gateway_env,
    job_status,
    submit_job,
    wait_until,
    ws_client,
    ws_recv,
    ws_send,
    ws_until,
)

TERMINAL = {"job.completed", "job.failed", "job.cancelled"}


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", appendonly=True)
    server.directory.mkdir()
    server.start()
    yield server
    server.stop()


def history_ids(url: str, channel: str) -> list[str]:
    body = httpx.get(f"{url}/channels/{channel}/events?limit=1000").json()
    return [event["id"] for event in body["events"]]


async def follow_long_job(gateway: GatewayProcess) -> tuple[str, str, Any, Any]:
    """Submit a 30-step job, follow it over SSE and WS (both resuming), wait for progress."""
    job_id = submit_job(gateway.url, "sleep", {"seconds": 3, "steps": 30})
    channel = f"job:{job_id}"
    sse = asyncio.create_task(
        follow_sse_resuming(f"{gateway.url}/jobs/{job_id}/events", lambda e: e.event in TERMINAL)
    )
    ws = asyncio.create_task(
        follow_ws_resuming(gateway.ws_url, channel, lambda f: f["type"] in TERMINAL)
    )
    await async_wait_until(
        lambda: len(history_ids(gateway.url, channel)) >= 6, 15, "the job to make progress"
    )
    return job_id, channel, sse, ws


async def test_redis_killed_mid_job_loses_nothing(
    aof_redis: RedisServer,
    gateway_factory: Callable[..., GatewayProcess],
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    env = {"REDIS_URL": aof_redis.url, "GATEWAY_VISIBILITY_TIMEOUT": "20"}
    gateway = gateway_factory(**env)
    worker_factory(**env)
    job_id, channel, sse, ws = await follow_long_job(gateway)
    aof_redis.kill()
    await async_wait_until(
        lambda: httpx.get(gateway.url + "/readyz").status_code == 503, 10, "readyz to say not ready"
    )
    await asyncio.sleep(0.5)  # the outage itself: the job goes on while Redis is away
    aof_redis.start()
    (sse_events, sse_connections), (ws_frames, _codes) = await asyncio.gather(sse, ws)
    final = history_ids(gateway.url, channel)
    assert job_status(gateway.url, job_id)["status"] == "completed"
    assert len(final) == len(set(final))
    assert [e.id for e in sse_events if e.id] == final
    assert [f["id"] for f in ws_frames if f["op"] == "event"] == final
    assert sse_connections == 1, "the SSE connection stayed open through the outage"
    assert sum(1 for e in sse_events if e.event == "job.progress") == 30
    await async_wait_until(
        lambda: httpx.get(gateway.url + "/readyz").status_code == 200, 10, "readyz to recover"
    )


async def test_killed_worker_job_is_reclaimed_and_finished(
    redis_url: str,
    gateway_factory: Callable[..., GatewayProcess],
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    env = {"REDIS_URL": redis_url, "GATEWAY_VISIBILITY_TIMEOUT": "1"}
    gateway = gateway_factory(**env)
    first = worker_factory(**env)
    job_id = submit_job(gateway.url, "sleep", {"seconds": 1.5, "steps": 15})
    events = asyncio.create_task(collect_sse(f"{gateway.url}/jobs/{job_id}/events", timeout=40))
    await async_wait_until(
        lambda: float(job_status(gateway.url, job_id)["progress"]) >= 0.2,
        15,
        "progress",  # type: ignore[arg-type]
    )
    first.signal(signal.SIGKILL)
    worker_factory(**env)
    story = await events
    types = [e.event for e in story]
    assert types[-1] == "job.completed"
    assert types.count("job.started") == 2
    assert [e.json()["data"]["attempt"] for e in story if e.event == "job.started"] == [1, 2]
    status = job_status(gateway.url, job_id)
    assert status["status"] == "completed" and status["attempts"] == 2
    ids = [e.id for e in story]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, (i or "0-0").split("-"))))


async def test_job_that_keeps_killing_workers_is_failed(
    redis_url: str,
    gateway_factory: Callable[..., GatewayProcess],
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    env = {
        "REDIS_URL": redis_url,
        "GATEWAY_VISIBILITY_TIMEOUT": "0.5",
        "GATEWAY_MAX_ATTEMPTS": "2",
        "GATEWAY_HANDLERS": "tests.handlers_for_tests",
    }
    gateway = gateway_factory(**env)
    job_id = submit_job(gateway.url, "crash", {})
    for _ in range(4):
        worker = worker_factory(**env)
        assert worker.process is not None
        process = worker.process

        def ended(process: subprocess.Popen[bytes] = process) -> bool:
            return (
                process.poll() is not None or job_status(gateway.url, job_id)["status"] == "failed"
            )

        wait_until(ended, 20, "the worker to die or the job to fail")
        if job_status(gateway.url, job_id)["status"] == "failed":
            break
    status = job_status(gateway.url, job_id)
    assert status["status"] == "failed"
    assert status["error"]["type"] == "too_many_deliveries"  # type: ignore[index]
    assert status["attempts"] == 2


async def test_gateway_restart_mid_stream_loses_nothing(
    redis_url: str,
    gateway_factory: Callable[..., GatewayProcess],
    worker_factory: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    env = {"REDIS_URL": redis_url}
    gateway = gateway_factory(**env)
    worker_factory(**env)
    _job_id, channel, sse, ws = await follow_long_job(gateway)
    assert gateway.stop(15) in (0, -signal.SIGTERM), "a clean, prompt shutdown on SIGTERM"
    assert "Traceback" not in gateway.output()
    replacement = GatewayProcess(gateway_env(**env), tmp_path / "again.log", port=gateway.port)
    replacement.start()
    try:
        (sse_events, sse_connections), (ws_frames, codes) = await asyncio.gather(sse, ws)
        final = history_ids(replacement.url, channel)
    finally:
        replacement.stop(10)
    assert 1001 in codes, f"WebSocket clients are told the gateway is going away: {codes}"
    assert any(e.event == "shutdown" for e in sse_events)
    assert sse_connections >= 2
    sse_ids = [e.id for e in sse_events if e.id]
    ws_ids = [f["id"] for f in ws_frames if f["op"] == "event"]
    assert sse_ids == ws_ids
    assert sse_ids == final and len(final) == len(set(final)) == 33


async def test_silently_dead_pubsub_is_detected_and_recovered(
    redis_server: RedisServer, redis_url: str, gateway_factory: Callable[..., GatewayProcess]
) -> None:
    """A frozen Redis (SIGSTOP: connections stay open, nothing answers) is noticed by the probe."""
    gateway = gateway_factory(REDIS_URL=redis_url, GATEWAY_PUBSUB_PROBE="0.5")
    assert redis_server.process is not None
    async with ws_client(gateway.ws_url) as ws:
        await ws_send(ws, {"op": "subscribe", "channel": "room:frozen", "ref": 1})
        assert (await ws_recv(ws))["op"] == "ack"
        redis_server.process.send_signal(signal.SIGSTOP)
        try:
            await async_wait_until(
                lambda: httpx.get(gateway.url + "/readyz", timeout=10).status_code == 503,
                15,
                "readyz to notice the frozen bus",
            )
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
        await async_wait_until(
            lambda: httpx.get(gateway.url + "/readyz", timeout=10).status_code == 200,
            20,
            "the gateway to reconnect",
        )
        published = httpx.post(
            f"{gateway.url}/channels/room:frozen/events", json={"data": "after"}
        ).json()["id"]
        frame = (await ws_until(ws, lambda f: f["op"] == "event"))[-1]
        assert frame["id"] == published
    assert "pub/sub lost" in gateway.output()
    assert "gateway_redis_reconnects_total 1.0" in httpx.get(gateway.url + "/metrics").text


async def test_redis_restarted_empty_tells_connected_clients_of_the_gap(
    redis_server: RedisServer, redis_url: str, gateway_factory: Callable[..., GatewayProcess]
) -> None:
    gateway = gateway_factory(REDIS_URL=redis_url)
    before = httpx.post(f"{gateway.url}/channels/room:amnesia/events", json={"data": 1}).json()
    async with ws_client(gateway.ws_url) as ws:
        await ws_send(ws, {"op": "subscribe", "channel": "room:amnesia", "ref": 1})
        frames = await ws_until(ws, lambda f: f.get("id") == before["id"])
        redis_server.restart()  # no persistence: the history is gone
        gap = await ws_until(ws, lambda f: f["op"] == "gap", timeout=20)
        assert gap[-1] == {"op": "gap", "channel": "room:amnesia", "since": before["id"]}
        await async_wait_until(
            lambda: httpx.get(gateway.url + "/readyz", timeout=10).status_code == 200, 20, "ready"
        )
        after = httpx.post(f"{gateway.url}/channels/room:amnesia/events", json={"data": 2}).json()
        frame = (await ws_until(ws, lambda f: f["op"] == "event"))[-1]
        assert frame["id"] == after["id"] and frame["data"] == 2
    assert frames[0]["op"] == "ack"
