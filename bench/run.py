"""The gateway benchmark: fan-out, many channels, idle capacity, job round trip, publish.

Everything runs on 127.0.0.1 and is started (and stopped, by pid) by this script: a private
redis-server in a temporary directory, the server under test (`python -m gateway serve` with
REDIS_URL, or a peer), load clients in separate processes, and a paced publisher. Every wait is
bounded. See bench/README.md for the scenarios and how to read the output.

    python -m bench quick                # the main comparison in < 3 minutes
    python -m bench fanout -n 1000 --servers gw-ws,gw-sse,ws,sio
    python -m bench idle -n 20000 --servers gw-ws
    python -m bench roundtrip --jobs 500
    python -m bench publish
    python -m bench channels -n 1000
    python -m bench fanout -n 1000 --servers gw-ws --compare /path/to/before --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
NODE_DIR = BENCH / "node"
P99_BOUND_MS = 200.0
DELIVERY_BOUND = 0.999
_PROCS: list[subprocess.Popen[Any]] = []


# --- processes -------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def spawn(
    cmd: list[str], log_path: Path, env: dict[str, str] | None = None, source: Path = ROOT
) -> subprocess.Popen[Any]:
    """Start a process with `source` (a checkout) first on its path and as its working
    directory, so that `python -m gateway` runs that tree's code (same interpreter and
    dependencies: only the gateway's own source differs)."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = str(source) + os.pathsep + full_env.get("PYTHONPATH", "")
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=source,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _PROCS.append(proc)
    return proc


