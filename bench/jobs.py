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


def gateway_job_type() -> str:
    """`noop` when this checkout's gateway has it, else `sleep` with 0 s (one progress step)."""
    from gateway.jobs.registry import REGISTRY

    REGISTRY.load_modules(())
    return "noop" if "noop" in REGISTRY.names() else "sleep"


def gateway_has(name: str) -> bool:
    import gateway

    return hasattr(gateway, name)


def route_exists(port: int, path: str, body: dict[str, Any]) -> bool:
    import httpx

    r = httpx.post(f"http://127.0.0.1:{port}{path}", json=body, timeout=10)
    return r.status_code in (200, 202, 207)


def worker_cmd(system: str, redis_url: str, index: int) -> tuple[list[str], dict[str, str]]:
    env = {"BENCH_REDIS_URL": redis_url, "PYTHONPATH": str(ROOT)}
    if system == "gateway":
        return [PY, "-m", "gateway", "worker"], {"REDIS_URL": redis_url, **GATEWAY_LIMITS}
    if system == "celery":
        cmd = [PY, "-m", "celery", "-A", "bench.peers.celery_app", "worker", "-P", "solo"]
        cmd += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        return [*cmd, "-l", "warning", "-n", f"w{index}@bench"], env
    if system == "rq":
        return [str(BIN / "rq"), "worker", "-u", redis_url, "-q", "-n", f"w{index}", "default"], env
    if system == "arq":
        return [str(BIN / "arq"), "bench.peers.arq_worker.WorkerSettings"], env
    return ["node", str(BULLMQ_DIR / "bench.js"), "worker", "--redis", redis_url], env


def remaining(system: str, r: Any) -> int:
    """Jobs not yet finished (queued or running), read from Redis the way each system keeps
    them: one snapshot in one round trip."""
    pipe = r.pipeline(transaction=False)
    if system == "gateway":
        from gateway.backends.redis_keys import queue_keys

        pipe.xlen(queue_keys(0)[0])
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
        cmd = [PY, str(CLIENT), "--system", system, "--mode", mode, "--redis-url", redis_url]
    for key, value in opts.items():
        if value is not None:
            cmd += [f"--{key.replace('_', '-')}", str(value)]
    return cmd


