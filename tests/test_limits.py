"""Every limit trips at its configured value with a clear error, and allows what is under it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import websockets

from gateway.errors import SettingsError
from gateway.limits import KeyedRateLimiter, TokenBucket, tcp_limit
from gateway.settings import Settings
from tests.support import GatewayProcess, gateway_env, ws_client, ws_recv, ws_send, ws_until

LIMITS = {
    "GATEWAY_MAX_BODY": "1000",
    "GATEWAY_MAX_MESSAGE": "2048",
    "GATEWAY_MAX_SUBSCRIPTIONS": "3",
    "GATEWAY_MAX_CONNECTIONS_PER_CLIENT": "4",
    "GATEWAY_PUBLISH_RATE": "1",
    "GATEWAY_PUBLISH_BURST": "5",
    "GATEWAY_SUBMIT_RATE": "1",
    "GATEWAY_SUBMIT_BURST": "3",
    "GATEWAY_MAX_WAIT": "2",
}


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("limited")
    process = GatewayProcess(gateway_env(**LIMITS), directory / "gateway.log")
    process.start()
    yield process
    process.stop(5)


def test_body_limit_by_length_and_by_streaming(limited: GatewayProcess) -> None:
    url = f"{limited.url}/channels/room:body/events"
    small = httpx.post(url, json={"data": "x" * 900})
    assert small.status_code == 202
    big = httpx.post(url, json={"data": "x" * 1000})
    assert big.status_code == 413
    assert big.headers["content-type"] == "application/problem+json"
    assert big.json()["max_body"] == 1000

    def chunks() -> Iterator[bytes]:
        yield b'{"data": "'
        for _ in range(20):
            yield b"y" * 100
        yield b'"}'

    streamed = httpx.post(url, content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    assert httpx.get(f"{limited.url}/healthz").status_code == 200


async def test_websocket_message_size_closes_1009(limited: GatewayProcess) -> None:
    async with ws_client(limited.ws_url) as ws:
        await ws_send(ws, {"op": "ping", "ref": "x" * 1900})
        assert (await ws_recv(ws))["op"] == "pong"
        await ws.send('{"op":"ping","ref":"' + "x" * 3000 + '"}')
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_subscriptions_per_connection(limited: GatewayProcess) -> None:
    async with ws_client(limited.ws_url) as ws:
        for n in range(3):
            await ws_send(ws, {"op": "subscribe", "channel": f"room:sub{n}", "ref": n})
            assert (await ws_recv(ws))["op"] == "ack"
        await ws_send(ws, {"op": "subscribe", "channel": "room:sub3", "ref": 3})
        error = await ws_recv(ws)
        assert error["op"] == "error" and error["code"] == "too_many_subscriptions"
        await ws_send(ws, {"op": "unsubscribe", "channel": "room:sub0", "ref": 4})
        assert (await ws_recv(ws))["op"] == "ack"
        await ws_send(ws, {"op": "subscribe", "channel": "room:sub3", "ref": 5})
        assert (await ws_recv(ws))["op"] == "ack"


@contextlib.asynccontextmanager
async def open_websockets(url: str, count: int) -> AsyncIterator[list[Any]]:
    async with contextlib.AsyncExitStack() as stack:
        sockets = [await stack.enter_async_context(ws_client(url)) for _ in range(count)]
        for ws in sockets:  # make sure each is past the guard before counting on it
            await ws_send(ws, {"op": "ping"})
            assert (await ws_recv(ws))["op"] == "pong"
        yield sockets


async def test_connections_per_client_address(limited: GatewayProcess) -> None:
    """Four streams per address: the fifth WebSocket is refused in words a browser can read
    (close 1013 with its reason), an SSE stream with 429; plain TCP connections are bounded at
    the limit plus `TCP_HEADROOM`, past which they are refused before any request is read."""
    async with open_websockets(limited.ws_url, 4):
        async with ws_client(limited.ws_url) as fifth:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(fifth.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        assert closed.value.rcvd.reason == "too many connections from this address"
        sse = await asyncio.to_thread(
            httpx.get, f"{limited.url}/events", params={"channel": "room:limits"}
        )
        assert sse.status_code == 429 and "Retry-After" in sse.headers
        idle = [
            await asyncio.open_connection("127.0.0.1", limited.port)
            for _ in range(tcp_limit(4) - 4)
        ]
        try:
            # The next connection from this address is answered 429 before any request is
            # read (or, had its request already arrived, reset).
            with pytest.raises((websockets.InvalidStatus, OSError)) as refused:
                async with ws_client(limited.ws_url):
                    pass
            if isinstance(refused.value, websockets.InvalidStatus):
                assert refused.value.response.status_code == 429
            other = httpx.HTTPTransport(local_address="127.0.0.2")
            with httpx.Client(transport=other) as client:  # another address is not affected
                assert client.get(f"{limited.url}/healthz").status_code == 200
        finally:
            for _, writer in idle:
                writer.close()
    async with ws_client(limited.ws_url) as again:  # released on close
        await ws_send(again, {"op": "ping"})
        assert (await ws_recv(again))["op"] == "pong"


async def test_publish_rate_per_connection(limited: GatewayProcess) -> None:
    async with ws_client(limited.ws_url) as ws:
        for n in range(5):
            await ws_send(ws, {"op": "publish", "channel": "room:rate", "data": n, "ref": n})
        acks = [await ws_recv(ws) for _ in range(5)]
        assert all(frame["op"] == "ack" for frame in acks)
        await ws_send(ws, {"op": "publish", "channel": "room:rate", "data": 5, "ref": 5})
        refused = await ws_recv(ws)
        assert refused["op"] == "error" and refused["code"] == "rate_limited"
        assert 0 < refused["retry_after"] <= 1
        await asyncio.sleep(1.1)
        await ws_send(ws, {"op": "publish", "channel": "room:rate", "data": 6, "ref": 6})
        assert (await ws_recv(ws))["op"] == "ack"


async def test_publish_rate_per_token(gateway_factory: Callable[..., GatewayProcess]) -> None:
    key = "limits-api-key-0123456789"
    gateway = gateway_factory(
        GATEWAY_API_KEYS=key,
        GATEWAY_SECRET="k" * 40,
        GATEWAY_PUBLISH_RATE="0.5",
        GATEWAY_PUBLISH_BURST="4",
    )
    auth = {"Authorization": f"Bearer {key}"}
    token = httpx.post(
        f"{gateway.url}/tokens",
        json={"sub": "dan", "channels": {"room:*": ["publish", "subscribe"]}},
        headers=auth,
    ).json()["token"]
    op = {"op": "publish", "channel": "room:tok", "token": token}
    async with ws_client(gateway.ws_url) as first, ws_client(gateway.ws_url) as second:
        for n in range(2):
            await ws_send(first, {**op, "ref": n})
            await ws_send(second, {**op, "ref": n})
        frames = [await ws_recv(first) for _ in range(2)] + [
            await ws_recv(second) for _ in range(2)
        ]
        assert all(frame["op"] == "ack" for frame in frames)
        await ws_send(second, {**op, "ref": 9})
        refused = await ws_until(second, lambda f: f.get("ref") == 9)
        assert refused[-1]["code"] == "rate_limited"  # the token's bucket, shared by both
    over_http = httpx.post(
        f"{gateway.url}/channels/room:tok/events",
        json={"data": 1},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert over_http.status_code == 429 and int(over_http.headers["retry-after"]) >= 1
    # The server's API key is not rate limited per token.
    server = httpx.post(f"{gateway.url}/channels/room:tok/events", json={"data": 1}, headers=auth)
    assert server.status_code == 202


def test_job_submissions_per_key(limited: GatewayProcess) -> None:
    body = {"type": "sleep", "data": {"seconds": 0}}
    codes = [httpx.post(f"{limited.url}/jobs", json=body).status_code for _ in range(4)]
    assert codes[:3] == [202, 202, 202]
    assert codes[3] == 429
    refused = httpx.post(f"{limited.url}/submit-job", json={"jobType": "sleep", "jobData": {}})
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert refused.json()["type"].endswith("rate-limited")


def test_long_poll_wait_is_capped(limited: GatewayProcess) -> None:
    url = f"{limited.url}/jobs/nonexistent"
    too_long = httpx.get(url, params={"wait": "3"})
    assert too_long.status_code == 400 and "wait" in too_long.json()["detail"]
    assert httpx.get(url, params={"wait": "2"}).status_code == 404


def test_channel_name_length_and_charset(limited: GatewayProcess) -> None:
    longest = "room:" + "a" * 195
    ok = httpx.post(f"{limited.url}/channels/{longest}/events", json={"data": 1})
    assert ok.status_code == 202
    for name in ("room:" + "a" * 196, "room:a b", "room:ü", "lobby"):
        response = httpx.get(f"{limited.url}/channels/{name}/events")
        assert response.status_code == 400, name


def test_limit_settings_are_validated() -> None:
    settings = Settings.from_env(LIMITS)
    assert (settings.max_body, settings.max_message, settings.max_subscriptions) == (1000, 2048, 3)
    assert settings.publish_rate == 1.0 and settings.submit_burst == 3
    for name, value in (
        ("GATEWAY_MAX_BODY", "lots"),
        ("GATEWAY_MAX_BODY", "0"),
        ("GATEWAY_PUBLISH_RATE", "-1"),
        ("GATEWAY_SECRET", "short"),
        ("GATEWAY_API_KEYS", "tiny"),
        ("GATEWAY_CHANNEL_POLICY", "room=maybe/token"),
    ):
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({name: value})
    rules = Settings.from_env({"GATEWAY_CHANNEL_POLICY": "news=open/none"}).channel_rules
    assert rules == {"news": ("open", "none")}


def test_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=2.0, stamp=0.0)
    assert bucket.take(0.0) == 0.0 and bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5) == 0.0
    limiter = KeyedRateLimiter(rate=1.0, burst=1.0, max_keys=2)
    assert limiter.take("a") == 0.0 and limiter.take("a") > 0
    limiter.take("b")
    limiter.take("c")  # "a" is forgotten: memory stays bounded under many keys
    assert limiter.take("a") == 0.0
    assert KeyedRateLimiter(rate=0.0, burst=1.0).take("x") == 0.0  # 0 turns the limit off
