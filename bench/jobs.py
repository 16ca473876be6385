"""`python -m bench jobs`: the gateway's job queue beside BullMQ, Celery, RQ and arq.

    python -m bench jobs                       # enqueue, drain, roundtrip, publish; 3 rounds
    python -m bench jobs --quick               # the same comparison in ~5 minutes
    python -m bench jobs --scenarios enqueue,drain --systems gateway,bullmq --rounds 5

Every measurement runs on its own fresh `redis-server` (temporary directory, free port), the
systems take turns within each round, and `--rounds` repeats the whole sequence; the table shows
the median over rounds and the range. CPU per job is reported per process role (producer,
gateway server, worker(s), Redis), from psutil over the measured window. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.run import (
    BENCH,
    GATEWAY_LIMITS,
    PY,
    ROOT,
    Redis,
    Server,
    cpu_s,
    log,
    spawn,
    stop,
    stop_all,
    tree,
)

SYSTEMS = ("gateway", "bullmq", "celery", "rq", "arq")
GATEWAY_STREAMS = ("gw:{jobs}", *(f"gw:{{jobs:{p}}}" for p in range(1, 16)))
"""The gateway's job streams: queue partition 0 and any others (`GATEWAY_QUEUE_PARTITIONS`
up to 16, if the environment sets it; the benchmark itself runs the default)."""
SCENARIOS = ("enqueue", "drain", "roundtrip", "publish")
BULLMQ_DIR = BENCH / "node" / "bullmq"
BIN = Path(PY).parent
CLIENT = BENCH / "jobs_client.py"
PEER_APIS = {
    "bullmq": ["add", "addBulk"],
    "celery": ["delay"],
    "rq": ["enqueue", "enqueue-many"],
    "arq": ["enqueue-job"],
}
API_LABELS = {
    "http": "POST /jobs",
    "http-batch": "POST /jobs/batch",
    "submit": "gateway.submit",
    "submit-many": "gateway.submit_many",
    "create": "create_job() (internal)",
    "add": "add",
    "addBulk": "addBulk",
    "delay": "delay",
    "enqueue": "enqueue",
    "enqueue-many": "enqueue_many",
    "enqueue-job": "enqueue_job",
}


# --- systems -----------------------------------------------------------------------------------


def unavailable(system: str) -> str | None:
    """Why `system` cannot run here (None: it can). BullMQ is installed on first use."""
    if system == "bullmq":
        if shutil.which("node") is None or shutil.which("npm") is None:
            return "BullMQ needs node and npm on PATH"
        if not (BULLMQ_DIR / "node_modules" / "bullmq").exists():
            log("installing BullMQ (npm install in bench/node/bullmq)")
            done = subprocess.run(
                ["npm", "install", "--no-audit", "--no-fund", "--silent"],
                cwd=BULLMQ_DIR,
                timeout=300,
                check=False,
            )
            if done.returncode != 0:
                return "npm install in bench/node/bullmq failed"
        return None
    module = {"celery": "celery", "rq": "rq", "arq": "arq", "gateway": "gateway"}[system]
    if importlib.util.find_spec(module) is None:
        return f"{system} is not installed in this venv (pip install -e '.[dev]')"
    return None


PROBE = """
import json, gateway
from gateway.jobs.registry import REGISTRY
REGISTRY.load_modules(())
names = ("submit", "submit_many", "publish_many")
print(json.dumps({"noop": "noop" in REGISTRY.names(), **{n: hasattr(gateway, n) for n in names}}))
"""


@dataclass
class Gateway:
    """One gateway source checkout under test (`--tree`; this checkout by default) and what
    its code has: `noop` (else jobs are `sleep` with 0 s, one step), `submit`, `submit_many`,
    `publish_many`."""

    system: str
    source: Path
    job_type: str
    has: dict[str, bool]

    @classmethod
    def probe(cls, system: str, source: Path) -> Gateway:
        env = {**os.environ, "PYTHONPATH": str(source)}
        done = subprocess.run(
            [PY, "-c", PROBE], cwd=source, env=env, capture_output=True, text=True, check=True
        )
        has = json.loads(done.stdout.strip().splitlines()[-1])
        return cls(system, source, "noop" if has.pop("noop") else "sleep", has)


TREES: dict[str, Gateway] = {}
"""The gateway systems of this run by name: `gateway`, or `gateway@<label>` per `--tree`."""


def is_gateway(system: str) -> bool:
    return system.startswith("gateway")


def parse_trees(values: list[str]) -> list[tuple[str, Path]]:
    """`--tree [LABEL=]PATH` values -> (system name, checkout); none: this checkout."""
    if not values:
        return [("gateway", ROOT)]
    out = []
    for value in values:
        label, _, path = value.rpartition("=")
        source = Path(path).resolve()
        out.append((f"gateway@{label or source.name}", source))
    return out


def route_exists(port: int, path: str, body: dict[str, Any]) -> bool:
    import httpx

    r = httpx.post(f"http://127.0.0.1:{port}{path}", json=body, timeout=10)
    return r.status_code in (200, 202, 207)


CONCURRENCY: list[int] = []
"""`--concurrency`: jobs each worker process runs at once, where the system has the setting
(gateway `GATEWAY_CONCURRENCY`, BullMQ `concurrency`, arq `max_jobs`); empty: their defaults."""


def start_worker(system: str, redis_url: str, workdir: Path, index: int) -> subprocess.Popen[Any]:
    """One worker process of `system` (a gateway's from its own checkout)."""
    log_path = workdir / f"worker{index}.log"
    if is_gateway(system):
        env = {"REDIS_URL": redis_url, **GATEWAY_LIMITS}
        if CONCURRENCY:
            env["GATEWAY_CONCURRENCY"] = str(CONCURRENCY[0])
        return spawn([PY, "-m", "gateway", "worker"], log_path, env, TREES[system].source)
    cmd, env = worker_cmd(system, redis_url, index)
    return spawn(cmd, log_path, env)


def worker_cmd(system: str, redis_url: str, index: int) -> tuple[list[str], dict[str, str]]:
    env = {"BENCH_REDIS_URL": redis_url, "PYTHONPATH": str(ROOT)}
    if CONCURRENCY:
        env["BENCH_CONCURRENCY"] = str(CONCURRENCY[0])
    if system == "celery":
        cmd = [PY, "-m", "celery", "-A", "bench.peers.celery_app", "worker", "-P", "solo"]
        cmd += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        return [*cmd, "-l", "warning", "-n", f"w{index}@bench"], env
    if system == "rq":
        return [str(BIN / "rq"), "worker", "-u", redis_url, "-q", "-n", f"w{index}", "default"], env
    if system == "arq":
        return [str(BIN / "arq"), "bench.peers.arq_worker.WorkerSettings"], env
    concurrency = ["--concurrency", str(CONCURRENCY[0])] if CONCURRENCY else []
    return ["node", str(BULLMQ_DIR / "bench.js"), "worker", "--redis", redis_url, *concurrency], env


def remaining(system: str, r: Any) -> int:
    """Jobs not yet finished (queued or running), read from Redis the way each system keeps
    them: one snapshot in one round trip."""
    pipe = r.pipeline(transaction=False)
    if is_gateway(system):
        for stream in GATEWAY_STREAMS:
            pipe.xlen(stream)
    elif system == "celery":
        pipe.llen("celery")
        pipe.hlen("unacked")
    elif system == "rq":
        pipe.llen("rq:queue:default")
        pipe.zcard("rq:wip:default")
        pipe.zcard("rq:started:default")
    elif system == "arq":
        pipe.zcard("arq:queue")
    else:
        pipe.llen("bull:bench:wait")
        pipe.llen("bull:bench:active")
    return sum(int(x) for x in pipe.execute())


# --- one run ---------------------------------------------------------------------------------


@contextmanager
def fresh_redis() -> Iterator[tuple[Redis, Path]]:
    with tempfile.TemporaryDirectory(prefix="gw-bench-jobs-") as tmp:
        workdir = Path(tmp)
        redis = Redis(workdir)
        try:
            yield redis, workdir
        finally:
            stop(redis.proc)


def client_cmd(system: str, mode: str, redis_url: str, **opts: Any) -> list[str]:
    if system == "bullmq":
        cmd = ["node", str(BULLMQ_DIR / "bench.js"), mode, "--redis", redis_url]
    else:
        kind = "gateway" if is_gateway(system) else system
        cmd = [PY, str(CLIENT), "--system", kind, "--mode", mode, "--redis-url", redis_url]
        if is_gateway(system):
            cmd += ["--job-type", TREES[system].job_type]
    for key, value in opts.items():
        if value is not None:
            cmd += [f"--{key.replace('_', '-')}", str(value)]
    return cmd


def run_client(
    system: str, cmd: list[str], watch: dict[str, list[psutil.Process]], timeout: float
) -> Any:
    """Run a producer to completion; CPU seconds of each watched role over its whole run are
    added to its JSON answer as `cpu` (the producer reports its own measured window). A
    gateway's producer runs its checkout's code (first on the path, working directory)."""
    source = TREES[system].source if is_gateway(system) else ROOT
    env = {**os.environ, "PYTHONPATH": str(source)}
    before = {role: cpu_s(ps) for role, ps in watch.items()}
    done = subprocess.run(
        cmd, cwd=source, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} failed:\n{done.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    out["cpu"] = {role: cpu_s(ps) - before[role] for role, ps in watch.items()}
    return out


def per_job_ms(cpu: float, jobs: int) -> float | None:
    return round(1000 * cpu / jobs, 4) if jobs else None


def enqueue_runs(a: argparse.Namespace, system: str) -> list[dict[str, Any]]:
    """Each API of `system`: one producer process, as fast as it goes, for `a.seconds`."""
    out = []
    with fresh_redis() as (redis, workdir):
        server = None
        apis = PEER_APIS.get(system, [])
        if is_gateway(system):
            gw = TREES[system]
            server = Server("gw-ws", redis, workdir, gw_args=[], source=gw.source)
            apis = ["http"]
            job = {"type": "noop"} if gw.job_type == "noop" else {"type": "sleep", "data": {}}
            if route_exists(server.port, "/jobs/batch", {"jobs": [job]}):
                apis.append("http-batch")
            if gw.has["submit"]:
                apis.append("submit")
            if gw.has["submit_many"]:
                apis.append("submit-many")
            if not gw.has["submit"]:
                apis.append("create")
        try:
            for api in apis:
                redis.flush()
                watch = {"redis": tree(redis.proc.pid)}
                if server is not None:
                    watch["gateway"] = server.procs()
                url = f"http://127.0.0.1:{server.port}" if server else None
                res = run_client(
                    system,
                    client_cmd(
                        system,
                        "enqueue",
                        redis.url,
                        api=api,
                        seconds=a.seconds,
                        batch=a.batch,
                        connections=a.http_connections if api == "http" else None,
                        url=url,
                    ),
                    watch,
                    a.seconds + 120,
                )
                count = res["count"]
                cpu = {"producer": res["cpu_s"], **res["cpu"]}
                if not api.startswith("http"):
                    cpu.pop("gateway", None)  # the server is idle: the producer writes to Redis
                row = {
                    "scenario": "enqueue",
                    "system": system,
                    "api": api,
                    "jobs": count,
                    "jobs_s": round(count / res["seconds"]),
                    "cpu_ms_per_job": {k: per_job_ms(v, count) for k, v in cpu.items()},
                }
                log(f"enqueue {system} {api}: {row['jobs_s']:,} jobs/s")
                out.append(row)
        finally:
            if server is not None:
                server.close()
    return out


def drain_run(a: argparse.Namespace, system: str, workers: int) -> dict[str, Any]:
    """Fill the queue with no-op jobs, start `workers` worker processes, and time the drain from
    the first finished job to the last (start-up excluded), bounded by `a.drain_seconds`."""
    import redis as redis_py

    with fresh_redis() as (redis, workdir):
        fill = run_client(
            system,
            client_cmd(
                system,
                "fill",
                redis.url,
                count=a.drain_jobs,
                seconds=a.fill_seconds,
                batch=a.batch,
            ),
            {},
            a.fill_seconds + 120,
        )
        r = redis_py.Redis.from_url(redis.url)
        total = remaining(system, r)
        if total < fill["count"] * 0.9:
            raise RuntimeError(f"{system}: filled {fill['count']} but {total} are queued")
        procs = [start_worker(system, redis.url, workdir, i) for i in range(workers)]
        try:
            samples = watch_drain(
                system, r, total, procs, redis, lambda: [p for w in procs for p in tree(w.pid)], a
            )
        finally:
            for w in procs:
                stop(w)
        t0, left0, wcpu0, rcpu0 = samples[0]
        t1, left1, wcpu1, rcpu1 = samples[-1]
        done = left0 - left1
        window = t1 - t0
        row = {
            "scenario": "drain",
            "system": system,
            "workers": workers,
            "queued": total,
            "jobs": done,
            "finished": left1 == 0,
            "seconds": round(window, 3),
            "jobs_s": round(done / window) if window > 0 else None,
            "cpu_ms_per_job": {
                "worker": per_job_ms(wcpu1 - wcpu0, done),
                "redis": per_job_ms(rcpu1 - rcpu0, done),
            },
        }
        log(
            f"drain {system} x{workers}: {row['jobs_s']} jobs/s ({done} of {total} in "
            f"{window:.2f} s)"
        )
        return row


def connected(procs: list[subprocess.Popen[Any]], port: int) -> bool:
    """Every worker process (or one of its children) holds a connection to Redis: its start-up
    (imports, the heavy part) is over."""
    for w in procs:
        conns = []
        for p in tree(w.pid):
            with contextlib.suppress(psutil.Error):
                conns += p.net_connections(kind="tcp")
        if not any(c.raddr and c.raddr.port == port for c in conns):
            return False
    return True


def watch_drain(
    system: str,
    r: Any,
    total: int,
    procs: list[subprocess.Popen[Any]],
    redis: Redis,
    worker_ps: Callable[[], list[psutil.Process]],
    a: argparse.Namespace,
) -> list[tuple[float, int, float, float]]:
    """Poll every few ms: (time, remaining, worker CPU, Redis CPU) when every worker has
    started (connected to Redis) and a job has finished, and at the end (all done, or
    `a.drain_seconds` later). Jobs finished before the window opens are not counted: a second
    worker still importing would otherwise count against the two-worker figure."""
    redis_ps = tree(redis.proc.pid)
    start_deadline = time.monotonic() + 90  # the workers' start-up, on a loaded machine
    first: tuple[float, int, float, float] | None = None
    all_up = False
    ps: list[psutil.Process] = []
    while True:
        left = remaining(system, r)
        now = time.monotonic()
        if first is None:
            all_up = all_up or connected(procs, redis.port)
            if left == 0:
                raise RuntimeError(f"{system}: drained before every worker had started")
            if all_up and left < total:
                ps = worker_ps()
                first = (now, left, cpu_s(ps), cpu_s(redis_ps))
            elif now > start_deadline:
                raise RuntimeError(f"{system}: workers not draining within 90 s of start")
            for w in procs:
                if w.poll() is not None:
                    raise RuntimeError(f"{system} worker exited with {w.returncode}")
        elif left == 0 or now - first[0] > a.drain_seconds:
            return [first, (now, left, cpu_s(ps), cpu_s(redis_ps))]
        time.sleep(0.005)


def roundtrip_run(a: argparse.Namespace, system: str) -> dict[str, Any]:
    import numpy as np

    with fresh_redis() as (redis, workdir):
        server = (
            Server("gw-ws", redis, workdir, gw_args=[], source=TREES[system].source)
            if is_gateway(system)
            else None
        )
        worker = start_worker(system, redis.url, workdir, 0)
        try:
            res = run_client(
                system,
                client_cmd(
                    system,
                    "roundtrip",
                    redis.url,
                    jobs=a.rt_jobs,
                    url=f"http://127.0.0.1:{server.port}" if server else None,
                ),
                {},
                a.rt_jobs * 10 + 120,
            )
        finally:
            stop(worker)
            if server is not None:
                server.close()
    ms = np.array(res["ms"])
    row = {
        "scenario": "roundtrip",
        "system": system,
        "jobs": len(ms),
        "ms": {
            "p50": round(float(np.percentile(ms, 50)), 2),
            "p99": round(float(np.percentile(ms, 99)), 2),
            "max": round(float(ms.max()), 2),
        },
    }
    log(f"roundtrip {system}: p50 {row['ms']['p50']} ms, p99 {row['ms']['p99']} ms")
    return row


def publish_runs(a: argparse.Namespace, system: str) -> list[dict[str, Any]]:
    from bench.run import publish_throughput

    gw = TREES[system]
    with fresh_redis() as (redis, workdir):
        ns = argparse.Namespace(
            gw_args=[],
            duration=a.seconds,
            clients=a.publishers,
            batch=a.batch,
            connections=a.http_connections,
        )
        rows = publish_throughput(ns, redis, workdir, source=gw.source, has=gw.has)
    for row in rows:
        row["system"] = system
        log(f"publish {row['via']}: {row['events_s']:,} events/s")
    return rows


# --- summary ---------------------------------------------------------------------------------


def key_of(row: dict[str, Any]) -> tuple[str, str, str]:
    sc = row["scenario"]
    if sc == "enqueue":
        return sc, row["system"], API_LABELS.get(row["api"], row["api"])
    if sc == "drain":
        return sc, row["system"], f"{row['workers']} worker{'s' if row['workers'] > 1 else ''}"
    if sc == "publish":
        return sc, row["system"], row["via"]
    return sc, row["system"], "one at a time"


def spread(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median and range over rounds for each (scenario, system, variant)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(key_of(row), []).append(row)
    out = []
    for (sc, system, variant), runs in groups.items():
        entry: dict[str, Any] = {
            "scenario": sc,
            "system": system,
            "variant": variant,
            "rounds": len(runs),
        }
        if sc == "enqueue":
            entry["kind"] = "batch" if runs[0]["api"] in BATCH_APIS else "single"
        if sc == "roundtrip":
            entry["p50_ms"] = spread([r["ms"]["p50"] for r in runs])
            entry["p99_ms"] = spread([r["ms"]["p99"] for r in runs])
        else:
            rate = "events_s" if sc == "publish" else "jobs_s"
            entry["rate"] = spread([r[rate] for r in runs if r.get(rate) is not None])
            cpu: dict[str, list[float]] = {}
            for r in runs:
                per = r.get("cpu_ms_per_event") or r.get("cpu_ms_per_job") or {}
                for role, v in per.items():
                    if v is not None:
                        cpu.setdefault(role, []).append(v)
            entry["cpu_ms"] = {role: round(statistics.median(v), 4) for role, v in cpu.items()}
            if sc == "drain":
                entry["finished_all"] = all(r["finished"] for r in runs)
        out.append(entry)
    return out


BATCH_APIS = frozenset({"http-batch", "submit-many", "addBulk", "enqueue-many"})
"""Enqueue APIs that take many jobs per call (compared with each other)."""


def add_ratios(summary: list[dict[str, Any]]) -> None:
    """`gateway_over_peer`: the gateway's best median of the same kind divided by this peer's
    (enqueue: one-job calls against one-job calls, batch calls against batch calls, or the
    gateway's best overall when it has no call of that kind; drain: the same worker count;
    round trip: p50 and p99). Rates: > 1 means the gateway is faster; latency: < 1 does."""
    best: dict[tuple[str, str], float] = {}
    gateways = [e["system"] for e in summary if is_gateway(e["system"])]
    reference = gateways[-1] if gateways else None

    def keep(key: tuple[str, str], value: float) -> None:
        best[key] = max(best.get(key, 0.0), value)

    for e in summary:
        if e["system"] != reference:
            continue
        if e["scenario"] == "enqueue":
            keep(("enqueue", e["kind"]), e["rate"]["median"])
            keep(("enqueue", "any"), e["rate"]["median"])
        elif e["scenario"] == "drain":
            keep(("drain", e["variant"]), e["rate"]["median"])
        elif e["scenario"] == "roundtrip":
            best[("roundtrip", "p50")] = e["p50_ms"]["median"]
            best[("roundtrip", "p99")] = e["p99_ms"]["median"]
    for e in summary:
        if is_gateway(e["system"]):
            continue
        if e["scenario"] == "roundtrip" and ("roundtrip", "p50") in best:
            e["gateway_over_peer"] = {
                q: round(best[("roundtrip", q)] / e[f"{q}_ms"]["median"], 2) for q in ("p50", "p99")
            }
            continue
        if e["scenario"] == "enqueue":
            g = best.get(("enqueue", e["kind"]), best.get(("enqueue", "any")))
        else:
            g = best.get((e["scenario"], e["variant"]))
        if g is not None and e["rate"]["median"]:
            e["gateway_over_peer"] = round(g / e["rate"]["median"], 2)


def fmt_rate(s: dict[str, float]) -> str:
    return f"{s['median']:>9,.0f} ({s['min']:,.0f}-{s['max']:,.0f})"


def table(summary: list[dict[str, Any]]) -> str:
    lines = []
    for sc in SCENARIOS:
        rows = [e for e in summary if e["scenario"] == sc]
        if not rows:
            continue
        if sc == "roundtrip":
            lines.append("\nRound trip, one job at a time (submit -> completion seen), ms")
            lines.append(f"{'system':13} {'p50 median (range)':>22} {'p99 median (range)':>22}")
            for e in rows:
                p50, p99 = e["p50_ms"], e["p99_ms"]
                ratio = e.get("gateway_over_peer")
                lines.append(
                    f"{e['system']:13} {p50['median']:>8.2f} ({p50['min']:.2f}-{p50['max']:.2f})"
                    f"{'':4} {p99['median']:>8.2f} ({p99['min']:.2f}-{p99['max']:.2f})"
                    + (f"   gw/peer: p50 {ratio['p50']}, p99 {ratio['p99']}" if ratio else "")
                )
            continue
        unit = "events/s" if sc == "publish" else "jobs/s"
        title = {
            "enqueue": "Enqueue, one producer process",
            "drain": "Drain of pre-enqueued no-op jobs (first finished -> last)",
            "publish": "Publish (gateway, one publisher process per path unless --publishers)",
        }[sc]
        lines.append(f"\n{title}: {unit} median (range); CPU ms per {unit[:-3]} by process")
        for e in rows:
            cpu = "  ".join(f"{k} {v:.3f}" for k, v in e["cpu_ms"].items())
            ratio = e.get("gateway_over_peer")
            flag = "" if e.get("finished_all", True) else "  (time-bounded: not all drained)"
            lines.append(
                f"{e['system']:13} {e['variant']:33} {fmt_rate(e['rate'])}  {cpu}"
                + (f"  gw/peer {ratio}" if ratio else "")
                + flag
            )
    return "\n".join(lines)


def grid(summary: list[dict[str, Any]]) -> str:
    """Systems as columns, the issue's rows (one-job enqueue, batch enqueue, drain with 1 and 2
    workers, round trip, publish): median (range); a peer's cell also gives gateway ÷ peer."""
    dash, times = "\u2013", "\u00d7"
    systems = list(dict.fromkeys(e["system"] for e in summary))

    def rate_cell(e: dict[str, Any], label: bool) -> str:
        r = e["rate"]
        text = f"{r['median']:,.0f} ({r['min']:,.0f}{dash}{r['max']:,.0f})"
        text = f"{e['variant']}: {text}" if label else text
        if not e.get("finished_all", True):
            text += " \u2020"
        if e.get("gateway_over_peer"):
            text += f" [{e['gateway_over_peer']}{times}]"
        return text

    rows: list[tuple[str, Callable[[dict[str, Any]], bool], bool]] = [
        (
            "enqueue, one job per call (jobs/s)",
            lambda e: e["scenario"] == "enqueue" and e["kind"] == "single",
            True,
        ),
        (
            "enqueue, batch calls (jobs/s)",
            lambda e: e["scenario"] == "enqueue" and e["kind"] == "batch",
            True,
        ),
        (
            "drain, 1 worker process (jobs/s)",
            lambda e: e["scenario"] == "drain" and e["variant"] == "1 worker",
            False,
        ),
        (
            "drain, 2 worker processes (jobs/s)",
            lambda e: e["scenario"] == "drain" and e["variant"] == "2 workers",
            False,
        ),
        ("round trip p50 / p99 (ms)", lambda e: e["scenario"] == "roundtrip", False),
        ("publish (events/s)", lambda e: e["scenario"] == "publish", True),
    ]
    lines = ["| | " + " | ".join(systems) + " |", "|---" * (len(systems) + 1) + "|"]
    for title, match, label in rows:
        cells = []
        for system in systems:
            found = [e for e in summary if e["system"] == system and match(e)]
            parts = []
            for e in found:
                if e["scenario"] == "roundtrip":
                    p50, p99 = e["p50_ms"]["median"], e["p99_ms"]["median"]
                    part = f"{p50:.1f} / {p99:.1f}"
                    ratio = e.get("gateway_over_peer")
                    if ratio:
                        part += f" [{ratio['p50']}{times} / {ratio['p99']}{times}]"
                    parts.append(part)
                else:
                    parts.append(rate_cell(e, label))
            cells.append("; ".join(parts))
        if any(cells):
            lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown(summary: list[dict[str, Any]]) -> str:
    """The summary as one Markdown table (for the README): median (range) over rounds."""
    dash, times = "\u2013", "\u00d7"
    lines = [
        "| scenario | system | API / workers | median (range) | CPU ms per job or event | "
        "gateway ÷ peer |",
        "|---|---|---|---|---|---|",
    ]
    for e in summary:
        if e["scenario"] == "roundtrip":
            p50, p99 = e["p50_ms"], e["p99_ms"]
            figure = (
                f"p50 {p50['median']:.2f} ms ({p50['min']:.2f}{dash}{p50['max']:.2f}), "
                f"p99 {p99['median']:.2f} ms ({p99['min']:.2f}{dash}{p99['max']:.2f})"
            )
            cpu = ""
            ratio = e.get("gateway_over_peer")
            ratio_text = f"p50 {ratio['p50']}{times}, p99 {ratio['p99']}{times}" if ratio else ""
        else:
            r = e["rate"]
            unit = "events/s" if e["scenario"] == "publish" else "jobs/s"
            figure = f"{r['median']:,.0f} {unit} ({r['min']:,.0f}{dash}{r['max']:,.0f})"
            if not e.get("finished_all", True):
                figure += " †"
            cpu = ", ".join(f"{k} {v:.2f}" for k, v in e["cpu_ms"].items())
            ratio_text = f"{e['gateway_over_peer']}{times}" if e.get("gateway_over_peer") else ""
        variant = e["variant"]
        lines.append(
            f"| {e['scenario']} | {e['system']} | {variant} | {figure} | {cpu} | {ratio_text} |"
        )
    return "\n".join(lines) + "\n"


def plot(summary: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {
        **{
            name: ("#1f77b4", "#17becf", "#7f7f7f", "#bcbd22")[i % 4]
            for i, name in enumerate(TREES)
        },
        "bullmq": "#d62728",
        "celery": "#2ca02c",
        "rq": "#9467bd",
        "arq": "#ff7f0e",
    }
    panels = [
        ("enqueue", "Enqueue, one producer (jobs/s, log)"),
        ("drain", "Drain no-op jobs (jobs/s, log)"),
        ("roundtrip", "Round trip p50 / p99 (ms)"),
        ("publish", "Gateway publish (events/s, log)"),
    ]
    panels = [(sc, t) for sc, t in panels if any(e["scenario"] == sc for e in summary)]
    if not panels:
        return
    cols = 2 if len(panels) > 1 else 1
    rows_n = (len(panels) + 1) // 2
    fig, grid = plt.subplots(rows_n, cols, figsize=(6.4 * cols, 4.4 * rows_n), squeeze=False)
    axes = [ax for row in grid for ax in row]
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    for ax, (sc, name) in zip(axes, panels, strict=False):
        rows = [e for e in summary if e["scenario"] == sc]
        labels = [
            e["variant"] if sc == "publish" else f"{e['system']}: {e['variant']}" for e in rows
        ]
        ys = range(len(rows))
        if sc == "roundtrip":
            p50 = [e["p50_ms"]["median"] for e in rows]
            p99 = [e["p99_ms"]["median"] for e in rows]
            ax.barh(ys, p99, color=[colors[e["system"]] for e in rows], alpha=0.35, label="p99")
            ax.barh(ys, p50, color=[colors[e["system"]] for e in rows], label="p50")
            ax.legend(fontsize=7)
            labels = [e["system"] for e in rows]
        else:
            med = [e["rate"]["median"] for e in rows]
            lo = [m - e["rate"]["min"] for m, e in zip(med, rows, strict=True)]
            hi = [e["rate"]["max"] - m for m, e in zip(med, rows, strict=True)]
            ax.barh(
                ys,
                med,
                xerr=[lo, hi],
                color=[colors[e["system"]] for e in rows],
                error_kw={"elinewidth": 0.8, "capsize": 2},
            )
            ax.set_xscale("log")
            ax.set_xlim(10, max(e["rate"]["max"] for e in rows) * 4)
            for y, m, e in zip(ys, med, rows, strict=True):
                ax.text(max(m, e["rate"]["max"]), y, f"  {m:,.0f}", va="center", fontsize=7)
        ax.set_yticks(list(ys))
        ax.set_yticklabels(labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(name, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", linewidth=0.3, alpha=0.5)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- command line ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench jobs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="short runs, 2 rounds: ~5 minutes")
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--rounds", type=int, default=None, help="alternations (default 3; quick 2)")
    p.add_argument("--seconds", type=float, default=None, help="enqueue/publish: per API")
    p.add_argument("--drain-jobs", type=int, default=None, help="drain: jobs pre-enqueued")
    p.add_argument("--drain-seconds", type=float, default=None, help="drain: time bound")
    p.add_argument("--fill-seconds", type=float, default=None, help="drain: fill time bound")
    p.add_argument("--rt-jobs", type=int, default=None, help="round trip: jobs")
    p.add_argument("--batch", type=int, default=100, help="jobs/events per batch call")
    p.add_argument("--publishers", type=int, default=1, help="publish: producer processes")
    p.add_argument(
        "--http-connections",
        type=int,
        default=1,
        help="POST /jobs and POST /channels/{ch}/events: requests in flight per producer, each "
        "on its own keep-alive connection (default 1: one request at a time)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="drain: jobs per worker process at once (gateway, BullMQ, arq; default: theirs)",
    )
    p.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="[LABEL=]PATH",
        help="run the gateway from this source checkout (repeatable: each one is a system, "
        "`gateway@LABEL`, taking its turn like the peers; ratios to the peers use the last)",
    )
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None, help="also write the PNG here")
    p.add_argument(
        "--from",
        dest="from_json",
        type=Path,
        default=None,
        help="measure nothing: rewrite the table, table.md and PNG of this results.json",
    )
    a = p.parse_args(argv)
    if a.from_json is not None:
        report(json.loads(a.from_json.read_text()), a.from_json.parent, a.plot)
        return
    quick = a.quick
    if a.concurrency:
        CONCURRENCY[:] = [a.concurrency]
    a.rounds = a.rounds or (2 if quick else 3)
    a.seconds = a.seconds or (1.5 if quick else 3.0)
    a.drain_jobs = a.drain_jobs or (6000 if quick else 20_000)
    a.drain_seconds = a.drain_seconds or (5.0 if quick else 15.0)
    a.fill_seconds = a.fill_seconds or (6.0 if quick else 20.0)
    a.rt_jobs = a.rt_jobs or (100 if quick else 300)
    scenarios = [s for s in a.scenarios.split(",") if s]
    systems = [s for s in a.systems.split(",") if s]
    for s in scenarios:
        if s not in SCENARIOS:
            p.error(f"unknown scenario {s!r}; of {', '.join(SCENARIOS)}")
    for s in systems:
        if s not in SYSTEMS:
            p.error(f"unknown system {s!r}; of {', '.join(SYSTEMS)}")
    skipped = {}
    for s in list(systems):
        why = unavailable(s)
        if why:
            log(f"skipping {s}: {why}")
            skipped[s] = why
            systems.remove(s)
    if "gateway" in systems:
        at = systems.index("gateway")
        trees = parse_trees(a.tree)
        for name, source in trees:
            if not (source / "gateway" / "__main__.py").exists():
                p.error(f"--tree {source}: not a gateway source checkout")
            TREES[name] = Gateway.probe(name, source)
            if TREES[name].job_type != "noop":
                log(f"{name} has no `noop` job type: its jobs are `sleep` with 0 s, 1 step")
        systems[at : at + 1] = [name for name, _ in trees]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = a.out or BENCH / "results" / f"jobs-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    load_before = [round(x, 1) for x in os.getloadavg()]
    t_begin = time.monotonic()
    try:
        for rnd in range(a.rounds):
            order = systems[rnd % len(systems) :] + systems[: rnd % len(systems)]
            log(f"round {rnd + 1}/{a.rounds}: {', '.join(order)}")
            for sc in scenarios:
                for system in order:
                    try:
                        if sc == "publish":
                            if is_gateway(system):
                                rows.extend(tag(publish_runs(a, system), rnd))
                        elif sc == "enqueue":
                            rows.extend(tag(enqueue_runs(a, system), rnd))
                        elif sc == "drain":
                            for k in (1, 2):
                                rows.append(tag([drain_run(a, system, k)], rnd)[0])
                        else:
                            rows.append(tag([roundtrip_run(a, system)], rnd)[0])
                    except (RuntimeError, subprocess.TimeoutExpired) as exc:
                        log(f"{sc} {system} failed: {exc}")
                        rows.append(
                            {
                                "scenario": "error",
                                "system": system,
                                "of": sc,
                                "round": rnd,
                                "error": str(exc)[-2000:],
                            }
                        )
    finally:
        stop_all()
    meta = {
        "date": stamp,
        "command": "python -m bench jobs " + " ".join(sys.argv[2:] if argv is None else argv),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_at_start": load_before,
            "load_average": [round(x, 1) for x in os.getloadavg()],
        },
        "gateway_trees": {
            name: {"source": str(gw.source), "job_type": gw.job_type, "has": gw.has}
            for name, gw in TREES.items()
        },
        "rounds": a.rounds,
        "skipped": skipped,
        "elapsed_s": round(time.monotonic() - t_begin, 1),
    }
    report({"meta": meta, "runs": rows}, out, a.plot)


def shown_command(command: str) -> str:
    """The command without where its output went (`--out`, `--plot`)."""
    words = command.split()
    kept = []
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word in ("--out", "--plot"):
            skip = True
        elif not word.startswith(("--out=", "--plot=")):
            kept.append(word)
    return " ".join(kept)


def report(doc: dict[str, Any], out: Path, also_plot: Path | None) -> None:
    """Summarize `doc["runs"]`, write results.json, table.md and jobs.png into `out`, print."""
    rows = doc["runs"]
    meta = doc["meta"]
    TREES.update(
        {
            name: Gateway(name, Path(t["source"]), t["job_type"], t["has"])
            for name, t in meta.get("gateway_trees", {}).items()
            if name not in TREES
        }
    )
    summary = summarize([r for r in rows if r["scenario"] != "error"])
    add_ratios(summary)
    doc = {"meta": meta, "summary": summary, "runs": rows}
    (out / "results.json").write_text(json.dumps(doc, indent=1))
    (out / "table.md").write_text(grid(summary) + "\n" + markdown(summary))
    load = meta["machine"]["load_average_at_start"][0], meta["machine"]["load_average"][0]
    rounds = meta.get("rounds") or 1 + max((r.get("round", 0) for r in rows), default=0)
    title = (
        f"{shown_command(meta['command'])} · {meta['date']} · {meta['machine']['cpus']} CPUs · "
        f"load average {load[0]} at start, {load[1]} at end · median of {rounds} round(s), "
        "bars = range"
    )
    plot(summary, out / "jobs.png", title)
    if also_plot:
        plot(summary, also_plot, title)
    print(table(summary))
    errors = [r for r in rows if r["scenario"] == "error"]
    for e in errors:
        print(f"FAILED: {e['of']} {e['system']} round {e['round'] + 1}: {e['error'][-300:]}")
    print(
        f"\nJSON: {out / 'results.json'}\nPNG:  {out / 'jobs.png'}\nMarkdown: {out / 'table.md'}"
        f"  ({meta.get('elapsed_s')} s)"
    )


def tag(rows: list[dict[str, Any]], rnd: int) -> list[dict[str, Any]]:
    for row in rows:
        row["round"] = rnd
    return rows
