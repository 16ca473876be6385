"""One Redis vs a 3-shard Redis Cluster: publish and job throughput, and fan-out by gateways.

    python -m bench cluster                              # all three parts
    python -m bench cluster --parts publish,jobs --rounds 3
    python -m bench cluster --parts fanout --gateways 1,2,4

Everything runs on 127.0.0.1 and is started here, in a temporary directory:

- *one*: one `redis-server` (AOF on, fsync every second);
- *cluster*: `tests.redis_cluster.LocalRedisCluster`, 3 masters (AOF on, fsync every second;
  `--replicas 1` adds a replica to each), made with `redis-cli --cluster create`.

Parts, each run on *one* and on *cluster* in turn (`--rounds` alternations; the ratio is the
median of each round's cluster/one ratio, so both sides of a ratio ran under the same load):

- `publish`: `--publishers` processes calling `gateway.publish` in a loop for `--duration`
  seconds, round-robin over `--channels` channels (bench/publisher.py): events/s summed;
- `publish_many`: the same with `gateway.publish_many` batches of `--batch` events (one
  pipeline per batch; on the cluster one per master, sent to all at once), where this tree
  has it;
- `jobs`: `--jobs` no-op jobs (type `noop`, or `sleep` 0 s where this tree has no `noop`)
  stored and queued first (`create_job`, as `POST /jobs` does), then `--workers`
  `gateway worker` processes with `GATEWAY_QUEUE_PARTITIONS=--partitions` drain them: jobs/s
  from 10 % to 90 % done (counted from the consumer group of every queue partition);
- `fanout` (cluster only): bench/run.py's fan-out (`-n` WebSocket clients on one channel,
  stepped offered rates) against `gateway serve --workers K` for each K in `--gateways`:
  the sustainable deliveries/s per K and its ratio to K=1.

CPU seconds per process (Redis nodes, publishers, workers, gateways) are measured over each
part and reported as % of one core: on a 2-core machine everything shares the same cores, and
that is what stands between the cluster and linear scaling. The client CPU per event or job
(`publisher_cpu_us_per_event`, `worker_cpu_ms_per_job`) is reported too: unlike throughput it
hardly depends on what else the machine runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from bench.run import (
    BENCH,
    PY,
    ROOT,
    cpu_s,
    fanout,
    free_port,
    log,
    port_open,
    spawn,
    stop,
    stop_all,
    wait_for,
)


class OneRedis:
    """One redis-server with the cluster nodes' persistence (AOF, fsync every second)."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            sys.exit("redis-server is not on PATH (apt-get install redis-server)")
        self.port = free_port()
        directory = workdir / "one-redis"
        directory.mkdir()
        self.proc = spawn(
            [
                *(binary, "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--dir", str(directory), "--save", "", "--appendonly", "yes"),
                *("--loglevel", "warning"),
            ],
            workdir / "one-redis.log",
        )
        wait_for(lambda: port_open(self.port), 10, "redis-server")

    name = "one"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def pids(self) -> list[int]:
        return [self.proc.pid]

    def flush(self) -> None:
        import redis

        client = redis.Redis(port=self.port)
        client.flushall()
        client.close()

    def calls(self) -> dict[str, int]:
        import redis

        client = redis.Redis(port=self.port)
        try:
            return command_calls([client.info("commandstats")])
        finally:
            client.close()

    def close(self) -> None:
        stop(self.proc)


class ClusterRedis:
    """`LocalRedisCluster` (tests/redis_cluster.py), 3 masters and `replicas` each."""

    name = "cluster"

    def __init__(self, workdir: Path, replicas: int) -> None:
        from tests.redis_cluster import LocalRedisCluster

        self.cluster = LocalRedisCluster(workdir / "cluster", replicas=replicas)
        self.cluster.start()

    @property
    def url(self) -> str:
        return self.cluster.url

    def pids(self) -> list[int]:
        return [node.process.pid for node in self.cluster.nodes if node.process is not None]

    def flush(self) -> None:
        self.cluster.flush()

    def calls(self) -> dict[str, int]:
        stats = []
        for node in self.cluster.nodes:
            client = node.client()
            try:
                stats.append(client.info("commandstats"))
            finally:
                client.close()
        return command_calls(stats)

    def close(self) -> None:
        self.cluster.stop()

    @property
    def proc(self) -> Any:
        """bench.run.fanout reads one Redis process's CPU: the first master's here."""
        return self.cluster.masters()[0].process


