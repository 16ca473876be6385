"""`gateway.client.Client` against real gateways: jobs, publishing, refusals, slow consumers.

One embedded gateway (memory backend, its own worker) in open dev mode, and one with API keys
and a token secret, for the module.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from gateway.client import (
    Client,
    Event,
    GatewayUnavailable,
    Item,
    NotFound,
    RequestForbidden,
    RequestInvalid,
    RequestRateLimited,
    Subscription,
)
from tests.support import GatewayProcess, async_wait_until, free_port, gateway_env

TIMEOUT = 20.0
API_KEY = "k" * 24
SECRET = "s" * 40


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("client-open")
    env = gateway_env(GATEWAY_MAX_ATTEMPTS="1", GATEWAY_RETENTION="room=5/3600")
    process = GatewayProcess(env, directory / "gateway.log")
    process.start()
    yield process
    process.stop(5)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("client-secured")
    env = gateway_env(
        GATEWAY_API_KEYS=API_KEY,
        GATEWAY_SECRET=SECRET,
        GATEWAY_PUBLISH_RATE="1",
        GATEWAY_PUBLISH_BURST="2",
    )
    process = GatewayProcess(env, directory / "gateway.log")
    process.start()
    yield process
    process.stop(5)


async def collect(items: AsyncIterator[Item]) -> list[Item]:
    async def run() -> list[Item]:
        return [item async for item in items]

    return await asyncio.wait_for(run(), TIMEOUT)


async def next_event(subscription: Subscription) -> Event:
    item = await asyncio.wait_for(anext(subscription), TIMEOUT)
    assert isinstance(item, Event), item
    return item


def events(items: list[Item]) -> list[Event]:
    assert all(isinstance(item, Event) for item in items), items
    return [item for item in items if isinstance(item, Event)]


def types(items: list[Item]) -> list[str]:
    return [event.type for event in events(items)]


async def test_follow_ends_at_the_terminal_event(gateway: GatewayProcess) -> None:
    async with Client(gateway.url) as gw:
        job = await gw.submit("sleep", {"seconds": 0.2, "steps": 2})
        assert job.status == "queued" and job.token
        items = await collect(gw.follow(job))
        assert types(items) == [
            "job.queued",
            "job.started",
            "job.progress",
            "job.progress",
            "job.completed",
        ]
        assert events(items)[-1].data["result"] == {"slept": 0.2, "steps": 2}
        failed = await gw.submit("fail", {"message": "out of cheese"})
        assert types(await collect(gw.follow(failed.id)))[-1] == "job.failed"
        assert gw.connections == 1, "both follows on the one connection"


async def test_follow_of_a_job_that_had_ended_at_since_ends_at_once(
    gateway: GatewayProcess,
) -> None:
    async with Client(gateway.url) as gw:
        job = await gw.submit("sleep", {"seconds": 0, "steps": 1})
        ids = [event.id for event in events(await collect(gw.follow(job)))]
        assert await collect(gw.follow(job, since=ids[-1])) == []
        assert types(await collect(gw.follow(job.id, since=ids[-2]))) == ["job.completed"]


async def test_publish_returns_the_id_the_subscriber_sees(gateway: GatewayProcess) -> None:
    async with Client(gateway.url) as gw:
        sub = gw.subscribe("room:client-publish")
        await asyncio.wait_for(sub.subscribed(), TIMEOUT)
        sent = await gw.publish("room:client-publish", "message", {"text": "hi"})
        event = await next_event(sub)
        assert (event.id, event.type, event.data) == (sent, "message", {"text": "hi"})


async def test_a_consumer_that_falls_behind_pauses_its_channel_and_loses_nothing(
    gateway: GatewayProcess,
) -> None:
    """The buffer holds 4; 30 events arrive while nobody reads. The subscription pauses the
    channel and subscribes again from its position as it drains, so every event comes once, in
    order, and the other channel on the same connection is not held up meanwhile. Room history
    keeps 5 events here, so the refill is paged in small steps, never a gap: what was skipped
    past the buffer is re-read while still in history (published before the next read)."""
    channel, other = "room:client-slow", "room:client-slow-other"
    async with Client(gateway.url, buffer=4) as gw:
        slow, fast = gw.subscribe(channel), gw.subscribe(other)
        await asyncio.wait_for(asyncio.gather(slow.subscribed(), fast.subscribed()), TIMEOUT)
        sent = [await gw.publish(channel, "tick", {"n": n}) for n in range(5)]
        await async_wait_until(lambda: slow.paused, TIMEOUT, "the slow channel paused")
        beside = await gw.publish(other, "tick", {})
        assert (await next_event(fast)).id == beside
        received = [await next_event(slow) for _ in range(5)]
        assert [event.id for event in received] == sent
        assert gw.connections == 1


async def test_refusals_map_to_the_documented_exceptions(gateway: GatewayProcess) -> None:
    async with Client(gateway.url) as gw:
        with pytest.raises(RequestInvalid) as invalid:
            await gw.submit("no-such-type", {})
        assert invalid.value.status == 422 and "unknown job type" in str(invalid.value)
        with pytest.raises(RequestInvalid) as bad_channel:
            await gw.publish("no-namespace", "message", {})
        assert bad_channel.value.status == 400
        with pytest.raises(NotFound):
            await gw.job("no-such-job")
        with pytest.raises(NotFound):
            await collect(gw.follow("no-such-job"))
        with pytest.raises(RequestInvalid) as twice:
            gw.subscribe("room:client-twice")
            gw.subscribe("room:client-twice")
        assert twice.value.code == "already_subscribed"
    async with Client(f"http://127.0.0.1:{free_port()}") as nowhere:
        with pytest.raises(GatewayUnavailable, match="cannot reach"):
            await nowhere.publish("room:lobby", "message", {})


async def test_refusals_of_a_secured_gateway(secured: GatewayProcess) -> None:
    async with Client(secured.url) as anonymous:
        with pytest.raises(RequestForbidden) as no_key:
            await anonymous.submit("sleep", {})
        assert no_key.value.status == 401
        with pytest.raises(RequestForbidden) as no_token:
            await collect(anonymous.subscribe("room:lobby"))
        assert no_token.value.code == "token_required" and no_token.value.status is None
        with pytest.raises(RequestForbidden):
            await anonymous.publish("room:lobby", "message", {})
    async with Client(secured.url, api_key=API_KEY) as server:
        job = await server.submit("sleep", {"seconds": 0, "steps": 1})
        token = await _mint(server, "room:client-rate")
    # Only the job's token: `follow` subscribes with it.
    async with Client(secured.url) as browser_like:
        assert types(await collect(browser_like.follow(job)))[-1] == "job.completed"
    async with Client(secured.url, token=token) as limited:
        with pytest.raises(RequestRateLimited) as limit:
            for _ in range(5):
                await limited.publish("room:client-rate", "message", {})
        assert limit.value.retry_after > 0 and limit.value.status == 429


async def _mint(client: Client, channel: str) -> str:
    import httpx

    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        response = await http.post(
            f"{client.url}/tokens", json={"sub": "tester", "channels": {channel: ["publish"]}}
        )
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token
