"""The producer side of `python -m bench jobs` for the Python systems (one process per run).

    python bench/jobs_client.py --system S --mode enqueue --api API --seconds T
    python bench/jobs_client.py --system S --mode fill --count N --seconds T
    python bench/jobs_client.py --system S --mode roundtrip --jobs N

Systems and their enqueue APIs (`--api`):
  gateway  http (`POST /jobs`, raw keep-alive client), http-batch (`POST /jobs/batch`),
           submit / submit-many (`gateway.submit` / `gateway.submit_many`, straight to Redis),
           create (the internal `create_job()`, when there is no public submit)
  celery   delay
  rq       enqueue, enqueue-many
  arq      enqueue-job

`enqueue` submits no-op jobs as fast as one sequential producer can for `--seconds`; `fill`
submits `--count` jobs (at most `--seconds`) with the system's fastest API, for a drain;
`roundtrip` submits one job at a time and waits until its completion is seen. One JSON line on
stdout: count, seconds, the producer's own CPU seconds, and the latencies (ms) for `roundtrip`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent.parent))  # `bench.peers`, after the gateway

WARMUP = 20
"""Round trips not counted (connections, code paths, scripts loaded)."""


# --- gateway ---------------------------------------------------------------------------------


def gateway_job(args: Any) -> dict[str, Any]:
    if args.job_type == "noop":
        return {"type": "noop"}
    return {"type": "sleep", "data": {"seconds": 0, "steps": 1}}


def gateway_sender(args: Any, api: str) -> tuple[Callable[[], int], Callable[[], None]]:
    """(send one call -> jobs it submitted, close)."""
    import orjson

    job = gateway_job(args)
    os.environ["REDIS_URL"] = args.redis_url
    if api in ("http", "http-batch"):
        from rawhttp import RawHTTP  # bench/, this script's folder

        if api == "http" and args.connections > 1:
            from rawhttp import RawHTTPWave

            wave = RawHTTPWave(args.url, args.connections)
            body = orjson.dumps(job)

            def send_wave() -> int:
                for status, answer in wave.post("/jobs", body):
                    if status != 202:
                        raise RuntimeError(f"POST /jobs: {status} {answer[:200]!r}")
                return args.connections

            return send_wave, wave.close
        client = RawHTTP(args.url)
        if api == "http":
            body = orjson.dumps(job)

            def send_http() -> int:
                status, answer = client.post("/jobs", body)
                if status != 202:
                    raise RuntimeError(f"POST /jobs: {status} {answer[:200]!r}")
                return 1

            return send_http, client.close
        batch = orjson.dumps({"jobs": [job] * args.batch})

        def send_batch() -> int:
            status, answer = client.post("/jobs/batch", batch)
            if status not in (200, 202, 207):
                raise RuntimeError(f"POST /jobs/batch: {status} {answer[:200]!r}")
            return args.batch

        return send_batch, client.close
    import gateway

    if api == "submit":
        submit: Any = gateway.submit  # type: ignore[attr-defined]

        def send_submit() -> int:
            submit(job["type"], job.get("data"))
            return 1

        return send_submit, lambda: None
    if api == "submit-many":
        submit_many: Any = gateway.submit_many  # type: ignore[attr-defined]
        jobs = [job] * args.batch

        def send_many() -> int:
            submit_many(jobs)
            return args.batch

        return send_many, lambda: None
    if api == "create":
        return gateway_create_sender(args, job)
    raise SystemExit(f"gateway: unknown api {api!r}")


def gateway_create_sender(
    args: Any, job: dict[str, Any]
) -> tuple[Callable[[], int], Callable[[], None]]:
    """The internal create path (what `POST /jobs` calls), one job per call, on a private loop."""
    from gateway.backends.url import open_backend
    from gateway.jobs.model import create_job
    from gateway.settings import Settings

    loop = asyncio.new_event_loop()
    backend = open_backend(Settings.from_env(redis_url=args.redis_url))
    loop.run_until_complete(backend.start())

    def send() -> int:
        loop.run_until_complete(create_job(backend, job["type"], job.get("data")))
        return 1

    def close() -> None:
        loop.run_until_complete(backend.close())
        loop.close()

    return send, close


def gateway_fill(args: Any) -> int:
    """N jobs with the fastest path there is: submit_many, else create_job 100 at a time."""
    import gateway

    job = gateway_job(args)
    os.environ["REDIS_URL"] = args.redis_url
    deadline = time.monotonic() + args.seconds
    done = 0
    if hasattr(gateway, "submit_many"):
        while done < args.count and time.monotonic() < deadline:
            n = min(args.batch, args.count - done)
            gateway.submit_many([job] * n)
            done += n
        return done
    from gateway.backends.url import open_backend
    from gateway.jobs.model import create_job
    from gateway.settings import Settings

    async def fill() -> int:
        backend = open_backend(Settings.from_env(redis_url=args.redis_url))
        await backend.start()
        count = 0
        try:
            while count < args.count and time.monotonic() < deadline:
                n = min(100, args.count - count)
                await asyncio.gather(
                    *(create_job(backend, job["type"], job.get("data")) for _ in range(n))
                )
                count += n
        finally:
            await backend.close()
        return count

    return asyncio.run(fill())


async def gateway_roundtrips(args: Any) -> list[float]:
    """`POST /jobs` (raw keep-alive client), then a WebSocket subscriber of the job's channel
    (one connection for the run) waits for `job.completed`."""
    import orjson
    from rawhttp import RawHTTP  # bench/, this script's folder
    from websockets.asyncio.client import connect

    body = orjson.dumps(gateway_job(args))
    http = RawHTTP(args.url)
    ws_url = args.url.replace("http://", "ws://") + "/ws"
    samples: list[float] = []
    async with connect(ws_url, subprotocols=["gateway.v1"], compression=None) as ws:  # type: ignore[list-item]
        ref = 0
        for i in range(args.jobs + WARMUP):
            t0 = time.perf_counter()
            status, answer = http.post("/jobs", body)
            if status != 202:
                raise RuntimeError(f"POST /jobs: {status} {answer[:200]!r}")
            channel = "job:" + orjson.loads(answer)["id"]
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
            if i >= WARMUP:
                samples.append((time.perf_counter() - t0) * 1000)
            ref += 1
            await ws.send(
                orjson.dumps({"op": "unsubscribe", "channel": channel, "ref": ref}).decode()
            )
    http.close()
    return samples


# --- Celery, RQ, arq -------------------------------------------------------------------------


def celery_sender(args: Any, api: str) -> Callable[[], int]:
    os.environ["BENCH_REDIS_URL"] = args.redis_url
    from bench.peers.celery_app import noop

    def send() -> int:
        noop.delay()
        return 1

    return send


def rq_sender(args: Any, api: str) -> Callable[[], int]:
    import redis
    from rq import Queue

    from bench.peers.rq_tasks import noop

    queue = Queue("default", connection=redis.Redis.from_url(args.redis_url))
    if api == "enqueue":

        def send() -> int:
            queue.enqueue(noop)
            return 1

        return send

    def send_many() -> int:
        queue.enqueue_many([Queue.prepare_data(noop) for _ in range(args.batch)])
        return args.batch

    return send_many


def timed(send: Callable[[], int], seconds: float, limit: int) -> tuple[int, float, float]:
    """(jobs, wall seconds, CPU seconds) of calling `send` until `limit` jobs or `seconds`."""
    send()  # warm-up: connections, scripts (not counted)
    count = 0
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    end = t0 + seconds
    while count < limit and time.perf_counter() < end:
        count += send()
    return count, time.perf_counter() - t0, time.process_time() - cpu0


async def arq_timed(args: Any, seconds: float, limit: int, width: int) -> tuple[int, float, float]:
    """`enqueue_job` in a loop (width 1), or `width` at a time concurrently (the fill)."""
    from arq import create_pool
    from arq.connections import RedisSettings

    pool = await create_pool(RedisSettings.from_dsn(args.redis_url))
    await pool.enqueue_job("noop")
    count = 0
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    end = t0 + seconds
    try:
        while count < limit and time.perf_counter() < end:
            n = min(width, limit - count)
            if n == 1:
                await pool.enqueue_job("noop")
            else:
                await asyncio.gather(*(pool.enqueue_job("noop") for _ in range(n)))
            count += n
    finally:
        await pool.aclose()
    return count, time.perf_counter() - t0, time.process_time() - cpu0


def peer_roundtrips(args: Any) -> list[float]:
    samples: list[float] = []
    if args.system == "celery":
        os.environ["BENCH_REDIS_URL"] = args.redis_url
        from bench.peers.celery_app import noop_result

        for i in range(args.jobs + WARMUP):
            t0 = time.perf_counter()
            noop_result.delay().get(timeout=10)
            if i >= WARMUP:
                samples.append((time.perf_counter() - t0) * 1000)
        return samples
    if args.system == "rq":
        import redis
        from rq import Queue

        from bench.peers.rq_tasks import noop

        queue = Queue("default", connection=redis.Redis.from_url(args.redis_url))
        for i in range(args.jobs + WARMUP):
            t0 = time.perf_counter()
            job = queue.enqueue(noop)
            if job.latest_result(timeout=10) is None:
                raise RuntimeError("rq: no result within 10 s")
            if i >= WARMUP:
                samples.append((time.perf_counter() - t0) * 1000)
        return samples
    return asyncio.run(arq_roundtrips(args))


async def arq_roundtrips(args: Any) -> list[float]:
    from arq import create_pool
    from arq.connections import RedisSettings
    from arq.jobs import ResultNotFound

    from bench.peers.arq_worker import POLL_DELAY

    pool = await create_pool(RedisSettings.from_dsn(args.redis_url))
    samples: list[float] = []
    try:
        for i in range(args.jobs + WARMUP):
            t0 = time.perf_counter()
            job = await pool.enqueue_job("noop")
            assert job is not None
            try:
                await job.result(timeout=10, poll_delay=POLL_DELAY)
            except ResultNotFound:
                # arq 0.25 reads the result and the queue entry in two steps (its pipeline is
                # not used), so a job finishing between them looks lost: read the result again
                await job.result(timeout=10, poll_delay=POLL_DELAY)
            if i >= WARMUP:
                samples.append((time.perf_counter() - t0) * 1000)
    finally:
        await pool.aclose()
    return samples


# --- command line ----------------------------------------------------------------------------


FASTEST = {"celery": "delay", "rq": "enqueue-many", "arq": "enqueue-job"}


def run(args: Any) -> dict[str, Any]:
    cpu0 = time.process_time()
    out: dict[str, Any] = {"system": args.system, "mode": args.mode}
    if args.mode == "roundtrip":
        t0 = time.perf_counter()
        if args.system == "gateway":
            samples = asyncio.run(gateway_roundtrips(args))
        else:
            samples = peer_roundtrips(args)
        out.update(count=len(samples), seconds=time.perf_counter() - t0, ms=samples)
    elif args.system == "gateway" and args.mode == "fill":
        t0 = time.perf_counter()
        out.update(count=gateway_fill(args), seconds=time.perf_counter() - t0)
    else:
        api = args.api if args.mode == "enqueue" else FASTEST[args.system]
        limit = args.count if args.mode == "fill" else 10**9
        if args.system == "arq":
            width = 50 if args.mode == "fill" else 1
            count, seconds, cpu = asyncio.run(arq_timed(args, args.seconds, limit, width))
        else:
            if args.system == "gateway":
                send, close = gateway_sender(args, api)
            elif args.system == "celery":
                send, close = celery_sender(args, api), lambda: None
            else:
                send, close = rq_sender(args, api), lambda: None
            try:
                count, seconds, cpu = timed(send, args.seconds, limit)
            finally:
                close()
        out.update(api=api, count=count, seconds=seconds, cpu_s=cpu)
    out.setdefault("cpu_s", time.process_time() - cpu0)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--system", choices=["gateway", "celery", "rq", "arq"], required=True)
    p.add_argument("--mode", choices=["enqueue", "fill", "roundtrip"], required=True)
    p.add_argument("--api", default="")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--count", type=int, default=10_000)
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument(
        "--connections", type=int, default=1, help="http: requests in flight on as many connections"
    )
    p.add_argument("--job-type", default="noop")
    p.add_argument("--redis-url", required=True)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    args = p.parse_args()
    print(json.dumps(run(args)), flush=True)


if __name__ == "__main__":
    main()
