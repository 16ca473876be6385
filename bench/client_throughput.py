"""How many events a second one Python client can take in: `gateway.client` vs the old SSE client.

    python bench/client_throughput.py --events 50000 [--rounds 3] [--old-rev 3f88aad]

Starts a private redis-server and one `gateway serve` on it (free ports, stopped by pid),
publishes `--events` events to one room straight into Redis (`gateway.publish`, history large
enough to keep them all), then has each client
read the whole history from the start: the new `gateway.client.Client` (WebSocket, async) and
the synchronous SSE client that `gateway follow` used before it (`gateway/client.py` at
`--old-rev`, loaded from git, so both run in the same process against the same gateway). Each
round reads the same events; the report gives the best round's events/s and the client's own CPU
time per event (the gateway runs in its own process).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.client import Client, Event  # noqa: E402
from gateway.publish import publish  # noqa: E402

CHANNEL = "room:bench-client"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def retention(events: int) -> str:
    return f"room={events + 10}/3600/{512 * 2**20}"


def start_redis(port: int, directory: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", str(directory)),
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process
        time.sleep(0.05)
    process.kill()
    raise SystemExit("redis-server did not start (Debian package: redis-server)")


def start_gateway(port: int, redis_url: str, events: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["REDIS_URL"] = redis_url
    env["GATEWAY_RETENTION"] = retention(events)
    env["GATEWAY_CONNECT_RATE"] = "0"
    env["GATEWAY_LOG_LEVEL"] = "warning"
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=0.5).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    process.kill()
    raise SystemExit(f"the gateway did not start:\n{log.read_text()}")


def fill(redis_url: str, events: int) -> None:
    os.environ["GATEWAY_RETENTION"] = retention(events)  # what `publish` trims to
    for n in range(events):
        publish(CHANNEL, "tick", {"n": n, "payload": "x" * 100}, redis_url=redis_url)


async def read_new(url: str, events: int) -> int:
    count = 0
    async with Client(url) as gw:
        async for item in gw.subscribe(CHANNEL):
            if isinstance(item, Event):
                count += 1
                if count == events:
                    break
    return count


def read_old(old: ModuleType, url: str, events: int) -> int:
    count = 0
    with open(os.devnull, "w") as quiet:
        for _event in old.stream_events(url, f"/events?channel={CHANNEL}", None, log=quiet):
            count += 1
            if count == events:
                break
    return count


def load_old_client(rev: str) -> ModuleType | None:
    try:
        source = subprocess.run(
            ["git", "show", f"{rev}:gateway/client.py"],
            cwd=ROOT,
            capture_output=True,
            check=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"(no old client: git show {rev}:gateway/client.py failed: {exc})")
        return None
    path = Path(tempfile.mkdtemp()) / "old_gateway_client.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_gateway_client", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def measure(readers: dict[str, Callable[[], int]], events: int, rounds: int) -> None:
    """Rounds interleave the clients (new, old, new, old, ...), so neither gets a quieter
    machine or gateway; each one's best round is reported."""
    best: dict[str, tuple[float, float]] = {}
    for _ in range(rounds):
        for name, read in readers.items():
            wall, cpu = time.perf_counter(), time.process_time()
            got = read()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            assert got == events, f"{name} read {got} of {events}"
            if name not in best or wall < best[name][0]:
                best[name] = (wall, cpu)
    for name, (wall, cpu) in best.items():
        print(
            f"{name:<34} {events / wall:>10,.0f} events/s  {wall:6.2f} s  "
            f"client CPU {cpu * 1e6 / events:6.1f} µs/event"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--old-rev", default="3f88aad", help="a commit with gateway/client.py")
    args = parser.parse_args()
    port, redis_port = free_port(), free_port()
    url, redis_url = f"http://127.0.0.1:{port}", f"redis://127.0.0.1:{redis_port}/0"
    directory = Path(tempfile.mkdtemp())
    redis = start_redis(redis_port, directory)
    gateway = start_gateway(port, redis_url, args.events, directory / "gateway.log")
    try:
        started = time.perf_counter()
        fill(redis_url, args.events)
        print(f"published {args.events:,} events in {time.perf_counter() - started:.1f} s")
        readers: dict[str, Callable[[], int]] = {
            "gateway.client (WebSocket, async)": lambda: asyncio.run(read_new(url, args.events))
        }
        old = load_old_client(args.old_rev)
        if old is not None:
            readers["old gateway/client.py (SSE, sync)"] = lambda: read_old(old, url, args.events)
        measure(readers, args.events, args.rounds)
    finally:
        gateway.terminate()
        gateway.wait(10)
        redis.terminate()
        redis.wait(10)


if __name__ == "__main__":
    main()
