"""A queue's task lifecycle as gateway job state changes: the one place the integrations share.

Each method is one state change of the job `job:<task id>`, made with the jobs layer's own
functions (`record_job`, `transition`): the record and the event change in one atomic script,
nothing follows a terminal event, a terminal event bounds the job's history to
`GATEWAY_JOB_TTL`, and an event the job's webhook asked for is scheduled for delivery. A job
recorded here is never put on the gateway's queue.

`QueueJobs` is async (arq calls it on its own loop); `blocking.BlockingQueueJobs` runs it for
the queues whose hooks are plain functions (Celery, RQ).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Final

import orjson

from gateway.backends.bundle import Backend
from gateway.backends.url import REDIS, backend_kind, open_backend
from gateway.errors import SettingsError
from gateway.events import iso_time
from gateway.jobs.model import encode_field, job_channel, load_job, record_job, transition
from gateway.settings import Settings
from gateway.vocabulary import EventType
from gateway.webhooks.schedule import DEFAULT_CALLBACK_EVENTS, Callback

log = logging.getLogger("gateway.integrations")

DEFAULT_MAX_RESULT_BYTES: Final = 64 * 1024
"""The largest result (its JSON) a `job.completed` event carries; a larger one is left out and
the event says so (`result_too_large`). The namespace's event size limit bounds it too."""

ENVELOPE_ROOM: Final = 1024
"""Bytes of an event left for its envelope and the other fields beside the result."""

ERROR_MESSAGE_CHARS: Final = 2000
"""An error's message is cut to this, as the gateway's own worker cuts it."""

CALLBACK_CACHE: Final = 10_000
"""Jobs whose webhook (or lack of one) a process remembers between events."""


def bus_settings(redis_url: str | None) -> Settings:
    """The gateway's settings from the environment, with the Redis the gateway uses.

    The integrations write into the gateway's Redis: `redis_url`, else `REDIS_URL`. Retention,
    event size limits and `GATEWAY_JOB_TTL` come from the same environment variables as the
    gateway's, so set them alike."""
    url = redis_url if redis_url is not None else os.environ.get("REDIS_URL", "")
    if backend_kind(url) != REDIS:
        raise SettingsError(
            "the job-queue integrations write into the gateway's Redis: pass redis_url= or set "
            f"REDIS_URL to the gateway's redis://... (got {url!r})"
        )
    return Settings.from_env(redis_url=url)


def error_of(exc: BaseException | None, fallback: str = "") -> dict[str, Any]:
    """An exception as a job's `error`, shaped like the gateway worker's."""
    if exc is None:
        return {"type": "error", "message": fallback[:ERROR_MESSAGE_CHARS]}
    return {"type": type(exc).__name__, "message": str(exc)[:ERROR_MESSAGE_CHARS]}


