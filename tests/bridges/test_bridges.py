"""`gateway bridge` against real brokers: events reach SSE and WebSocket clients through a real
gateway; a bridge SIGKILLed mid-stream and restarted leaves each message in the channel exactly
once, in order; a malformed message is reported, dead-lettered where the broker can, skipped."""

from __future__ import annotations

import asyncio
import signal
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from gateway.backends.redis_keys import stream_key
from tests.bridges.conftest import BrokerPool
from tests.bridges.feeds import FEEDS, Feed
from tests.support import (
    GatewayProcess,
    RedisServer,
    ServiceProcess,
    async_wait_until,
    collect_sse,
    free_port,
    gateway_env,
    wait_until,
    ws_client,
    ws_send,
    ws_until,
)

KINDS = ["rabbitmq", "mqtt", "nats", "postgres"]


def toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return orjson.dumps(value).decode()  # strings, numbers, booleans and lists read the same


def write_config(path: Path, redis_url: str, metrics_port: int, source: dict[str, Any]) -> Path:
    lines = [f"redis_url = {toml_value(redis_url)}", f"metrics_port = {metrics_port}", ""]
    lines.append("[[sources]]")
    for key, value in source.items():
        if key != "routes":
            lines.append(f"{key} = {toml_value(value)}")
    for route in source["routes"]:
        lines += ["", "[[sources.routes]]", *(f"{k} = {toml_value(v)}" for k, v in route.items())]
    path.write_text("\n".join(lines) + "\n")
    tomllib.loads(path.read_text())  # what the bridge will read
    return path


