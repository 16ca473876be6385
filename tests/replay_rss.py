"""Gateway memory while clients that never read replay a room's history; a test helper and a
script, so the same measurement runs against any version of the gateway:

    python tests/replay_rss.py [--events 500] [--size 1000000] [--slow 6] [--env K=V ...]

It starts a private redis-server and `gateway serve` (whichever `gateway` package the current
directory and PYTHONPATH give), fills a room with `--events` events as large as the gateway
accepts (`--size` bytes of data, or the `max_event_size` its 413 names), opens `--slow` raw
WebSocket connections that subscribe and never read a byte, then a fast subscriber that must
get the room's whole retained history in order and then live events. It prints the gateway's
VmRSS before the slow clients and its peak (VmHWM, reset before they connect) after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

if __name__ == "__main__":  # run as a script: make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import GatewayProcess, RedisServer, gateway_env, ws_client, ws_send

CHANNEL = "room:big"
ENVELOPE_ROOM = 512
"""Bytes left for the envelope's other fields when filling an event up to the size limit."""
LIVE_EVENTS = 20


@dataclass
class Measurement:
    event_size: int
    probe_size: int
    probe_status: int
    retained: int
    retained_bytes: int
    rss_before_kb: int
    peak_kb: int
    rss_after_kb: int
    fast_ids: list[str]
    expected_ids: list[str]
    fast_error: str | None

    @property
    def growth_mb(self) -> float:
        return (self.peak_kb - self.rss_before_kb) / 1024

    def summary(self) -> str:
        return (
            f"history: {self.retained} events of {self.event_size} bytes of data "
            f"({self.retained_bytes / 1e6:.1f} MB); publishing {self.probe_size} bytes of data "
            f"got {self.probe_status}\n"
            f"gateway VmRSS before the slow clients: {self.rss_before_kb / 1024:.0f} MB; "
            f"peak after: {self.peak_kb / 1024:.0f} MB (+{self.growth_mb:.0f} MB); "
            f"VmRSS at the end: {self.rss_after_kb / 1024:.0f} MB\n"
            f"fast subscriber: {len(self.fast_ids)} events, "
            f"{'complete and in order' if self.fast_ids == self.expected_ids else 'WRONG'}"
            + (f" ({self.fast_error})" if self.fast_error else "")
        )


def proc_status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def reset_peak(pid: int) -> None:
    """Make VmHWM start again from the current RSS (Linux `clear_refs`, value 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def masked_text_frame(payload: bytes) -> bytes:
    """A client text frame with an all-zero mask (the payload goes as it is)."""
    size = len(payload)
    head = bytes((0x81, 0x80 | size)) if size < 126 else bytes((0x81, 0xFE)) + size.to_bytes(2)
    return head + b"\0\0\0\0" + payload


def never_reading_subscriber(port: int, channel: str) -> socket.socket:
    """Connect, upgrade, subscribe to `channel`, and never read a byte after the handshake."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Protocol: gateway.v1\r\n\r\n"
    )
    sock.settimeout(10)
    answer = b""
    while b"\r\n\r\n" not in answer:  # the 101 alone: nothing is sent before the subscribe
        chunk = sock.recv(1)
        assert chunk, "the gateway closed the connection during the handshake"
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 101"), answer
    op = orjson.dumps({"op": "subscribe", "channel": channel, "ref": 1})
    sock.sendall(masked_text_frame(op))
    return sock


