"""Control over connections and server-side subscriptions, on two real gateway processes sharing
a real Redis, with real clients (`websockets`, an SSE reader over httpx): disconnect a user,
unsubscribe a user, revoke a token, and a `user:<sub>` channel subscribed by the server that
resumes across a reconnect without loss or duplicate."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import jwt
import pytest
import redis
import websockets

from tests.support import (
    GatewayProcess,
    RedisServer,
    SSEEvent,
    async_wait_until,
    gateway_env,
    sse_events,
    ws_client,
    ws_recv,
    ws_send,
    ws_until,
)
from tests.test_metrics import sample

API_KEY = "k" * 32
SERVER = {"Authorization": f"Bearer {API_KEY}"}
HOLD = 3.0
"""Long enough for a test to publish and resume within it on a loaded machine."""


@pytest.fixture(scope="module")
def gateways(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    directory = tmp_path_factory.mktemp("control")
    env = gateway_env(
        REDIS_URL=redis_server.url,
        GATEWAY_API_KEYS=API_KEY,
        GATEWAY_SECRET="s" * 32,
        GATEWAY_SERVER_SUBSCRIPTION_HOLD=str(HOLD),
    )
    started = [GatewayProcess(env, directory / f"gateway-{n}.log") for n in range(2)]
    for process in started:
        process.start()
    yield started[0], started[1]
    for process in started:
        process.stop(5)


def mint(url: str, sub: str, **extra: Any) -> dict[str, Any]:
    body = {"sub": sub, "channels": {"room:*": ["subscribe", "publish"]}, **extra}
    response = httpx.post(f"{url}/tokens", json=body, headers=SERVER)
    assert response.status_code == 201, response.text
    grant: dict[str, Any] = response.json()
    return grant


def publish(url: str, channel: str, data: Any) -> str:
    response = httpx.post(
        f"{url}/channels/{channel}/events", json={"type": "note", "data": data}, headers=SERVER
    )
    assert response.status_code == 202, response.text
    event_id: str = response.json()["id"]
    return event_id


def control(url: str, path: str, body: Any) -> httpx.Response:
    return httpx.post(url + path, json=body, headers=SERVER, timeout=10)


async def subscribed(ws: Any, channel: str) -> None:
    await ws_send(ws, {"op": "subscribe", "channel": channel, "ref": channel})
    await ws_until(ws, lambda f: f.get("op") == "ack" and f.get("ref") == channel)


async def closed_with(ws: Any) -> tuple[int, str]:
    """Read until the gateway closes the connection; its close code and reason."""
    with pytest.raises(websockets.ConnectionClosed) as closed:
        for _ in range(100):
            await ws_recv(ws)
    assert closed.value.rcvd is not None, "closed without a close frame"
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def still_open(ws: Any) -> None:
    await ws_send(ws, {"op": "ping", "ref": "alive"})
    await ws_until(ws, lambda f: f.get("op") == "pong" and f.get("ref") == "alive")


class SSEStream:
    """An SSE connection read in the background: its messages, and whether it ended."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.events: list[SSEEvent] = []
        self.ended = asyncio.Event()
        self.opened = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=30)) as client:
                async for event in sse_events(client, self.url):
                    self.events.append(event)
        finally:
            self.ended.set()

    def kinds(self) -> list[str | None]:
        return [event.event for event in self.events]


@contextlib.asynccontextmanager
async def sse_stream(url: str) -> AsyncIterator[SSEStream]:
    stream = SSEStream(url)
    stream.task = asyncio.ensure_future(stream._read())
    try:
        yield stream
    finally:
        stream.task.cancel()
        await asyncio.gather(stream.task, return_exceptions=True)


async def first_event(stream: SSEStream, kind: str, timeout: float = 10.0) -> SSEEvent:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in stream.events:
            if event.event == kind:
                return event
        if stream.ended.is_set() and stream.task is not None and stream.task.done():
            stream.task.result()  # the reader's failure, if any
        await asyncio.sleep(0.01)
    raise TimeoutError(f"no {kind!r} message on {stream.url}; got {stream.kinds()}")