def run_client(cmd: list[str], watch: dict[str, list[psutil.Process]], timeout: float) -> Any:
    """Run a producer to completion; CPU seconds of each watched role over its whole run are
    added to its JSON answer as `cpu` (the producer reports its own measured window)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    before = {role: cpu_s(ps) for role, ps in watch.items()}
    done = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} failed:\n{done.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    out["cpu"] = {role: cpu_s(ps) - before[role] for role, ps in watch.items()}
    return out


def per_job_ms(cpu: float, jobs: int) -> float | None:
    return round(1000 * cpu / jobs, 4) if jobs else None


def enqueue_runs(a: argparse.Namespace, system: str, job_type: str) -> list[dict[str, Any]]:
    """Each API of `system`: one producer process, as fast as it goes, for `a.seconds`."""
    out = []
    with fresh_redis() as (redis, workdir):
        server = None
        apis = PEER_APIS.get(system, [])
        if system == "gateway":
            server = Server("gw-ws", redis, workdir, gw_args=[])
            apis = ["http"]
            job = {"type": job_type} if job_type == "noop" else {"type": "sleep", "data": {}}
            if route_exists(server.port, "/jobs/batch", {"jobs": [job]}):
                apis.append("http-batch")
            if gateway_has("submit"):
                apis.append("submit")
            if gateway_has("submit_many"):
                apis.append("submit-many")
            if not gateway_has("submit"):
                apis.append("create")
        try:
            for api in apis:
                redis.flush()
                watch = {"redis": tree(redis.proc.pid)}
                if server is not None:
                    watch["gateway"] = server.procs()
                url = f"http://127.0.0.1:{server.port}" if server else None
                res = run_client(
                    client_cmd(
                        system,
                        "enqueue",
                        redis.url,
                        api=api,
                        seconds=a.seconds,
                        batch=a.batch,
                        job_type=job_type if system == "gateway" else None,
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


def drain_run(a: argparse.Namespace, system: str, workers: int, job_type: str) -> dict[str, Any]:
    """Fill the queue with no-op jobs, start `workers` worker processes, and time the drain from
    the first finished job to the last (start-up excluded), bounded by `a.drain_seconds`."""
    import redis as redis_py

    with fresh_redis() as (redis, workdir):
        fill = run_client(
            client_cmd(
                system,
                "fill",
                redis.url,
                count=a.drain_jobs,
                seconds=a.fill_seconds,
                batch=a.batch,
                job_type=job_type if system == "gateway" else None,
            ),
            {},
            a.fill_seconds + 120,
        )
        r = redis_py.Redis.from_url(redis.url)
        total = remaining(system, r)
        if total < fill["count"] * 0.9:
            raise RuntimeError(f"{system}: filled {fill['count']} but {total} are queued")
        procs = []
        for i in range(workers):
            cmd, env = worker_cmd(system, redis.url, i)
            procs.append(spawn(cmd, workdir / f"worker{i}.log", env))
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


def roundtrip_run(a: argparse.Namespace, system: str, job_type: str) -> dict[str, Any]:
    import numpy as np

    with fresh_redis() as (redis, workdir):
        server = Server("gw-ws", redis, workdir, gw_args=[]) if system == "gateway" else None
        cmd, env = worker_cmd(system, redis.url, 0)
        worker = spawn(cmd, workdir / "worker.log", env)
        try:
            res = run_client(
                client_cmd(
                    system,
                    "roundtrip",
                    redis.url,
                    jobs=a.rt_jobs,
                    job_type=job_type if system == "gateway" else None,
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


def publish_runs(a: argparse.Namespace) -> list[dict[str, Any]]:
    from bench.run import publish_throughput

    with fresh_redis() as (redis, workdir):
        ns = argparse.Namespace(gw_args=[], duration=a.seconds, clients=a.publishers, batch=a.batch)
        rows = publish_throughput(ns, redis, workdir)
    for row in rows:
        row["system"] = "gateway"
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
        return sc, "gateway", row["via"]
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

    def keep(key: tuple[str, str], value: float) -> None:
        best[key] = max(best.get(key, 0.0), value)

    for e in summary:
        if e["system"] != "gateway":
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
        if e["system"] == "gateway":
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
            lines.append(f"{'system':8} {'p50 median (range)':>22} {'p99 median (range)':>22}")
            for e in rows:
                p50, p99 = e["p50_ms"], e["p99_ms"]
                ratio = e.get("gateway_over_peer")
                lines.append(
                    f"{e['system']:8} {p50['median']:>8.2f} ({p50['min']:.2f}-{p50['max']:.2f})"
                    f"{'':4} {p99['median']:>8.2f} ({p99['min']:.2f}-{p99['max']:.2f})"
                    + (
                        f"   gateway / this: p50 {ratio['p50']}, p99 {ratio['p99']}"
                        if ratio
                        else ""
                    )
                )
            continue
        unit = "events/s" if sc == "publish" else "jobs/s"
        title = {
            "enqueue": "Enqueue, one producer process",
            "drain": "Drain of pre-enqueued no-op jobs (first finished -> last)",
            "publish": "Publish (gateway)",
        }[sc]
        lines.append(f"\n{title}: {unit} median (range); CPU ms per {unit[:-3]} by process")
        for e in rows:
            cpu = "  ".join(f"{k} {v:.3f}" for k, v in e["cpu_ms"].items())
            ratio = e.get("gateway_over_peer")
            flag = "" if e.get("finished_all", True) else "  (time-bounded: not all drained)"
            lines.append(
                f"{e['system']:8} {e['variant']:28} {fmt_rate(e['rate'])}  {cpu}"
                + (f"  gateway/this {ratio}" if ratio else "")
                + flag
            )
    return "\n".join(lines)


def plot(summary: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {
        "gateway": "#1f77b4",
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
            for y, m in zip(ys, med, strict=True):
                ax.text(m, y, f"  {m:,.0f}", va="center", fontsize=7)
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
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None, help="also write the PNG here")
    a = p.parse_args(argv)
    quick = a.quick
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
    job_type = gateway_job_type()
    if job_type != "noop":
        log("this gateway has no `noop` job type: gateway jobs are `sleep` with 0 s, 1 step")
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
                if sc == "publish":
                    if "gateway" in systems:
                        rows.extend(tag(publish_runs(a), rnd))
                    continue
                for system in order:
                    try:
                        if sc == "enqueue":
                            rows.extend(tag(enqueue_runs(a, system, job_type), rnd))
                        elif sc == "drain":
                            for k in (1, 2):
                                rows.append(tag([drain_run(a, system, k, job_type)], rnd)[0])
                        else:
                            rows.append(tag([roundtrip_run(a, system, job_type)], rnd)[0])
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
    summary = summarize([r for r in rows if r["scenario"] != "error"])
    add_ratios(summary)
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
        "gateway_job_type": job_type,
        "skipped": skipped,
        "elapsed_s": round(time.monotonic() - t_begin, 1),
    }
    doc = {"meta": meta, "summary": summary, "runs": rows}
    (out / "results.json").write_text(json.dumps(doc, indent=1))
    load = meta["machine"]["load_average"][0]  # type: ignore[index]
    title = (
        f"{meta['command']} · {stamp} · {os.cpu_count()} CPUs · load {load}"
        f" · median of {a.rounds} round(s), bars = range"
    )
    plot(summary, out / "jobs.png", title)
    if a.plot:
        plot(summary, a.plot, title)
    print(table(summary))
    errors = [r for r in rows if r["scenario"] == "error"]
    for e in errors:
        print(f"FAILED: {e['of']} {e['system']} round {e['round'] + 1}: {e['error'][-300:]}")
    print(f"\nJSON: {out / 'results.json'}\nPNG:  {out / 'jobs.png'}  ({meta['elapsed_s']} s)")


def tag(rows: list[dict[str, Any]], rnd: int) -> list[dict[str, Any]]:
    for row in rows:
        row["round"] = rnd
    return rows
