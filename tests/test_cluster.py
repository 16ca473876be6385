"""Gateways and workers on a Redis Cluster (3 masters + 3 replicas), end to end: publish,
subscribe and resume over WebSocket and SSE across two gateways, a job run by `gateway worker`,
the CLI and `gateway.publish()`, and a master SIGKILLed mid-job (its replica promoted)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx

from gateway.backends.redis_keys import job_key
from tests.redis_cluster import LocalRedisCluster
from tests.support import (
    GatewayProcess,
    WorkerProcess,
    async_wait_until,
    collect_sse,
    follow_sse_resuming,
    follow_ws_resuming,
    gateway_env,
    job_status,
    submit_job,
    ws_client,
    ws_recv,
    ws_send,
    ws_until,
)

TERMINAL = {"job.completed", "job.failed", "job.cancelled"}
STORY = ["job.queued", "job.started", "job.progress", "job.progress", "job.completed"]


async def test_two_gateways_a_worker_and_the_publishers_on_a_cluster(
    redis_cluster: LocalRedisCluster,
    redis_cluster_url: str,
    gateway_factory: Callable[..., GatewayProcess],
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    env = {"REDIS_URL": redis_cluster_url}
    first = gateway_factory(**env)
    second = gateway_factory(**env)
    worker_factory(**env)
    ready = httpx.get(first.url + "/readyz").json()
    assert ready["backend"] == "redis-cluster" and len(ready["shards"]) == 3
    assert set(ready["shards"].values()) == {"ok"}

    # A job submitted on one gateway, run by the worker, followed on both over SSE.
    job_id = submit_job(first.url, "sleep", {"seconds": 0.4, "steps": 2})
    on_first, on_second = await asyncio.gather(
        collect_sse(f"{first.url}/jobs/{job_id}/events"),
        collect_sse(f"{second.url}/jobs/{job_id}/events"),
    )
    assert [e.event for e in on_first] == STORY
    assert [e.id for e in on_first] == [e.id for e in on_second]
    assert job_status(second.url, job_id)["status"] == "completed"
    # Long polling on the other gateway: answered by the job's next event, not the timeout.
    job_id = submit_job(first.url, "sleep", {"seconds": 1, "steps": 2})
    polled = httpx.get(f"{second.url}/jobs/{job_id}?wait=20", timeout=30)
    assert polled.status_code == 200 and polled.elapsed.total_seconds() < 15
    assert polled.json()["status"] in {"running", "completed"}

    async with ws_client(second.ws_url) as listener, ws_client(first.ws_url) as talker:
        await ws_send(listener, {"op": "subscribe", "channel": "room:lobby", "ref": 1})
        assert (await ws_recv(listener))["op"] == "ack"
        # WebSocket publish on one gateway, heard on the other.
        op = {"op": "publish", "channel": "room:lobby", "type": "m", "data": 1, "ref": 2}
        await ws_send(talker, op)
        acked = (await ws_until(talker, lambda f: f.get("ref") == 2))[-1]
        heard = (await ws_until(listener, lambda f: f["op"] == "event"))[-1]
        assert heard["id"] == acked["id"] and heard["data"] == 1
        lobby = redis_cluster.master_of_key("gw:{room:lobby}").address
        metrics = httpx.get(first.url + "/metrics").text
        assert f'gateway_redis_shard_publish_seconds_count{{shard="{lobby}"}} 1.0' in metrics
        metrics = httpx.get(second.url + "/metrics").text
        assert f'gateway_redis_shard_subscriptions{{shard="{lobby}"}} 1.0' in metrics
        # The CLI and gateway.publish() write straight into the cluster.
        cli = subprocess.run(
            [sys.executable, "-m", "gateway", "publish", "room:lobby", "--data", "2"],
            env=gateway_env(REDIS_URL=redis_cluster_url),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert cli.returncode == 0, cli.stderr
        heard = (await ws_until(listener, lambda f: f["op"] == "event"))[-1]
        assert heard["id"] == cli.stdout.strip() and heard["data"] == 2
        code = (
            "import gateway; print(gateway.publish('room:lobby', 'm', 3,"
            f" redis_url={redis_cluster_url!r}))"
        )
        py = subprocess.run(
            [sys.executable, "-c", code], env=gateway_env(), capture_output=True, text=True
        )
        assert py.returncode == 0, py.stderr
        heard = (await ws_until(listener, lambda f: f["op"] == "event"))[-1]
        assert heard["id"] == py.stdout.strip() and heard["data"] == 3

    # Resume over WebSocket and SSE from the first event: exactly the two after it.
    async with ws_client(first.ws_url) as ws:
        op = {"op": "subscribe", "channel": "room:lobby", "since": acked["id"], "ref": 3}
        await ws_send(ws, op)
        frames = await ws_until(ws, lambda f: f.get("data") == 3)
        assert [f["data"] for f in frames if f["op"] == "event"] == [2, 3]
    sse = await collect_sse(
        f"{second.url}/events?channel=room:lobby",
        headers={"Last-Event-ID": acked["id"]},
        until=lambda e: e.id == py.stdout.strip(),
    )
    assert [e.json()["data"] for e in sse if e.id] == [2, 3]


def history_ids(url: str, channel: str) -> list[str]:
    body = httpx.get(f"{url}/channels/{channel}/events?limit=1000").json()
    return [event["id"] for event in body["events"]]


async def test_master_killed_mid_job_every_event_once_in_order_or_a_gap(
    redis_cluster: LocalRedisCluster,
    redis_cluster_url: str,
    gateway_factory: Callable[..., GatewayProcess],
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    env = {
        "REDIS_URL": redis_cluster_url,
        "GATEWAY_PUBSUB_PROBE": "0.5",
        "GATEWAY_VISIBILITY_TIMEOUT": "3",
    }
    gateway = gateway_factory(**env)
    worker_factory(**env)
    job_id = submit_job(gateway.url, "sleep", {"seconds": 3, "steps": 30})
    channel = f"job:{job_id}"
    sse = asyncio.create_task(
        follow_sse_resuming(
            f"{gateway.url}/jobs/{job_id}/events", lambda e: e.event in TERMINAL, 90
        )
    )
    ws = asyncio.create_task(
        follow_ws_resuming(gateway.ws_url, channel, lambda f: f["type"] in TERMINAL, 90)
    )
    await async_wait_until(
        lambda: len(history_ids(gateway.url, channel)) >= 6, 15, "the job to make progress"
    )
    victim = redis_cluster.master_of_key(job_key(job_id))
    readiness: list[dict[str, Any]] = []

    async def watch_readiness() -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            while True:
                answer = await client.get(gateway.url + "/readyz")
                readiness.append({**answer.json(), "http": answer.status_code})
                await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch_readiness())
    try:
        # In a thread: the readiness watcher and the followers run while the failover does.
        await asyncio.to_thread(redis_cluster.kill_master, victim)
        (sse_events, _connections), (ws_frames, _codes) = await asyncio.gather(sse, ws)
    finally:
        watcher.cancel()
        victim.start()
    final = history_ids(gateway.url, channel)
    sse_ids = [e.id for e in sse_events if e.id]
    ws_ids = [f["id"] for f in ws_frames if f["op"] == "event"]
    sse_gaps = sum(1 for e in sse_events if e.event == "gap")
    ws_gaps = sum(1 for f in ws_frames if f["op"] == "gap")
    for ids, gaps in ((sse_ids, sse_gaps), (ws_ids, ws_gaps)):
        assert len(ids) == len(set(ids)), "no event twice"
        assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-")))), "in order"
        if gaps == 0:
            assert ids == final, "without a gap signal, every event"
        else:
            # Events the failover lost were signalled; whatever the history kept arrived.
            assert set(final) <= set(ids), "after the gap, every event kept"
    print(f"failover: {len(final)} events kept, gaps sse={sse_gaps} ws={ws_gaps}")
    assert status_of(gateway, job_id) in TERMINAL
    down = victim.address
    metrics = httpx.get(gateway.url + "/metrics").text
    assert f'gateway_redis_shard_reconnects_total{{shard="{victim.address}"}}' in metrics
    assert any(
        r["http"] == 503 and r.get("shards", {}).get(down) == "unreachable" for r in readiness
    ), f"readyz named the dead shard {down}: {[(r['http'], r.get('shards')) for r in readiness]}"
    redis_cluster.wait_healthy(60)
    await async_wait_until(
        lambda: httpx.get(gateway.url + "/readyz").status_code == 200, 20, "readyz to recover"
    )


def status_of(gateway: GatewayProcess, job_id: str) -> str:
    return "job." + str(job_status(gateway.url, job_id)["status"])
