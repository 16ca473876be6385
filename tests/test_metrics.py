"""`/metrics` exposes the gateway's Prometheus metrics after real traffic (a real gateway process
on a real Redis, with an embedded worker running a job)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support import (
    GatewayProcess,
    ws_client,
    ws_send,
    ws_until,
)


def sample(text: str, name: str, labels: str = "") -> float:
    """The value of one sample, e.g. `sample(text, "gateway_connections", 'transport="ws"')`;
    label order does not matter."""
    wanted = dict(part.split("=", 1) for part in labels.split(",") if part)
    wanted = {key: value.strip('"') for key, value in wanted.items()}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == wanted:
                return float(s.value)
    raise AssertionError(f"{name}{{{labels}}} not in /metrics")


async def test_metrics_after_traffic(
    redis_url: str, gateway_factory: Callable[..., GatewayProcess]
) -> None:
    gateway = gateway_factory(REDIS_URL=redis_url, args=["--embedded-worker"])
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        async with ws_client(gateway.ws_url + "?channel=room:metrics") as ws:
            await ws_until(ws, lambda f: f.get("op") == "ack")
            for i in range(40):
                response = await http.post(
                    "/channels/room:metrics/events", json={"type": "message", "data": {"i": i}}
                )
                assert response.status_code == 202, response.text
            await ws_until(ws, lambda f: f.get("op") == "event" and f["data"] == {"i": 39})
            job = (
                await http.post("/jobs", json={"type": "sleep", "data": {"seconds": 0, "steps": 1}})
            ).json()
            await ws_send(ws, {"op": "subscribe", "channel": f"job:{job['id']}", "ref": 1})
            await ws_until(ws, lambda f: f.get("type") == "job.completed", timeout=20)

            text = (await http.get("/metrics")).text
            for _ in range(100):  # the worker counts the completion just after publishing it
                if 'status="completed"' in text:
                    break
                await asyncio.sleep(0.05)
                text = (await http.get("/metrics")).text
            assert sample(text, "gateway_connections", 'transport="ws"') == 1
            assert sample(text, "gateway_subscriptions") == 2
            assert sample(text, "gateway_queue_depth", 'stat="sum"') >= 0
            assert sample(text, "gateway_queue_depth", 'stat="max"') >= 0

        published = sample(text, "gateway_events_published_total", 'namespace="room"')
        assert published == 40
        assert sample(text, "gateway_events_published_total", 'namespace="job"') >= 3
        # Under uvicorn the fan-out writes frames straight to the socket (transports/wire.py).
        direct = sample(text, "gateway_frames_delivered_total", 'transport="ws",path="direct"')
        queued = sample(text, "gateway_frames_delivered_total", 'transport="ws",path="queued"')
        assert direct >= 40 and direct + queued >= 43
        assert sample(text, "gateway_publish_deliver_lag_seconds_count", 'transport="ws"') >= 1
        assert (
            sample(text, "gateway_publish_deliver_lag_seconds_bucket", 'transport="ws",le="0.005"')
            >= 0
        )
        assert sample(text, "gateway_jobs_total", 'status="completed",type="sleep"') == 1
        assert sample(text, "gateway_job_duration_seconds_count", 'type="sleep"') >= 1
        assert sample(text, "gateway_redis_reconnects_total") == 0
        assert "# TYPE gateway_slow_consumer_disconnects_total counter" in text

        # after the client left, the gauges go back down
        # The connection gauge drops first; each channel's detach (an unsubscribe round trip
        # for the last local subscriber) follows, so wait for both.
        text = (await http.get("/metrics")).text
        for _ in range(100):
            if (
                sample(text, "gateway_connections", 'transport="ws"') == 0
                and sample(text, "gateway_subscriptions") == 0
            ):
                break
            await asyncio.sleep(0.05)
            text = (await http.get("/metrics")).text
        assert sample(text, "gateway_connections", 'transport="ws"') == 0
        assert sample(text, "gateway_subscriptions") == 0