async def ended_for_good(stream: SSEStream, reason: str) -> None:
    """The stream's last message says 4001 (do not come back, an hour's `retry`), then it ends."""
    last = await first_event(stream, "disconnected")
    assert last.json() == {
        "type": "disconnected",
        "code": 4001,
        "reason": reason,
        "retry": 3_600_000,
    }
    await asyncio.wait_for(stream.ended.wait(), 10)
    assert stream.kinds()[-1] == "disconnected"


# --- disconnect --------------------------------------------------------------------------------


async def test_disconnect_closes_that_users_connections_on_both_gateways_only(
    gateways: tuple[GatewayProcess, GatewayProcess],
) -> None:
    one, two = gateways
    alice = mint(one.url, "alice")["token"]
    bob = mint(one.url, "bob")["token"]
    async with (
        ws_client(f"{one.ws_url}?token={alice}") as alice_one,
        ws_client(f"{two.ws_url}?token={alice}") as alice_two,
        ws_client(f"{one.ws_url}?token={bob}") as bob_one,
        sse_stream(f"{two.url}/events?channel=room:lobby&token={alice}") as alice_sse,
    ):
        for ws in (alice_one, alice_two, bob_one):
            await subscribed(ws, "room:lobby")
        publish(one.url, "room:lobby", "before")
        await first_event(alice_sse, "note")
        answer = control(one.url, "/users/alice/disconnect", {"reason": "session ended"})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {
            "user": "alice",
            "connections": 3,
            "gateways": 2,
            "complete": True,
        }
        assert await closed_with(alice_one) == (4001, "session ended")
        assert await closed_with(alice_two) == (4001, "session ended")
        await ended_for_good(alice_sse, "session ended")
        await still_open(bob_one)


async def test_disconnect_with_reconnect_closes_with_4002(
    gateways: tuple[GatewayProcess, GatewayProcess],
) -> None:
    one, two = gateways
    carl = mint(one.url, "carl")["token"]
    async with (
        ws_client(f"{two.ws_url}?token={carl}") as ws,
        sse_stream(f"{one.url}/events?channel=room:lobby&token={carl}") as sse,
    ):
        await subscribed(ws, "room:lobby")
        publish(one.url, "room:lobby", "x")
        await first_event(sse, "note")
        answer = control(
            two.url, "/users/carl/disconnect", {"reason": "new token", "reconnect": True}
        )
        assert answer.json()["connections"] == 2, answer.text
        assert await closed_with(ws) == (4002, "new token")
        event = await first_event(sse, "disconnected")
        assert event.json() == {"type": "disconnected", "code": 4002, "reason": "new token"}
    # Disconnecting does not refuse the token: the client may come back with it.
    async with ws_client(f"{one.ws_url}?token={carl}") as ws:
        await subscribed(ws, "room:lobby")


async def test_an_unknown_user_is_answered_with_no_connections(
    gateways: tuple[GatewayProcess, GatewayProcess],
) -> None:
    one, _ = gateways
    answer = control(one.url, "/users/nobody-here/disconnect", {})
    assert answer.status_code == 200
    assert answer.json() == {
        "user": "nobody-here",
        "connections": 0,
        "gateways": 2,
        "complete": True,
    }


# --- unsubscribe -------------------------------------------------------------------------------


