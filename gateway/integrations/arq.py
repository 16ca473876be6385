"""arq jobs as gateway jobs, from arq's worker hooks and its job results.

    @gateway.integrations.arq.install               # the worker's settings class
    class WorkerSettings: ...
    pool = gateway.integrations.arq.track(await create_pool(...))   # the app's pool

Both write into the gateway's Redis (`REDIS_URL`, or `install(redis_url=...)`). An arq job's id
is its gateway job id (`job:<job id>`). What each step becomes:

- `pool.enqueue_job(...)` on a tracked pool → `job.queued` (published before arq has the job,
  so nothing a worker reports can come first);
- `on_job_start` → `job.started` (attempt = arq's `job_try`); `await progress(ctx, 0.4, "...")`
  in the job → `job.progress`;
- `after_job_end`, from the job's result that arq recorded: success → `job.completed` (the
  result, bounded), an exception → `job.failed`, an abort (`job.abort()`, with
  `allow_abort_jobs`) → `job.cancelled`; no result but the job back on the queue (it raised
  `Retry`, or the worker shut down mid-job) → `job.retrying`.

arq records a result only with `keep_result` > 0 (its default is an hour): with
`keep_result=0` the end of a job cannot be told and is not reported. Failures arq decides
before a job starts (max tries exceeded, aborted while queued, an unknown function) run no
hook, so they are not reported either (docs/integrations.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from arq.connections import ArqRedis
from arq.constants import default_queue_name
from arq.jobs import Job as ArqJob

from gateway.integrations.lifecycle import (
    DEFAULT_MAX_RESULT_BYTES,
    QueueJobs,
    bus_settings,
    error_of,
)

log = logging.getLogger("gateway.integrations")

CTX_KEY: Final = "gateway_jobs"
"""Where the worker's `QueueJobs` lives in arq's `ctx`."""

Hook = Callable[[dict[Any, Any]], Awaitable[Any]]
Settings = TypeVar("Settings", bound=type)


def install(
    settings_cls: Settings | None = None,
    *,
    redis_url: str | None = None,
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
) -> Any:
    """Add the gateway's hooks to an arq `WorkerSettings` class (its own hooks still run first).

    Use as `@install` or `@install(redis_url=...)`."""
    bus_settings(redis_url)  # refuse a wrong URL here, not at the first job

    def decorate(cls: Settings) -> Settings:
        queue_name = getattr(cls, "queue_name", None) or default_queue_name

        async def on_startup(ctx: dict[Any, Any]) -> None:
            ctx[CTX_KEY] = QueueJobs.open(redis_url, max_result_bytes=max_result_bytes)

        async def on_shutdown(ctx: dict[Any, Any]) -> None:
            jobs = ctx.pop(CTX_KEY, None)
            if jobs is not None:
                await jobs.close()

        async def on_job_start(ctx: dict[Any, Any]) -> None:
            job_id = ctx["job_id"]
            info = await ArqJob(job_id, ctx["redis"], _queue_name=queue_name).info()
            type_ = info.function if info is not None else "arq"
            await _report(
                ctx, "job.started", lambda jobs: jobs.started(job_id, type_, attempt=ctx["job_try"])
            )

        async def after_job_end(ctx: dict[Any, Any]) -> None:
            await _ended(ctx, queue_name)

        cls.on_startup = _chain(getattr(cls, "on_startup", None), on_startup)  # type: ignore[attr-defined]
        cls.on_shutdown = _chain(on_shutdown, getattr(cls, "on_shutdown", None))  # type: ignore[attr-defined]
        cls.on_job_start = _chain(getattr(cls, "on_job_start", None), on_job_start)  # type: ignore[attr-defined]
        cls.after_job_end = _chain(getattr(cls, "after_job_end", None), after_job_end)  # type: ignore[attr-defined]
        return cls

    if settings_cls is not None:
        return decorate(settings_cls)
    return decorate


def track(
    pool: ArqRedis,
    *,
    redis_url: str | None = None,
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
) -> ArqRedis:
    """Make `pool.enqueue_job` record each job as a gateway job (`job.queued`) first.

    A job id is chosen here when `_job_id` is not given (as arq would: a random hex uuid)."""
    bus_settings(redis_url)
    original = pool.enqueue_job
    opened: list[QueueJobs] = []

    async def enqueue_job(
        function: str, *args: Any, _job_id: str | None = None, **kwargs: Any
    ) -> Any:
        job_id = _job_id or uuid.uuid4().hex
        if not opened:
            opened.append(QueueJobs.open(redis_url, max_result_bytes=max_result_bytes))
        jobs = opened[0]
        try:
            await jobs.queued(job_id, function)
        except Exception as exc:
            log.warning("gateway: could not publish job.queued of %s: %s", job_id, exc)
        try:
            return await original(function, *args, _job_id=job_id, **kwargs)
        except BaseException as exc:
            try:
                await jobs.failed(job_id, error_of(exc, "arq could not enqueue the job"))
            except Exception:
                log.warning("gateway: could not publish job.failed of %s", job_id)
            raise

    pool.enqueue_job = enqueue_job  # type: ignore[method-assign]
    return pool


async def progress(ctx: dict[Any, Any], fraction: float, message: str = "", **extra: Any) -> bool:
    """Report the running job's progress (0.0-1.0) as `job.progress`; `ctx` is the job's.

    False when the job has already ended (cancelled through the gateway, say): it may stop.
    """
    jobs = ctx.get(CTX_KEY)
    if jobs is None or "job_id" not in ctx:
        raise RuntimeError(
            "progress(ctx, ...) needs a job's ctx in a worker whose settings have @install"
        )
    return await _report(
        ctx, "job.progress", lambda j: j.progress(ctx["job_id"], fraction, message, extra)
    )


async def _ended(ctx: dict[Any, Any], queue_name: str) -> None:
    job_id = ctx["job_id"]
    result = await ArqJob(job_id, ctx["redis"], _queue_name=queue_name).result_info()
    if result is None:
        score = await ctx["redis"].zscore(queue_name, job_id)
        if score is None:
            log.warning("gateway: job %s ended without a result (keep_result=0?)", job_id)
            return
        delay = max(score / 1000 - time.time(), 0.0)
        error = {"type": "Retry", "message": "the job will be run again"}
        await _report(ctx, "job.retrying", lambda jobs: jobs.retrying(job_id, error, delay))
    elif result.success:
        await _report(ctx, "job.completed", lambda jobs: jobs.completed(job_id, result.result))
    elif isinstance(result.result, asyncio.CancelledError):
        await _report(ctx, "job.cancelled", lambda jobs: jobs.cancelled(job_id, "aborted"))
    else:
        error = error_of(result.result if isinstance(result.result, BaseException) else None)
        await _report(ctx, "job.failed", lambda jobs: jobs.failed(job_id, error))


async def _report(
    ctx: dict[Any, Any], what: str, call: Callable[[QueueJobs], Awaitable[bool]]
) -> bool:
    """One state change; a failure to publish is logged, never raised into arq."""
    jobs = ctx.get(CTX_KEY)
    if jobs is None:
        return False
    try:
        return await call(jobs)
    except Exception as exc:
        log.warning("gateway: could not publish %s of %s: %s", what, ctx.get("job_id"), exc)
        return False


def _chain(first: Hook | None, second: Hook | None) -> Hook:
    async def both(ctx: dict[Any, Any]) -> None:
        if first is not None:
            await first(ctx)
        if second is not None:
            await second(ctx)

    return both
