"""Celery tasks as gateway jobs, with a real Celery worker (Redis broker) in a subprocess.

The README's example is the worker's app, written out verbatim; the other tasks sit beside it
in a module of the test's own, which the worker loads as its app (`-A more_tasks`).
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from tests.integrations.queues import (
    QueueWorker,
    follow,
    history_types,
    job,
    readme_example,
    run_readme_app,
    worker_env,
)
from tests.support import GatewayProcess, http_receiver, wait_until

pytest.importorskip("celery")

MORE_TASKS = """
import os

import redis

import gateway.integrations.celery as gateway_jobs
from resizer import app

app.conf.broker_transport_options = {"visibility_timeout": 2}
app.conf.worker_prefetch_multiplier = 1
releases = redis.Redis.from_url(os.environ["CELERY_BROKER_URL"])


@app.task
def explode():
    raise ValueError("no such image")


@app.task(bind=True, max_retries=2)
def flaky(self):
    if self.request.retries < 1:
        try:
            raise ConnectionError("storage timed out")
        except ConnectionError as exc:
            raise self.retry(exc=exc, countdown=0.1)
    return "stored"


@app.task(bind=True, acks_late=True)
def hold_late(self, key):
    gateway_jobs.progress(0.5, "holding")
    releases.blpop([key])
    return "released"


@app.task(bind=True)
def hold(self, key):
    gateway_jobs.progress(0.5, "holding")
    releases.blpop([key])
    return "released"


@app.task
def big():
    return "x" * 100_000
