"""Celery tasks as gateway jobs, from Celery's own signals.

    app = Celery("tasks", broker=..., backend=...)
    gateway.integrations.celery.install(app)          # REDIS_URL: the gateway's Redis

Put the line where the app is made: the process that sends tasks and the worker both import
it. A task's id is its gateway job id (`job:<task id>`). What each signal becomes:

- `before_task_publish` → `job.queued` (first send); a retry's re-send → `job.retrying`
  (published there, before the next attempt can start, with the exception being handled);
- `task_prerun` → `job.started`; `task_success` → `job.completed` (the result, bounded);
- `task_failure` → `job.failed` (retries exhausted, or the pool process was lost);
- `task_revoked` → `job.cancelled` (revoked, terminated or expired);
- `self.update_state(state="PROGRESS", meta={...})` or `progress(0.4, "resizing")` inside a
  task → `job.progress`.

A webhook for a task: `apply_async(..., headers={"gateway_callback_url": url})` (and
optionally `"gateway_callback_events": [...]`), delivered by the gateway's worker as for any job.
"""

from __future__ import annotations

import sys
import weakref
from datetime import UTC, datetime
from typing import Any, Final

from celery import Celery, Task, current_task, signals

from gateway.integrations.blocking import BlockingQueueJobs
from gateway.integrations.lifecycle import DEFAULT_MAX_RESULT_BYTES, bus_settings, error_of
from gateway.webhooks.schedule import DEFAULT_CALLBACK_EVENTS

PROGRESS_STATE: Final = "PROGRESS"
"""The custom state Celery users report progress with (`update_state(state="PROGRESS")`)."""

CALLBACK_HEADER: Final = "gateway_callback_url"
CALLBACK_EVENTS_HEADER: Final = "gateway_callback_events"

_installed: weakref.WeakKeyDictionary[Celery, BlockingQueueJobs] = weakref.WeakKeyDictionary()
_original_update_state = Task.update_state


def install(
    app: Celery,
    *,
    redis_url: str | None = None,
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
) -> None:
    """Report `app`'s tasks as gateway jobs in the gateway's Redis (`redis_url` or `REDIS_URL`).

    Signals are process-wide: with several Celery apps in one process, install one of them."""
    bus_settings(redis_url)  # refuse a wrong URL here, not at the first task
    _installed[app] = BlockingQueueJobs(redis_url, max_result_bytes=max_result_bytes)
    signals.before_task_publish.connect(_on_publish, weak=False, dispatch_uid="gateway.publish")
    signals.task_prerun.connect(_on_prerun, weak=False, dispatch_uid="gateway.prerun")
    signals.task_success.connect(_on_success, weak=False, dispatch_uid="gateway.success")
    signals.task_failure.connect(_on_failure, weak=False, dispatch_uid="gateway.failure")
    signals.task_revoked.connect(_on_revoked, weak=False, dispatch_uid="gateway.revoked")
    Task.update_state = _update_state


def progress(fraction: float, message: str = "", **extra: Any) -> bool:
    """Report the running task's progress (0.0-1.0) as `job.progress`.

    False when the job has already ended (cancelled through the gateway, say): a task may stop.
    """
    task = current_task
    if task is None or not task.request.id:
        raise RuntimeError("progress() reports the running task's progress: call it in a task")
    jobs = _jobs_for(task)
    if jobs is None:
        raise RuntimeError(f"gateway.integrations.celery.install() was not called for {task.app}")
    return jobs.progress(task.request.id, fraction, message, extra)


def _jobs_for(task: Any) -> BlockingQueueJobs | None:
    jobs = _installed.get(task.app) if task is not None else None
    if jobs is None and len(_installed) == 1:
        # A task of another app object in the same process (Celery's default app): one install.
        jobs = next(iter(_installed.values()))
    return jobs


def _any_jobs() -> BlockingQueueJobs | None:
    return next(iter(_installed.values()), None)


def _update_state(
    self: Task[Any, Any],
    task_id: str | None = None,
    state: str | None = None,
    meta: dict[str, Any] | None = None,
    **kwargs: Any,
) -> None:
    """`Task.update_state`, which also publishes a `PROGRESS` state as `job.progress`.

    `meta` may say `progress` (0.0-1.0) or `current` and `total`, and `message` or `status`;
    everything else in it travels in the event too."""
    job_id = task_id or self.request.id
    jobs = _jobs_for(self)
    if state == PROGRESS_STATE and job_id and jobs is not None:
        fraction, message, extra = _progress_of(meta or {})
        jobs.progress(job_id, fraction, message, extra)
    _original_update_state(self, task_id, state, meta, **kwargs)


def _progress_of(meta: dict[str, Any]) -> tuple[float, str, dict[str, Any]]:
    extra = dict(meta)
    fraction: Any = extra.pop("progress", None)
    if fraction is None:
        current, total = meta.get("current"), meta.get("total")
        is_number = isinstance(current, int | float) and isinstance(total, int | float)
        fraction = current / total if is_number and total else 0.0
    message = extra.pop("message", None) or extra.pop("status", None) or ""
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        value = 0.0
    return value, str(message), extra


def _on_publish(sender: str | None = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
    jobs = _any_jobs()
    headers = headers or {}
    job_id = headers.get("id")
    if jobs is None or not isinstance(job_id, str):
        return
    if headers.get("retries"):
        # A retry's re-send, made in the worker while the attempt's exception is handled.
        error = error_of(sys.exc_info()[1], "the task asked to be retried")
        jobs.retrying(job_id, error, _seconds_until(headers.get("eta")))
        return
    callback_url = headers.get(CALLBACK_HEADER)
    events = headers.get(CALLBACK_EVENTS_HEADER)
    jobs.queued(
        job_id,
        str(headers.get("task") or sender),
        None,
        callback_url=callback_url if isinstance(callback_url, str) else None,
        callback_events=tuple(events) if isinstance(events, list) else DEFAULT_CALLBACK_EVENTS,
    )


def _seconds_until(eta: Any) -> float | None:
    if not isinstance(eta, str):
        return None
    try:
        when = datetime.fromisoformat(eta)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


def _on_prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    jobs = _jobs_for(task)
    if jobs is not None and task_id:
        jobs.started(task_id, task.name)


def _on_success(sender: Any = None, result: Any = None, **_: Any) -> None:
    jobs = _jobs_for(sender)
    if jobs is not None and sender.request.id:
        jobs.completed(sender.request.id, result)


def _on_failure(
    sender: Any = None, task_id: str | None = None, exception: BaseException | None = None, **_: Any
) -> None:
    jobs = _jobs_for(sender)
    if jobs is not None and task_id:
        jobs.failed(task_id, error_of(exception, "the task failed"))


def _on_revoked(
    sender: Any = None,
    request: Any = None,
    terminated: bool = False,
    signum: Any = None,
    expired: bool = False,
    **_: Any,
) -> None:
    jobs = _jobs_for(sender)
    job_id = getattr(request, "id", None)
    if jobs is None or not job_id:
        return
    if expired:
        reason = "expired before a worker ran it"
    elif terminated:
        reason = f"revoked and terminated (signal {signum})"
    else:
        reason = "revoked"
    jobs.cancelled(job_id, reason)