Redis = OneRedis | ClusterRedis


def command_calls(stats: list[dict[str, Any]]) -> dict[str, int]:
    """Commands executed, by name, summed over nodes (`INFO commandstats`)."""
    total: dict[str, int] = {}
    for node in stats:
        for name, value in node.items():
            command = name.removeprefix("cmdstat_")
            total[command] = total.get(command, 0) + int(value["calls"])
    return total


BENCH_OWN_COMMANDS = frozenset({"info", "ping", "flushall", "script|flush", "xinfo|groups"})
"""What this script sends itself (its progress polling among them), left out of the counts."""


def calls_per(before: dict[str, int], after: dict[str, int], count: int) -> dict[str, float]:
    """Commands per event or job (those above 0.05), most frequent first."""
    rates = {name: (after[name] - before.get(name, 0)) / max(count, 1) for name in after}
    return {
        name: round(rate, 2)
        for name, rate in sorted(rates.items(), key=lambda item: -item[1])
        if rate >= 0.05 and name not in BENCH_OWN_COMMANDS
    }


def processes(pids: list[int]) -> list[psutil.Process]:
    return [psutil.Process(pid) for pid in pids]


def cpu_each(procs: list[psutil.Process]) -> list[float]:
    return [cpu_s([p]) for p in procs]


def percent(before: list[float], after: list[float], wall: float) -> list[int]:
    return [round(100 * (b - a) / wall) for a, b in zip(before, after, strict=True)]


# --- publish ---------------------------------------------------------------------------------


def publish_part(a: argparse.Namespace, redis: Redis) -> dict[str, Any]:
    redis.flush()
    nodes = processes(redis.pids())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    channel = "room:bench-{i}"
    cmd = [PY, str(BENCH / "publisher.py"), "--target", "gateway", "--channel", channel]
    cmd += ["--channels", str(a.channels), "--rate", "0", "--duration", str(a.duration)]
    cmd += ["--redis-url", redis.url]
    calls0 = redis.calls()
    before, t0 = cpu_each(nodes), time.monotonic()
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(a.publishers)
    ]
    results = []
    for proc in procs:
        stdout, _ = proc.communicate(timeout=a.duration + 60)
        if proc.returncode != 0:
            raise RuntimeError(f"publisher failed on {redis.name}")
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    wall = time.monotonic() - t0
    events_s = round(sum(r["achieved_rate"] for r in results))
    events = sum(r["count"] for r in results) + len(results)  # and one warm-up each
    result = {
        "part": "publish",
        "redis": redis.name,
        "publishers": a.publishers,
        "channels": a.channels,
        "events_s": events_s,
        "cpu_pct": {
            "redis_nodes": percent(before, cpu_each(nodes), wall),
            "publishers": [round(100 * r["cpu_s"] / a.duration) for r in results],
        },
        "redis_commands_per_event": calls_per(calls0, redis.calls(), events),
    }
    log(f"publish on {redis.name}: {events_s:,} events/s {result['cpu_pct']}")
    return result


def publish_loop(url: str, channels: int, duration: float, batch: int) -> None:
    """One publisher process of `publish_many`: batches of `batch` events round-robin over
    `channels` channels for `duration` seconds; prints a JSON summary like bench/publisher.py."""
    os.environ["REDIS_URL"] = url
    from gateway import publish_many  # type: ignore[attr-defined]

    names = [f"room:bench-{i}" for i in range(channels)]
    data = {"pad": "x" * 140}
    sent = 0
    publish_many([(names[0], "warm-up", data)])
    cpu0, t0 = time.process_time(), time.monotonic()
    while time.monotonic() - t0 < duration:
        publish_many([(names[(sent + i) % channels], "notification", data) for i in range(batch)])
        sent += batch
    wall = time.monotonic() - t0
    summary = {"count": sent, "achieved_rate": sent / wall, "cpu_s": time.process_time() - cpu0}
    print(json.dumps(summary), flush=True)


