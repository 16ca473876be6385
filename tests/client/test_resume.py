"""`gateway.client` against gateways that restart and links that die: real processes, real Redis.

Events are published straight to Redis (`gateway.publish` with `redis_url`), so they keep
coming while no gateway is up; the client must then deliver every one of them once, in order,
from the gateway that comes back on the same port. Starting and stopping processes blocks, so it
runs on a thread: the client's event loop must stay free to hear the gateway's `shutdown`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from gateway.client import Client, ConnectionStatus, Event, Gap, Item, Subscription
from gateway.publish import publish
from tests.blackhole import BlackholeProxy
from tests.support import GatewayProcess, async_wait_until, free_port

TIMEOUT = 20.0


async def take(subscription: Subscription, count: int) -> list[Item]:
    """The next `count` items, each within the timeout."""
    items: list[Item] = []
    for _ in range(count):
        items.append(await asyncio.wait_for(anext(subscription), TIMEOUT))
    return items


def ids(items: list[Item]) -> list[str]:
    return [item.id for item in items if isinstance(item, Event)]


async def test_subscriptions_resume_across_sigterm_and_sigkill_restarts_without_loss_or_repeats(
    redis_url: str, gateway_factory: Callable[..., GatewayProcess]
) -> None:
    port = free_port()
    gateway = gateway_factory(REDIS_URL=redis_url, port=port)
    channels = ("room:resume-a", "room:resume-b")
    sent: dict[str, list[str]] = {channel: [] for channel in channels}

    def send(n: int) -> None:
        for channel in channels:
            sent[channel].append(publish(channel, "tick", {"n": n}, redis_url=redis_url))

    statuses: list[ConnectionStatus] = []
    async with Client(gateway.url, on_status=statuses.append) as gw:
        subs = [gw.subscribe(channel) for channel in channels]
        for sub in subs:
            await asyncio.wait_for(sub.subscribed(), TIMEOUT)
        send(0)
        received = {sub.channel: await take(sub, 1) for sub in subs}
        for graceful in (True, False):  # SIGTERM (drains: a shutdown frame), then SIGKILL
            await asyncio.to_thread(gateway.stop if graceful else gateway.kill)
            for n in range(3):
                send(len(sent[channels[0]]) + n)  # while no gateway is up
            gateway = await asyncio.to_thread(gateway_factory, REDIS_URL=redis_url, port=port)
            send(len(sent[channels[0]]))
            for sub in subs:
                missing = len(sent[sub.channel]) - len(received[sub.channel])
                received[sub.channel] += await take(sub, missing)

        for sub in subs:
            assert ids(received[sub.channel]) == sent[sub.channel]
            with pytest.raises(TimeoutError):  # nothing repeated after the last one
                await asyncio.wait_for(anext(sub), 0.3)
        assert gw.connections == 3, "both subscriptions share one connection"
        reasons = [status for status in statuses if status.state == "reconnecting"]
        assert reasons[0].restarting, "SIGTERM: the gateway announced its shutdown"
        assert not reasons[-1].restarting, "SIGKILL: the connection just dropped"


async def test_a_gap_is_reported_when_history_was_trimmed_while_disconnected(
    redis_url: str,
    gateway_factory: Callable[..., GatewayProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis trims `MAXLEN ~ 5` by whole stream nodes (100 entries), so 350 events while down
    leave a suffix of them: the client says so with a `Gap`, then delivers that suffix."""
    env = {"REDIS_URL": redis_url, "GATEWAY_RETENTION": "room=5/3600"}
    monkeypatch.setenv("GATEWAY_RETENTION", env["GATEWAY_RETENTION"])  # for `publish` here
    port = free_port()
    gateway = gateway_factory(port=port, **env)
    channel = "room:resume-gap"
    async with Client(gateway.url) as gw:
        sub = gw.subscribe(channel)
        await asyncio.wait_for(sub.subscribed(), TIMEOUT)
        first = publish(channel, "tick", {"n": 0}, redis_url=redis_url)
        assert ids(await take(sub, 1)) == [first]
        await asyncio.to_thread(gateway.stop)
        sent = [publish(channel, "tick", {"n": n}, redis_url=redis_url) for n in range(1, 351)]
        await asyncio.to_thread(gateway_factory, port=port, **env)

        gap = await asyncio.wait_for(anext(sub), TIMEOUT)
        assert gap == Gap(channel, first)
        rest: list[Item] = []
        while not rest or ids(rest)[-1] != sent[-1]:
            rest += await take(sub, 1)
        kept = ids(rest)
        assert len(kept) == len(rest), "nothing but events after the gap"
        assert 5 <= len(kept) < len(sent) and kept == sent[-len(kept) :]


async def test_a_silently_dead_link_is_noticed_and_replaced(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gateway = gateway_factory()
    channel = "room:resume-dead-link"

    def send(n: int) -> str:
        return publish(channel, "tick", {"n": n}, url=gateway.url, redis_url="")

    statuses: list[ConnectionStatus] = []
    with BlackholeProxy(gateway.port) as proxy:
        async with Client(proxy.url, heartbeat=1, on_status=statuses.append) as gw:
            sub = gw.subscribe(channel)
            await asyncio.wait_for(sub.subscribed(), TIMEOUT)
            sent = [send(0)]
            assert ids(await take(sub, 1)) == sent

            assert proxy.blackhole() == 1
            await async_wait_until(
                lambda: any(status.state == "reconnecting" for status in statuses),
                TIMEOUT,
                "the dead link noticed",
            )
            lost = next(status for status in statuses if status.state == "reconnecting")
            assert "dead link" in lost.reason
            sent.append(send(1))
            assert ids(await take(sub, 1)) == sent[1:], "resumed on a new connection"
            assert proxy.accepted == 2 and gw.connections == 2


async def test_a_gateway_that_is_down_at_first_is_waited_for(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    port = free_port()
    async with Client(f"http://127.0.0.1:{port}") as gw:
        sub = gw.subscribe("room:resume-late")
        await async_wait_until(lambda: gw.status.state == "reconnecting", TIMEOUT, "a retry")
        gateway = await asyncio.to_thread(gateway_factory, port=port)
        sent = publish("room:resume-late", "tick", {}, url=gateway.url, redis_url="")
        assert ids(await take(sub, 1)) == [sent]
