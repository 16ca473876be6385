"""`python -m bench bridge`: events/s that one `gateway bridge` source publishes into a channel.

For each kind: a private Redis and the broker (the same processes the tests start, on free
ports in a temporary directory), a bridge started once so its queue/session/consumer/table
exists, then stopped; N messages published into the broker; the bridge started again, and the
rate measured from its first event in the channel to its N-th (a backlog drained, so the number
is the bridge's, not the publisher's). Each message is a small JSON object with an id.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
import tempfile
import time
from pathlib import Path

import orjson
import redis

from gateway.backends.redis_keys import stream_key
from tests.bridges.conftest import BROKERS
from tests.bridges.feeds import FEEDS, wait_for_postgres
from tests.bridges.test_bridges import Bridge, write_config
from tests.support import RedisServer, free_port


def measure(kind: str, count: int, prefetch: int, directory: Path) -> dict[str, object]:
    missing = BROKERS[kind].missing()
    if missing is not None:
        return {"kind": kind, "skipped": missing}
    redis_server = RedisServer(directory / "redis")
    (directory / "redis").mkdir()
    redis_server.start()
    broker = BROKERS[kind](directory)
    broker.start()
    try:
        url = broker.url  # type: ignore[attr-defined]
        if kind == "postgres":
            asyncio.run(wait_for_postgres(url))
        feed = FEEDS[kind](url)
        route = {"match": feed.pattern("bench", "*"), "channel": "bench:{1}", "type": "tick"}
        source = feed.source("bench", [route["match"]]) | {"prefetch": prefetch, "routes": [route]}
        port = free_port()
        config = write_config(directory / f"{kind}.toml", redis_server.url, port, source)
        bridge = Bridge(config, redis_server.url, directory / f"{kind}.log", port)
        asyncio.run(feed.prepare([route["match"]]))
        bridge.start_connected()
        bridge.stop()
        topic = feed.topic("bench", "one")
        started = time.monotonic()
        asyncio.run(
            feed.send(
                [(topic, orjson.dumps({"n": n, "at": "x" * 40}), f"m{n}") for n in range(count)]
            )
        )
        sent_s = time.monotonic() - started
        client = redis.Redis.from_url(redis_server.url)
        key = stream_key("bench:one")
        bridge.start()
        first = last = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            length = client.xlen(key)
            now = time.monotonic()
            if first is None and length > 0:
                first = (now, length)
            if length >= count:
                last = (now, length)
                break
            time.sleep(0.005)
        bridge.stop()
        client.close()
        if first is None or last is None:
            return {"kind": kind, "error": f"timed out; see {directory}/{kind}.log"}
        rate = (last[1] - first[1]) / (last[0] - first[0])
        return {
            "kind": kind,
            "messages": count,
            "prefetch": prefetch,
            "events_per_s": round(rate),
            "publisher_msgs_per_s": round(count / sent_s),
        }
    finally:
        broker.stop()
        redis_server.stop()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench bridge", description=__doc__)
    parser.add_argument("--kind", default="all", choices=[*BROKERS, "all"])
    parser.add_argument("-n", type=int, default=10_000, help="messages per source")
    parser.add_argument("--prefetch", type=int, default=100)
    a = parser.parse_args(argv)
    kinds = list(BROKERS) if a.kind == "all" else [a.kind]
    print(
        f"python -m bench bridge {' '.join(argv)} · {platform.platform()} · "
        f"Python {platform.python_version()}"
    )
    print(
        f"{'source':<10} {'messages':>8} {'prefetch':>8} {'events/s':>9} {'(publisher msgs/s)':>19}"
    )
    for kind in kinds:
        with tempfile.TemporaryDirectory(prefix=f"bench-bridge-{kind}-") as tmp:
            result = measure(kind, a.n, a.prefetch, Path(tmp))
        if "events_per_s" in result:
            print(
                f"{kind:<10} {result['messages']:>8} {result['prefetch']:>8} "
                f"{result['events_per_s']:>9} {result['publisher_msgs_per_s']:>19}"
            )
        else:
            print(f"{kind:<10} {result.get('skipped') or result.get('error')}")
        sys.stdout.flush()
