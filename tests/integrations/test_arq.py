"""arq jobs as gateway jobs, with a real arq worker.

The README's example is written out verbatim and run as the app (`python resizer.py`); the
worker runs its `WorkerSettings` (with the gateway's hooks), given the test's own jobs too.

This module's gateway is in secure mode: each job is followed with the job token the app mints
for it (`gateway.integrations.job_token`), as a browser would be given it.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.integrations.queues import (
    QueueWorker,
    bearer,
    follow,
    history,
    history_types,
    job,
    readme_example,
    run_readme_app,
    wait_for_job,
    worker_env,
)
from tests.support import GatewayProcess

pytest.importorskip("arq")

SECRET = "integrations-test-secret-0123456789abcdef"
GATEWAY_ENV = {"GATEWAY_SECRET": SECRET, "GATEWAY_API_KEYS": "integrations-api-key-0123"}

MORE_JOBS = """
import asyncio

from arq import Retry

import gateway.integrations.arq as gateway_jobs
import resizer


async def explode(ctx):
    raise ValueError("no such image")


async def flaky(ctx):
    if ctx["job_try"] < 2:
        raise Retry(defer=0.1)
    return "stored"


async def hold(ctx, key):
    await gateway_jobs.progress(ctx, 0.5, "holding")
    while not await ctx["redis"].lpop(key):
        await asyncio.sleep(0.05)
    return "released"


# arq reads a settings class's own attributes only (not inherited ones): extend the README's.
WorkerSettings = resizer.WorkerSettings
WorkerSettings.functions = [resizer.resize, explode, flaky, hold]
WorkerSettings.allow_abort_jobs = True
WorkerSettings.poll_delay = 0.1
"""


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("arq_app")
    (directory / "resizer.py").write_text(readme_example("### arq"))
    (directory / "more_jobs.py").write_text(MORE_JOBS)
    return directory


@pytest.fixture(scope="module")
def env(bus_url: str, broker_url: str) -> dict[str, str]:
    return worker_env(bus_url, ARQ_REDIS_URL=broker_url, GATEWAY_SECRET=SECRET)


@pytest.fixture(scope="module")
def worker(app_dir: Path, env: dict[str, str], gateway: GatewayProcess) -> Iterator[QueueWorker]:
    arq = str(Path(sys.executable).parent / "arq")
    process = QueueWorker(
        [arq, "more_jobs.WorkerSettings"], cwd=app_dir, env=env, log_path=app_dir / "worker.log"
    )
    process.start(ready="Starting worker")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def pool(app_dir: Path, env: dict[str, str], broker_url: str) -> Iterator[Any]:
    """The test's pool, tracked as the README's app tracks its own."""
    from arq import create_pool
    from arq.connections import RedisSettings

    from gateway.integrations.arq import track

    loop = asyncio.new_event_loop()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REDIS_URL", env["REDIS_URL"])
        patch.setenv("GATEWAY_SECRET", SECRET)
        arq_pool = loop.run_until_complete(create_pool(RedisSettings.from_dsn(broker_url)))
        yield loop, track(arq_pool)
    loop.run_until_complete(arq_pool.aclose())
    loop.close()


def enqueue(pool: Any, function: str, *args: Any) -> Any:
    loop, arq_pool = pool
    return loop.run_until_complete(arq_pool.enqueue_job(function, *args))


def token_for(job_id: str) -> str:
    """What the app hands the browser with the job's id (GATEWAY_SECRET is set, see `pool`)."""
    from gateway.integrations import job_token

    return job_token(job_id)


def _follow(gateway: GatewayProcess, job_id: str, timeout: float = 20) -> Any:
    token = token_for(job_id)
    return asyncio.run(follow(gateway.url, gateway.ws_url, job_id, timeout, token))


