"""Test support: real redis-server and gateway processes on free ports, SSE and WS clients.

Nothing here is a mock: a `RedisServer` is a `redis-server` process in a temporary directory,
a `GatewayProcess` is `python -m gateway serve` (uvicorn), a `WorkerProcess` is `gateway worker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson

REDIS_BINARY = shutil.which("redis-server")
MISSING_REDIS = (
    "redis-server is not on PATH. The tests start their own Redis server; install it with "
    "`apt-get install redis-server` (Debian/Ubuntu) or `brew install redis` (macOS)."
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


async def async_wait_until(
    condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class PortTaken(RuntimeError):
    """A server could not have the port it was given: another process took it first."""


def _redis_pid(port: int) -> int | None:
    """The process id of the Redis answering on `port` (None: nothing answers yet)."""
    if not _port_open(port):
        return None
    import redis

    client = redis.Redis(
        host="127.0.0.1", port=port, socket_connect_timeout=0.5, socket_timeout=0.5
    )
    try:
        return int(client.info("server")["process_id"])
    except (redis.RedisError, OSError, KeyError, ValueError):
        return None
    finally:
        client.close()


class ChildProcess:
    """A process a test starts and may stop, kill and restart (on the same ports): the one
    lifecycle of every server and gateway process the tests run. Each kind says how it
    `start`s; a redis-server is `spawn`ed and waited for on its port."""

    process: subprocess.Popen[bytes] | None = None
    started = False
    """Started once: a restart keeps its ports (clients and cluster peers know them)."""

    def start(self) -> None:
        raise NotImplementedError

    def spawn_on_free_ports(self, start: Callable[[], None], new_ports: Callable[[], None]) -> None:
        """`start()`; the first time only, when its port was taken (`PortTaken`), again on
        `new_ports()`."""
        for attempt in range(3):
            try:
                start()
            except PortTaken:
                if self.started or attempt == 2:
                    raise
                new_ports()
                continue
            self.started = True
            return

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def spawn(self, args: list[str], port: int, what: str) -> None:
        """Start the redis-server `args` (output other than errors dropped); return once it
        answers on `port`: it, not another process that took the free port first (two test
        processes can be handed the same free port), which raises `PortTaken`."""
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.process = process

        def answering() -> bool:
            if process.poll() is not None:
                raise PortTaken(f"{what} on port {port} exited with {process.returncode}")
            return _redis_pid(port) == process.pid

        try:
            wait_until(answering, 10, f"{what} on port {port}")
        except PortTaken:
            self.process = None
            raise

    def kill(self) -> None:
        """SIGKILL: no goodbye, nothing flushed."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, SIGKILL after `timeout` seconds; the exit code (None if not running)."""
        if self.process is None:
            return None
        self.process.terminate()
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(10)
        self.process = None
        return code

    def restart(self) -> None:
        self.kill()
        self.start()


class RedisServer(ChildProcess):
    """A private redis-server that tests may kill and restart on the same port."""

    def __init__(self, directory: Path, *, appendonly: bool = False) -> None:
        if REDIS_BINARY is None:
            raise RuntimeError(MISSING_REDIS)
        self.directory = directory
        self.appendonly = appendonly
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _start(self) -> None:
        assert REDIS_BINARY is not None
        args = [
            REDIS_BINARY,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            "--appendonly",
            "yes" if self.appendonly else "no",
        ]
        if self.appendonly:
            args += ["--appendfsync", "always"]
        self.spawn(args, self.port, "redis-server")

    def start(self) -> None:
        self.spawn_on_free_ports(self._start, self._new_port)

    def _new_port(self) -> None:
        self.port = free_port()

    def flush(self) -> None:
        import redis

        client = redis.Redis.from_url(self.url)
        client.flushall()
        client.close()


