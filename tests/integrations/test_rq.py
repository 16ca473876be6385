"""RQ jobs as gateway jobs, with a real `rq worker -w gateway.integrations.rq.Worker`.

The README's example is written out verbatim and run as the app (`python resizer.py`); the
other jobs sit beside it in a module of the test's own.
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
    follow,
    history_types,
    job,
    readme_example,
    run_readme_app,
    wait_for_job,
    worker_env,
)
from tests.support import GatewayProcess, wait_until

pytest.importorskip("rq")

MORE_JOBS = """
import os

import redis

from gateway.integrations.rq import progress

counters = redis.Redis.from_url(os.environ["RQ_REDIS_URL"])


def explode():
    raise ValueError("no such image")


def flaky(key):
    if counters.incr(key) < 2:
        raise ConnectionError("storage timed out")
    return "stored"


def hold(key):
    progress(0.5, "holding")
    counters.blpop([key])
    return "released"
"""


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("rq_app")
    (directory / "resizer.py").write_text(readme_example("### RQ"))
    (directory / "more_jobs.py").write_text(MORE_JOBS)
    return directory


@pytest.fixture(scope="module")
def env(bus_url: str, broker_url: str) -> dict[str, str]:
    return worker_env(bus_url, RQ_REDIS_URL=broker_url)


@pytest.fixture(scope="module")
def worker(
    app_dir: Path, env: dict[str, str], broker_url: str, gateway: GatewayProcess
) -> Iterator[QueueWorker]:
    # A short worker TTL makes the idle worker wake every second, and run its maintenance
    # (where RQ finds abandoned jobs) every second: RQ's defaults are minutes.
    args = [sys.executable, "-m", "rq.cli", "worker", "-w", "gateway.integrations.rq.Worker"]
    args += ["--url", broker_url, "--worker-ttl", "16", "--maintenance-interval", "1"]
    process = QueueWorker(args, cwd=app_dir, env=env, log_path=app_dir / "worker.log")
    process.start(ready="Listening on")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def queue(app_dir: Path, env: dict[str, str], broker_url: str) -> Iterator[Any]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REDIS_URL", env["REDIS_URL"])
        patch.syspath_prepend(str(app_dir))
        from gateway.integrations.rq import Queue

        yield Queue(connection=redis.Redis.from_url(broker_url))


def _follow(gateway: GatewayProcess, job_id: str, timeout: float = 20) -> Any:
    return asyncio.run(follow(gateway.url, gateway.ws_url, job_id, timeout))


def test_readme_example_followed_over_sse_and_websocket(
    app_dir: Path, env: dict[str, str], worker: QueueWorker, gateway: GatewayProcess
) -> None:
    job_id = run_readme_app(app_dir, env)

    sse, ws, data = _follow(gateway, job_id)

    assert sse == ws == ["job.queued", "job.started", *["job.progress"] * 3, "job.completed"]
    assert data["result"] == {"resized": 3}
    assert job(gateway.url, job_id)["type"] == "resizer.resize"
    assert httpx.get(f"{gateway.url}/jobs/{job_id}/result").json()["result"] == {"resized": 3}
    assert redis.Redis.from_url(env["REDIS_URL"]).xlen("gw:{jobs}") == 0


def test_a_failing_job_ends_failed_with_its_error(
    queue: Any, worker: QueueWorker, gateway: GatewayProcess
) -> None:
    job_id = queue.enqueue("more_jobs.explode").id
    sse, ws, data = _follow(gateway, job_id)
    assert sse == ws == ["job.queued", "job.started", "job.failed"]
    assert data["error"] == {"type": "ValueError", "message": "no such image"}


def test_a_retried_job_says_retrying_then_completes(
    queue: Any, worker: QueueWorker, gateway: GatewayProcess
) -> None:
    from rq import Retry

    job_id = queue.enqueue("more_jobs.flaky", f"tries-{uuid.uuid4()}", retry=Retry(max=1)).id
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
    events = httpx.get(f"{gateway.url}/channels/job:{job_id}/events").json()["events"]
    assert events[2]["data"]["error"] == {
        "type": "ConnectionError",
        "message": "storage timed out",
    }
    assert data["result"] == "stored"


def test_a_stopped_job_and_a_cancelled_one_end_cancelled(
    queue: Any, worker: QueueWorker, gateway: GatewayProcess, broker_url: str
) -> None:
    from rq.command import send_stop_job_command

    from gateway.integrations.rq import Queue

    running = queue.enqueue("more_jobs.hold", f"release-{uuid.uuid4()}").id
    wait_for_job(gateway.url, running, "running")
    send_stop_job_command(queue.connection, running)
    sse, ws, data = _follow(gateway, running)
    assert sse == ws == ["job.queued", "job.started", "job.progress", "job.cancelled"]
    assert data["reason"] == "stopped while it ran"

    parked = Queue("parked", connection=queue.connection).enqueue("more_jobs.explode")
    parked.cancel()
    sse, ws, data = _follow(gateway, parked.id)
    assert sse == ws == ["job.queued", "job.cancelled"]


def test_a_killed_worker_leaves_the_job_running_until_rq_finds_it_abandoned(
    queue: Any, worker: QueueWorker, gateway: GatewayProcess
) -> None:
    """SIGKILL the worker and its work horse mid-job. RQ notices only when the job's execution
    heartbeat has expired (RQ gives it the job's monitoring interval plus 60 s) and a worker's
    maintenance runs: until then the job stays `running`; then RQ fails it with
    `AbandonedJobError` (or retries it, with tries left) and the job says the same.

    A restarted worker's maintenance at first finds nothing; instead of a minute, the test
    then moves the execution's expiry in RQ's registry into the past."""
    job_id = queue.enqueue("more_jobs.hold", f"release-{uuid.uuid4()}").id
    wait_for_job(gateway.url, job_id, "running")
    worker.kill()
    log_size = len(worker.output())
    worker.start(ready="Listening on")
    wait_until(
        lambda: "cleaning registries" in worker.output()[log_size:],
        20,
        "the restarted worker's maintenance",
    )
    assert job(gateway.url, job_id)["status"] == "running"
    assert history_types(gateway.url, job_id) == ["job.queued", "job.started", "job.progress"]

    started = f"rq:wip:{queue.name}"
    members = queue.connection.zrange(started, 0, -1)
    executions = [m for m in members if m.startswith(job_id.encode())]
    assert executions, "the killed execution is still in RQ's started registry"
    queue.connection.zadd(started, {executions[0]: 1}, xx=True)

    sse, ws, data = _follow(gateway, job_id)
    assert sse == ws == ["job.queued", "job.started", "job.progress", "job.failed"]
    assert data["error"]["type"] == "AbandonedJobError"