def bounded_result(result: Any, limit: int) -> tuple[Any, dict[str, Any]]:
    """The result as the event carries it, and what the event says about it.

    A result that is not JSON goes as its `repr` (`result_repr: true`); one whose JSON is over
    `limit` bytes is left out (`result: null`, `result_too_large: {"bytes", "limit"}`).
    """
    notes: dict[str, Any] = {}
    try:
        encoded = orjson.dumps(result, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        result = repr(result)
        encoded = orjson.dumps(result)
        notes["result_repr"] = True
    if len(encoded) > limit:
        notes["result_too_large"] = {"bytes": len(encoded), "limit": limit}
        return None, notes
    return result, notes


class QueueJobs:
    """Turns one queue's task lifecycle into gateway jobs, on the backend it is given.

    Every method answers whether its event was published: False when the job had already
    ended (a task cancelled through the gateway, say), which a task may take as a sign to stop.
    """

    def __init__(
        self,
        backend: Backend,
        settings: Settings,
        *,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    ) -> None:
        self.backend = backend
        self.settings = settings
        self.max_result_bytes = max_result_bytes
        self._callbacks: dict[str, Callback | None] = {}

    @classmethod
    def open(
        cls, redis_url: str | None = None, *, max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
    ) -> QueueJobs:
        """On the gateway's Redis (`redis_url`, else `REDIS_URL`); `close()` when done."""
        settings = bus_settings(redis_url)
        return cls(open_backend(settings), settings, max_result_bytes=max_result_bytes)

    async def close(self) -> None:
        await self.backend.close()

    def result_limit(self, job_id: str) -> int:
        event_limit = self.settings.max_event_size_for(job_channel(job_id))
        if event_limit:
            return max(min(self.max_result_bytes, event_limit - ENVELOPE_ROOM), 0)
        return self.max_result_bytes

    async def queued(
        self,
        job_id: str,
        type_: str,
        data: Any = None,
        *,
        callback_url: str | None = None,
        callback_events: tuple[str, ...] = DEFAULT_CALLBACK_EVENTS,
    ) -> bool:
        """Record the task as a job and publish `job.queued`, once per task id (a retry that
        re-sends the task, as Celery's does, finds the job and publishes nothing)."""
        if await load_job(self.backend, job_id) is not None:
            return False
        record = await record_job(
            self.backend,
            job_id,
            type_,
            data,
            callback_url=callback_url,
            callback_events=callback_events,
        )
        self._remember(job_id, record.callback)
        return True

    async def started(self, job_id: str, type_: str, *, attempt: int | None = None) -> bool:
        """`job.started`; `attempt` defaults to one more than the job's starts so far.

        A task sent by a process without the integration is recorded here first (with its
        `job.queued`), so it still shows up once a worker starts it."""
        record = await load_job(self.backend, job_id)
        if record is None:
            record = await record_job(self.backend, job_id, type_, None)
        if record.terminal:
            return False
        self._remember(job_id, record.callback)
        number = attempt if attempt is not None else record.attempts + 1
        return await self._change(
            job_id,
            EventType.STARTED,
            {"attempt": number},
            {"progress": "0.0", "attempts": str(number)},
        )

    async def progress(
        self, job_id: str, fraction: float, message: str = "", extra: dict[str, Any] | None = None
    ) -> bool:
        """`job.progress` (fraction clamped to 0.0-1.0), as a gateway handler's `progress`."""
        fraction = min(max(float(fraction), 0.0), 1.0)
        return await self._change(
            job_id,
            EventType.PROGRESS,
            {"progress": fraction, "message": message, **(extra or {})},
            {"progress": repr(fraction), "message": message},
        )

    async def retrying(
        self, job_id: str, error: dict[str, Any], delay: float | None = None
    ) -> bool:
        """`job.retrying`: the attempt failed and the queue will run the task again."""
        data: dict[str, Any] = {"error": error}
        if delay is not None:
            data["delay"] = delay
            data["next_attempt_at"] = iso_time(int((time.time() + delay) * 1000))
        return await self._change(job_id, EventType.RETRYING, data, {"error": encode_field(error)})

    async def completed(self, job_id: str, result: Any) -> bool:
        """`job.completed` with the result, bounded (`bounded_result`)."""
        value, notes = bounded_result(result, self.result_limit(job_id))
        return await self._change(
            job_id,
            EventType.COMPLETED,
            {"result": value, "result_url": f"/jobs/{job_id}/result", **notes},
            {"progress": "1.0", "result": encode_field(value), "error": ""},
            terminal=True,
        )

    async def failed(self, job_id: str, error: dict[str, Any]) -> bool:
        """`job.failed`: the queue gave the task up."""
        return await self._change(
            job_id,
            EventType.FAILED,
            {"error": error},
            {"error": encode_field(error)},
            terminal=True,
        )

    async def cancelled(self, job_id: str, reason: str) -> bool:
        """`job.cancelled`: the task was revoked, stopped or aborted."""
        return await self._change(
            job_id, EventType.CANCELLED, {"reason": reason}, None, terminal=True
        )

    async def _change(
        self,
        job_id: str,
        event_type: EventType,
        data: dict[str, Any],
        fields: dict[str, str] | None,
        *,
        terminal: bool = False,
    ) -> bool:
        callback = await self._callback(job_id)
        event = await transition(
            self.backend,
            job_id,
            event_type,
            data,
            fields,
            expire=self.settings.job_ttl if terminal else 0,
            callback=callback,
        )
        if terminal:
            self._callbacks.pop(job_id, None)
        return event is not None

    async def _callback(self, job_id: str) -> Callback | None:
        if job_id in self._callbacks:
            return self._callbacks[job_id]
        record = await load_job(self.backend, job_id)
        callback = record.callback if record is not None else None
        self._remember(job_id, callback)
        return callback

    def _remember(self, job_id: str, callback: Callback | None) -> None:
        if len(self._callbacks) >= CALLBACK_CACHE:
            self._callbacks.pop(next(iter(self._callbacks)))
        self._callbacks[job_id] = callback
