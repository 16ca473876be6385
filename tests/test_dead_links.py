"""A link that dies silently (no FIN, no RST) is noticed within 10 s: `gateway follow`.

The CLI follows a channel through `BlackholeProxy`; the proxy then stops forwarding without
closing anything. At default settings the CLI must notice within 10 s, say so, reconnect through
the proxy with `Last-Event-ID` and go on without losing or repeating an event. (gateway.js and a
native EventSource: tests/browser/test_dead_links.py.)
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import orjson
import pytest

from gateway.publish import publish
from tests.blackhole import BlackholeProxy
from tests.support import GatewayProcess, gateway_env
from tests.test_client import LineReader

pytestmark = pytest.mark.serial  # measures latency under load: alone under xdist

DETECTION_LIMIT = 10.0


@pytest.fixture
def follower() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "follow", *args],
            env=gateway_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
        process.wait(10)


def test_gateway_follow_notices_a_silently_dead_link_within_10s(
    gateway_factory: Callable[..., GatewayProcess],
    follower: Callable[..., subprocess.Popen[str]],
) -> None:
    gateway = gateway_factory()  # default settings: GATEWAY_SSE_PING, CLI heartbeat
    channel = "room:dead-link-cli"

    def send(n: int) -> str:
        return publish(channel, "message", {"n": n}, url=gateway.url, redis_url="")

    with BlackholeProxy(gateway.port) as proxy:
        process = follower(channel, "--url", proxy.url)
        assert process.stdout is not None and process.stderr is not None
        stdout, stderr = LineReader(process.stdout), LineReader(process.stderr)
        sent = [send(0)]
        assert orjson.loads(stdout.next(timeout=15))["id"] == sent[0]

        assert proxy.blackhole() == 1
        died = time.monotonic()
        stderr.until(lambda line: "connection lost" in line, timeout=DETECTION_LIMIT + 5)
        detected = time.monotonic() - died
        print(f"gateway follow noticed the dead link after {detected:.1f} s")
        assert detected < DETECTION_LIMIT

        sent.append(send(1))
        received = orjson.loads(stdout.next(timeout=15))
        assert received["id"] == sent[1], "resumed through a new connection, nothing repeated"
        assert proxy.accepted == 2
