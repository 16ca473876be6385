"""Drain probe: how fast `gateway worker` processes run queued `noop` jobs.

Each run starts a fresh redis-server (temporary directory, free port), starts the worker
processes, writes N job records, then queues them all in one pipeline and times until every
job was acknowledged; CPU of the workers and of Redis comes from psutil. With several source
trees (`--tree`), runs alternate between them, so their ratios come from the same conditions.

    python bench/drain_probe.py --jobs 20000 --workers 1 --rounds 3 \\
        --tree before=/tmp/queue-before --tree after=.

Every run checks a sample of jobs afterwards: status `completed`, and `job.started` then
`job.completed` in the job's history.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import psutil
import redis

PROFILE: list[str] = []
"""Set by --profile: the worker runs under cProfile, writing this file when it stops."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def queue_stream(partition: int) -> str:
    return "gw:{jobs}" if partition == 0 else f"gw:{{jobs:{partition}}}"


def partition_of(job_id: str, partitions: int) -> int:
    import zlib

    return zlib.crc32(job_id.encode()) % partitions if partitions > 1 else 0


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise TimeoutError(what)


def run_once(
    tree: Path, jobs: int, workers: int, concurrency: int, partitions: int
) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="drain-probe-"))
    port = free_port()
    server = subprocess.Popen(
        [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp),
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        wait_for(lambda: _pings(client), 10, "redis")
        env = {
            **os.environ,
            "PYTHONPATH": str(tree),
            "REDIS_URL": url,
            "GATEWAY_CONCURRENCY": str(concurrency),
            "GATEWAY_QUEUE_PARTITIONS": str(partitions),
            "GATEWAY_LOG_LEVEL": "warning",
        }
        for _ in range(workers):
            procs.append(
                subprocess.Popen(
                    [sys.executable, *PROFILE, "-m", "gateway", "worker"],
                    env=env,
                    cwd=tree,
                    stdout=subprocess.DEVNULL,
                    stderr=(tmp / f"worker{len(procs)}.log").open("wb"),
                )
            )

        def groups() -> int:
            count = 0
            for p in range(partitions):
                with contextlib.suppress(redis.ResponseError):
                    count += len(client.xinfo_groups(queue_stream(p)))
            return count

        # The group exists once the first worker reads; give the others a moment to start.
        wait_for(lambda: groups() >= partitions, 30, "workers")
        time.sleep(1.0 + workers)
        ids = [secrets.token_hex(8) for _ in range(jobs)]
        now = "2026-11-30T00:00:00.000Z"
        pipe = client.pipeline(transaction=False)
        for i, job_id in enumerate(ids):
            pipe.hset(
                f"gw:{{job:{job_id}}}:job",
                mapping={
                    "id": job_id,
                    "type": "noop",
                    "status": "queued",
                    "progress": "0.0",
                    "message": "",
                    "attempts": "0",
                    "created_at": now,
                    "updated_at": now,
                    "data": "{}",
                },
            )
            if i % 2000 == 1999:
                pipe.execute()
        pipe.execute()
        cpu_before = {p.pid: _cpu(p.pid) for p in procs}
        redis_before = _cpu(server.pid)
        began = time.perf_counter()
        pipe = client.pipeline(transaction=False)
        for job_id in ids:
            pipe.xadd(queue_stream(partition_of(job_id, partitions)), {"job": job_id})
        pipe.execute()

        def drained() -> bool:
            total = sum(client.xlen(queue_stream(p)) for p in range(partitions))
            return total == 0

        try:
            wait_for(drained, float(os.environ.get("DRAIN_TIMEOUT", "300")), "drain")
        except TimeoutError:
            for log in tmp.glob("worker*.log"):
                print(log.read_text()[-3000:], file=sys.stderr)
            raise
        elapsed = time.perf_counter() - began
        worker_cpu = sum(_cpu(p.pid) - cpu_before[p.pid] for p in procs)
        redis_cpu = _cpu(server.pid) - redis_before
        for job_id in ids[:: max(jobs // 50, 1)]:
            status = client.hget(f"gw:{{job:{job_id}}}:job", "status")
            assert status == b"completed", (job_id, status)
            history: Any = client.xrange(f"gw:{{job:{job_id}}}:log")
            types = [orjson.loads(b'{"a":1,' + f[b"e"])["type"] for _, f in history]
            assert types == ["job.started", "job.completed"], types
        return {
            "rate": jobs / elapsed,
            "worker_ms_per_job": worker_cpu * 1000 / jobs,
            "redis_ms_per_job": redis_cpu * 1000 / jobs,
        }
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        client.close()
        server.terminate()
        server.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def _cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        help="name=path[@concurrency] of a source tree (repeatable)",
    )
    parser.add_argument("--profile", help="run the worker under cProfile, stats to this file")
    args = parser.parse_args()
    if args.profile:
        PROFILE.extend(["-m", "cProfile", "-o", str(Path(args.profile).resolve())])
    trees = [tuple(t.split("=", 1)) for t in args.tree] or [("here", ".")]
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in trees}
    for round_ in range(args.rounds):
        for name, where in trees:
            # `path@concurrency` runs that tree with its own GATEWAY_CONCURRENCY.
            path, _, concurrency = where.partition("@")
            result = run_once(
                Path(path).resolve(),
                args.jobs,
                args.workers,
                int(concurrency or args.concurrency),
                args.partitions,
            )
            results[name].append(result)
            print(
                f"round {round_ + 1} {name}: {result['rate']:.0f} jobs/s, worker "
                f"{result['worker_ms_per_job']:.3f} ms/job, redis "
                f"{result['redis_ms_per_job']:.3f} ms/job",
                flush=True,
            )
    medians = {name: statistics.median(r["rate"] for r in runs) for name, runs in results.items()}
    for name, runs in results.items():
        rates = sorted(r["rate"] for r in runs)
        print(
            f"{name}: median {medians[name]:.0f} jobs/s (range {rates[0]:.0f}-{rates[-1]:.0f}),"
            f" worker {statistics.median(r['worker_ms_per_job'] for r in runs):.3f} ms/job,"
            f" redis {statistics.median(r['redis_ms_per_job'] for r in runs):.3f} ms/job"
        )
    first = trees[0][0]
    for name in medians:
        if name != first:
            print(f"{name} / {first}: {medians[name] / medians[first]:.2f}x")


if __name__ == "__main__":
    main()