def test_readme_example_followed_over_sse_and_websocket(
    app_dir: Path, env: dict[str, str], worker: QueueWorker, gateway: GatewayProcess, pool: Any
) -> None:
    job_id = run_readme_app(app_dir, env)

    sse, ws, data = _follow(gateway, job_id)

    assert sse == ws == ["job.queued", "job.started", *["job.progress"] * 3, "job.completed"]
    assert data["result"] == {"resized": 3}
    token = token_for(job_id)
    assert job(gateway.url, job_id, token)["type"] == "resize"
    result = httpx.get(f"{gateway.url}/jobs/{job_id}/result", headers=bearer(token))
    assert result.json()["result"] == {"resized": 3}
    # Without a token, or with another job's, the job is not there for the browser.
    assert httpx.get(f"{gateway.url}/jobs/{job_id}").status_code in {401, 403}
    other = httpx.get(f"{gateway.url}/jobs/{job_id}", headers=bearer(token_for("another")))
    assert other.status_code == 403
    assert redis.Redis.from_url(env["REDIS_URL"]).xlen("gw:{jobs}") == 0


def test_a_failing_job_ends_failed_with_its_error(
    pool: Any, worker: QueueWorker, gateway: GatewayProcess
) -> None:
    job_id = enqueue(pool, "explode").job_id
    sse, ws, data = _follow(gateway, job_id)
    assert sse == ws == ["job.queued", "job.started", "job.failed"]
    assert data["error"] == {"type": "ValueError", "message": "no such image"}


def test_a_retried_job_says_retrying_then_completes(
    pool: Any, worker: QueueWorker, gateway: GatewayProcess
) -> None:
    job_id = enqueue(pool, "flaky").job_id
    sse, ws, data = _follow(gateway, job_id)
    assert (
        sse
        == ws
        == [
            "job.queued",
            "job.started",
            "job.retrying",
            "job.started",
            "job.completed",
        ]
    )
    events = history(gateway.url, job_id, token_for(job_id))
    assert [e["data"]["attempt"] for e in events if e["type"] == "job.started"] == [1, 2]
    assert data["result"] == "stored"


def test_an_aborted_job_ends_cancelled(
    pool: Any, worker: QueueWorker, gateway: GatewayProcess
) -> None:
    loop, _arq_pool = pool
    arq_job = enqueue(pool, "hold", f"release-{uuid.uuid4()}")
    wait_for_job(gateway.url, arq_job.job_id, "running", token=token_for(arq_job.job_id))
    assert loop.run_until_complete(arq_job.abort(timeout=30))
    sse, ws, data = _follow(gateway, arq_job.job_id)
    assert sse == ws == ["job.queued", "job.started", "job.progress", "job.cancelled"]
    assert data["reason"] == "aborted"


def test_a_killed_worker_runs_the_job_again_once_arq_lets_it(
    pool: Any, worker: QueueWorker, gateway: GatewayProcess, broker_url: str
) -> None:
    """SIGKILL the worker mid-job. arq keeps the job on its queue, guarded by an in-progress
    key that expires `job_timeout + 10` seconds after the start (310 s by default); until
    then no worker takes it and the job stays `running`. Then a worker runs it again
    (`job.started` attempt 2, arq's `job_try`) to its end. The test deletes the in-progress
    key instead of waiting for it to expire."""
    key = f"release-{uuid.uuid4()}"
    job_id = enqueue(pool, "hold", key).job_id
    token = token_for(job_id)
    wait_for_job(gateway.url, job_id, "running", token=token)
    worker.kill()
    broker = redis.Redis.from_url(broker_url)
    in_progress = f"arq:in-progress:{job_id}"
    assert broker.pttl(in_progress) > 0, "arq guards the job from other workers meanwhile"
    assert job(gateway.url, job_id, token)["status"] == "running"
    assert history_types(gateway.url, job_id, token) == [
        "job.queued",
        "job.started",
        "job.progress",
    ]

    broker.rpush(key, "go")
    broker.delete(in_progress)
    worker.start(ready="Starting worker")
    sse, ws, data = _follow(gateway, job_id)
    assert (
        sse
        == ws
        == [
            "job.queued",
            "job.started",
            "job.progress",
            "job.started",
            "job.progress",
            "job.completed",
        ]
    )
    assert data["result"] == "released"