def subscriptions(url: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("gateway_subscriptions "):
            return float(line.split()[-1])
    return 0.0


def fill(url: str, events: int, size: int) -> tuple[int, int]:
    """Publish `events` events as large as the gateway takes; (data size used, probe status)."""
    with httpx.Client(timeout=60) as client:
        probe = client.post(
            f"{url}/channels/{CHANNEL}/events", json={"data": {"n": -1, "pad": "x" * size}}
        )
        if probe.status_code == 413:
            size = int(probe.json()["max_event_size"]) - ENVELOPE_ROOM
        else:
            assert probe.status_code == 202, probe.text
        for n in range(events):
            response = client.post(
                f"{url}/channels/{CHANNEL}/events", json={"data": {"n": n, "pad": "x" * size}}
            )
            assert response.status_code == 202, response.text
    return size, probe.status_code


def retained_ids(url: str) -> tuple[list[str], int]:
    ids: list[str] = []
    total = 0
    since: str | None = None
    with httpx.Client(timeout=60) as client:
        while True:
            query = "limit=50" + (f"&since={since}" if since else "")
            page = client.get(f"{url}/channels/{CHANNEL}/events?{query}").json()
            ids += [event["id"] for event in page["events"]]
            total += sum(len(orjson.dumps(event)) for event in page["events"])
            if not page["more"]:
                return ids, total
            since = page["last_id"]


async def fast_subscriber(gateway: GatewayProcess, expected: int, ids: list[str]) -> None:
    """Subscribe, read `expected` replayed events, then live ones; their ids go to `ids`."""
    async with ws_client(gateway.ws_url, max_size=None) as ws:
        await ws_send(ws, {"op": "subscribe", "channel": CHANNEL, "ref": 1})
        while len(ids) < expected:
            frame = orjson.loads(await asyncio.wait_for(ws.recv(), 60))
            if frame["op"] == "event":
                ids.append(frame["id"])
            else:
                assert frame["op"] == "ack", frame
        async with httpx.AsyncClient() as client:
            for n in range(LIVE_EVENTS):
                response = await client.post(
                    f"{gateway.url}/channels/{CHANNEL}/events", json={"data": {"live": n}}
                )
                assert response.status_code == 202
        while len(ids) < expected + LIVE_EVENTS:
            frame = orjson.loads(await asyncio.wait_for(ws.recv(), 60))
            assert frame["op"] == "event", frame
            ids.append(frame["id"])


def wait_for_steady_rss(pid: int, timeout: float = 60.0) -> None:
    """Until VmRSS has stayed within 1 MB for 2 s (the gateway is done with the replays)."""
    deadline = time.monotonic() + timeout
    steady_since, level = time.monotonic(), proc_status_kb(pid, "VmRSS")
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = proc_status_kb(pid, "VmRSS")
        if abs(now - level) > 1024:
            steady_since, level = time.monotonic(), now
        elif time.monotonic() - steady_since >= 2.0:
            return
    raise TimeoutError(f"gateway RSS still changing after {timeout}s")


def measure(
    gateway: GatewayProcess, *, events: int = 500, size: int = 1_000_000, slow: int = 6
) -> Measurement:
    assert gateway.process is not None
    pid = gateway.process.pid
    event_size, probe_status = fill(gateway.url, events, size)
    expected, retained_bytes = retained_ids(gateway.url)
    rss_before = proc_status_kb(pid, "VmRSS")
    reset_peak(pid)
    sockets = [never_reading_subscriber(gateway.port, CHANNEL) for _ in range(slow)]
    try:
        deadline = time.monotonic() + 30
        while subscriptions(gateway.url) < slow:
            assert time.monotonic() < deadline, "the slow subscribers did not subscribe"
            time.sleep(0.05)
        fast_ids: list[str] = []
        fast_error = None
        try:
            asyncio.run(fast_subscriber(gateway, len(expected), fast_ids))
        except (AssertionError, OSError, TimeoutError) as exc:
            fast_error = f"{type(exc).__name__}: {exc}"[:200]
        wait_for_steady_rss(pid)
        peak, rss_after = proc_status_kb(pid, "VmHWM"), proc_status_kb(pid, "VmRSS")
        with httpx.Client(timeout=60) as client:
            live = client.get(f"{gateway.url}/channels/{CHANNEL}/events?since={expected[-1]}")
        live_ids = [event["id"] for event in live.json()["events"]]
    finally:
        for sock in sockets:
            sock.close()
    return Measurement(
        event_size,
        size,
        probe_status,
        len(expected),
        retained_bytes,
        rss_before,
        peak,
        rss_after,
        fast_ids,
        expected + live_ids,
        fast_error,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--size", type=int, default=1_000_000, help="data bytes to try first")
    parser.add_argument("--slow", type=int, default=6)
    parser.add_argument("--env", action="append", default=[], help="K=V for the gateway")
    args = parser.parse_args(argv)
    extra: dict[str, Any] = dict(item.split("=", 1) for item in args.env)
    with tempfile.TemporaryDirectory() as directory:
        redis = RedisServer(Path(directory))
        redis.start()
        gateway = GatewayProcess(
            gateway_env(REDIS_URL=redis.url, **extra), Path(directory) / "gateway.log"
        )
        try:
            gateway.start()
            print(f"gateway code: {os.getcwd()} (PYTHONPATH={os.environ.get('PYTHONPATH', '')})")
            print(measure(gateway, events=args.events, size=args.size, slow=args.slow).summary())
        finally:
            gateway.stop(5)
            redis.stop()


if __name__ == "__main__":
    main()
