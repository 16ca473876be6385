"""Replay memory against real processes: event size limits, byte-bounded history, paged replay.

A holder of one room token could fill a room with 1 MB events and open connections that never
read: each pinned its own copy of the replayed history in the gateway (+601 MB for 6 such
connections and 32 MB of history before this). Now events are limited per namespace, history is
bounded in bytes, and replay is paged as the client drains it, counted against the
slow-consumer limit.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import httpx
import pytest

from gateway.errors import EventTooLargeError
from gateway.publish import publish as publish_event
from tests.replay_rss import measure, never_reading_subscriber, subscriptions
from tests.support import (
    GatewayProcess,
    collect_sse,
    wait_until,
    ws_client,
    ws_recv,
    ws_send,
    ws_until,
)

RSS_TARGET_MB = 50


@pytest.mark.parametrize(
    "retention",
    [
        pytest.param({}, id="default-retention"),
        pytest.param({"GATEWAY_RETENTION": "room=500/3600/33554432"}, id="32MiB-of-history"),
    ],
)
def test_never_reading_subscribers_pin_little_memory(
    redis_url: str,
    gateway_factory: Callable[..., GatewayProcess],
    retention: dict[str, str],
) -> None:
    """6 raw WebSockets that subscribe and never read a byte, on a room at its maximum history
    (filled with events as large as the gateway accepts; 1 MB ones are refused): the gateway's
    peak RSS grows < 50 MB, and a fast subscriber still gets the whole history, then live."""
    gateway = gateway_factory(REDIS_URL=redis_url, **retention)
    result = measure(gateway, events=500, size=1_000_000, slow=6)
    print(result.summary())
    assert result.probe_status == 413, "1 MB events are refused in rooms"
    assert result.event_size > 60_000
    if retention:
        assert result.retained == 500
    assert result.fast_error is None
    assert result.fast_ids == result.expected_ids, "the fast subscriber missed or reordered"
    assert result.growth_mb < RSS_TARGET_MB, result.summary()


def publish(client: httpx.Client, url: str, channel: str, data: object) -> str:
    response = client.post(f"{url}/channels/{channel}/events", json={"data": data})
    assert response.status_code == 202, response.text
    event_id: str = response.json()["id"]
    return event_id


def slow_consumer_disconnects(url: str, transport: str) -> float:
    prefix = f'gateway_slow_consumer_disconnects_total{{transport="{transport}"}}'
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


def close_code(sock: socket.socket, timeout: float) -> int | None:
    """Read the server's WebSocket frames until its close frame; its code, or None on EOF."""
    sock.settimeout(timeout)
    buffer = b""

    def need(size: int) -> bool:
        nonlocal buffer
        while len(buffer) < size:
            chunk = sock.recv(1 << 20)
            if not chunk:
                return False
            buffer += chunk
        return True

    try:
        while need(2):
            opcode, length = buffer[0] & 0x0F, buffer[1] & 0x7F
            head = 2 + {126: 2, 127: 8}.get(length, 0)
            if not need(head):
                return None
            if length >= 126:
                length = int.from_bytes(buffer[2:head])
            if not need(head + length):
                return None
            payload, buffer = buffer[head : head + length], buffer[head + length :]
            if opcode == 0x8:
                return int.from_bytes(payload[:2])
    except (TimeoutError, ConnectionResetError):
        return None
    return None


