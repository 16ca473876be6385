"""Presence across real gateway processes sharing a real Redis (docs/presence.md).

Two gateways per module (a third one started and SIGKILLed where a test needs it), with short
heartbeat bounds: `GATEWAY_PRESENCE_TIMEOUT=2` (a dead gateway's entries go within ~1.5 s) and
`GATEWAY_PRESENCE_GRACE=1.5`. Gateway 1 runs the embedded worker, which delivers webhooks.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest

from gateway.backends.presence import Member
from gateway.backends.url import open_backend
from gateway.settings import Settings
from tests.support import (
    GatewayProcess,
    Receiver,
    RedisServer,
    SSEEvent,
    gateway_env,
    http_receiver,
    sse_events,
    wait_until,
    ws_client,
    ws_recv,
    ws_send,
    ws_until,
)

SECRET = "presence-test-secret-0123456789abcdef"
API_KEY = "presence-test-api-key"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
TIMEOUT = 2.0
GRACE = 1.5
SERVER = {"Authorization": f"Bearer {API_KEY}"}


def token(sub: str, channels: dict[str, list[str]], info: Any = None) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + 600, "channels": channels}
    if info is not None:
        claims["info"] = info
    return jwt.encode(claims, SECRET, algorithm="HS256")


def reader(sub: str, *channels: str, info: Any = None) -> str:
    return token(sub, {channel: ["subscribe"] for channel in channels}, info)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with http_receiver() as state:
        yield state


@pytest.fixture(scope="module")
def env(redis_server: RedisServer, receiver: Receiver) -> dict[str, str]:
    return gateway_env(
        REDIS_URL=redis_server.url,
        GATEWAY_SECRET=SECRET,
        GATEWAY_API_KEYS=API_KEY,
        GATEWAY_PRESENCE_EVENTS="room",
        GATEWAY_PRESENCE_TIMEOUT=str(TIMEOUT),
        GATEWAY_PRESENCE_GRACE=str(GRACE),
        GATEWAY_OCCUPANCY_EVENTS="room",
        GATEWAY_OCCUPANCY_WEBHOOK=receiver.url,
        GATEWAY_WEBHOOK_SECRET=WEBHOOK_SECRET,
        GATEWAY_WEBHOOK_ALLOW_PRIVATE="1",
        GATEWAY_WEBHOOK_BACKOFF="0.1",
    )


@pytest.fixture(scope="module")
def gateways(
    env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    directory = tmp_path_factory.mktemp("presence")
    one = GatewayProcess({**env, "GATEWAY_EMBEDDED_WORKER": "1"}, directory / "gateway-1.log")
    two = GatewayProcess(env, directory / "gateway-2.log")
    one.start()
    two.start()
    yield one, two
    one.stop(5)
    two.stop(5)


def is_presence(frame: dict[str, Any], kind: str, client: str) -> bool:
    return (
        frame.get("op") == "event"
        and frame.get("type") == f"presence.{kind}"
        and frame["data"]["client"] == client
    )


async def subscribe(ws: Any, channel: str) -> None:
    await ws_send(ws, {"op": "subscribe", "channel": channel, "ref": channel})
    await ws_until(ws, lambda f: f.get("op") == "ack" and f.get("ref") == channel)


async def until_marker(ws: Any, url: str, channel: str) -> list[dict[str, Any]]:
    """Everything `ws` receives up to a marker event published after it: what came before."""
    marker = f"m{time.monotonic_ns()}"
    response = httpx.post(
        f"{url}/channels/{channel}/events", json={"type": "marker", "data": marker}, headers=SERVER
    )
    assert response.status_code == 202, response.text
    return await ws_until(ws, lambda f: f.get("type") == "marker" and f.get("data") == marker)


def presence_of(url: str, channel: str, limit: int = 100) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/channels/{channel}/presence?limit={limit}", headers=SERVER)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["channel"] == channel and body["next"] is None
    clients: list[dict[str, Any]] = body["clients"]
    return clients


async def test_presence_is_the_same_from_either_gateway_and_each_join_and_leave_comes_once(
    gateways: tuple[GatewayProcess, GatewayProcess],
) -> None:
    one, two = gateways
    room = "room:same"
    watch = f"{one.ws_url}?client=w&token={reader('watcher', room)}"
    alice = f"{one.ws_url}?client=a&token={reader('alice', room, info={'name': 'Alice'})}"
    bob = f"{two.ws_url}?client=b&token={reader('bob', room)}"
    async with ws_client(watch) as w:
        await subscribe(w, room)
        async with ws_client(alice) as a, ws_client(bob) as b:
            await subscribe(a, room)
            await subscribe(b, room)
            await ws_until(w, lambda f: is_presence(f, "join", "b"))
            expected = [
                {"client": "a", "user": "alice", "info": {"name": "Alice"}},
                {"client": "b", "user": "bob", "info": None},
                {"client": "w", "user": "watcher", "info": None},
            ]
            key = lambda entry: entry["user"]  # noqa: E731
            assert sorted(presence_of(one.url, room), key=key) == expected
            assert sorted(presence_of(two.url, room), key=key) == expected
            stats = httpx.get(f"{two.url}/channels/{room}/presence/stats", headers=SERVER)
            assert stats.json() == {"channel": room, "clients": 3, "users": 3}
            await ws_send(b, {"op": "presence_stats", "channel": room, "ref": 9})
            answer = await ws_until(b, lambda f: f.get("ref") == 9)
            assert answer[-1] == {
                "op": "presence_stats",
                "ref": 9,
                "channel": room,
                "clients": 3,
                "users": 3,
            }
            # Bob unsubscribes: he leaves at once. Alice disconnects: after the grace.
            await ws_send(b, {"op": "unsubscribe", "channel": room})
            await ws_until(w, lambda f: is_presence(f, "leave", "b"))
        frames = await ws_until(w, lambda f: is_presence(f, "leave", "a"), timeout=GRACE + 10)
        frames += await until_marker(w, one.url, room)
    seen = [(f["type"], f["data"]["client"]) for f in frames if f.get("type", "").startswith("p")]
    assert seen.count(("presence.leave", "a")) == 1 and ("presence.join", "a") not in seen
    # The watcher stays present through its own grace, then goes too.
    assert [e["client"] for e in presence_of(two.url, room)] == ["w"]
    await asyncio.to_thread(
        wait_until, lambda: presence_of(two.url, room) == [], GRACE + 10, "empty room"
    )


async def test_presence_events_are_live_only_with_no_position(
    gateways: tuple[GatewayProcess, GatewayProcess],
) -> None:
    """Over SSE they carry no `id:` (Last-Event-ID stays put); they are not in history."""
    one, two = gateways
    room = "room:live"
    got: list[SSEEvent] = []

    async def read() -> None:
        url = f"{two.url}/events?channel={room}&client=s&token={reader('s', room)}"
        async with httpx.AsyncClient(timeout=20) as client:
            async for event in sse_events(client, url):
                got.append(event)
                if event.event == "presence.join" and event.json()["data"]["client"] == "x":
                    return

    task = asyncio.create_task(read())
    await asyncio.to_thread(wait_until, lambda: presence_of(one.url, room) != [], 10, "sse")
    async with ws_client(f"{one.ws_url}?client=x&token={reader('x', room)}") as x:
        await subscribe(x, room)
        await asyncio.wait_for(task, 10)
    join = got[-1]
    assert join.id is None
    assert join.json()["transient"] is True and join.json()["data"]["user"] == "x"
    history = httpx.get(f"{one.url}/channels/{room}/events", headers=SERVER).json()
    assert [e["type"] for e in history["events"]] == []


async def test_a_client_that_reconnects_within_the_grace_neither_leaves_nor_joins(
    gateways: tuple[GatewayProcess, GatewayProcess],
) -> None:
    one, two = gateways
    room = "room:flap"
    async with ws_client(f"{two.ws_url}?client=w&token={reader('w', room)}") as w:
        await subscribe(w, room)
        flapper = reader("carol", room)
        async with ws_client(f"{one.ws_url}?client=carol-tab&token={flapper}") as c:
            await subscribe(c, room)
            await ws_until(w, lambda f: is_presence(f, "join", "carol-tab"))
        # Dropped; back on the same gateway, then on the other one, each within the grace.
        async with ws_client(f"{one.ws_url}?client=carol-tab&token={flapper}") as c:
            await subscribe(c, room)
        async with ws_client(f"{two.ws_url}?client=carol-tab&token={flapper}") as c:
            await subscribe(c, room)
            # An observation window: every grace timer the drops started has run out in it.
            await asyncio.sleep(GRACE * 1.5)
            frames = await until_marker(w, one.url, room)
            assert [f for f in frames if f.get("type", "").startswith("presence.")] == []
            assert [e["client"] for e in presence_of(one.url, room)] == ["carol-tab", "w"]
        await ws_until(w, lambda f: is_presence(f, "leave", "carol-tab"), timeout=GRACE + 10)


async def test_a_killed_gateway_s_clients_leave_within_the_bound_once(
    gateways: tuple[GatewayProcess, GatewayProcess], env: dict[str, str], tmp_path: Path
) -> None:
    one, two = gateways
    room = "room:kill"
    doomed = GatewayProcess(env, tmp_path / "doomed.log")
    doomed.start()
    try:
        async with (
            ws_client(f"{one.ws_url}?client=w1&token={reader('w1', room)}") as w1,
            ws_client(f"{two.ws_url}?client=w2&token={reader('w2', room)}") as w2,
        ):
            await subscribe(w1, room)
            await subscribe(w2, room)
            async with ws_client(f"{doomed.ws_url}?client=k&token={reader('k', room)}") as k:
                await subscribe(k, room)
                await ws_until(w1, lambda f: is_presence(f, "join", "k"))
                await ws_until(w2, lambda f: is_presence(f, "join", "k"))
                killed = time.monotonic()
                doomed.kill()
                for w in (w1, w2):
                    await ws_until(w, lambda f: is_presence(f, "leave", "k"), timeout=TIMEOUT + 8)
                took = time.monotonic() - killed
            for w in (w1, w2):
                frames = await until_marker(w, one.url, room)
                assert not [f for f in frames if is_presence(f, "leave", "k")]  # once only
            assert sorted(e["client"] for e in presence_of(two.url, room)) == ["w1", "w2"]
    finally:
        doomed.kill()
    assert took < TIMEOUT + 3, f"the dead gateway's client left after {took:.1f} s"


def verify_signature(headers: dict[str, str], body: bytes) -> None:
    key = base64.b64decode(WEBHOOK_SECRET.removeprefix("whsec_"))
    content = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
    assert f"v1,{expected}" in headers["webhook-signature"].split()


async def test_occupied_and_vacated_fire_once_each_as_events_and_signed_webhooks(
    gateways: tuple[GatewayProcess, GatewayProcess], receiver: Receiver
) -> None:
    one, two = gateways
    room = "room:occupancy"
    system = f"{two.ws_url}?token={reader('ops', 'system:occupancy')}"
    async with ws_client(system) as s:
        await subscribe(s, "system:occupancy")
        async with ws_client(f"{one.ws_url}?token={reader('x', room)}") as x:
            await subscribe(x, room)
            async with ws_client(f"{two.ws_url}?token={reader('y', room)}") as y:
                await subscribe(y, room)
                await ws_send(y, {"op": "unsubscribe", "channel": room})
            await ws_send(x, {"op": "unsubscribe", "channel": room})
            mine = lambda f: f.get("data") == {"channel": room}  # noqa: E731
            frames = await ws_until(s, lambda f: mine(f) and f["type"] == "channel.vacated")
            frames += await until_marker(s, one.url, "system:occupancy")
    kinds = [f["type"] for f in frames if mine(f)]
    assert kinds == ["channel.occupied", "channel.vacated"]

    def delivered() -> list[dict[str, Any]]:
        bodies = [orjson.loads(body) for _headers, body in list(receiver.requests)]
        return [b for b in bodies if b.get("data") == {"channel": room}]

    wait_until(lambda: len(delivered()) >= 2, 15, "the occupancy webhooks")
    assert [b["type"] for b in delivered()] == ["channel.occupied", "channel.vacated"]
    for headers, body in list(receiver.requests):
        if orjson.loads(body).get("data") == {"channel": room}:
            verify_signature(headers, body)


def submit(url: str, grace: float) -> str:
    response = httpx.post(
        f"{url}/jobs",
        json={
            "type": "sleep",
            "data": {"seconds": 120, "steps": 1},
            "cancel_when_unwatched": grace,
        },
        headers=SERVER,
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def status(url: str, job_id: str) -> str:
    value: str = httpx.get(f"{url}/jobs/{job_id}", headers=SERVER).json()["status"]
    return value


async def test_an_unwatched_job_is_cancelled_after_its_grace_and_a_watched_one_is_not(
    gateways: tuple[GatewayProcess, GatewayProcess],
) -> None:
    one, two = gateways
    watched = submit(one.url, 1.0)
    async with ws_client(two.ws_url, additional_headers=SERVER) as w:
        await subscribe(w, f"job:{watched}")
        unwatched = submit(one.url, 1.0)
        await asyncio.to_thread(
            wait_until, lambda: status(two.url, unwatched) == "cancelled", 15, "the cancel"
        )
        cancelled = httpx.get(f"{one.url}/jobs/{unwatched}/events", headers=SERVER)
        assert cancelled.status_code == 200
        # The watched job, submitted first, has waited longer than its grace: still alive.
        assert status(one.url, watched) != "cancelled"
    # Nobody watches it any more: cancelled once the grace after the last leave runs out.
    await asyncio.to_thread(
        wait_until, lambda: status(one.url, watched) == "cancelled", 15 + GRACE, "the cancel"
    )


async def test_presence_is_authorized_like_history(
    gateways: tuple[GatewayProcess, GatewayProcess],
) -> None:
    one, _two = gateways
    room = "room:private"
    url = f"{one.url}/channels/{room}/presence"
    assert httpx.get(url).status_code == 401
    publisher = token("p", {room: ["publish"]})
    assert httpx.get(url, params={"token": publisher}).status_code == 403
    assert httpx.get(url + "/stats", params={"token": publisher}).status_code == 403
    assert httpx.get(url, params={"token": reader("r", "room:other")}).status_code == 403
    assert httpx.get(url, params={"token": reader("r", room)}).status_code == 200
    assert httpx.get(url + "/stats", params={"token": reader("r", "room:*")}).status_code == 200
    # Presence is off for job: channels (GATEWAY_PRESENCE), even for an API key.
    assert httpx.get(f"{one.url}/channels/job:x/presence", headers=SERVER).status_code == 403
    async with ws_client(f"{one.ws_url}?token={publisher}") as ws:
        for op in ("presence", "presence_stats"):
            await ws_send(ws, {"op": op, "channel": room, "ref": op})
            error = await ws_recv(ws)
            assert error["op"] == "error" and error["ref"] == op
            assert error["code"] == "forbidden"
        await ws_send(ws, {"op": "presence", "channel": room, "cursor": "!", "ref": 1})
        assert (await ws_recv(ws))["code"] == "invalid_cursor"
    bad = httpx.get(url, params={"token": reader("r", room), "cursor": "%%%"})
    assert bad.status_code == 400
    stream = {"channel": room, "token": reader("r", room), "client": "not an id"}
    assert httpx.get(f"{one.url}/events", params=stream).status_code == 400
    async with ws_client(f"{one.ws_url}?client=no%20spaces&token={reader('r', room)}") as ws:
        refused = await ws_recv(ws)
        assert refused["code"] == "invalid_client" and refused["ref"] is None
        await subscribe(ws, room)  # the connection goes on with an id of the gateway's


async def test_a_room_of_ten_thousand_counts_at_once_and_pages_completely(
    gateways: tuple[GatewayProcess, GatewayProcess], redis_server: RedisServer
) -> None:
    one, two = gateways
    room = "room:stadium"
    backend = open_backend(Settings(redis_url=redis_server.url))
    try:
        store = backend.presence
        members = [Member(f"c{n}", f"u{n // 2}") for n in range(10_000)]
        for start in range(0, len(members), 500):
            batch = members[start : start + 500]
            await asyncio.gather(*(store.join(room, m, "g-populated") for m in batch))
        started = time.monotonic()
        stats = httpx.get(f"{two.url}/channels/{room}/presence/stats", headers=SERVER)
        took = time.monotonic() - started
        assert stats.json() == {"channel": room, "clients": 10_000, "users": 5_000}
        assert took < 2.0, f"stats of 10,000 took {took:.2f} s"
        seen: set[str] = set()
        cursor, pages = None, 0
        while True:
            params: dict[str, Any] = {"limit": 1000}
            if cursor is not None:
                params["cursor"] = cursor
            page = httpx.get(f"{one.url}/channels/{room}/presence", params=params, headers=SERVER)
            body = page.json()
            seen.update(entry["client"] for entry in body["clients"])
            pages += 1
            cursor = body["next"]
            if cursor is None:
                break
        assert pages == 10 and len(seen) == 10_000
    finally:
        await backend.close()
