"""SSE end to end against a real gateway process (memory backend, embedded worker)."""

from __future__ import annotations

import asyncio

import httpx

from tests.support import GatewayProcess, SSEEvent, collect_sse, sse_events

JOB_STORY = ["job.queued", "job.started"] + ["job.progress"] * 6 + ["job.completed"]


def submit(gateway: GatewayProcess, data: dict[str, object], type_: str = "sleep") -> str:
    response = httpx.post(gateway.url + "/jobs", json={"type": type_, "data": data})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


async def test_job_stream_shows_every_event_in_order_and_ends(
    embedded_gateway: GatewayProcess,
) -> None:
    job_id = submit(embedded_gateway, {"seconds": 0.6, "steps": 6})
    events = await collect_sse(f"{embedded_gateway.url}/jobs/{job_id}/events", timeout=15)
    assert [e.event for e in events] == JOB_STORY
    ids = [e.id for e in events]
    assert all(ids) and len(set(ids)) == len(ids)
    assert [e.json()["id"] for e in events] == ids
    assert events[-1].json()["data"]["result"] == {"slept": 0.6, "steps": 6}
    progress = [e.json()["data"]["progress"] for e in events if e.event == "job.progress"]
    assert progress == sorted(progress) and progress[-1] == 1.0


async def test_late_subscriber_gets_the_whole_history(embedded_gateway: GatewayProcess) -> None:
    job_id = submit(embedded_gateway, {"seconds": 0.1, "steps": 6})
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            status = (await client.get(f"{embedded_gateway.url}/jobs/{job_id}")).json()["status"]
            if status == "completed":
                break
            await asyncio.sleep(0.05)
    assert status == "completed"
    events = await collect_sse(f"{embedded_gateway.url}/jobs/{job_id}/events", timeout=10)
    assert [e.event for e in events] == JOB_STORY


async def test_stream_headers_and_retry_hint(embedded_gateway: GatewayProcess) -> None:
    job_id = submit(embedded_gateway, {"seconds": 0, "steps": 1})
    async with (
        httpx.AsyncClient() as client,
        client.stream("GET", f"{embedded_gateway.url}/jobs/{job_id}/events") as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-accel-buffering"] == "no"
        body = (await response.aread()).decode()
    assert body.startswith("retry: ")


async def test_reconnect_at_terminal_event_gets_204(embedded_gateway: GatewayProcess) -> None:
    job_id = submit(embedded_gateway, {"seconds": 0, "steps": 1})
    events = await collect_sse(f"{embedded_gateway.url}/jobs/{job_id}/events")
    async with httpx.AsyncClient() as client:
        again = await client.get(
            f"{embedded_gateway.url}/jobs/{job_id}/events",
            headers={"Last-Event-ID": events[-1].id or ""},
        )
    assert again.status_code == 204


async def test_resume_with_last_event_id_replays_only_what_followed(
    embedded_gateway: GatewayProcess,
) -> None:
    job_id = submit(embedded_gateway, {"seconds": 0.2, "steps": 6})
    events = await collect_sse(f"{embedded_gateway.url}/jobs/{job_id}/events")
    resumed = await collect_sse(
        f"{embedded_gateway.url}/jobs/{job_id}/events",
        headers={"Last-Event-ID": events[3].id or ""},
    )
    assert [e.id for e in resumed] == [e.id for e in events[4:]]
    by_query = await collect_sse(
        f"{embedded_gateway.url}/jobs/{job_id}/events?since={events[6].id}"
    )
    assert [e.id for e in by_query] == [e.id for e in events[7:]]


async def test_channel_stream_replays_then_goes_live(embedded_gateway: GatewayProcess) -> None:
    url = embedded_gateway.url
    async with httpx.AsyncClient() as client:
        first = await client.post(f"{url}/channels/room:sse-live/events", json={"data": {"n": 0}})
        assert first.status_code == 202
        received: list[SSEEvent] = []

        async def read() -> None:
            async for event in sse_events(client, f"{url}/events?channel=room:sse-live"):
                received.append(event)
                if len(received) == 3:
                    return

        reader = asyncio.create_task(read())
        for _ in range(100):
            if received:
                break
            await asyncio.sleep(0.02)
        for n in (1, 2):
            await client.post(f"{url}/channels/room:sse-live/events", json={"data": {"n": n}})
        await asyncio.wait_for(reader, 10)
    assert [e.json()["data"]["n"] for e in received] == [0, 1, 2]
    assert [e.event for e in received] == ["message"] * 3


async def test_multi_channel_stream_resumes_each_channel_exactly(
    embedded_gateway: GatewayProcess,
) -> None:
    url = embedded_gateway.url
    async with httpx.AsyncClient() as client:
        for n in range(3):
            await client.post(f"{url}/channels/room:mc-a/events", json={"data": {"a": n}})
            await client.post(f"{url}/channels/room:mc-b/events", json={"data": {"b": n}})
    stream = f"{url}/events?channel=room:mc-a&channel=room:mc-b"
    first = await collect_sse(
        stream,
        until=lambda e: len(e.data) > 0 and "b" in e.json()["data"] and e.json()["data"]["b"] == 0,
    )
    cursor = first[-1].id or ""
    assert "room:mc-a@" in cursor and "room:mc-b@" in cursor
    seen = [e.json()["data"] for e in first]
    rest = await collect_sse(
        stream, headers={"Last-Event-ID": cursor}, until=lambda e: e.json()["data"] == {"b": 2}
    )
    combined = seen + [e.json()["data"] for e in rest]
    assert sorted(map(str, combined)) == sorted(
        map(str, [{"a": n} for n in range(3)] + [{"b": n} for n in range(3)])
    )
    assert len(combined) == 6


async def test_bad_requests_are_problems(embedded_gateway: GatewayProcess) -> None:
    url = embedded_gateway.url
    async with httpx.AsyncClient() as client:
        unknown = await client.get(f"{url}/jobs/nope/events")
        assert unknown.status_code == 404
        assert unknown.headers["content-type"] == "application/problem+json"
        bad_id = await client.get(
            f"{url}/events?channel=room:x", headers={"Last-Event-ID": "1-0; drop"}
        )
        assert bad_id.status_code == 400
        assert bad_id.json()["status"] == 400
        no_channel = await client.get(f"{url}/events")
        assert no_channel.status_code == 400
        bad_channel = await client.get(f"{url}/events?channel=no spaces")
        assert bad_channel.status_code == 400
        unknown_ns = await client.get(f"{url}/events?channel=weird:x")
        assert unknown_ns.status_code == 403