def has_publish_many() -> bool:
    import gateway

    return hasattr(gateway, "publish_many")


def publish_many_part(a: argparse.Namespace, redis: Redis) -> dict[str, Any] | None:
    """Like `publish_part`, each process sending `publish_many` batches of `--batch` events."""
    if not has_publish_many():
        log("publish_many: not in this tree (gateway.publish_many); skipped")
        return None
    redis.flush()
    nodes = processes(redis.pids())
    code = (
        "from bench.cluster import publish_loop; "
        f"publish_loop({redis.url!r}, {a.channels}, {a.duration}, {a.batch})"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    calls0 = redis.calls()
    before, t0 = cpu_each(nodes), time.monotonic()
    procs = [
        subprocess.Popen([PY, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(a.publishers)
    ]
    results = []
    for proc in procs:
        stdout, _ = proc.communicate(timeout=a.duration + 60)
        if proc.returncode != 0:
            raise RuntimeError(f"publish_many publisher failed on {redis.name}")
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    wall = time.monotonic() - t0
    events_s = round(sum(r["achieved_rate"] for r in results))
    events = sum(r["count"] for r in results) + len(results)
    result = {
        "part": "publish_many",
        "redis": redis.name,
        "publishers": a.publishers,
        "batch": a.batch,
        "channels": a.channels,
        "events_s": events_s,
        "cpu_pct": {
            "redis_nodes": percent(before, cpu_each(nodes), wall),
            "publishers": [round(100 * r["cpu_s"] / a.duration) for r in results],
        },
        "publisher_cpu_us_per_event": round(
            1e6 * sum(r["cpu_s"] for r in results) / max(sum(r["count"] for r in results), 1), 1
        ),
        "redis_commands_per_event": calls_per(calls0, redis.calls(), events),
    }
    log(f"publish_many on {redis.name}: {events_s:,} events/s {result['cpu_pct']}")
    return result


# --- jobs ------------------------------------------------------------------------------------


def job_type() -> tuple[str, dict[str, Any]]:
    from gateway.jobs.registry import REGISTRY

    REGISTRY.load_modules(())
    if REGISTRY.get("noop") is not None:
        return "noop", {}
    return "sleep", {"seconds": 0, "steps": 1}


async def enqueue(url: str, partitions: int, count: int) -> float:
    """Store and queue `count` jobs as `POST /jobs` does; returns the seconds it took."""
    from gateway.backends.url import open_backend
    from gateway.jobs.model import create_job
    from gateway.settings import Settings

    type_, data = job_type()
    backend = open_backend(Settings(redis_url=url).replace(queue_partitions=partitions))
    await backend.start()
    t0 = time.monotonic()
    try:
        for start in range(0, count, 200):
            batch = range(start, min(count, start + 200))
            await asyncio.gather(*(create_job(backend, type_, data) for _ in batch))
    finally:
        await backend.close()
    return time.monotonic() - t0


def jobs_done(url: str, partitions: int) -> Callable[[], int]:
    """A counter of the jobs the workers have finished (read and acknowledged), summed over the
    consumer group of every queue partition."""
    from redis.exceptions import ResponseError

    from gateway.backends.redis_keys import WORKER_GROUP, queue_keys
    from gateway.backends.redis_sync import sync_redis

    client = sync_redis(url)
    streams = [queue_keys(p)[0] for p in range(partitions)]

    def done() -> int:
        total = 0
        for stream in streams:
            try:
                groups = client.xinfo_groups(stream)
            except ResponseError:
                continue  # no such stream (yet)
            for group in groups:
                name = group["name"]
                if (name.decode() if isinstance(name, bytes) else name) == WORKER_GROUP:
                    total += int(group.get("entries-read") or 0) - int(group["pending"])
        return total

    return done


def jobs_part(a: argparse.Namespace, redis: Redis, workdir: Path) -> dict[str, Any]:
    redis.flush()
    type_, _data = job_type()
    calls0 = redis.calls()
    enqueue_s = asyncio.run(enqueue(redis.url, a.partitions, a.jobs))
    done = jobs_done(redis.url, a.partitions)
    env = {
        "REDIS_URL": redis.url,
        "GATEWAY_QUEUE_PARTITIONS": str(a.partitions),
        "GATEWAY_CONCURRENCY": str(a.concurrency),
        "GATEWAY_LOG_LEVEL": "warning",
    }
    calls1 = redis.calls()
    nodes = processes(redis.pids())
    workers = [
        spawn([PY, "-m", "gateway", "worker"], workdir / f"worker-{redis.name}-{i}.log", env)
        for i in range(a.workers)
    ]
    worker_ps = processes([w.pid for w in workers])
    marks: dict[str, tuple[float, int, list[float], list[float]]] = {}
    deadline = time.monotonic() + a.jobs_timeout
    try:
        while time.monotonic() < deadline:
            finished = done()
            now = time.monotonic()
            for name, share in (("from", 0.1), ("to", 0.9)):
                if name not in marks and finished >= a.jobs * share:
                    marks[name] = (now, finished, cpu_each(nodes), cpu_each(worker_ps))
            if "to" in marks:
                break
            time.sleep(0.05)
    finally:
        calls2, finished = redis.calls(), done()
        for worker in workers:
            stop(worker)
    if "to" not in marks:
        log(f"jobs on {redis.name}: only {done()} of {a.jobs} done in {a.jobs_timeout} s")
        tail = (workdir / f"worker-{redis.name}-0.log").read_text(errors="replace")[-3000:]
        log(f"worker-{redis.name}-0.log ends:\n{tail}")
        return {"part": "jobs", "redis": redis.name, "jobs_s": 0, "stalled": done()}
    (t0, n0, nodes0, workers0), (t1, n1, nodes1, workers1) = marks["from"], marks["to"]
    wall = t1 - t0
    result = {
        "part": "jobs",
        "redis": redis.name,
        "job_type": type_,
        "jobs": a.jobs,
        "workers": a.workers,
        "concurrency": a.concurrency,
        "partitions": a.partitions,
        "jobs_s": round((n1 - n0) / wall),
        "enqueue_jobs_s": round(a.jobs / enqueue_s),
        "cpu_pct": {
            "redis_nodes": percent(nodes0, nodes1, wall),
            "workers": percent(workers0, workers1, wall),
        },
        "worker_cpu_ms_per_job": round(
            1e3 * sum(b - a for a, b in zip(workers0, workers1, strict=True)) / max(n1 - n0, 1), 2
        ),
        "redis_commands_per_job": {
            "enqueue": calls_per(calls0, calls1, a.jobs),
            "run": calls_per(calls1, calls2, finished),
        },
    }
    log(f"jobs on {redis.name}: {result['jobs_s']:,} jobs/s {result['cpu_pct']}")
    return result


# --- fan-out ---------------------------------------------------------------------------------


def fanout_part(a: argparse.Namespace, redis: ClusterRedis, workdir: Path) -> list[dict[str, Any]]:
    out = []
    for gateways in a.gateways:
        redis.flush()
        options = argparse.Namespace(
            gw_args=["--workers", str(gateways)] if gateways > 1 else [],
            clients=a.clients,
            settle=1.0,
            duration=a.step,
            grace=1.0,
        )
        result = fanout(options, redis, workdir, "gw-ws", a.n, a.rates)  # type: ignore[arg-type]
        result.update(part="fanout", redis=redis.name, gateways=gateways)
        log(f"fan-out, {gateways} gateway processes: {result['sustainable_deliveries_s']}/s")
        out.append(result)
    return out


# --- report ----------------------------------------------------------------------------------


def ratios(results: list[dict[str, Any]], part: str, field: str) -> dict[str, Any] | None:
    """Per round cluster/one, in run order (each round ran one, then cluster)."""
    one = [r[field] for r in results if r["part"] == part and r["redis"] == "one"]
    cluster = [r[field] for r in results if r["part"] == part and r["redis"] == "cluster"]
    pairs = [c / o for o, c in zip(one, cluster, strict=False) if o]
    if not pairs:
        return None
    return {
        "one": one,
        "cluster": cluster,
        "ratio_per_round": [round(p, 2) for p in pairs],
        "ratio_median": round(statistics.median(pairs), 2),
    }


def report(results: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for part, field in (("publish", "events_s"), ("publish_many", "events_s"), ("jobs", "jobs_s")):
        compared = ratios(results, part, field)
        if compared:
            summary[part] = compared
    for part, field in (
        ("publish_many", "publisher_cpu_us_per_event"),
        ("jobs", "worker_cpu_ms_per_job"),
    ):
        if part in summary:
            summary[part][field] = {
                side: [r[field] for r in results if r["part"] == part and r["redis"] == side]
                for side in ("one", "cluster")
            }
    fans = [r for r in results if r["part"] == "fanout"]
    if fans:
        base = fans[0]["sustainable_deliveries_s"] or 0
        summary["fanout"] = {
            str(r["gateways"]): {
                "sustainable_deliveries_s": r["sustainable_deliveries_s"],
                "ratio_to_1": round((r["sustainable_deliveries_s"] or 0) / base, 2)
                if base
                else None,
                "connected": r["connected"],
                "steps": [
                    {
                        "offered_deliveries_s": s["offered_deliveries_s"],
                        "delivery_ratio": s["delivery_ratio"],
                        "p99_ms": s["lat_ms"]["p99"],
                        "cpu_pct": {k: s["cpu_pct"][k] for k in ("server", "clients", "publisher")},
                    }
                    for s in r["steps"]
                ],
            }
            for r in fans
        }
    return summary


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--parts", default="publish,publish_many,jobs,fanout")
    p.add_argument("--batch", type=int, default=100, help="publish_many: events per call")
    p.add_argument("--rounds", type=int, default=1, help="one/cluster alternations")
    p.add_argument("--replicas", type=int, default=0, help="replicas per cluster master")
    p.add_argument("--publishers", type=int, default=4)
    p.add_argument("--channels", type=int, default=1000)
    p.add_argument("--duration", type=float, default=5.0, help="publish: seconds")
    p.add_argument("--jobs", type=int, default=3000)
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=16, help="GATEWAY_CONCURRENCY per worker")
    p.add_argument("--partitions", type=int, default=12, help="GATEWAY_QUEUE_PARTITIONS")
    p.add_argument("--jobs-timeout", type=float, default=120.0)
    p.add_argument("--gateways", default="1,2,4", help="fan-out: gateway serve --workers K")
    p.add_argument("-n", type=int, default=500, help="fan-out: WebSocket clients")
    p.add_argument("--rates", default="20,40,80,120,160", help="fan-out: events/s per step")
    p.add_argument("--step", type=float, default=3.0, help="fan-out: seconds per step")
    p.add_argument("--clients", type=int, default=2, help="fan-out: load-client processes")
    p.add_argument("--out", type=Path, default=None, help="write the JSON here")
    a = p.parse_args(argv)
    parts = {part for part in a.parts.split(",") if part}
    a.gateways = [int(g) for g in a.gateways.split(",") if g]
    a.rates = [float(r) for r in a.rates.split(",") if r]
    results: list[dict[str, Any]] = []
    t_begin = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gw-bench-cluster-") as tmp:
        workdir = Path(tmp)
        one = OneRedis(workdir)
        cluster = ClusterRedis(workdir, a.replicas)
        try:
            for round_ in range(a.rounds):
                log(f"round {round_ + 1} of {a.rounds}")
                for redis in (one, cluster):
                    if "publish" in parts:
                        results.append(publish_part(a, redis))
                    if "publish_many" in parts and (many := publish_many_part(a, redis)):
                        results.append(many)
                    if "jobs" in parts:
                        results.append(jobs_part(a, redis, workdir))
            if "fanout" in parts:
                results.extend(fanout_part(a, cluster, workdir))
        finally:
            stop_all()
            cluster.close()
            one.close()
    summary = report(results)
    doc = {
        "command": "python -m bench cluster " + " ".join(sys.argv[2:] if argv is None else argv),
        "cpus": os.cpu_count(),
        "elapsed_s": round(time.monotonic() - t_begin, 1),
        "summary": summary,
        "results": results,
    }
    if a.out:
        a.out.write_text(json.dumps(doc, indent=1))
    print(json.dumps({k: doc[k] for k in ("command", "cpus", "elapsed_s", "summary")}, indent=1))


if __name__ == "__main__":
    main()