def gateway_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_") and k != "REDIS_URL"}
    env["PYTHONUNBUFFERED"] = "1"
    # Tests poll over a new connection every few milliseconds (`wait_until`), which the
    # per-address connect rate would refuse after its burst; the tests of that rate (and of the
    # defaults) ask for it explicitly.
    env["GATEWAY_CONNECT_RATE"] = "0"
    # Suites that count a room's events exactly would see other clients' presence.join /
    # presence.leave too (on for `room:` by default); tests/test_presence.py asks for them.
    env["GATEWAY_PRESENCE_EVENTS"] = "none"
    env.update(extra)
    return env


class ServiceProcess(ChildProcess):
    """A gateway CLI process (`serve` or `worker`) with its output kept in a log file."""

    def __init__(self, args: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.args = args
        self.env = dict(env)
        self.log_path = log_path

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


READY_TIMEOUT = 60.0
"""Seconds a gateway may take to answer `/readyz`: a few on an idle machine, but 20 were
exceeded on 2 cores shared by several test runs."""


class GatewayProcess(ServiceProcess):
    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        *,
        port: int | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.port = port or free_port()
        super().__init__(["serve", "--port", str(self.port), *(extra_args or [])], env, log_path)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self) -> None:
        super().start()

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"gateway exited early:\n{self.output()}")
            try:
                return httpx.get(self.url + "/readyz", timeout=0.5).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_until(ready, READY_TIMEOUT, f"gateway on port {self.port}")
        except BaseException:
            self.kill()  # a fixture that fails here never stops it: no orphan on the port
            raise


class WorkerProcess(ServiceProcess):
    def __init__(
        self, env: Mapping[str, str], log_path: Path, extra_args: list[str] | None = None
    ) -> None:
        super().__init__(["worker", *(extra_args or [])], env, log_path)


# --- clients ---------------------------------------------------------------------------------


class SSEEvent:
    """One dispatched SSE message. `event` is its `event:` line or, as the gateway sends no such
    line by default, the `type` its JSON data carries (an envelope's or a signal's)."""

    def __init__(self, event: str | None, id: str | None, data: str) -> None:
        self.event = event if event is not None else _json_type(data)
        self.id = id
        self.data = data

    def json(self) -> Any:
        return orjson.loads(self.data)

    def __repr__(self) -> str:
        return f"SSEEvent({self.event!r}, id={self.id!r})"


def _json_type(data: str) -> str | None:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    return kind if isinstance(kind, str) else None


async def sse_events(
    client: httpx.AsyncClient, url: str, headers: Mapping[str, str] | None = None
) -> AsyncIterator[SSEEvent]:
    """Parse an SSE response into events (comments and `retry:` lines are skipped)."""
    async with client.stream("GET", url, headers=dict(headers or {})) as response:
        if response.status_code != 200:
            await response.aread()
            raise AssertionError(f"SSE {url}: {response.status_code} {response.text}")
        event: str | None = None
        event_id: str | None = None
        data: list[str] = []
        async for line in response.aiter_lines():
            if line == "":
                if data:
                    yield SSEEvent(event, event_id, "\n".join(data))
                event, event_id, data = None, None, []
            elif line.startswith(":"):
                continue
            elif line.startswith("event: "):
                event = line[7:]
            elif line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("data: "):
                data.append(line[6:])


async def collect_sse(
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    until: Callable[[SSEEvent], bool] | None = None,
    timeout: float = 20.0,
) -> list[SSEEvent]:
    """Read an SSE stream until it ends (or `until` holds), within `timeout`."""
    events: list[SSEEvent] = []

    async def read() -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(timeout)) as client:
            async for event in sse_events(client, url, headers):
                events.append(event)
                if until is not None and until(event):
                    return

    await asyncio.wait_for(read(), timeout)
    return events


@contextlib.asynccontextmanager
async def ws_client(url: str, **kwargs: Any) -> AsyncIterator[Any]:
    import websockets

    async with websockets.connect(
        url, subprotocols=["gateway.v1"], open_timeout=10, **kwargs
    ) as ws:  # type: ignore[list-item]
        yield ws


