"""A worker on SIGTERM finishes its current job within the grace period, or gives it back."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tests.support import (
    GatewayProcess,
    WorkerProcess,
    async_wait_until,
    collect_sse,
    job_status,
    submit_job,
)


async def test_sigterm_lets_the_running_job_finish_within_grace(
    redis_url: str,
    gateway_factory: Callable[..., GatewayProcess],
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    gateway = gateway_factory(REDIS_URL=redis_url)
    worker = worker_factory(REDIS_URL=redis_url, args=["--grace", "10"])
    job_id = submit_job(gateway.url, "sleep", {"seconds": 1.0, "steps": 5})
    await async_wait_until(
        lambda: job_status(gateway.url, job_id)["status"] == "running", 10, "start"
    )
    assert worker.stop(20) == 0
    final = job_status(gateway.url, job_id)
    assert final["status"] == "completed" and final["attempts"] == 1


async def test_sigterm_past_grace_gives_the_job_back(
    redis_url: str,
    gateway_factory: Callable[..., GatewayProcess],
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    gateway = gateway_factory(REDIS_URL=redis_url)
    first = worker_factory(REDIS_URL=redis_url, args=["--grace", "0.2"])
    job_id = submit_job(gateway.url, "sleep", {"seconds": 2.0, "steps": 10})
    stream = asyncio.create_task(collect_sse(f"{gateway.url}/jobs/{job_id}/events", timeout=40))
    await async_wait_until(
        lambda: job_status(gateway.url, job_id)["status"] == "running", 10, "start"
    )
    assert first.stop(20) == 0
    assert job_status(gateway.url, job_id)["status"] == "retrying"
    worker_factory(REDIS_URL=redis_url)
    events = await stream
    types = [e.event for e in events]
    assert types.count("job.started") == 2 and types[-1] == "job.completed"
    interrupted = next(e for e in events if e.event == "job.retrying")
    assert interrupted.json()["data"]["error"]["type"] == "interrupted"
    assert job_status(gateway.url, job_id)["attempts"] == 2