"""


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("celery_app")
    (directory / "resizer.py").write_text(readme_example("### Celery"))
    (directory / "more_tasks.py").write_text(MORE_TASKS)
    return directory


@pytest.fixture(scope="module")
def env(bus_url: str, broker_url: str) -> dict[str, str]:
    return worker_env(bus_url, CELERY_BROKER_URL=broker_url)


def start_worker(app_dir: Path, env: dict[str, str], concurrency: int = 2) -> QueueWorker:
    args = [sys.executable, "-m", "celery", "-A", "more_tasks", "worker", "--pool=prefork"]
    args += [f"--concurrency={concurrency}", "--loglevel=info", "--without-gossip"]
    args += ["--without-mingle", "--without-heartbeat"]
    worker = QueueWorker(args, cwd=app_dir, env=env, log_path=app_dir / "worker.log")
    return worker.start(ready="ready.")


@pytest.fixture(scope="module")
def worker(app_dir: Path, env: dict[str, str], gateway: GatewayProcess) -> Iterator[QueueWorker]:
    process = start_worker(app_dir, env)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def tasks(app_dir: Path, env: dict[str, str], monkeypatch_module: Any) -> Any:
    """The test's own process sends tasks, as the user's app does (install() ran on import)."""
    for name, value in env.items():
        monkeypatch_module.setenv(name, value)
    monkeypatch_module.syspath_prepend(str(app_dir))
    import more_tasks  # type: ignore[import-not-found]

    return more_tasks


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_readme_example_followed_over_sse_and_websocket(
    app_dir: Path, env: dict[str, str], worker: QueueWorker, gateway: GatewayProcess
) -> None:
    job_id = run_readme_app(app_dir, env)

    sse, ws, data = _follow(gateway, job_id)

    expected = ["job.queued", "job.started", *["job.progress"] * 4, "job.completed"]
    assert sse == ws == expected
    assert data["result"] == {"resized": 3}
    events = httpx.get(f"{gateway.url}/channels/job:{job_id}/events").json()["events"]
    progress = [e["data"] for e in events if e["type"] == "job.progress"]
    assert [p["progress"] for p in progress] == pytest.approx([1 / 3, 2 / 3, 1.0, 0.9])
    assert progress[0]["message"] == "resized a.png"
    assert progress[3]["message"] == "uploading"  # from update_state(state="PROGRESS")
    resource = job(gateway.url, job_id)
    assert resource["status"] == "completed"
    assert resource["type"] == "resizer.resize"
    assert httpx.get(f"{gateway.url}/jobs/{job_id}/result").json()["result"] == {"resized": 3}
    # Never on the gateway's own queue: its embedded worker cannot take it.
    assert redis.Redis.from_url(env["REDIS_URL"]).xlen("gw:{jobs}") == 0


def test_a_failing_task_ends_failed_with_its_error(
    tasks: Any, worker: QueueWorker, gateway: GatewayProcess
) -> None:
    job_id = tasks.explode.delay().id
    sse, ws, data = _follow(gateway, job_id)
    assert sse == ws == ["job.queued", "job.started", "job.failed"]
    assert data["error"] == {"type": "ValueError", "message": "no such image"}
    assert job(gateway.url, job_id)["error"]["message"] == "no such image"


def test_a_retried_task_says_retrying_then_completes(
    tasks: Any, worker: QueueWorker, gateway: GatewayProcess
) -> None:
    job_id = tasks.flaky.delay().id
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
    retrying = events[2]["data"]
    assert retrying["error"] == {"type": "ConnectionError", "message": "storage timed out"}
    assert 0 <= retrying["delay"] <= 0.1
    assert [e["data"]["attempt"] for e in events if e["type"] == "job.started"] == [1, 2]
    assert data["result"] == "stored"


def test_a_revoked_running_task_ends_cancelled_and_wakes_a_long_poll(
    tasks: Any, worker: QueueWorker, gateway: GatewayProcess
) -> None:
    job_id = tasks.hold.delay(f"release-{uuid.uuid4()}").id
    wait_until(lambda: job(gateway.url, job_id)["progress"] == 0.5, 20, "the task to run")
    since = job(gateway.url, job_id)["last_event_id"]
    with ThreadPoolExecutor(1) as pool:
        long_poll = pool.submit(
            httpx.get, f"{gateway.url}/jobs/{job_id}?wait=20&since={since}", timeout=30
        )
        tasks.app.control.revoke(job_id, terminate=True)
        assert long_poll.result().json()["status"] == "cancelled"
    sse, ws, data = _follow(gateway, job_id)
    assert sse == ws == ["job.queued", "job.started", "job.progress", "job.cancelled"]
    assert data["reason"].startswith("revoked and terminated")


def test_a_task_sent_with_a_callback_url_gets_its_webhook(
    tasks: Any, worker: QueueWorker, gateway: GatewayProcess
) -> None:
    with http_receiver() as receiver:
        job_id = tasks.explode.apply_async(headers={"gateway_callback_url": receiver.url}).id
        wait_until(lambda: len(receiver.requests) >= 1, 20, "the webhook")
        headers, body = receiver.requests[0]
    envelope = orjson.loads(body)
    assert envelope["type"] == "job.failed"
    assert envelope["channel"] == f"job:{job_id}"
    assert headers["webhook-id"] == envelope["id"]


def test_a_result_over_the_bound_is_left_out_and_said_so(
    tasks: Any, worker: QueueWorker, gateway: GatewayProcess
) -> None:
    job_id = tasks.big.delay().id
    _sse, _ws, data = _follow(gateway, job_id)
    assert data["result"] is None
    assert data["result_too_large"] == {"bytes": 100_002, "limit": 64 * 1024}


def test_a_killed_worker_reruns_acks_late_tasks_and_loses_the_others(
    tasks: Any, env: dict[str, str], gateway: GatewayProcess, worker: QueueWorker
) -> None:
    """SIGKILL the whole worker mid-task. With `acks_late` the message is still unacknowledged:
    after the visibility timeout (2 s here) a worker gets it again and runs it from the start
    (`job.started` attempt 2, then `job.completed`). Without it (Celery's default) the message
    was acknowledged when the task started: Celery reports nothing more, and the job stays
    `running` (the gateway is told nothing, so says nothing)."""
    key = f"release-{uuid.uuid4()}"
    late = tasks.hold_late.delay(key).id
    early = tasks.hold.delay(key).id
    wait_until(
        lambda: all(job(gateway.url, i)["progress"] == 0.5 for i in (late, early)),
        20,
        "both tasks to be running",
    )
    worker.kill()
    assert job(gateway.url, late)["status"] == "running"
    broker = redis.Redis.from_url(env["CELERY_BROKER_URL"])
    broker.rpush(key, "go", "go")

    def past_visibility_timeout() -> bool:
        """kombu restores an unacked message only once it is older than the visibility
        timeout (2 s), and scans for such messages at start, then only every tenth check: a
        worker that starts before then may not run it again for a long while."""
        delivered = broker.zrange("unacked_index", 0, -1, withscores=True)
        return bool(delivered) and all(time.time() > at + 2.5 for _, at in delivered)

    wait_until(past_visibility_timeout, 15, "the unacked message to pass its visibility timeout")
    worker.start(ready="ready.")
    sse, ws, data = _follow(gateway, late, timeout=45)
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
    assert history_types(gateway.url, early) == ["job.queued", "job.started", "job.progress"]
    assert job(gateway.url, early)["status"] == "running"


def _follow(gateway: GatewayProcess, job_id: str, timeout: float = 20) -> Any:
    import asyncio

    return asyncio.run(follow(gateway.url, gateway.ws_url, job_id, timeout))