async def test_unsubscribe_stops_the_channel_on_both_gateways(
    gateways: tuple[GatewayProcess, GatewayProcess],
) -> None:
    one, two = gateways
    dora = mint(one.url, "dora")["token"]
    erin = mint(one.url, "erin")["token"]
    streams = "channel=room:news&channel=room:other"
    async with (
        ws_client(f"{one.ws_url}?token={dora}") as dora_one,
        ws_client(f"{two.ws_url}?token={dora}") as dora_two,
        ws_client(f"{two.ws_url}?token={erin}") as erin_two,
        sse_stream(f"{one.url}/events?{streams}&token={dora}") as dora_sse,
    ):
        for ws in (dora_one, dora_two, erin_two):
            await subscribed(ws, "room:news")
            await subscribed(ws, "room:other")
        publish(one.url, "room:other", "before")
        await first_event(dora_sse, "note")
        answer = control(
            two.url, "/users/dora/unsubscribe", {"channel": "room:news", "reason": "muted"}
        )
        assert answer.json()["connections"] == 3, answer.text
        for ws in (dora_one, dora_two):
            frames = await ws_until(ws, lambda f: f.get("op") == "unsubscribed")
            assert frames[-1] == {"op": "unsubscribed", "channel": "room:news", "reason": "muted"}
        signal = await first_event(dora_sse, "unsubscribed")
        assert signal.json() == {"type": "unsubscribed", "channel": "room:news", "reason": "muted"}
        publish(one.url, "room:news", "after")
        marker = publish(one.url, "room:other", "marker")
        for ws in (dora_one, dora_two):
            frames = await ws_until(ws, lambda f: f.get("op") == "event")
            assert [f.get("channel") for f in frames] == ["room:other"]
            assert frames[-1]["id"] == marker
        frames = await ws_until(erin_two, lambda f: f.get("id") == marker)
        erin_saw = [f["data"] for f in frames if f.get("op") == "event"]
        assert erin_saw == ["before", "after", "marker"]

        def notes() -> list[Any]:
            return [e.json()["data"] for e in dora_sse.events if e.event == "note"]

        await async_wait_until(lambda: "marker" in notes(), 10, "the marker over SSE")
        assert notes() == ["before", "marker"]
        # The connections are open, and may subscribe again.
        await subscribed(dora_one, "room:news")


async def test_unsubscribe_ends_a_server_side_subscription(
    gateways: tuple[GatewayProcess, GatewayProcess],
) -> None:
    one, two = gateways
    token = mint(one.url, "ivy", subscriptions=["user:ivy", "room:ivy"])["token"]
    async with ws_client(f"{two.ws_url}?token={token}") as ws:
        for channel in ("user:ivy", "room:ivy"):
            assert await ws_recv(ws) == {"op": "subscribed", "channel": channel, "server": True}
        # Still held (no resume yet): the unsubscribe ends it all the same.
        answer = control(one.url, "/users/ivy/unsubscribe", {"channel": "user:ivy"})
        assert answer.json()["connections"] == 1, answer.text
        frames = await ws_until(ws, lambda f: f.get("op") == "unsubscribed")
        assert frames[-1] == {"op": "unsubscribed", "channel": "user:ivy", "reason": "unsubscribed"}
        publish(one.url, "user:ivy", "after")
        marker = publish(one.url, "room:ivy", "marker")
        frames = await ws_until(ws, lambda f: f.get("id") == marker, timeout=HOLD + 10)
        assert [f["channel"] for f in frames if f["op"] == "event"] == ["room:ivy"]


# --- server-side subscriptions -----------------------------------------------------------------


async def test_a_server_side_subscription_delivers_and_resumes_without_loss_or_duplicate(
    gateways: tuple[GatewayProcess, GatewayProcess],
) -> None:
    one, two = gateways
    token = mint(one.url, "fay", subscriptions=["user:fay"])["token"]
    first = publish(one.url, "user:fay", 0)
    async with ws_client(f"{one.ws_url}?token={token}") as ws:
        assert await ws_recv(ws) == {"op": "subscribed", "channel": "user:fay", "server": True}
        # Not resumed: after the hold, the retained history (as a plain subscribe), then live.
        frames = await ws_until(ws, lambda f: f.get("id") == first, timeout=HOLD + 10)
        assert [f["op"] for f in frames] == ["event"]
        live = publish(two.url, "user:fay", 1)
        frames = await ws_until(ws, lambda f: f.get("op") == "event")
        assert frames[-1]["id"] == live
    missed = [publish(one.url, "user:fay", n) for n in (2, 3, 4)]
    async with ws_client(f"{two.ws_url}?token={token}") as ws:
        assert await ws_recv(ws) == {"op": "subscribed", "channel": "user:fay", "server": True}
        during = publish(one.url, "user:fay", 5)  # while the subscription is held
        await ws_send(
            ws, {"op": "subscribe", "channel": "user:fay", "since": live, "ref": "resume"}
        )
        ack = await ws_recv(ws)
        assert ack == {
            "op": "ack",
            "ref": "resume",
            "channel": "user:fay",
            "recovered": True,
            "already": True,
        }
        after = publish(one.url, "user:fay", 6)
        frames = await ws_until(ws, lambda f: f.get("id") == after)
        assert [f["id"] for f in frames] == [*missed, during, after]
        assert [f["data"] for f in frames] == [2, 3, 4, 5, 6]
    # SSE: `/events` with the token alone carries its server-side subscriptions, and resumes.
    async with httpx.AsyncClient(timeout=10) as client:
        events = []
        async for event in sse_events(
            client, f"{one.url}/events?token={token}", {"Last-Event-ID": missed[1]}
        ):
            events.append(event)
            if event.id == after:
                break
    assert [e.id for e in events] == [missed[2], during, after]


