"""Ingest probe: how fast jobs and events come in, per path, for one or more source trees.

Compares trees side by side in one run (alternating, fresh Redis data each run, medians of
`--rounds`), so a before/after is measured on the same loaded machine:

    python bench/ingest_probe.py --trees /work/main,. --scenarios http-jobs,http-publish
    python bench/ingest_probe.py --trees . --scenarios py-submit,py-submit-many,py-publish-many

Scenarios (each item is one job or one event):
  http-jobs        POST /jobs                      (raw keep-alive sockets, --clients processes)
  http-jobs-batch  POST /jobs/batch, --batch jobs per request
  http-publish     POST /channels/{ch}/events
  http-publish-batch  POST /events/batch, --batch events per request over 16 channels
  py-submit        gateway.submit(...) in a loop, straight to Redis
  py-submit-many   gateway.submit_many(...) --batch at a time
  py-publish       gateway.publish(...) in a loop, straight to Redis
  py-publish-many  gateway.publish_many(...) --batch at a time
  bullmq-add, bullmq-addbulk  BullMQ's Queue.add / addBulk (--bullmq names benchpeers' script)

The gateway (`python -m gateway serve`, access log off with --quiet, rate limits off, no
embedded worker) runs from the tree under test (PYTHONPATH); its CPU per item is read from
/proc before and after. `--profile DIR` runs it under cProfile and writes one .prof per run.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

PY = sys.executable
HERE = Path(__file__).resolve()
JOB = {"type": "sleep", "data": {"seconds": 0, "steps": 1}}
EVENT_DATA = {"text": "hello", "n": 1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


# --- load clients (run as subprocesses) ------------------------------------------------------


def request_bytes(port: int, path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def read_response(sock: socket.socket, buf: bytearray) -> tuple[int, bytes]:
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = bytes(buf[:end]).decode("latin-1")
            status = int(head.split(" ", 2)[1])
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            total = end + 4 + length
            if len(buf) >= total:
                body = bytes(buf[end + 4 : total])
                del buf[:total]
                return status, body
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk


def load(args: argparse.Namespace) -> None:
    """Sequential keep-alive requests (`--depth` in flight, pipelined) for `--seconds`."""
    body = args.body.encode()
    requests = [request_bytes(args.port, args.path, body)]
    sock = socket.create_connection(("127.0.0.1", args.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray()
    done = errors = 0
    started = time.perf_counter()
    deadline = started + args.seconds
    wanted = {int(s) for s in args.ok.split(",")}
    while time.perf_counter() < deadline:
        sock.sendall(requests[0] * args.depth)
        for _ in range(args.depth):
            status, answer = read_response(sock, buf)
            if status in wanted:
                done += 1
            else:
                errors += 1
                if errors < 3:
                    print(f"unexpected {status}: {answer[:300]!r}", file=sys.stderr)
    elapsed = time.perf_counter() - started
    print(json.dumps({"requests": done, "errors": errors, "seconds": elapsed}))


def python_load(args: argparse.Namespace) -> None:
    """A loop of the Python API from the tree on PYTHONPATH, for `--seconds`."""
    import gateway

    batch = args.batch
    jobs = [dict(JOB) for _ in range(batch)]
    events = [(f"room:bench{i % 16}", "message", EVENT_DATA) for i in range(batch)]
    items = 0

    def one() -> int:
        if args.scenario == "py-submit":
            gateway.submit(JOB["type"], JOB["data"])  # type: ignore[attr-defined]
            return 1
        if args.scenario == "py-submit-many":
            return len(gateway.submit_many(jobs))  # type: ignore[attr-defined]
        if args.scenario == "py-publish":
            gateway.publish("room:bench1", "message", EVENT_DATA)
            return 1
        return len(gateway.publish_many(events))  # type: ignore[attr-defined]

    one()
    process = psutil.Process()
    cpu0 = sum(process.cpu_times()[:2])
    started = time.perf_counter()
    deadline = started + args.seconds
    while time.perf_counter() < deadline:
        items += one()
    elapsed = time.perf_counter() - started
    cpu = sum(process.cpu_times()[:2]) - cpu0
    print(json.dumps({"items": items, "seconds": elapsed, "client_cpu": cpu}))


# --- one measured run ------------------------------------------------------------------------


def tree_env(tree: str, redis_url: str, quiet: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(
        PYTHONPATH=str(Path(tree).resolve()),
        REDIS_URL=redis_url,
        GATEWAY_SUBMIT_RATE="0",
        GATEWAY_PUBLISH_RATE="0",
        GATEWAY_CONNECT_RATE="0",
        GATEWAY_EMBEDDED_WORKER="false",
        GATEWAY_PRESENCE_EVENTS="none",
        GATEWAY_LOG_LEVEL="warning" if quiet else "info",
        PYTHONUNBUFFERED="1",
    )
    return env


def http_plan(scenario: str, batch: int) -> tuple[str, bytes, str, int]:
    """Path, body, accepted statuses and items per request."""
    if scenario == "http-jobs":
        return "/jobs", json.dumps(JOB).encode(), "202", 1
    if scenario == "http-jobs-batch":
        return "/jobs/batch", json.dumps({"jobs": [JOB] * batch}).encode(), "202,200", batch
    if scenario == "http-publish":
        body = {"type": "message", "data": EVENT_DATA}
        return "/channels/room:bench1/events", json.dumps(body).encode(), "202,200", 1
    if scenario == "http-publish-batch":
        events = [
            {"channel": f"room:bench{i % 16}", "type": "message", "data": EVENT_DATA}
            for i in range(batch)
        ]
        return "/events/batch", json.dumps({"events": events}).encode(), "200,202", batch
    raise SystemExit(f"unknown scenario {scenario}")


def run_http(
    a: argparse.Namespace, tree: str, scenario: str, redis_url: str, tag: str
) -> dict[str, Any]:
    port = free_port()
    env = tree_env(tree, redis_url, a.quiet)
    cmd = [PY, "-m", "gateway", "serve", "--port", str(port)]
    if a.profile:
        Path(a.profile).mkdir(parents=True, exist_ok=True)
        out = Path(a.profile) / f"{scenario}-{tag}.prof"
        cmd = [PY, "-m", "cProfile", "-o", str(out), "-m", "gateway", "serve", "--port", str(port)]
    server = subprocess.Popen(
        cmd, env=env, cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: port_open(port), 20, "gateway")
        path, body, ok, per = http_plan(scenario, a.batch)
        proc = psutil.Process(server.pid)
        cpu0 = sum(proc.cpu_times()[:2])
        client_env = {**env, "PYTHONPATH": str(HERE.parent.parent)}
        clients = [
            subprocess.Popen(
                [
                    PY,
                    str(HERE),
                    "_load",
                    "--port",
                    str(port),
                    "--path",
                    path,
                    "--body",
                    body.decode(),
                    "--ok",
                    ok,
                    "--seconds",
                    str(a.seconds),
                    "--depth",
                    str(a.depth),
                ],
                env=client_env,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(a.clients)
        ]
        results = [json.loads(c.communicate(timeout=a.seconds + 60)[0]) for c in clients]
        cpu = sum(proc.cpu_times()[:2]) - cpu0
    finally:
        server.send_signal(2)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
    items = sum(r["requests"] for r in results) * per
    seconds = max(r["seconds"] for r in results)
    errors = sum(r["errors"] for r in results)
    return {
        "rate": items / seconds,
        "cpu_us": cpu / items * 1e6 if items else float("nan"),
        "errors": errors,
    }


def run_python(
    a: argparse.Namespace, tree: str, scenario: str, redis_url: str, tag: str
) -> dict[str, Any]:
    env = tree_env(tree, redis_url, True)
    env["PYTHONPATH"] = f"{Path(tree).resolve()}"
    cmd = [
        PY,
        str(HERE),
        "_python",
        "--scenario",
        scenario,
        "--seconds",
        str(a.seconds),
        "--batch",
        str(a.batch),
    ]
    out = subprocess.run(
        cmd, env=env, cwd=tree, capture_output=True, text=True, timeout=a.seconds + 60
    )
    if out.returncode != 0:
        return {"rate": float("nan"), "cpu_us": float("nan"), "errors": out.stderr[-300:]}
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "rate": result["items"] / result["seconds"],
        "cpu_us": result["client_cpu"] / max(result["items"], 1) * 1e6,
        "errors": 0,
    }


def run_bullmq(a: argparse.Namespace, scenario: str, redis_url: str) -> dict[str, Any]:
    """BullMQ's `add` / `addBulk` (benchpeers' bench.js) on the same Redis, for the ratio."""
    api = "addBulk" if scenario == "bullmq-addbulk" else "add"
    cmd = [
        "node",
        a.bullmq,
        "enqueue",
        "--redis",
        redis_url,
        "--api",
        api,
        "--seconds",
        str(a.seconds),
        "--batch",
        str(a.batch),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=a.seconds + 60)
    if out.returncode != 0:
        return {"rate": float("nan"), "cpu_us": float("nan"), "errors": out.stderr[-300:]}
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "rate": result["count"] / result["seconds"],
        "cpu_us": result["cpu_s"] / max(result["count"], 1) * 1e6,
        "errors": 0,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in {"_load", "_python"}:
        p = argparse.ArgumentParser()
        p.add_argument("mode")
        p.add_argument("--port", type=int, default=0)
        p.add_argument("--path", default="")
        p.add_argument("--body", default="")
        p.add_argument("--ok", default="202")
        p.add_argument("--seconds", type=float, default=3)
        p.add_argument("--depth", type=int, default=1)
        p.add_argument("--scenario", default="")
        p.add_argument("--batch", type=int, default=100)
        sub = p.parse_args()
        (load if sub.mode == "_load" else python_load)(sub)
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--trees", default=".", help="comma-separated source trees to compare")
    p.add_argument("--scenarios", default="http-jobs,http-publish")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--clients", type=int, default=3, help="load processes (HTTP scenarios)")
    p.add_argument("--depth", type=int, default=1, help="requests in flight per connection")
    p.add_argument("--batch", type=int, default=100, help="items per batch request / call")
    p.add_argument(
        "--quiet",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="gateway log level warning (no access log); --no-quiet: info",
    )
    p.add_argument("--profile", default="", help="directory for cProfile output of the gateway")
    p.add_argument(
        "--bullmq",
        default="",
        help="benchpeers' bench/node/bullmq/bench.js, for "
        "the bullmq-add and bullmq-addbulk scenarios (node and its modules installed)",
    )
    a = p.parse_args()
    trees = [t for t in a.trees.split(",") if t]
    scenarios = [s for s in a.scenarios.split(",") if s]
    with tempfile.TemporaryDirectory() as tmp:
        rport = free_port()
        redis = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(rport),
                "--bind",
                "127.0.0.1",
                "--dir",
                tmp,
                "--save",
                "",
                "--appendonly",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_for(lambda: port_open(rport), 10, "redis")
            url = f"redis://127.0.0.1:{rport}/0"
            table: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for r in range(a.rounds):
                for scenario in scenarios:
                    order = trees if r % 2 == 0 else list(reversed(trees))
                    if scenario.startswith("bullmq"):
                        order = ["bullmq"]
                    for tree in order:
                        subprocess.run(
                            ["redis-cli", "-p", str(rport), "flushall"],
                            capture_output=True,
                            check=True,
                        )
                        if scenario.startswith("bullmq"):
                            result = run_bullmq(a, scenario, url)
                        else:
                            run = run_http if scenario.startswith("http") else run_python
                            result = run(a, tree, scenario, url, f"{Path(tree).name}-{r}")
                        table.setdefault((scenario, tree), []).append(result)
                        print(
                            f"round {r} {scenario:20} {tree:24} {result['rate']:>10.0f}/s "
                            f"{result['cpu_us']:>8.1f} µs/item errors={result['errors']}",
                            file=sys.stderr,
                            flush=True,
                        )
        finally:
            redis.terminate()
            redis.wait(10)
    print(f"\n{'scenario':20} {'tree':24} {'median/s':>10} {'range/s':>17} {'µs CPU/item':>12}")
    for (scenario, tree), runs in table.items():
        rates = [x["rate"] for x in runs]
        cpus = [x["cpu_us"] for x in runs]
        print(
            f"{scenario:20} {tree:24} {statistics.median(rates):>10.0f} "
            f"{min(rates):>8.0f}-{max(rates):<8.0f} {statistics.median(cpus):>12.1f}"
        )


if __name__ == "__main__":
    main()
