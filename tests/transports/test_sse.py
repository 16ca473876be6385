"""SSE end to end against a real gateway process (memory backend, embedded worker)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import httpx
import orjson

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


async def read_raw(
    url: str, until: Callable[[str], bool] | None = None, timeout: float = 10.0
) -> tuple[httpx.Headers, str]:
    """The raw text of an SSE response: to its end, or until `until(text)` holds."""
    text = ""

    async def read() -> httpx.Headers:
        nonlocal text
        async with (
            httpx.AsyncClient(timeout=timeout) as client,
            client.stream("GET", url) as response,
        ):
            assert response.status_code == 200, await response.aread()
            async for chunk in response.aiter_text():
                text += chunk
                if until is not None and until(text):
                    break
            return response.headers

    headers = await asyncio.wait_for(read(), timeout)
    return headers, text


def blocks(text: str) -> list[list[str]]:
    """The dispatched blocks of an SSE text: the lines before each blank line."""
    return [part.split("\n") for part in text.split("\n\n")[:-1]]


def fields(block: list[str], name: str) -> list[str]:
    return [line.partition(": ")[2] for line in block if line.startswith(name + ":")]


async def test_every_block_carries_json_data_and_the_retry_hint_rides_in_the_first(
    embedded_gateway: GatewayProcess,
) -> None:
    """A lone `retry:` block is dispatched as an empty message by lenient parsers."""
    job_id = submit(embedded_gateway, {"seconds": 0, "steps": 1})
    headers, body = await read_raw(f"{embedded_gateway.url}/jobs/{job_id}/events")
    assert headers["content-type"] == "text/event-stream"
    assert headers["cache-control"] == "no-store"
    assert headers["x-accel-buffering"] == "no"
    assert body.startswith(":")  # a comment first, so proxies pass the response on at once
    parsed = blocks(body)
    assert parsed and all(fields(block, "data") for block in parsed)
    assert fields(parsed[0], "retry") == ["2000"]
    assert not any(fields(block, "retry") for block in parsed[1:])
    assert "event:" not in body, "events are unnamed by default: EventSource.onmessage hears them"
    types = [orjson.loads(fields(block, "data")[0])["type"] for block in parsed]
    assert types == ["job.queued", "job.started", "job.progress", "job.completed"]


async def test_keep_alives_are_lone_comment_lines(embedded_gateway: GatewayProcess) -> None:
    """`: ping` plus a blank line is an empty message to httpx-sse and fetch-event-source."""
    started = time.monotonic()
    _, body = await read_raw(
        f"{embedded_gateway.url}/events?channel=room:idle-keepalive",
        until=lambda text: text.count(":\n") >= 3,  # preamble + two pings (GATEWAY_SSE_PING=1)
    )
    assert time.monotonic() - started < 5
    assert "\n\n" not in body, "nothing is dispatched on an idle stream"
    assert all(line.startswith(":") for line in body.splitlines())


async def test_heartbeat_opt_in_sends_messages_a_page_can_watch(
    embedded_gateway: GatewayProcess,
) -> None:
    started = time.monotonic()
    _, body = await read_raw(
        f"{embedded_gateway.url}/events?channel=room:idle-heartbeat&heartbeat=1",
        until=lambda text: len(blocks(text)) >= 2,
    )
    assert time.monotonic() - started < 4
    parsed = blocks(body)[:2]
    assert [orjson.loads(fields(b, "data")[0]) for b in parsed] == [{"type": "heartbeat"}] * 2
    assert not any(fields(b, "id") for b in parsed), "no id: Last-Event-ID stays the event's"
    assert fields(parsed[0], "retry") == ["2000"]


async def test_named_events_are_an_opt_in(embedded_gateway: GatewayProcess) -> None:
    job_id = submit(embedded_gateway, {"seconds": 0, "steps": 1})
    _, plain = await read_raw(f"{embedded_gateway.url}/jobs/{job_id}/events")
    _, named = await read_raw(f"{embedded_gateway.url}/jobs/{job_id}/events?events=named")
    plain_blocks, named_blocks = blocks(plain), blocks(named)
    assert [fields(b, "event") for b in named_blocks] == [
        ["job.queued"],
        ["job.started"],
        ["job.progress"],
        ["job.completed"],
    ]
    assert [fields(b, "data") for b in named_blocks] == [fields(b, "data") for b in plain_blocks]
    assert [fields(b, "id") for b in named_blocks] == [fields(b, "id") for b in plain_blocks]
    _, gap = await read_raw(
        f"{embedded_gateway.url}/events?channel=room:named-gap&since=1-0&events=named",
        until=lambda text: "\n\n" in text,
    )
    assert fields(blocks(gap)[0], "event") == ["gap"]


async def test_signals_are_json_messages_with_a_type(embedded_gateway: GatewayProcess) -> None:
    _, body = await read_raw(
        f"{embedded_gateway.url}/events?channel=room:signal-gap&since=1-0",
        until=lambda text: "\n\n" in text,
    )
    block = blocks(body)[0]
    assert not fields(block, "event") and not fields(block, "id")
    assert orjson.loads(fields(block, "data")[0]) == {
        "type": "gap",
        "channel": "room:signal-gap",
        "since": "1-0",
    }


async def test_shutdown_signal_carries_its_retry_in_the_same_block(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gateway = gateway_factory(GATEWAY_SSE_RETRY_MS="1500")
    assert gateway.process is not None
    url = f"{gateway.url}/events?channel=room:shutdown-signal"
    body = ""
    async with (
        httpx.AsyncClient(timeout=15) as client,
        client.stream("GET", url) as response,
    ):
        chunks = response.aiter_text()
        body = await asyncio.wait_for(anext(chunks), 10)  # the preamble: the stream is open
        gateway.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            async for chunk in chunks:
                body += chunk
    (block,) = blocks(body)
    assert fields(block, "retry") == ["1500"]
    data = orjson.loads(fields(block, "data")[0])
    assert data["type"] == "shutdown" and data["retry"] == 1500 and data["message"]


async def test_bad_stream_options_are_problems(embedded_gateway: GatewayProcess) -> None:
    async with httpx.AsyncClient() as client:
        for query in ("events=bogus", "heartbeat=0", "heartbeat=abc", "heartbeat=nan"):
            response = await client.get(f"{embedded_gateway.url}/events?channel=room:x&{query}")
            assert response.status_code == 400, query
            assert response.headers["content-type"] == "application/problem+json"


async def test_reconnect_at_terminal_event_gets_204(embedded_gateway: GatewayProcess) -> None:
    """EventSource reconnects whenever a stream ends; 204 makes it stop for good."""
    job_id = submit(embedded_gateway, {"seconds": 0, "steps": 1})
    events = await collect_sse(f"{embedded_gateway.url}/jobs/{job_id}/events")
    terminal = events[-1].id or ""
    later = f"{int(terminal.split('-')[0]) + 1}-0"
    async with httpx.AsyncClient() as client:
        for position in (terminal, later):
            again = await client.get(
                f"{embedded_gateway.url}/jobs/{job_id}/events", headers={"Last-Event-ID": position}
            )
            assert again.status_code == 204, position
        before = await client.get(
            f"{embedded_gateway.url}/jobs/{job_id}/events?since={events[-2].id}", timeout=10
        )
    assert before.status_code == 200 and '"job.completed"' in before.text


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