async def test_a_server_side_channel_the_token_may_not_read_is_refused_alone(
    gateways: tuple[GatewayProcess, GatewayProcess],
) -> None:
    one, _ = gateways
    token = mint(one.url, "gus", subscriptions=["user:someone-else", "user:gus"])["token"]
    async with ws_client(f"{one.ws_url}?token={token}") as ws:
        refused = await ws_recv(ws)
        assert refused["op"] == "error" and refused["code"] == "forbidden"
        assert "user:someone-else" in refused["message"]
        assert await ws_recv(ws) == {"op": "subscribed", "channel": "user:gus", "server": True}
    response = httpx.get(f"{one.url}/events", params={"token": token})
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"


# --- revocation --------------------------------------------------------------------------------


async def test_a_revoked_token_is_refused_everywhere_and_its_connections_closed(
    gateways: tuple[GatewayProcess, GatewayProcess],
) -> None:
    one, two = gateways
    grant = mint(one.url, "hal")
    token, jti = grant["token"], grant["jti"]
    other = mint(one.url, "hal")["token"]  # the same user, another token: not revoked
    async with (
        ws_client(f"{one.ws_url}?token={token}") as ws,
        ws_client(f"{two.ws_url}?token={other}") as other_ws,
        sse_stream(f"{two.url}/events?channel=room:lobby&token={token}") as sse,
    ):
        await subscribed(ws, "room:lobby")
        await subscribed(other_ws, "room:lobby")
        publish(one.url, "room:lobby", "x")
        await first_event(sse, "note")
        answer = control(one.url, "/tokens/revoke", {"jti": jti, "exp": grant["expires_at"]})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {
            "jti": jti,
            "exp": grant["expires_at"],
            "connections": 2,
            "gateways": 2,
            "complete": True,
        }
        assert await closed_with(ws) == (4001, "token revoked")
        event = await first_event(sse, "disconnected")
        assert event.json()["code"] == 4001
        await still_open(other_ws)
    # Every gateway answered only once it held the revocation: refused at once, everywhere.
    for gateway in gateways:
        history = httpx.get(
            f"{gateway.url}/channels/room:lobby/events", params={"token": token}, timeout=10
        )
        assert history.status_code == 401
        assert history.json()["type"].endswith("/problems/token_revoked")
        stream = httpx.get(f"{gateway.url}/events?channel=room:lobby", params={"token": token})
        assert stream.status_code == 401
        async with ws_client(f"{gateway.ws_url}?token={token}") as ws:
            assert await closed_with(ws) == (4001, "token revoked")
        async with ws_client(gateway.ws_url) as ws:  # the token given with an op
            await ws_send(ws, {"op": "subscribe", "channel": "room:lobby", "token": token})
            refused = await ws_recv(ws)
            assert refused["op"] == "error" and refused["code"] == "token_revoked"
        publish_with_token = httpx.post(
            f"{gateway.url}/channels/room:lobby/events",
            json={"data": 1},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert publish_with_token.status_code == 401
    # The same user's other token still works.
    ok = httpx.get(f"{two.url}/channels/room:lobby/events", params={"token": other})
    assert ok.status_code == 200


@contextlib.contextmanager
def cut_off(gateway: GatewayProcess, redis_server: RedisServer) -> Iterator[None]:
    """The gateway frozen (SIGSTOP) and every pub/sub connection to Redis killed: no command
    sent meanwhile reaches it; once it runs again it finds its control connection gone,
    reconnects and rereads what was kept."""
    admin = redis.Redis.from_url(redis_server.url)
    gateway.signal(signal.SIGSTOP)
    try:
        admin.client_kill_filter(_type="pubsub")
        yield
    finally:
        gateway.signal(signal.SIGCONT)
        admin.close()


async def test_a_gateway_cut_off_during_commands_carries_them_out_once_back(
    gateways: tuple[GatewayProcess, GatewayProcess], redis_server: RedisServer
) -> None:
    """A revocation and a user disconnect sent while gateway two is cut off close what it
    holds once it is back, as the commands would have; a connection opened after the
    disconnect is left alone."""
    one, two = gateways
    grant = mint(one.url, "kim")
    token, jti = grant["token"], grant["jti"]
    other = mint(one.url, "kim")  # the same user, another token: not revoked (at first)
    lee = mint(one.url, "lee")["token"]
    async with (
        ws_client(f"{two.ws_url}?token={token}") as ws,
        ws_client(f"{two.ws_url}?token={other['token']}") as other_ws,
        ws_client(f"{two.ws_url}?token={lee}") as lee_ws,
        sse_stream(f"{two.url}/events?channel=room:lobby&token={token}") as sse,
    ):
        for each in (ws, other_ws, lee_ws):
            await subscribed(each, "room:lobby")
        publish(one.url, "room:lobby", "x")
        await first_event(sse, "note")
        with cut_off(two, redis_server):
            answer = control(one.url, "/tokens/revoke", {"jti": jti, "exp": grant["expires_at"]})
            assert answer.status_code == 200, answer.text
            assert answer.json()["connections"] == 0, answer.text  # two heard nothing
            answer = control(
                one.url, "/users/lee/disconnect", {"reason": "new token", "reconnect": True}
            )
            assert answer.json()["connections"] == 0, answer.text
        assert await asyncio.wait_for(closed_with(ws), 15) == (4001, "token revoked")
        await ended_for_good(sse, "token revoked")
        assert await asyncio.wait_for(closed_with(lee_ws), 15) == (4002, "new token")
        await still_open(other_ws)
        async with ws_client(f"{two.ws_url}?token={lee}") as lee_again:
            await subscribed(lee_again, "room:lobby")
            with cut_off(two, redis_server):
                revoked = control(one.url, "/tokens/revoke", {"jti": other["jti"]})
                assert revoked.json()["connections"] == 0, revoked.text
            # The reread after this cut closed the other token's connection, and did not
            # take lee's new connection for one the old disconnect missed.
            assert await asyncio.wait_for(closed_with(other_ws), 15) == (4001, "token revoked")
            await still_open(lee_again)
    # Gateway two hears commands again.
    await async_wait_until(
        lambda: control(one.url, "/users/nobody/disconnect", {}).json()["gateways"] == 2,
        what="gateway two back on the control channel",
    )


def subscriptions_on(gateway: GatewayProcess) -> float:
    return sample(httpx.get(f"{gateway.url}/metrics").text, "gateway_subscriptions")


def queued_job(url: str) -> tuple[str, str]:
    """A job that stays queued (these gateways run no worker): its id and its own token."""
    submitted = httpx.post(
        f"{url}/jobs", json={"type": "sleep", "data": {"seconds": 1}}, headers=SERVER
    )
    assert submitted.status_code == 202, submitted.text
    return submitted.json()["id"], submitted.json()["token"]


async def test_revoking_a_job_token_ends_its_job_stream_and_long_poll(
    gateways: tuple[GatewayProcess, GatewayProcess],
) -> None:
    """The job's own token (from `POST /jobs`) follows the job over SSE on one gateway and
    long-polls it on the other; the job never moves (no worker), so only the revocation can
    end either."""
    one, two = gateways
    job_id, token = queued_job(one.url)
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    await async_wait_until(lambda: subscriptions_on(one) == 0, what="gateway one idle")
    async with (
        httpx.AsyncClient(timeout=30) as http,
        sse_stream(f"{two.url}/jobs/{job_id}/events?token={token}") as sse,
    ):
        poll = asyncio.ensure_future(
            http.get(f"{one.url}/jobs/{job_id}", params={"wait": 60, "token": token})
        )
        await first_event(sse, "job.queued")
        await async_wait_until(lambda: subscriptions_on(one) == 1, what="the long poll held")
        answer = control(one.url, "/tokens/revoke", {"jti": jti})
        assert answer.status_code == 200, answer.text
        assert answer.json()["connections"] == 2, answer.text
        refused = await asyncio.wait_for(poll, 10)
        assert refused.status_code == 401, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["type"].endswith("/problems/token_revoked")
        await ended_for_good(sse, "token revoked")
    # A new long poll or stream with the token is refused before it is held.
    for gateway in gateways:
        again = httpx.get(f"{gateway.url}/jobs/{job_id}", params={"wait": 60, "token": token})
        assert again.status_code == 401
        stream = httpx.get(f"{gateway.url}/jobs/{job_id}/events", params={"token": token})
        assert stream.status_code == 401


async def test_disconnecting_a_user_answers_their_long_poll_at_once(
    gateways: tuple[GatewayProcess, GatewayProcess],
) -> None:
    """A long poll is one of the user's connections: the disconnect answers it with the job
    as it is (its token is not refused), long before its wait would run out."""
    one, _ = gateways
    job_id, _job_token = queued_job(one.url)
    token = mint(one.url, "ivy", channels={"job:*": ["subscribe"]})["token"]
    await async_wait_until(lambda: subscriptions_on(one) == 0, what="gateway one idle")
    async with httpx.AsyncClient(timeout=30) as http:
        poll = asyncio.ensure_future(
            http.get(f"{one.url}/jobs/{job_id}", params={"wait": 60, "token": token})
        )
        await async_wait_until(lambda: subscriptions_on(one) == 1, what="the long poll held")
        answer = control(one.url, "/users/ivy/disconnect", {"reason": "signed out"})
        assert answer.json()["connections"] == 1, answer.text
        answered = await asyncio.wait_for(poll, 10)
    assert answered.status_code == 200, answered.text
    assert answered.json()["status"] == "queued"


# --- hostile input and callers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/users/alice/disconnect", b"not json", 400),
        ("/users/alice/disconnect", b"[]", 400),
        ("/users/alice/disconnect", b'{"reconnect": "yes"}', 422),
        ("/users/alice/disconnect", b'{"reason": 5}', 422),
        ("/users/alice/disconnect", ('{"reason": "' + "é" * 61 + '"}').encode(), 422),
        ("/users/alice/unsubscribe", b"{}", 422),
        ("/users/alice/unsubscribe", b'{"channel": "no namespace"}', 422),
        ("/users/" + "x" * 201 + "/disconnect", b"{}", 400),
        ("/tokens/revoke", b'{"jti": ""}', 422),
        ("/tokens/revoke", b'{"jti": "a", "exp": "soon"}', 422),
        ("/tokens/revoke", b'{"jti": "a", "exp": 99999999999}', 422),
    ],
)
async def test_bad_bodies_get_problems(
    gateways: tuple[GatewayProcess, GatewayProcess], path: str, body: bytes, status: int
) -> None:
    one, _ = gateways
    response = httpx.post(
        one.url + path, content=body, headers={**SERVER, "Content-Type": "application/json"}
    )
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/users/alice/disconnect", {}),
        ("/users/alice/unsubscribe", {"channel": "room:lobby"}),
        ("/tokens/revoke", {"jti": "abc"}),
    ],
)
async def test_callers_without_an_api_key_are_refused(
    gateways: tuple[GatewayProcess, GatewayProcess], path: str, body: Any
) -> None:
    one, _ = gateways
    token = mint(one.url, "alice")["token"]
    for headers in ({}, {"Authorization": f"Bearer {token}"}, {"Authorization": "Bearer nope"}):
        response = httpx.post(one.url + path, json=body, headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["content-type"] == "application/problem+json"
