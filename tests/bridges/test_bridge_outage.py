"""Redis lost under a running bridge: nothing is acknowledged until it is back, the source
reconnects with backoff, and every message reaches the channel once Redis returns."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.bridges.conftest import BrokerPool
from tests.bridges.feeds import FEEDS
from tests.bridges.test_bridges import Bridge, channel_events, write_config
from tests.support import RedisServer, async_wait_until, free_port


async def test_a_redis_outage_loses_nothing_and_the_source_reconnects(
    tmp_path: Path, brokers: BrokerPool, redis_server: RedisServer
) -> None:
    feed = FEEDS["mqtt"](brokers.get("mqtt").url)  # type: ignore[attr-defined]
    route = {"match": feed.pattern("out", "*"), "channel": "order:{1}", "type": "t"}
    port = free_port()
    source = feed.source("src", [route["match"]]) | {"routes": [route]}
    config = write_config(tmp_path / "bridge.toml", redis_server.url, port, source)
    bridge = Bridge(config, redis_server.url, tmp_path / "bridge.log", port)
    bridge.start_connected()
    try:
        topic, channel = feed.topic("out", feed.tag), f"order:{feed.tag}"
        await feed.send([(topic, orjson.dumps({"n": 0}), "n0")])
        await async_wait_until(lambda: len(channel_events(redis_server.url, channel)) == 1)
        redis_server.kill()
        await feed.send([(topic, orjson.dumps({"n": n}), f"n{n}") for n in range(1, 6)])
        await async_wait_until(lambda: bridge.metric("reconnects") >= 1, 20, "a reconnect")
        redis_server.start()  # empty: no persistence; what matters is what arrives now
        await async_wait_until(
            lambda: len(channel_events(redis_server.url, channel)) == 5, 30, "the held messages"
        )
        assert [e["data"]["n"] for e in channel_events(redis_server.url, channel)] == [
            1,
            2,
            3,
            4,
            5,
        ]
        assert "reconnecting in" in bridge.output()
    finally:
        bridge.stop(5)
        if redis_server.process is None:
            pytest.fail("redis-server was left stopped")
