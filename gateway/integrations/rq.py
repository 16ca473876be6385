"""RQ jobs as gateway jobs: a `Queue` that records what it enqueues, a `Worker` that reports
what it runs.

    queue = gateway.integrations.rq.Queue(connection=broker)     # instead of rq.Queue
    rq worker -w gateway.integrations.rq.Worker                  # instead of rq's Worker

Both write into the gateway's Redis (`REDIS_URL`, or `install(redis_url=...)` first). An RQ
job's id is its gateway job id (`job:<job id>`). What each step becomes:

- `Queue.enqueue...` → `job.queued` (and `job.cancel()` on a job it made → `job.cancelled`);
- the work horse preparing the job → `job.started`; `progress(0.4, "resizing")` inside it →
  `job.progress`;
- success → `job.completed` (the result, bounded); an exception → `job.retrying` while the
  job's `Retry` has tries left, else `job.failed`; a job that returns `Retry` likewise;
- `send_stop_job_command` (a running job stopped) → `job.cancelled`;
- an abandoned job (its worker died), found by a worker's maintenance → `job.retrying` or
  `job.failed` with `AbandonedJobError`, as RQ itself decides.

A webhook for a job: `queue.enqueue(f, ..., meta={"gateway_callback_url": url})`.
"""

from __future__ import annotations

import re
import threading
from types import TracebackType
from typing import Any, Final

import rq
from rq.job import Job as RQJob

from gateway.integrations.blocking import BlockingQueueJobs
from gateway.integrations.lifecycle import (
    DEFAULT_MAX_RESULT_BYTES,
    ERROR_MESSAGE_CHARS,
    bus_settings,
    error_of,
)

CALLBACK_META: Final = "gateway_callback_url"

_lock = threading.Lock()
_jobs: BlockingQueueJobs | None = None


def install(
    *, redis_url: str | None = None, max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
) -> None:
    """Where the events go (the gateway's Redis), when not `REDIS_URL`; and the result bound."""
    global _jobs
    bus_settings(redis_url)  # refuse a wrong URL here
    with _lock:
        _jobs = BlockingQueueJobs(redis_url, max_result_bytes=max_result_bytes)


def _gateway() -> BlockingQueueJobs:
    global _jobs
    with _lock:
        if _jobs is None:
            bus_settings(None)
            _jobs = BlockingQueueJobs()
        return _jobs


def progress(fraction: float, message: str = "", **extra: Any) -> bool:
    """Report the running job's progress (0.0-1.0) as `job.progress`.

    False when the job has already ended (cancelled through the gateway, say): it may stop.
    """
    job = rq.get_current_job()
    if job is None:
        raise RuntimeError("progress() reports the running job's progress: call it in a job")
    return _gateway().progress(job.id, fraction, message, extra)


def error_from_traceback(text: str) -> dict[str, Any]:
    """A job's `error` from RQ's formatted traceback: its last line, `Type: message`."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    match = re.fullmatch(r"([A-Za-z_][\w.]*): ?(.*)", last)
    if match and not last.startswith("Work-horse"):
        return {
            "type": match.group(1).rsplit(".", 1)[-1],
            "message": match.group(2)[:ERROR_MESSAGE_CHARS],
        }
    return {"type": "error", "message": (last or "the job failed")[:ERROR_MESSAGE_CHARS]}


class Job(RQJob):
    """RQ's job, which also reports `cancel()` as `job.cancelled`."""

    def cancel(self, *args: Any, **kwargs: Any) -> Any:
        answer = super().cancel(*args, **kwargs)
        _gateway().cancelled(self.id, "cancelled before it ran")
        return answer


class Queue(rq.Queue):
    """RQ's queue, which records each job it enqueues as a gateway job (`job.queued`)."""

    job_class = Job

    def enqueue_job(self, job: RQJob, *args: Any, **kwargs: Any) -> RQJob:
        callback = job.meta.get(CALLBACK_META)
        _gateway().queued(
            job.id,
            job.func_name or "rq",
            None,
            callback_url=callback if isinstance(callback, str) else None,
        )
        return super().enqueue_job(job, *args, **kwargs)


class Worker(rq.Worker):
    """RQ's forking worker, which reports each job's start, progress and end."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.push_exc_handler(_abandoned)  # type: ignore[no-untyped-call]
        _gateway()  # refuse to start without the gateway's Redis

    def prepare_job_execution(self, job: RQJob, *args: Any, **kwargs: Any) -> None:
        super().prepare_job_execution(job, *args, **kwargs)
        _gateway().started(job.id, job.func_name or "rq")

    def handle_job_success(self, job: RQJob, queue: rq.Queue, *args: Any, **kwargs: Any) -> None:
        super().handle_job_success(job, queue, *args, **kwargs)
        _gateway().completed(job.id, getattr(job, "_result", None))

    def handle_job_failure(self, job: RQJob, queue: rq.Queue, *args: Any, **kwargs: Any) -> None:
        stopped = getattr(self, "_stopped_job_id", None) == job.id
        retry = bool(job.retries_left) and not stopped  # RQ 2 has no `should_retry`
        exc_string = kwargs.get("exc_string", args[1] if len(args) > 1 else "")
        super().handle_job_failure(job, queue, *args, **kwargs)
        if stopped:
            _gateway().cancelled(job.id, "stopped while it ran")
        elif retry:
            _gateway().retrying(job.id, error_from_traceback(str(exc_string)))
        else:
            _gateway().failed(job.id, error_from_traceback(str(exc_string)))

    def handle_job_retry(self, job: RQJob, queue: rq.Queue, retry: Any, *args: Any) -> None:
        """A job that returned `Retry` (RQ 3): retried while it has tries left."""
        exhausted = bool(job.number_of_retries and job.number_of_retries >= retry.max)
        super().handle_job_retry(job, queue, retry, *args)
        error = {"type": "Retry", "message": "the job asked to be retried"}
        if exhausted:
            _gateway().failed(job.id, {**error, "message": f"retried {retry.max} times"})
        else:
            _gateway().retrying(job.id, error)


def _abandoned(
    job: RQJob,
    exc_type: type[BaseException] | None,
    exc_value: BaseException | None,
    traceback: TracebackType | None,
) -> None:
    """RQ's maintenance found the job's worker gone (`AbandonedJobError`): it retries the job
    if its `Retry` has tries left, else fails it; say the same. Other exceptions are reported
    by `handle_job_failure`."""
    if exc_type is None or exc_type.__name__ != "AbandonedJobError":
        return
    error = error_of(exc_value, "")
    error["message"] = "the worker running it was lost (found by RQ's maintenance)"
    if job.retries_left:
        _gateway().retrying(job.id, error)
    else:
        _gateway().failed(job.id, error)