class Bridge(ServiceProcess):
    def __init__(self, config: Path, redis_url: str, log: Path, metrics_port: int) -> None:
        env = gateway_env(REDIS_URL=redis_url, GATEWAY_HISTORY_SIZE="5000")
        super().__init__(["bridge", "--config", str(config)], env, log)
        self.metrics_port = metrics_port

    def start_connected(self) -> None:
        """Start, and return once the source is connected (its queue/session/consumer exist)."""
        seen = self.output().count("connected")
        self.start()

        def connected() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"the bridge exited:\n{self.output()}")
            return self.output().count("connected") > seen

        wait_until(connected, 30, "the bridge to connect")

    def metric(self, name: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics").text
        for line in text.splitlines():
            if line.startswith(f"gateway_bridge_{name}_total{{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


@pytest.fixture(params=KINDS)
def feed(request: pytest.FixtureRequest, brokers: BrokerPool) -> Feed:
    broker = brokers.get(request.param)
    return FEEDS[request.param](broker.url)  # type: ignore[attr-defined]


@pytest.fixture
def bridges(tmp_path: Path, redis_server: RedisServer) -> Iterator[Any]:
    started: list[Bridge] = []

    def start(feed: Feed, routes: list[dict[str, Any]]) -> Bridge:
        source = feed.source("src", [route["match"] for route in routes]) | {"routes": routes}
        port = free_port()
        config = write_config(tmp_path / "bridge.toml", redis_server.url, port, source)
        bridge = Bridge(config, redis_server.url, tmp_path / "bridge.log", port)
        started.append(bridge)
        return bridge

    yield start
    for bridge in started:
        bridge.stop(5)


def channel_events(redis_url: str, channel: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(redis_url)
    try:
        entries = client.xrange(stream_key(channel))
    finally:
        client.close()
    return [orjson.loads(b"{" + fields[b"e"]) for _id, fields in entries]


async def test_events_reach_sse_and_websocket_clients(
    feed: Feed, bridges: Any, bridge_gateway: GatewayProcess
) -> None:
    routes = [
        {"match": feed.pattern("orders", "*", "*"), "channel": "order:{1}", "type": "order.{2}"},
        {"match": feed.pattern("notes", "*"), "channel": "note:{1}", "format": "text"},
    ]
    await feed.prepare([route["match"] for route in routes])
    bridge = bridges(feed, routes)
    bridge.start_connected()
    order = f"order:{feed.tag}"
    sse = asyncio.create_task(
        collect_sse(
            # From the start of the history: whenever the stream subscribes, it misses nothing.
            f"{bridge_gateway.url}/events?channel={order}&channel=note:{feed.tag}&since=0-0",
            until=lambda e: e.event == "message",
        )
    )
    async with ws_client(bridge_gateway.ws_url) as ws:
        await ws_send(ws, {"op": "subscribe", "channel": order, "ref": 1})
        await ws_until(ws, lambda f: f.get("ref") == 1)
        await feed.send(
            [
                (feed.topic("orders", feed.tag, "paid"), b'{"total": 42}', "m1"),
                (feed.topic("orders", feed.tag, "shipped"), b'{"carrier": "x"}', "m2"),
                (feed.topic("notes", feed.tag), "plain text ✓".encode(), "m3"),
            ]
        )
        frames = await ws_until(ws, lambda f: f.get("type") == "order.shipped")
    events = [f for f in frames if f.get("op") == "event"]
    assert [(e["type"], e["data"]) for e in events] == [
        ("order.paid", {"total": 42}),
        ("order.shipped", {"carrier": "x"}),
    ]
    received = [
        e.json() for e in await sse if e.event in {"order.paid", "order.shipped", "message"}
    ]
    assert [(e["type"], e["data"]) for e in received if e["channel"] == order] == [
        ("order.paid", {"total": 42}),
        ("order.shipped", {"carrier": "x"}),
    ]
    assert [(e["type"], e["data"]) for e in received if e["channel"] != order] == [
        ("message", "plain text ✓")
    ]
    await async_wait_until(lambda: bridge.metric("published") == 3, what="published == 3")
    assert bridge.metric("consumed") == 3


def channel_length(redis_url: str, channel: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.xlen(stream_key(channel)))
    finally:
        client.close()


MESSAGES = 1000


async def test_a_bridge_killed_mid_stream_and_restarted_publishes_each_message_once_in_order(
    feed: Feed, bridges: Any, redis_server: RedisServer
) -> None:
    routes = [{"match": feed.pattern("seq", "*"), "channel": "order:{1}", "type": "tick"}]
    await feed.prepare([routes[0]["match"]])
    bridge = bridges(feed, routes)
    bridge.start_connected()
    channel = f"order:{feed.tag}"
    topic = feed.topic("seq", feed.tag)
    sending = asyncio.create_task(
        feed.send([(topic, orjson.dumps({"n": n}), f"n-{n}") for n in range(MESSAGES)])
    )
    await async_wait_until(
        lambda: channel_length(redis_server.url, channel) >= 50, 30, "the first events"
    )
    assert bridge.process is not None
    bridge.process.send_signal(signal.SIGKILL)
    bridge.process.wait(10)
    at_kill = channel_length(redis_server.url, channel)
    await sending  # the rest waits in the broker (an MQTT session, a queue, a stream, a table)
    assert at_kill < MESSAGES, "the bridge finished before it was killed: nothing was tested"

    bridge.start_connected()
    await async_wait_until(
        lambda: channel_length(redis_server.url, channel) >= MESSAGES, 60, "all the events"
    )
    # The restarted bridge published exactly what was missing (its counter moves just after
    # the event is in Redis); any redelivered message already published was dropped.
    await async_wait_until(
        lambda: bridge.metric("published") >= MESSAGES - at_kill, 10, "the published count"
    )
    assert bridge.metric("published") == MESSAGES - at_kill
    numbers = [event["data"]["n"] for event in channel_events(redis_server.url, channel)]
    assert numbers == list(range(MESSAGES))


async def test_a_malformed_message_is_reported_and_skipped(
    feed: Feed, bridges: Any, redis_server: RedisServer
) -> None:
    routes = [{"match": feed.pattern("bad", "*"), "channel": "order:{1}", "type": "m"}]
    await feed.prepare([routes[0]["match"]])
    bridge = bridges(feed, routes)
    bridge.start_connected()
    channel = f"order:bad{feed.tag}"
    topic = feed.topic("bad", f"bad{feed.tag}")
    await feed.send(
        [(topic, b'{"n": 1}', "a"), (topic, b"{not json", "b"), (topic, b'{"n": 2}', "c")]
    )
    await async_wait_until(lambda: channel_length(redis_server.url, channel) >= 2, 20, "events")
    await async_wait_until(lambda: bridge.metric("malformed") == 1, 10, "malformed == 1")
    assert [e["data"] for e in channel_events(redis_server.url, channel)] == [{"n": 1}, {"n": 2}]
    assert "malformed message " in bridge.output()
    assert "the body is not JSON" in bridge.output()
    assert bridge.metric("reconnects") == 0  # reported and skipped: no crash, no reconnect
    dead = await feed.dead_letters()
    if dead is not None:
        while not dead:  # RabbitMQ routes a rejected message to the dead-letter queue async
            await asyncio.sleep(0.05)
            dead = await feed.dead_letters()
        assert dead == [b"{not json"]


async def test_a_bridge_publishes_into_a_redis_cluster(
    brokers: BrokerPool,
    redis_cluster_url: str,
    gateway_factory: Callable[..., GatewayProcess],
    tmp_path: Path,
) -> None:
    """`redis_url = "redis+cluster://..."`: the bridge opens the client `gateway serve` opens
    for that URL, and a gateway on the cluster delivers its events live (the subscription is
    made before they are sent, on a channel with no history), each message once."""
    feed = FEEDS["mqtt"](brokers.get("mqtt").url)  # type: ignore[attr-defined]
    gateway = gateway_factory(REDIS_URL=redis_cluster_url, GATEWAY_CHANNEL_POLICY="order=open/none")
    route = {"match": feed.pattern("orders", "*", "*"), "channel": "order:{1}", "type": "o.{2}"}
    source = feed.source("src", [route["match"]]) | {"routes": [route]}
    port = free_port()
    config = write_config(tmp_path / "bridge.toml", redis_cluster_url, port, source)
    bridge = Bridge(config, redis_cluster_url, tmp_path / "bridge.log", port)
    channel = f"order:{feed.tag}"
    try:
        bridge.start_connected()
        async with ws_client(gateway.ws_url) as ws:
            await ws_send(ws, {"op": "subscribe", "channel": channel, "ref": 1})
            await ws_until(ws, lambda f: f.get("ref") == 1)
            paid = feed.topic("orders", feed.tag, "paid")
            await feed.send(
                [
                    (paid, b'{"total": 42}', "m1"),
                    (paid, b'{"total": 42}', "m1"),  # redelivered: dropped
                    (feed.topic("orders", feed.tag, "shipped"), b'{"carrier": "x"}', "m2"),
                ]
            )
            frames = await ws_until(ws, lambda f: f.get("type") == "o.shipped")
        live = [(f["type"], f["data"]) for f in frames if f.get("op") == "event"]
        assert live == [("o.paid", {"total": 42}), ("o.shipped", {"carrier": "x"})]
        await async_wait_until(lambda: bridge.metric("duplicates") == 1, what="duplicates == 1")
        history = httpx.get(f"{gateway.url}/channels/{channel}/events").json()
        assert [event["type"] for event in history["events"]] == ["o.paid", "o.shipped"]
    finally:
        bridge.stop(5)