def stalled_sse(port: int, channel: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET /events?channel={channel} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return sock


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    sock.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            if sock.recv(1 << 20) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


def test_clients_that_stop_reading_mid_replay_are_cut_off(
    redis_url: str, gateway_factory: Callable[..., GatewayProcess]
) -> None:
    """History larger than the socket buffers stalls the replay of clients that never read;
    live events that go by count against GATEWAY_SLOW_CONSUMER_QUEUE: WebSocket close 4008,
    SSE connection dropped, as for a live backlog."""
    gateway = gateway_factory(
        REDIS_URL=redis_url,
        GATEWAY_SLOW_CONSUMER_QUEUE="50",
        GATEWAY_RETENTION="room=500/3600/33554432",
    )
    channel = "room:stalled"
    with httpx.Client() as client:
        for n in range(200):  # 12 MB: more than the kernel buffers take
            publish(client, gateway.url, channel, {"n": n, "pad": "s" * 60_000})
        ws = never_reading_subscriber(gateway.port, channel)
        sse = stalled_sse(gateway.port, channel)
        wait_until(lambda: subscriptions(gateway.url) == 2, 10, "both to subscribe")
        for n in range(60):  # over the limit of 50, however much of a page is queued
            publish(client, gateway.url, channel, {"live": n})
    wait_until(lambda: slow_consumer_disconnects(gateway.url, "ws") == 1, 10, "the WS cut-off")
    wait_until(lambda: slow_consumer_disconnects(gateway.url, "sse") == 1, 10, "the SSE cut-off")
    assert close_code(ws, 10) == 4008
    assert closed_by_server(sse, 10)
    ws.close()
    sse.close()


async def test_a_long_history_is_replayed_in_order_then_live_on_both_transports(
    redis_url: str, gateway_factory: Callable[..., GatewayProcess]
) -> None:
    gateway = gateway_factory(REDIS_URL=redis_url, GATEWAY_SLOW_CONSUMER_QUEUE="40")
    channel = "room:long"
    with httpx.Client() as client:
        ids = [publish(client, gateway.url, channel, {"n": n}) for n in range(450)]
    async with ws_client(gateway.ws_url) as ws:
        await ws_send(ws, {"op": "subscribe", "channel": channel, "since": ids[9], "ref": 1})
        ack = await ws_recv(ws)
        assert ack["op"] == "ack" and ack["recovered"] is True
        sse_reader = asyncio.create_task(
            collect_sse(
                f"{gateway.url}/events?channel={channel}",
                until=lambda e: e.json().get("data") == "live",
            )
        )
        replay = await ws_until(ws, lambda f: f.get("id") == ids[-1], timeout=30)
        assert [f["id"] for f in replay] == ids[10:]
        with httpx.Client() as client:
            live = publish(client, gateway.url, channel, "live")
        assert (await ws_recv(ws))["id"] == live
        sse = await asyncio.wait_for(sse_reader, 30)
    assert [e.id for e in sse] == [*ids, live]


def test_byte_trimmed_history_signals_the_gap(
    redis_url: str, gateway_factory: Callable[..., GatewayProcess]
) -> None:
    gateway = gateway_factory(
        REDIS_URL=redis_url,
        GATEWAY_RETENTION="room=1000/3600/20000",
        GATEWAY_MAX_EVENT_SIZE="room=2000",
    )
    channel = "room:bytes"
    with httpx.Client() as client:
        ids = [publish(client, gateway.url, channel, {"n": n, "pad": "g" * 900}) for n in range(60)]
        page = client.get(f"{gateway.url}/channels/{channel}/events?limit=1000").json()
    kept = [event["id"] for event in page["events"]]
    assert 10 < len(kept) < 20 and kept == ids[-len(kept) :]

    async def over_websocket() -> None:
        async with ws_client(gateway.ws_url) as ws:
            await ws_send(ws, {"op": "subscribe", "channel": channel, "since": ids[0], "ref": 1})
            assert (await ws_recv(ws))["recovered"] is False
            assert await ws_recv(ws) == {"op": "gap", "channel": channel, "since": ids[0]}
            replay = await ws_until(ws, lambda f: f.get("id") == ids[-1])
            assert [f["id"] for f in replay] == kept
            resumed = ids[-len(kept) - 1]  # right before the oldest kept: nothing is missing
            await ws_send(ws, {"op": "unsubscribe", "channel": channel, "ref": 2})
            await ws_recv(ws)
            await ws_send(ws, {"op": "subscribe", "channel": channel, "since": resumed, "ref": 3})
            assert (await ws_recv(ws))["recovered"] is True

    asyncio.run(over_websocket())
    events = asyncio.run(
        collect_sse(
            f"{gateway.url}/events?channel={channel}&since={ids[0]}",
            until=lambda e: e.id == ids[-1],
        )
    )
    assert events[0].event == "gap" and events[0].json()["since"] == ids[0]
    assert [e.id for e in events[1:]] == kept


def test_oversized_events_are_refused_on_every_path(
    redis_url: str,
    gateway_factory: Callable[..., GatewayProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gateway = gateway_factory(REDIS_URL=redis_url, GATEWAY_MAX_EVENT_SIZE="room=2000")
    channel = "room:limits"
    big = {"pad": "L" * 2500}
    with httpx.Client() as client:
        kept = publish(client, gateway.url, channel, {"pad": "ok"})
        response = client.post(f"{gateway.url}/channels/{channel}/events", json={"data": big})
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"].endswith("/event-too-large") and problem["max_event_size"] == 2000
    assert "GATEWAY_MAX_EVENT_SIZE" in problem["detail"]

    async def over_websocket() -> None:
        async with ws_client(gateway.ws_url) as ws:
            op = {"op": "publish", "channel": channel, "data": big, "ref": 7}
            await ws_send(ws, op)
            error = await ws_recv(ws)
            assert error["op"] == "error" and error["ref"] == 7
            assert error["code"] == "event_too_large" and error["max_event_size"] == 2000
            await ws_send(ws, {"op": "ping", "ref": 8})
            assert (await ws_recv(ws))["op"] == "pong", "the connection stays open"

    asyncio.run(over_websocket())
    with pytest.raises(EventTooLargeError) as over_http:
        publish_event(channel, "message", big, redis_url="", url=gateway.url)
    assert over_http.value.limit == 2000
    monkeypatch.setenv("GATEWAY_MAX_EVENT_SIZE", "room=2000")  # what the gateway runs with
    with pytest.raises(EventTooLargeError) as to_redis:
        publish_event(channel, "message", big, redis_url=redis_url)
    assert to_redis.value.limit == 2000
    monkeypatch.delenv("GATEWAY_MAX_EVENT_SIZE")
    with pytest.raises(EventTooLargeError, match="65536"):  # the default for rooms
        publish_event(channel, "message", {"pad": "L" * 70_000}, redis_url=redis_url)
    history = httpx.get(f"{gateway.url}/channels/{channel}/events").json()
    assert [event["id"] for event in history["events"]] == [kept]