async def ws_recv(ws: Any, timeout: float = 10.0) -> dict[str, Any]:
    message = await asyncio.wait_for(ws.recv(), timeout)
    value: dict[str, Any] = orjson.loads(message)
    return value


async def ws_until(
    ws: Any, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
) -> list[dict[str, Any]]:
    """Receive frames until one satisfies `predicate`; return all frames received."""
    frames: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no matching frame within {timeout}s; got {frames[-5:]}")
        frame = await ws_recv(ws, remaining)
        frames.append(frame)
        if predicate(frame):
            return frames


async def ws_send(ws: Any, op: dict[str, Any]) -> None:
    """Send one protocol op as a JSON text frame."""
    await ws.send(orjson.dumps(op).decode())


async def follow_sse_resuming(
    url: str, until: Callable[[SSEEvent], bool], timeout: float = 60.0
) -> tuple[list[SSEEvent], int]:
    """Follow an SSE stream like EventSource does: reconnect with `Last-Event-ID` until `until`.

    Returns the events (control events such as `shutdown` and `gap` included) and the number of
    connections it took.
    """
    events: list[SSEEvent] = []
    last_id: str | None = None
    connections = 0

    async def run() -> None:
        nonlocal last_id, connections
        async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=30)) as client:
            while True:
                connections += 1
                headers = {"Last-Event-ID": last_id} if last_id else {}
                try:
                    async for event in sse_events(client, url, headers):
                        events.append(event)
                        if event.id:
                            last_id = event.id
                        if until(event):
                            return
                except (httpx.HTTPError, AssertionError):
                    pass
                await asyncio.sleep(0.1)

    await asyncio.wait_for(run(), timeout)
    return events, connections


async def follow_ws_resuming(
    ws_url: str, channel: str, until: Callable[[dict[str, Any]], bool], timeout: float = 60.0
) -> tuple[list[dict[str, Any]], list[int]]:
    """Follow a channel over WebSocket, resubscribing with `since` after every disconnect.

    Returns every frame received and the close codes seen.
    """
    import websockets

    frames: list[dict[str, Any]] = []
    codes: list[int] = []
    last_id: str | None = None

    async def run() -> None:
        nonlocal last_id
        while True:
            try:
                async with ws_client(ws_url) as ws:
                    op: dict[str, Any] = {"op": "subscribe", "channel": channel, "ref": 1}
                    if last_id:
                        op["since"] = last_id
                    await ws_send(ws, op)
                    while True:
                        frame = orjson.loads(await ws.recv())
                        frames.append(frame)
                        if frame["op"] == "event":
                            last_id = frame["id"]
                            if until(frame):
                                return
            except websockets.ConnectionClosed as exc:
                codes.append(exc.rcvd.code if exc.rcvd else 1006)
            except OSError:
                pass
            await asyncio.sleep(0.1)

    await asyncio.wait_for(run(), timeout)
    return frames, codes


def submit_job(url: str, type_: str, data: Mapping[str, Any]) -> str:
    """`POST /jobs`; returns the new job's id."""
    response = httpx.post(url + "/jobs", json={"type": type_, "data": dict(data)})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def job_status(url: str, job_id: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{url}/jobs/{job_id}").json()
    return body


# --- webhook receivers -------------------------------------------------------------------------


@dataclass
class Receiver:
    """An HTTP server answering from a script of statuses (then 200), recording every request."""

    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    port: int = 0
    scheme: str = "http"
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/hook"

    def answer(self) -> tuple[int, dict[str, str]]:
        with self.lock:
            return self.script.pop(0) if self.script else (200, {})


@contextlib.contextmanager
def http_receiver(tls: ssl.SSLContext | None = None) -> Iterator[Receiver]:
    """A `Receiver` on 127.0.0.1 in a thread (HTTPS with `tls`), stopped on exit."""
    state = Receiver(port=free_port(), scheme="https" if tls else "http")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            with state.lock:
                state.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                state.paths.append(self.path)
            status, headers = state.answer()
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", state.port), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