def stop(proc: subprocess.Popen[Any], timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if proc in _PROCS:
        _PROCS.remove(proc)


def stop_all() -> None:
    for proc in list(reversed(_PROCS)):
        stop(proc, 5)


atexit.register(stop_all)


def tree(pid: int) -> list[psutil.Process]:
    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_s(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def rss(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


class Redis:
    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            sys.exit("redis-server is not on PATH (apt-get install redis-server)")
        self.port = free_port()
        self.dir = workdir / "redis"
        self.dir.mkdir()
        self.proc = spawn(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--save",
                "",
                "--appendonly",
                "no",
                "--loglevel",
                "warning",
            ],
            workdir / "redis.log",
        )
        wait_for(lambda: port_open(self.port), 10, "redis-server")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def flush(self) -> None:
        import redis

        redis.Redis.from_url(self.url).flushall()


# --- servers under test ------------------------------------------------------------------------

VARIANTS: dict[str, dict[str, str]] = {
    # `--presence`: the same fan-out with presence off and on (docs/presence.md). On: the
    # bench's `room:` channel is tracked and gets join/leave events (the defaults).
    "presence-off": {
        "GATEWAY_PRESENCE": "none",
        "GATEWAY_PRESENCE_EVENTS": "none",
        "GATEWAY_OCCUPANCY": "none",
    },
    "presence-on": {"GATEWAY_PRESENCE": "room", "GATEWAY_PRESENCE_EVENTS": "room"},
}
"""Gateway settings compared within one run (the first is the baseline of the ratios)."""

GATEWAY_LIMITS = {
    # every load client comes from 127.0.0.1: lift the per-address and rate limits
    "GATEWAY_LOG_LEVEL": "warning",
    "GATEWAY_MAX_CONNECTIONS_PER_CLIENT": "10000000",
    "GATEWAY_MAX_SUBSCRIPTIONS": "1000000",
    "GATEWAY_PUBLISH_RATE": "1000000000",
    "GATEWAY_PUBLISH_BURST": "1000000000",
    "GATEWAY_SUBMIT_RATE": "1000000000",
    "GATEWAY_CONNECT_RATE": "0",  # thousands of connections a second from one address
    # paced bursts on an overloaded step must not turn into slow-consumer cut-offs (default 1000)
    "GATEWAY_SLOW_CONSUMER_QUEUE": "100000",
}

SERVERS = {
    "gw-ws": "gateway, WebSocket (/ws?channel=...)",
    "gw-sse": "gateway, SSE (/events?channel=...)",
    "ws": "raw websockets + redis.asyncio (Python floor)",
    "sio": "Node Socket.IO 4 + @socket.io/redis-adapter",
}


def ensure_node_peer() -> None:
    if (NODE_DIR / "node_modules" / "socket.io").exists():
        return
    if shutil.which("npm") is None:
        sys.exit("the Socket.IO peer needs node and npm on PATH")
    log("installing the Socket.IO peer (npm install in bench/node)")
    subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--silent"],
        cwd=NODE_DIR,
        check=True,
        timeout=240,
    )


class Server:
    """One server under test, with what its clients and publisher need to know."""

    def __init__(
        self,
        name: str,
        redis: Redis,
        workdir: Path,
        *,
        gw_args: list[str],
        source: Path = ROOT,
        env_extra: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.port = free_port()
        self.channel = "room:bench-" + uuid.uuid4().hex[:8]
        logf = workdir / f"{name}-{self.port}.log"
        env = {"REDIS_URL": redis.url, "PORT": str(self.port)}
        self.subprotocol = ""
        self.ready_token = ""
        if name in ("gw-ws", "gw-sse"):
            env.update(GATEWAY_LIMITS)
            env.update(env_extra or {})
            cmd = [PY, "-m", "gateway", "serve", "--port", str(self.port), *gw_args]
            self.kind = "ws" if name == "gw-ws" else "sse"
            if name == "gw-ws":
                self.path_for = lambda ch: f"/ws?channel={ch}"
                self.subprotocol = "gateway.v1"
                self.ready_token = '"op":"ack"'
            else:
                self.path_for = lambda ch: f"/events?channel={ch}"
            self.target = "gateway"
        elif name == "ws":
            self.channel = "ch"
            env["CHANNEL"] = self.channel
            cmd = [PY, str(BENCH / "srv_ws.py")]
            self.kind, self.target = "ws", "redis"
            self.path_for = lambda ch: "/"
        elif name == "sio":
            ensure_node_peer()
            cmd = ["node", str(NODE_DIR / "srv_sio.js")]
            self.kind, self.target = "sio", "sio"
            self.path_for = lambda ch: "/socket.io/?EIO=4&transport=websocket"
        else:
            raise SystemExit(f"unknown server {name!r}; one of {', '.join(SERVERS)}")
        self.proc = spawn(cmd, logf, env, source if self.target == "gateway" else ROOT)
        self.logf = logf
        self.connect_port = self.port  # the server's, or a proxy's in front of it (`front`)
        self.proxy: subprocess.Popen[Any] | None = None
        wait_for(self._ready, 30, f"{name} on port {self.port}")
        time.sleep(0.5)

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited:\n{self.logf.read_text()[-2000:]}")
        if not port_open(self.port):
            return False
        if self.target == "gateway":
            import httpx

            try:
                return httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1).is_success
            except httpx.HTTPError:
                return False
        return True

    def front(self, via: str, workdir: Path) -> None:
        """Put a proxy in front (`via`: "nginx" runs deploy/nginx/gateway.conf, both of its
        upstreams this server); clients then connect to the proxy."""
        if via == "direct":
            return
        from bench.nginx import prepare

        port = free_port()
        cmd = prepare(workdir / f"nginx-{self.port}", port, (self.port, self.port))
        self.proxy = spawn(cmd, workdir / f"nginx-{self.port}.log")
        wait_for(lambda: port_open(port), 10, "nginx")
        self.connect_port = port

    def procs(self) -> list[psutil.Process]:
        return tree(self.proc.pid)

    def proxy_procs(self) -> list[psutil.Process]:
        return tree(self.proxy.pid) if self.proxy is not None else []

    def close(self) -> None:
        if self.proxy is not None:
            stop(self.proxy)
        stop(self.proc)


class Clients:
    """K load-client processes holding N connections between them."""

    def __init__(
        self,
        server: Server,
        n: int,
        k: int,
        workdir: Path,
        tag: str,
        path: str | None = None,
        max_seconds: float = 600,
        channel_count: int = 1,
    ) -> None:
        self.outs = [str(workdir / f"{tag}.client{i}") for i in range(k)]
        self.procs: list[subprocess.Popen[str]] = []
        base = 0
        for i in range(k):
            count = n // k + (1 if i < n % k else 0)
            cmd = [
                PY,
                str(BENCH / "loadclient.py"),
                "--kind",
                server.kind,
                "--port",
                str(server.connect_port),
                "--path",
                path or server.path_for(server.channel),
                "-n",
                str(count),
                "--index-base",
                str(base),
                "--out",
                self.outs[i],
                "--concurrency",
                "200",
                "--max-seconds",
                str(max_seconds),
                "--subprotocol",
                server.subprotocol,
                "--ready-token",
                server.ready_token,
                "--channel-count",
                str(channel_count),
            ]
            base += count
            err = open(self.outs[i] + ".err", "w")  # noqa: SIM115 - closed with the process
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
            _PROCS.append(proc)
            self.procs.append(proc)
        self.connected = 0
        self.failed = 0
        self.connect_s: list[float] = []
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().split()  # bounded: each connect times out after 60 s
            if not line or line[0] != "READY":
                raise RuntimeError(f"load client not ready: {line!r}")
            self.connected += int(line[1])
            self.failed += int(line[2])
            self.connect_s.append(float(line[3]))
        self.ps = [psutil.Process(p.pid) for p in self.procs]

    def cpu(self) -> list[float]:
        return [cpu_s([p]) for p in self.ps]

    def finish(self) -> tuple[Any, Any, list[dict[str, Any]]]:
        import numpy as np

        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            stop(proc, 60)
        ts, lat, infos = [], [], []
        for out in self.outs:
            infos.append(json.loads(Path(out + ".json").read_text()))
            ts.append(np.fromfile(out + ".ts", dtype=np.int64))
            lat.append(np.fromfile(out + ".lat", dtype=np.int64))
            for ext in (".ts", ".lat"):
                os.remove(out + ext)
        return np.concatenate(ts), np.concatenate(lat), infos


def publish(
    server: Server,
    redis: Redis,
    rate: float,
    duration: float,
    *,
    channel: str | None = None,
    channels: int = 1,
    target: str | None = None,
) -> dict[str, Any]:
    cmd = [
        PY,
        str(BENCH / "publisher.py"),
        "--target",
        target or server.target,
        "--channel",
        channel or server.channel,
        "--channels",
        str(channels),
        "--rate",
        str(rate),
        "--duration",
        str(duration),
        "--redis-url",
        redis.url,
        "--url",
        f"http://127.0.0.1:{server.port}",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=duration + 30, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"publisher failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def start_publisher(
    server: Server,
    redis: Redis,
    rates: list[float],
    duration: float,
    gap: float,
    *,
    channel: str | None = None,
    channels: int = 1,
    script: str = "publisher.py",
) -> subprocess.Popen[str]:
    """One publisher process for all steps: one JSON line per finished step on stdout.
    `script`: `busy_publisher.py` for the `busy` scenario (pipelined, many channels)."""
    cmd = [
        PY,
        str(BENCH / script),
        "--target",
        server.target,
        "--channel",
        channel or server.channel,
        "--channels",
        str(channels),
        "--rates",
        ",".join(f"{r:g}" for r in rates),
        "--duration",
        str(duration),
        "--gap",
        str(gap),
        "--redis-url",
        redis.url,
        "--url",
        f"http://127.0.0.1:{server.port}",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    _PROCS.append(proc)
    return proc


def pct(values: Any, q: float) -> float | None:
    import numpy as np

    if len(values) == 0:
        return None
    return round(float(np.percentile(values, q)) / 1000, 2)


# --- scenarios -------------------------------------------------------------------------------


def fanout(
    a: argparse.Namespace,
    redis: Redis,
    workdir: Path,
    name: str,
    n: int,
    rates: list[float],
    *,
    many_channels: bool = False,
    busy: tuple[int, int] | None = None,
    source: Path = ROOT,
    variant: str | None = None,
    via: str = "direct",
) -> dict[str, Any]:
    """Step the offered rate until delivery falls behind; one server, one set of clients.
    `source`: the checkout whose gateway is served (`--tree`); `variant`: a name in
    `VARIANTS`, the settings the gateway runs with (`--presence`); `via`: "nginx" puts
    deploy/nginx/gateway.conf between the clients and the server. `busy` (K, C): each client
    subscribes to K of C channels (spread evenly, N*K/C clients per channel) and the events go
    round-robin over the C channels: a `rate` of events/s in all, rate/C per channel."""
    env_extra = VARIANTS[variant] if variant else None
    server = Server(name, redis, workdir, gw_args=a.gw_args, source=source, env_extra=env_extra)
    steps: list[dict[str, Any]] = []
    try:
        server.front(via, workdir)
        path = None
        channel = None
        channel_count = 1
        if many_channels:
            channel = server.channel + "-{i}"
            path = server.path_for(channel)
        if busy is not None:
            per_client, channel_count = busy
            channel = server.channel + "-{i}"
            path = busy_path(server, per_client)
        tag = f"fanout-{name}-{n}-{server.port}{'-mc' if many_channels else ''}"
        t_conn = time.monotonic()
        clients = Clients(
            server, n, a.clients, workdir, tag, path=path, channel_count=channel_count
        )
        log(
            f"{name}: {clients.connected} connected, {clients.failed} failed "
            f"in {time.monotonic() - t_conn:.1f}s"
        )
        time.sleep(a.settle)
        srv_ps = server.procs()
        proxy_ps = server.proxy_procs()
        rds = tree(redis.proc.pid)
        pub_proc = start_publisher(
            server,
            redis,
            rates,
            a.duration,
            a.grace,
            channel=channel,
            channels=n if many_channels else channel_count,
            script="busy_publisher.py" if busy else "publisher.py",
        )
        pub_ps = psutil.Process(pub_proc.pid)
        c0 = (
            cpu_s(srv_ps),
            clients.cpu(),
            cpu_s(rds),
            time.monotonic(),
            cpu_s([pub_ps]),
            cpu_s(proxy_ps),
        )
        assert pub_proc.stdout is not None
        for rate in rates:
            line = pub_proc.stdout.readline()  # bounded: the publisher ends after its steps
            if not line:
                raise RuntimeError("publisher ended early; see its stderr")
            pub = json.loads(line)
            c1 = (
                cpu_s(srv_ps),
                clients.cpu(),
                cpu_s(rds),
                time.monotonic(),
                cpu_s([pub_ps]),
                cpu_s(proxy_ps),
            )
            wall = c1[3] - c0[3]
            step = {
                "offered_events_s": rate,
                "published": pub["count"],
                "pub_rate": round(pub["achieved_rate"], 1),
                "start_us": pub["start_us"],
                "end_us": pub["end_us"],
                "cpu_pct": {
                    "server": round(100 * (c1[0] - c0[0]) / wall),
                    "clients": [
                        round(100 * (y - x) / wall) for x, y in zip(c0[1], c1[1], strict=True)
                    ],
                    "redis": round(100 * (c1[2] - c0[2]) / wall),
                    "publisher": round(100 * (c1[4] - c0[4]) / wall),
                    "proxy": round(100 * (c1[5] - c0[5]) / wall),
                },
                "server_rss_mb": round(rss(srv_ps) / 2**20, 1),
            }
            c0 = c1
            steps.append(step)
            fans = 1 if many_channels else clients.connected * channel_count_share(busy)
            log(
                f"{name}: offered {rate:g} ev/s (~{rate * fans:,.0f} deliveries/s), "
                f"server cpu {step['cpu_pct']['server']}%"
            )
        stop(pub_proc, 30)
        time.sleep(a.grace)
        ts, lat, infos = clients.finish()
    finally:
        server.close()
    connected = sum(i["connected"] for i in infos)
    best = None
    broken = False
    for step in steps:
        mask = (ts >= step.pop("start_us")) & (ts <= step.pop("end_us"))
        got = lat[mask]
        # Many channels: each event goes to the one client on its channel; busy: to the
        # N*K/C clients on its channel.
        receivers = 1 if many_channels else connected * channel_count_share(busy)
        expected = step["published"] * receivers
        window = step["published"] / max(step["pub_rate"], 1e-9)
        step["delivered"] = int(got.size)
        step["delivery_ratio"] = round(got.size / expected, 4) if expected else None
        step["offered_deliveries_s"] = round(step["pub_rate"] * receivers)
        step["delivered_s"] = round(got.size / window) if window else 0
        step["lat_ms"] = {"p50": pct(got, 50), "p99": pct(got, 99), "max": pct(got, 100)}
        p99 = step["lat_ms"]["p99"]
        step["ok"] = bool(
            step["delivery_ratio"] is not None
            and step["delivery_ratio"] >= DELIVERY_BOUND
            and p99 is not None
            and p99 < P99_BOUND_MS
        )
        # Sustainable = the last rate of the unbroken run of passing steps from the bottom: a
        # pass above a failure is a lucky step on a noisy machine, not a rate to rely on.
        if not step["ok"]:
            broken = True
        elif not broken and (best is None or step["delivered_s"] > best):
            best = step["delivered_s"]
    closed = sum(i["closed"] for i in infos)
    extra = {} if busy is None else {"per_client": busy[0], "channel_count": busy[1]}
    return {
        **extra,
        "scenario": "channels" if many_channels else "busy" if busy else "fanout",
        "server": name,
        "via": via,
        "tree": variant or str(source),
        "describe": SERVERS[name],
        "n": n,
        "connected": connected,
        "failed": sum(i["failed"] for i in infos),
        "connect_errors": _errors(infos),
        "closed_by_server": closed,
        "sustainable_deliveries_s": best,
        "p99_bound_ms": P99_BOUND_MS,
        "steps": steps,
        "client_connect_s": [round(i["connect_s"], 2) for i in infos],
    }


def busy_path(server: Server, per_client: int) -> str:
    """The path of a client on `per_client` channels, `{c<j>}` filled in by loadclient."""
    channels = [f"{server.channel}-{{c{j}}}" for j in range(per_client)]
    return server.path_for(channels[0]) + "".join("&channel=" + ch for ch in channels[1:])


def channel_count_share(busy: tuple[int, int] | None) -> float:
    """The share of all clients on one channel: 1 for fan-out, K/C for `busy`."""
    return 1.0 if busy is None else busy[0] / busy[1]


def _errors(infos: list[dict[str, Any]]) -> dict[str, int]:
    errors: dict[str, int] = {}
    for info in infos:
        for key, value in info["errors"].items():
            errors[key] = errors.get(key, 0) + value
    return errors


def idle(
    a: argparse.Namespace, redis: Redis, workdir: Path, name: str, n: int, via: str = "direct"
) -> dict[str, Any]:
    """RSS per idle connection of the server (and of the proxy in front of it, `via`)."""
    server = Server(name, redis, workdir, gw_args=a.gw_args)
    try:
        server.front(via, workdir)
        time.sleep(1)
        srv_ps = server.procs()
        rss0 = rss(srv_ps)
        proxy0 = rss(server.proxy_procs())
        k = max(a.clients, -(-n // 9000))
        clients = Clients(server, n, k, workdir, f"idle-{name}-{n}")
        time.sleep(a.settle + 1)
        srv_ps = server.procs()
        rss1 = rss(srv_ps)
        proxy1 = rss(server.proxy_procs())
        c0, t0 = cpu_s(srv_ps), time.monotonic()
        time.sleep(a.rest)
        cpu_rest = 100 * (cpu_s(srv_ps) - c0) / (time.monotonic() - t0)
        alive = server.proc.poll() is None
        _ts, _lat, infos = clients.finish()
    finally:
        server.close()
    connected = sum(i["connected"] for i in infos)
    errors = _errors(infos)
    return {
        "scenario": "idle",
        "server": name,
        "via": via,
        "n": n,
        "connected": connected,
        "failed": sum(i["failed"] for i in infos),
        "errors": errors,
        "closed_by_server": sum(i["closed"] for i in infos),
        "server_alive": alive,
        "rss_before_mb": round(rss0 / 2**20, 1),
        "rss_after_mb": round(rss1 / 2**20, 1),
        "kb_per_conn": round((rss1 - rss0) / 1024 / max(1, connected), 2),
        "proxy_kb_per_conn": round((proxy1 - proxy0) / 1024 / max(1, connected), 2),
        "cpu_at_rest_pct": round(cpu_rest, 1),
        "client_connect_s": [round(i["connect_s"], 2) for i in infos],
    }


def roundtrip(a: argparse.Namespace, redis: Redis, workdir: Path) -> dict[str, Any]:
    """Submit a no-op job (`sleep`, 0 s, 1 step) over HTTP; time until a WS subscriber of the
    job's channel sees `job.completed`. One job at a time, one subscriber."""
    server = Server("gw-ws", redis, workdir, gw_args=a.gw_args)
    worker = spawn(
        [PY, "-m", "gateway", "worker"],
        workdir / "worker.log",
        {"REDIS_URL": redis.url, **GATEWAY_LIMITS},
    )
    try:
        time.sleep(1.0)
        result = asyncio.run(_roundtrips(server.port, a.jobs))
        result["worker_alive"] = worker.poll() is None
    finally:
        stop(worker)
        server.close()
    return result


async def _roundtrips(port: int, jobs: int) -> dict[str, Any]:
    import httpx
    import numpy as np
    import orjson
    from websockets.asyncio.client import connect

    samples: list[float] = []
    posts: list[float] = []
    async with (
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http,
        connect(
            f"ws://127.0.0.1:{port}/ws",
            subprotocols=["gateway.v1"],  # type: ignore[list-item]
            compression=None,
        ) as ws,
    ):
        ref = 0
        for i in range(jobs + 20):  # the first 20 warm up connections and code paths
            t0 = time.perf_counter()
            r = await http.post("/jobs", json={"type": "sleep", "data": {"seconds": 0, "steps": 1}})
            r.raise_for_status()
            posted = time.perf_counter()
            channel = "job:" + r.json()["id"]
            ref += 1
            await ws.send(
                orjson.dumps({"op": "subscribe", "channel": channel, "ref": ref}).decode()
            )
            while True:
                msg = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
                if (
                    msg.get("op") == "event"
                    and msg.get("channel") == channel
                    and msg.get("type") in ("job.completed", "job.failed")
                ):
                    break
            if i >= 20:
                samples.append((time.perf_counter() - t0) * 1000)
                posts.append((posted - t0) * 1000)
            ref += 1
            await ws.send(
                orjson.dumps({"op": "unsubscribe", "channel": channel, "ref": ref}).decode()
            )
    arr = np.array(samples)
    post = np.array(posts)
    return {
        "scenario": "roundtrip",
        "jobs": len(samples),
        # the share of the round trip that is the `POST /jobs` itself (client + gateway)
        "post_ms": {
            "p50": round(float(np.percentile(post, 50)), 2),
            "p99": round(float(np.percentile(post, 99)), 2),
        },
        "ms": {
            "p50": round(float(np.percentile(arr, 50)), 2),
            "p99": round(float(np.percentile(arr, 99)), 2),
            "max": round(float(arr.max()), 2),
            "mean": round(float(arr.mean()), 2),
        },
    }


PUBLISH_PATHS = {
    "http": "POST /channels/{ch}/events",
    "http-batch": "POST /events/batch",
    "gateway": "gateway.publish (Python, Redis)",
    "python-many": "gateway.publish_many (Python, Redis)",
}
"""publisher.py targets of the publish scenario; the batch ones only where this checkout has
the route or the function."""


def publish_paths(port: int, has: dict[str, bool] | None = None) -> list[str]:
    """The publish paths to measure: the batch ones only where the gateway under test has them
    (`has`: its `publish_many`, probed in its checkout; else this checkout's)."""
    import httpx

    if has is None:
        import gateway

        has = {"publish_many": hasattr(gateway, "publish_many")}
    paths = ["http"]
    probe = httpx.post(
        f"http://127.0.0.1:{port}/events/batch",
        json={"events": [{"channel": "bench-probe", "type": "probe", "data": None}]},
        timeout=10,
    )
    if probe.status_code in (200, 202, 207):
        paths.append("http-batch")
    paths.append("gateway")
    if has.get("publish_many"):
        paths.append("python-many")
    return paths


def publish_throughput(
    a: argparse.Namespace,
    redis: Redis,
    workdir: Path,
    source: Path = ROOT,
    has: dict[str, bool] | None = None,
) -> list[dict[str, Any]]:
    """Events/s accepted with `a.clients` publisher processes (each one call at a time) on each
    publish path, and the CPU per event of the gateway server and Redis over the same window.
    The server and the Python publishers run the gateway of `source` (a checkout)."""
    server = Server("gw-ws", redis, workdir, gw_args=a.gw_args, source=source)
    batch = getattr(a, "batch", 100)
    out = []
    try:
        for target in publish_paths(server.port, has):
            srv_ps, redis_ps = server.procs(), tree(redis.proc.pid)
            env = {**os.environ, "PYTHONPATH": str(source)}
            procs = [
                subprocess.Popen(
                    [
                        PY,
                        str(BENCH / "publisher.py"),
                        "--target",
                        target,
                        "--channel",
                        server.channel + "-{i}",
                        "--channels",
                        "16",
                        "--rate",
                        "0",
                        "--duration",
                        str(a.duration),
                        "--batch",
                        str(batch),
                        "--connections",
                        str(getattr(a, "connections", 1)),
                        "--redis-url",
                        redis.url,
                        "--url",
                        f"http://127.0.0.1:{server.port}",
                    ],
                    cwd=source,
                    env=env,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for _ in range(a.clients)
            ]
            # the publishers' start-up (imports) is not measured: their step begins after it
            time.sleep(0.2)
            c0, r0, t0 = cpu_s(srv_ps), cpu_s(redis_ps), time.monotonic()
            results = []
            for p in procs:
                stdout, _ = p.communicate(timeout=a.duration + 60)
                if p.returncode != 0:
                    raise RuntimeError(f"publisher {target} exited with {p.returncode}")
                results.append(json.loads(stdout.strip().splitlines()[-1]))
            wall = time.monotonic() - t0
            # the window the servers' CPU covers: from the earliest step start to now
            first_us = min(r["start_us"] for r in results)
            wall = min(wall, max(0.001, time.time() - first_us / 1e6))
            events = sum(r["count"] for r in results)
            events_s = sum(r["achieved_rate"] for r in results)
            server_cpu, redis_cpu = cpu_s(srv_ps) - c0, cpu_s(redis_ps) - r0
            out.append(
                {
                    "scenario": "publish",
                    "via": PUBLISH_PATHS[target],
                    "target": target,
                    "publishers": a.clients,
                    "events": events,
                    "events_s": round(events_s),
                    "server_cpu_pct": round(100 * server_cpu / wall),
                    "redis_cpu_pct": round(100 * redis_cpu / wall),
                    "publisher_cpu_pct": [round(100 * r["cpu_s"] / a.duration) for r in results],
                    "cpu_ms_per_event": {
                        "producer": round(1000 * sum(r["cpu_s"] for r in results) / events, 4),
                        "gateway": round(1000 * server_cpu / events, 4),
                        "redis": round(1000 * redis_cpu / events, 4),
                    },
                }
            )
    finally:
        server.close()
    return out


# --- output ----------------------------------------------------------------------------------


def label(result: dict[str, Any]) -> str:
    """The server, and the proxy in front of it if any: `gw-ws`, `gw-ws@nginx`."""
    via = result.get("via", "direct")
    return result["server"] if via == "direct" else f"{result['server']}@{via}"


def table(results: list[dict[str, Any]]) -> str:
    lines = []
    fan = [r for r in results if r["scenario"] in ("fanout", "channels", "busy")]
    if fan:
        lines.append(
            "\nFan-out (sustainable = highest delivered rate with every event delivered "
            f"and p99 < {P99_BOUND_MS:g} ms)"
        )
        lines.append(
            "  (busy: each client on K of C channels; N*K/C deliveries per event)"
            if any(r["scenario"] == "busy" for r in fan)
            else ""
        )
        lines.append(
            f"{'scenario':9} {'server':12} {'N':>6} {'sustainable/s':>14} "
            f"{'p99@~20k/s':>11} {'srv cpu':>8} {'client cpu':>11}"
        )
        for r in fan:
            near = _near(r["steps"], 20_000)
            okstep = [s for s in r["steps"] if s["ok"]]
            last = okstep[-1] if okstep else (r["steps"][0] if r["steps"] else None)
            lines.append(
                f"{r['scenario']:9} {label(r):12} {r['connected']:>6} "
                f"{r['sustainable_deliveries_s'] or 0:>14,} "
                f"{(near['lat_ms']['p99'] if near else 'n/a')!s:>11} "
                f"{(str(last['cpu_pct']['server']) + '%') if last else 'n/a':>8} "
                f"{(','.join(map(str, last['cpu_pct']['clients'])) + '%') if last else 'n/a':>11}"
            )
        lines.append("\n  steps: offered ev/s -> delivered/s, ratio, p50/p99 ms")
        for r in fan:
            for s in r["steps"]:
                lines.append(
                    f"  {label(r):12} {s['offered_events_s']:>6g} -> {s['delivered_s']:>7,}/s "
                    f"ratio {s['delivery_ratio']} p50 {s['lat_ms']['p50']} p99 "
                    f"{s['lat_ms']['p99']} {'ok' if s['ok'] else 'FAIL'}"
                )
    for r in results:
        if r["scenario"] == "idle":
            via = r.get("via", "direct")
            lines.append(
                f"idle      {label(r):12} {r['connected']:>6}/{r['n']} conns, "
                f"{r['kb_per_conn']} KB/conn"
                + (f" (+{r['proxy_kb_per_conn']} KB/conn in {via})" if via != "direct" else "")
                + f", cpu at rest {r['cpu_at_rest_pct']}%, "
                f"failed {r['failed']}, server alive {r['server_alive']}"
            )
        elif r["scenario"] == "roundtrip":
            lines.append(
                f"roundtrip gw      {r['jobs']} jobs: p50 {r['ms']['p50']} ms, "
                f"p99 {r['ms']['p99']} ms, max {r['ms']['max']} ms "
                f"(of which POST /jobs p50 {r.get('post_ms', {}).get('p50')} ms)"
            )
        elif r["scenario"] == "publish":
            lines.append(
                f"publish   {r['via']}: {r['events_s']:,} events/s with "
                f"{r['publishers']} publishers (gateway cpu {r['server_cpu_pct']}%, redis "
                f"{r.get('redis_cpu_pct')}%; CPU ms per event {r.get('cpu_ms_per_event')})"
            )
    return "\n".join(lines)


COMPARE_AT = (20_000, 40_000)
"""Offered deliveries/s at which `--compare` / `--tree` report server CPU."""


def comparison(
    results: list[dict[str, Any]], trees: list[Path] | list[str]
) -> list[dict[str, Any]]:
    """Server CPU % near each `COMPARE_AT` rate, per (scenario, server, N, tree), the median
    over rounds, and its ratio to the first tree's (< 1: the tree uses less CPU there); with
    the server CPU per delivery (µs) and the p99 latency at that step, medians too."""
    import statistics

    def median(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    rows = []
    fan = [r for r in results if r["scenario"] in ("fanout", "busy") and r.get("tree")]
    for scenario, server, n in dict.fromkeys((r["scenario"], r["server"], r["n"]) for r in fan):
        base: dict[int, float] = {}
        base_us: dict[int, float] = {}
        for src in trees:
            key = (scenario, server, n, str(src))
            runs = [r for r in fan if (r["scenario"], r["server"], r["n"], r["tree"]) == key]
            if not runs:
                continue
            row: dict[str, Any] = {
                "scenario": scenario,
                "server": server,
                "n": n,
                "tree": str(src),
                "rounds": len(runs),
            }
            for rate in COMPARE_AT:
                k = f"{rate // 1000}k"
                steps = [st for st in (_near(r["steps"], rate) for r in runs) if st]
                cpu = median([st["cpu_pct"]["server"] for st in steps])
                us = median(
                    [
                        st["cpu_pct"]["server"] * 1e4 / st["delivered_s"]
                        for st in steps
                        if st["delivered_s"]
                    ]
                )
                p99 = median([st["lat_ms"]["p99"] for st in steps if st["lat_ms"]["p99"]])
                offered = median([st["offered_deliveries_s"] for st in steps])
                row[f"cpu@{k}"] = cpu
                row[f"us_per_delivery@{k}"] = round(us, 2) if us is not None else None
                row[f"p99@{k}"] = p99
                row[f"offered@{k}"] = round(offered) if offered is not None else None
                row[f"ok@{k}"] = all(st["ok"] for st in steps)
                if src == trees[0] and cpu is not None:
                    base[rate] = cpu
                if src == trees[0] and us is not None:
                    base_us[rate] = us
                ratio = cpu / base[rate] if cpu is not None and base.get(rate) else None
                row[f"ratio@{k}"] = round(ratio, 3) if ratio is not None else None
                us_ratio = us / base_us[rate] if us is not None and base_us.get(rate) else None
                row[f"us_ratio@{k}"] = round(us_ratio, 3) if us_ratio is not None else None
            rows.append(row)
    return rows


def comparison_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "\nBefore/after near 20k and 40k offered deliveries/s (medians over rounds): server "
        "CPU %, its ratio to the first tree, server CPU µs per delivery and its ratio, p99 ms",
        f"{'scenario':8} {'server':7} {'N':>6} "
        + " ".join(
            f"{'cpu@' + k:>8} {'ratio':>6} {'µs/dl':>6} {'ratio':>6} {'p99':>6}"
            for k in ("20k", "40k")
        )
        + "  tree",
    ]
    for r in rows:
        cells = []
        for k in ("20k", "40k"):
            flag = "" if r[f"ok@{k}"] else "!"  # a step that missed delivery or p99 bounds
            cpu = r[f"cpu@{k}"]
            cells.append(f"{'n/a' if cpu is None else f'{cpu:g}%{flag}':>8}")
            cells.append(f"{r[f'ratio@{k}'] if r[f'ratio@{k}'] is not None else 'n/a'!s:>6}")
            cells.append(f"{r[f'us_per_delivery@{k}'] or 'n/a'!s:>6}")
            cells.append(f"{r[f'us_ratio@{k}'] or 'n/a'!s:>6}")
            cells.append(f"{r[f'p99@{k}'] or 'n/a'!s:>6}")
        lines.append(
            f"{r.get('scenario', 'fanout'):8} {r['server']:7} {r['n']:>6} {' '.join(cells)}  "
            f"{r['tree']}"
        )
    lines.append("  (! = that step failed its delivery/p99 bounds; its CPU is not comparable)")
    return "\n".join(lines)


def via_comparison(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """p99 latency through each proxy against direct, step by step, for each (server, N) run
    both ways (the median over `--rounds` alternations); `ratio` = proxied p99 / direct p99,
    and its median over the steps where every run passed (the overhead where neither way is
    overloaded)."""
    import statistics

    def median_p99(runs: list[dict[str, Any]], index: int) -> float | None:
        values = [r["steps"][index]["lat_ms"]["p99"] for r in runs if len(r["steps"]) > index]
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    rows = []
    fan = [r for r in results if r["scenario"] == "fanout"]
    for server, n in dict.fromkeys((r["server"], r["n"]) for r in fan):
        runs = [r for r in fan if (r["server"], r["n"]) == (server, n)]
        direct = [r for r in runs if r.get("via", "direct") == "direct"]
        for via in dict.fromkeys(r["via"] for r in runs if r.get("via", "direct") != "direct"):
            proxied = [r for r in runs if r.get("via") == via]
            if not direct:
                continue
            steps = []
            for index, step in enumerate(direct[0]["steps"]):
                dp99, pp99 = median_p99(direct, index), median_p99(proxied, index)
                both = [r["steps"][index] for r in direct + proxied if len(r["steps"]) > index]
                steps.append(
                    {
                        "offered_deliveries_s": step["offered_deliveries_s"],
                        "p99_direct_ms": dp99,
                        "p99_via_ms": pp99,
                        "ratio": round(pp99 / dp99, 2) if dp99 and pp99 else None,
                        "all_ok": all(st["ok"] for st in both),
                        "proxy_cpu_pct": statistics.median(
                            r["steps"][index]["cpu_pct"]["proxy"]
                            for r in proxied
                            if len(r["steps"]) > index
                        ),
                    }
                )
            ok = [st["ratio"] for st in steps if st["all_ok"] and st["ratio"] is not None]
            every = [st["ratio"] for st in steps if st["ratio"] is not None]
            rows.append(
                {
                    "server": server,
                    "n": n,
                    "via": via,
                    "rounds": len(proxied),
                    "steps": steps,
                    "median_ratio": round(statistics.median(ok), 2) if ok else None,
                    "median_ratio_all_steps": round(statistics.median(every), 2) if every else None,
                }
            )
    return rows


def via_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "\nProxy overhead: median p99 ms direct vs through the proxy, same run (ratio = via/direct)"
    ]
    for row in rows:
        lines.append(
            f"{row['server']} N={row['n']} via {row['via']} ({row['rounds']} rounds): median "
            f"ratio over the steps every run passed: {row['median_ratio']}, over all steps: "
            f"{row['median_ratio_all_steps']}"
        )
        for st in row["steps"]:
            lines.append(
                f"  {st['offered_deliveries_s']:>8,}/s  p99 {st['p99_direct_ms']!s:>7} -> "
                f"{st['p99_via_ms']!s:>7} ms  ratio {st['ratio']!s:>5}  proxy cpu "
                f"{st['proxy_cpu_pct']}%{'' if st['all_ok'] else '  (a run failed this step)'}"
            )
    return "\n".join(lines)


class _Results(list[dict[str, Any]]):
    """A list of results that also appends each one to a JSON-lines file as it arrives."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def append(self, item: dict[str, Any]) -> None:
        super().append(item)
        with open(self.path, "a") as f:
            f.write(json.dumps(item) + "\n")

    def extend(self, items: Any) -> None:
        for item in items:
            self.append(item)


def _near(steps: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    if not steps:
        return None
    return min(steps, key=lambda s: abs(s["offered_deliveries_s"] - target))


def plot(results: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fan = [r for r in results if r["scenario"] in ("fanout", "channels", "busy") and r["steps"]]
    if not fan:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    for r in fan:
        label_ = f"{label(r)} ({r['scenario']}, N={r['connected']})"
        x = [s["offered_deliveries_s"] / 1000 for s in r["steps"]]
        ax1.plot(x, [s["delivered_s"] / 1000 for s in r["steps"]], marker="o", label=label_)
        line = ax2.plot(
            x, [s["lat_ms"]["p99"] or 0 for s in r["steps"]], marker="o", label=label_ + " p99"
        )
        ax2.plot(
            x,
            [s["lat_ms"]["p50"] or 0 for s in r["steps"]],
            linestyle="--",
            color=line[0].get_color(),
            label=label_ + " p50",
        )
    top = max(s["offered_deliveries_s"] for r in fan for s in r["steps"]) / 1000
    ax1.plot([0, top], [0, top], color="grey", linewidth=0.8, linestyle=":")
    ax1.set(
        xlabel="offered deliveries/s (thousands)",
        ylabel="delivered/s (thousands)",
        title="Delivered vs offered",
    )
    ax2.set(
        xlabel="offered deliveries/s (thousands)",
        ylabel="latency ms (log)",
        title="p50 (dashed) / p99 latency",
        yscale="log",
    )
    ax2.axhline(P99_BOUND_MS, color="red", linewidth=0.8, linestyle=":")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=6, ncol=2)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- command line ----------------------------------------------------------------------------


def rates_for(n: int, quick: bool) -> list[float]:
    """Offered events/s per step: deliveries/s = rate * N."""
    per_k = [20, 40, 60, 80, 100, 125, 150] if quick else [10, 20, 40, 60, 80, 100, 125, 150, 200]
    return [r * 1000 / n for r in per_k]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "scenario",
        nargs="?",
        choices=["quick", "fanout", "channels", "busy", "idle", "roundtrip", "publish", "all"],
    )
    p.add_argument("--quick", action="store_true", help="same as the `quick` scenario")
    p.add_argument(
        "--servers", default="gw-ws,gw-sse,ws,sio", help="comma-separated: " + ", ".join(SERVERS)
    )
    p.add_argument("-n", type=int, action="append", help="connections (repeatable)")
    p.add_argument("--rates", help="offered events/s per step, comma-separated")
    p.add_argument("--clients", type=int, default=2, help="load-client processes (>= 2)")
    p.add_argument("--duration", type=float, default=4.0, help="seconds per step")
    p.add_argument("--grace", type=float, default=1.0)
    p.add_argument("--settle", type=float, default=1.0)
    p.add_argument("--rest", type=float, default=5.0, help="idle: seconds to measure CPU at rest")
    p.add_argument("--jobs", type=int, default=300, help="roundtrip: jobs")
    p.add_argument("--workers", type=int, default=1, help="gateway serve --workers")
    p.add_argument(
        "--ws-impl", default=None, help="gateway serve --ws (e.g. websockets-sansio, websockets)"
    )
    p.add_argument("--http-impl", default=None, help="gateway serve --http (httptools, h11)")
    p.add_argument(
        "--tree",
        type=Path,
        action="append",
        help="fanout: run the gateway servers from this source checkout (repeatable: the trees "
        "alternate, and server CPU at 20k/40k deliveries/s is compared to the first)",
    )
    p.add_argument(
        "--compare",
        type=Path,
        help="fanout: same as --tree COMPARE --tree <this checkout>: COMPARE is the baseline "
        "(before), this checkout the change (after)",
    )
    p.add_argument(
        "--presence",
        action="store_true",
        help="fanout: run each gateway server with presence off and on, alternating, and "
        "compare server CPU at 20k/40k deliveries/s",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="fanout with trees, --presence or several --via: alternations",
    )
    p.add_argument(
        "--via",
        default="direct",
        help="fanout, idle: comma-separated, each run in turn: direct (clients to the server) "
        "or nginx (through deploy/nginx/gateway.conf); fanout with both: a table of the p99 "
        "ratio; idle: the proxy's KB per connection too",
    )
    p.add_argument(
        "--per-client",
        type=int,
        default=10,
        help="busy: channels each client subscribes to (K)",
    )
    p.add_argument(
        "--busy-channels",
        type=int,
        default=50,
        help="busy: channels in all (C), events round-robin over them; N*K/C clients each",
    )
    p.add_argument("--out", type=Path, default=None, help="directory for JSON and PNG")
    p.add_argument("--plot", type=Path, default=None, help="also write the PNG here")
    a = p.parse_args(argv)
    if a.scenario is None:
        if not a.quick:
            p.error("name a scenario (or --quick)")
        a.scenario = "quick"
    a.gw_args = ["--workers", str(a.workers)] if a.workers > 1 else []
    if a.ws_impl:
        a.gw_args += ["--ws", a.ws_impl]
    if a.http_impl:
        a.gw_args += ["--http", a.http_impl]
    trees: list[Path] = [t.resolve() for t in a.tree or []]
    if a.compare:
        trees = [a.compare.resolve(), *(trees or [ROOT])]
    for t in trees:
        if not (t / "gateway" / "__main__.py").exists():
            p.error(f"--tree/--compare {t}: not a gateway source checkout")
    vias = [v for v in a.via.split(",") if v]
    for v in vias:
        if v not in ("direct", "nginx"):
            p.error(f"--via {v!r}: direct or nginx")
    servers = [s for s in a.servers.split(",") if s]
    for s in servers:
        if s not in SERVERS:
            p.error(f"unknown server {s!r}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run `finally`: stop everything
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 20_000) if hard > 0 else 20_000, hard))
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = a.out or BENCH / "results" / stamp
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = _Results(out / "partial.jsonl")
    t_begin = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gw-bench-") as tmp:
        workdir = Path(tmp)
        redis = Redis(workdir)
        try:
            sc = a.scenario
            if sc == "quick":
                a.duration = min(a.duration, 2.5)
            if sc in ("quick", "fanout", "all"):
                ns = a.n or ([1000] if sc == "quick" else [1000, 10_000])
                for n in ns:
                    for s in servers:
                        rates = (
                            [float(x) for x in a.rates.split(",")]
                            if a.rates
                            else rates_for(n, sc == "quick")
                        )
                        gateway = s.startswith("gw-")
                        rounds = (
                            a.rounds if ((trees or a.presence) and gateway) or len(vias) > 1 else 1
                        )
                        for _ in range(rounds):
                            if a.presence and gateway:
                                for variant in VARIANTS:
                                    results.append(
                                        fanout(a, redis, workdir, s, n, rates, variant=variant)
                                    )
                                    redis.flush()
                                continue
                            for src in trees if trees and gateway else [ROOT]:
                                for via in vias:
                                    results.append(
                                        fanout(a, redis, workdir, s, n, rates, source=src, via=via)
                                    )
                                    redis.flush()
            if sc == "busy":
                if not 1 <= a.per_client <= a.busy_channels:
                    p.error("--per-client must be between 1 and --busy-channels")
                busy = (a.per_client, a.busy_channels)
                for n in a.n or [200]:
                    fans = n * a.per_client / a.busy_channels
                    rates = (
                        [float(x) for x in a.rates.split(",")]
                        if a.rates
                        else [d * 1000 / fans for d in (10, 20, 40, 60, 80, 100, 125)]
                    )
                    for s in [s for s in servers if s.startswith("gw-")]:
                        for _ in range(a.rounds if trees else 1):
                            for src in trees or [ROOT]:
                                results.append(
                                    fanout(a, redis, workdir, s, n, rates, busy=busy, source=src)
                                )
                                redis.flush()
            if sc in ("channels", "all"):
                for n in a.n or [1000]:
                    rates = (
                        [float(x) for x in a.rates.split(",")]
                        if a.rates
                        else [250.0, 500.0, 1000.0, 2000.0, 3000.0]
                    )
                    results.append(fanout(a, redis, workdir, "gw-ws", n, rates, many_channels=True))
                    redis.flush()
            if sc in ("quick", "idle", "all"):
                ns = [2000] if sc == "quick" else a.n or [10_000, 20_000]
                for n in ns:
                    for s in servers:
                        for via in vias:
                            results.append(idle(a, redis, workdir, s, n, via))
                            log(table(results[-1:]))
            if sc in ("quick", "roundtrip", "all"):
                if sc == "quick":
                    a.jobs = min(a.jobs, 200)
                results.append(roundtrip(a, redis, workdir))
            if sc in ("publish", "all"):
                results.extend(publish_throughput(a, redis, workdir))
        finally:
            stop_all()
    meta = {
        "date": stamp,
        "command": "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "elapsed_s": round(time.monotonic() - t_begin, 1),
    }
    doc: dict[str, Any] = {"meta": meta, "results": results}
    compared = comparison(results, trees) if len(trees) > 1 else []
    if a.presence:
        compared = comparison(results, list(VARIANTS))
    if compared:
        doc["comparison"] = compared
    proxied = via_comparison(results) if len(vias) > 1 else []
    if proxied:
        doc["via_comparison"] = proxied
    (out / "results.json").write_text(json.dumps(doc, indent=1))
    title = f"{meta['command']} · {stamp} · {os.cpu_count()} CPUs"
    plot(results, out / "bench.png", title)
    if a.plot:
        plot(results, a.plot, title)
    print(table(results))
    if compared:
        print(comparison_table(compared))
    if proxied:
        print(via_table(proxied))
    print(f"\nJSON: {out / 'results.json'}\nPNG:  {out / 'bench.png'}  ({meta['elapsed_s']} s)")


if __name__ == "__main__":
    main()
