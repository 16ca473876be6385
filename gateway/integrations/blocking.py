"""`QueueJobs` for hooks that are plain functions (Celery signals, RQ's worker): each call runs
on a private event loop in a daemon thread and is waited for, within a timeout.

One loop per process, made on first use: Celery's and RQ's workers fork, and a forked child
gets its own loop and Redis connections (the parent's are never touched from the child). A
hook never raises into the queue: a failure to publish (Redis away, an event refused) is
logged and the task goes on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Final

from gateway.integrations.lifecycle import DEFAULT_MAX_RESULT_BYTES, QueueJobs

log = logging.getLogger("gateway.integrations")

CALL_TIMEOUT: Final = 10.0
"""Seconds a hook waits for its event to be published before giving up (and logging)."""


class BlockingQueueJobs:
    """The lifecycle calls of `QueueJobs`, made from synchronous code in any thread."""

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
        timeout: float = CALL_TIMEOUT,
    ) -> None:
        self.redis_url = redis_url
        self.max_result_bytes = max_result_bytes
        self.timeout = timeout
        self._lock = threading.Lock()
        self._pid = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._jobs: QueueJobs | None = None

    def _runner(self) -> tuple[asyncio.AbstractEventLoop, QueueJobs]:
        with self._lock:
            if self._pid != os.getpid() or self._loop is None or self._jobs is None:
                jobs = QueueJobs.open(self.redis_url, max_result_bytes=self.max_result_bytes)
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="gateway-integration", daemon=True
                )
                thread.start()
                self._loop, self._jobs, self._pid = loop, jobs, os.getpid()
            return self._loop, self._jobs

    def _run(self, what: str, call: Callable[[QueueJobs], Coroutine[Any, Any, bool]]) -> bool:
        try:
            loop, jobs = self._runner()
            future = asyncio.run_coroutine_threadsafe(call(jobs), loop)
            try:
                return future.result(self.timeout)
            except FutureTimeout:
                future.cancel()
                raise TimeoutError(f"no answer from Redis within {self.timeout:g}s") from None
        except Exception as exc:
            log.warning("gateway: could not publish %s: %s", what, exc)
            return False

    def queued(self, job_id: str, type_: str, data: Any = None, **callback: Any) -> bool:
        return self._run(
            f"job.queued of {job_id}", lambda jobs: jobs.queued(job_id, type_, data, **callback)
        )

    def started(self, job_id: str, type_: str, *, attempt: int | None = None) -> bool:
        return self._run(
            f"job.started of {job_id}", lambda jobs: jobs.started(job_id, type_, attempt=attempt)
        )

    def progress(
        self, job_id: str, fraction: float, message: str = "", extra: dict[str, Any] | None = None
    ) -> bool:
        return self._run(
            f"job.progress of {job_id}",
            lambda jobs: jobs.progress(job_id, fraction, message, extra),
        )

    def retrying(self, job_id: str, error: dict[str, Any], delay: float | None = None) -> bool:
        return self._run(
            f"job.retrying of {job_id}", lambda jobs: jobs.retrying(job_id, error, delay)
        )

    def completed(self, job_id: str, result: Any) -> bool:
        return self._run(f"job.completed of {job_id}", lambda jobs: jobs.completed(job_id, result))

    def failed(self, job_id: str, error: dict[str, Any]) -> bool:
        return self._run(f"job.failed of {job_id}", lambda jobs: jobs.failed(job_id, error))

    def cancelled(self, job_id: str, reason: str) -> bool:
        return self._run(f"job.cancelled of {job_id}", lambda jobs: jobs.cancelled(job_id, reason))
