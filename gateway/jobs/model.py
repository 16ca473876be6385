"""Job records and their state changes.

Every state change of a job is an event on its channel `job:<id>`, published in the same atomic
step as the change to the record (`Bus.publish(..., job=JobUpdate(...))`), so the record and
the event history never disagree and nothing follows a terminal event.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.backends.bundle import Backend
from gateway.backends.bus import JobUpdate, NewJob, Publication
from gateway.backends.stores import JobFlow, JobStart, JobStep, ReadStarted, Started
from gateway.events import Event, iso_time, now_ms
from gateway.vocabulary import JOB_TERMINAL_STATUSES, EventType, JobStatus
from gateway.webhooks.schedule import (
    DEFAULT_CALLBACK_EVENTS,
    Callback,
    schedule_event,
    webhook_state,
)


def new_job_id() -> str:
    """URL-safe and unguessable: knowing one job's id tells nothing of another's."""
    return secrets.token_hex(8)


def job_channel(job_id: str) -> str:
    return f"job:{job_id}"


@dataclass(slots=True)
class JobRecord:
    id: str
    type: str
    status: str = JobStatus.QUEUED.value
    progress: float = 0.0
    message: str = ""
    attempts: int = 0
    created_at: str = ""
    updated_at: str = ""
    data: Any = None
    result: Any = None
    error: dict[str, Any] | None = None
    last_event_id: str | None = None
    callback_url: str | None = None
    callback_events: tuple[str, ...] = DEFAULT_CALLBACK_EVENTS
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.status in JOB_TERMINAL_STATUSES

    @property
    def channel(self) -> str:
        return job_channel(self.id)

    @property
    def callback(self) -> Callback | None:
        return Callback(self.callback_url, self.callback_events) if self.callback_url else None

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> JobRecord:
        known = {
            "id",
            "type",
            "status",
            "progress",
            "message",
            "attempts",
            "created_at",
            "updated_at",
            "data",
            "result",
            "error",
            "last_event_id",
            "callback_url",
            "callback_events",
        }
        events = _loads(fields.get("callback_events"))
        return cls(
            id=fields["id"],
            type=fields["type"],
            status=fields.get("status", JobStatus.QUEUED.value),
            progress=float(fields.get("progress", "0")),
            message=fields.get("message", ""),
            attempts=int(fields.get("attempts", "0")),
            created_at=fields.get("created_at", ""),
            updated_at=fields.get("updated_at", ""),
            data=_loads(fields.get("data")),
            result=_loads(fields.get("result")),
            error=_loads(fields.get("error")),
            last_event_id=fields.get("last_event_id") or None,
            callback_url=fields.get("callback_url") or None,
            callback_events=tuple(events) if events else DEFAULT_CALLBACK_EVENTS,
            extra={k: v for k, v in fields.items() if k not in known},
        )

    def to_fields(self) -> dict[str, str]:
        fields = {
            "id": self.id,
            "type": self.type,
            "status": self.status,
            "progress": repr(self.progress),
            "message": self.message,
            "attempts": str(self.attempts),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "data": orjson.dumps(self.data).decode(),
        }
        if self.callback_url:
            fields["callback_url"] = self.callback_url
            fields["callback_events"] = orjson.dumps(list(self.callback_events)).decode()
        fields.update(self.extra)
        return fields

    def resource(self) -> dict[str, Any]:
        """The public JSON representation (`GET /jobs/{id}`)."""
        body: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "status": self.status,
            "progress": self.progress,
            "message": self.message or None,
            "attempts": self.attempts,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "last_event_id": self.last_event_id,
            "channel": self.channel,
            "links": {
                "self": f"/jobs/{self.id}",
                "events": f"/jobs/{self.id}/events",
                "ws": f"/ws?channel={self.channel}",
                "history": f"/channels/{self.channel}/events",
            },
        }
        if self.status == JobStatus.COMPLETED:
            body["result_url"] = f"/jobs/{self.id}/result"
            body["links"]["result"] = body["result_url"]
        if self.error is not None:
            body["error"] = self.error
        if self.callback_url:
            body["callback_url"] = self.callback_url
            body["callback_events"] = list(self.callback_events)
            body["webhook"] = webhook_state(self.extra)
        return body


def _loads(raw: str | None) -> Any:
    if raw is None or raw == "":
        return None
    return orjson.loads(raw)


def timestamp() -> str:
    return iso_time(now_ms())


async def create_job(
    backend: Backend,
    type_: str,
    data: Any,
    *,
    callback_url: str | None = None,
    callback_events: tuple[str, ...] = DEFAULT_CALLBACK_EVENTS,
) -> JobRecord:
    """Store a new job, publish `job.queued`, and put it on the queue for a worker."""
    record = new_job(type_, data, callback_url=callback_url, callback_events=callback_events)
    return (await create_jobs(backend, [record]))[0]


def new_job(
    type_: str,
    data: Any,
    *,
    callback_url: str | None = None,
    callback_events: tuple[str, ...] = DEFAULT_CALLBACK_EVENTS,
    job_id: str | None = None,
) -> JobRecord:
    """A new job's record (queued, created now), not stored yet: `create_jobs` stores it."""
    now = timestamp()
    return JobRecord(
        id=job_id or new_job_id(),
        type=type_,
        created_at=now,
        updated_at=now,
        data=data,
        callback_url=callback_url,
        callback_events=callback_events,
    )


def submission(record: JobRecord, created_ms: int) -> NewJob:
    """What the backend stores for a new job (`Bus.submit_jobs`): its record, its index entry,
    its `job.queued` event and the record change that event makes (as `transition` would)."""
    queued = EventType.QUEUED
    return NewJob(
        job_id=record.id,
        fields=record.to_fields(),
        created_ms=created_ms,
        event=Publication(
            job_channel(record.id),
            queued.value,
            {"job_id": record.id, "type": record.type},
            source=f"/jobs/{record.id}",
        ),
        update=JobUpdate(
            record.id, {"status": queued.status.value, "updated_at": record.updated_at}
        ),
    )


async def create_jobs(backend: Backend, records: Sequence[JobRecord]) -> list[JobRecord]:
    """Store new jobs (`new_job`), publish each one's `job.queued` and queue them, in one
    round trip (`Bus.submit_jobs`); then schedule the webhooks of those with a callback that
    wants `job.queued`. Each record gets its `last_event_id`."""
    created = now_ms()
    events = await backend.bus.submit_jobs([submission(record, created) for record in records])
    for record, event in zip(records, events, strict=True):
        record.last_event_id = event.id
        callback = record.callback
        if callback is not None:
            await schedule_event(backend, record.id, callback, event)
    return list(records)


async def record_job(
    backend: Backend,
    job_id: str,
    type_: str,
    data: Any,
    *,
    callback_url: str | None = None,
    callback_events: tuple[str, ...] = DEFAULT_CALLBACK_EVENTS,
    enqueue: bool = False,
) -> JobRecord:
    """Store a job under `job_id` and publish its `job.queued`; `enqueue` also puts it on the
    gateway's queue. Without it no gateway worker ever runs the job: another job queue's
    workers do (`gateway.integrations`), and report its state changes with `transition`."""
    created = now_ms()
    now = iso_time(created)
    record = JobRecord(
        id=job_id,
        type=type_,
        created_at=now,
        updated_at=now,
        data=data,
        callback_url=callback_url,
        callback_events=callback_events,
    )
    await backend.jobs.create(record.id, record.to_fields(), created)
    event = await transition(
        backend,
        record.id,
        EventType.QUEUED,
        {"type": type_},
        callback=record.callback,
        enqueue=enqueue,
    )
    if event is not None:
        record.last_event_id = event.id
    return record


async def transition(
    backend: Backend,
    job_id: str,
    event_type: str,
    data: dict[str, Any],
    fields: dict[str, str] | None = None,
    *,
    expire: int = 0,
    callback: Callback | None = None,
    enqueue: bool = False,
) -> Event | None:
    """Publish a job event and apply its state change; None when the job already ended.

    A terminal event (`expire` > 0) also bounds the job's history to the job's own lifetime,
    and an event the job's `callback` subscribed to is scheduled for webhook delivery.
    `enqueue` (a new job's `job.queued`) puts the job on the queue right after the event.
    """
    changes = job_changes(event_type, fields)
    publish = backend.bus.publish_and_enqueue if enqueue else backend.bus.publish
    event = await publish(
        job_channel(job_id),
        event_type,
        {"job_id": job_id, **data},
        source=f"/jobs/{job_id}",
        job=JobUpdate(job_id, changes, expire=expire),
    )
    if event is None:
        return None
    if expire:
        await backend.bus.expire_history(job_channel(job_id), expire)
    if callback is not None:
        await schedule_event(backend, job_id, callback, event)
    return event


def job_changes(event_type: str, fields: Mapping[str, str] | None = None) -> dict[str, str]:
    """The record fields a job event sets: its status, `updated_at`, and `fields`."""
    changes = {"status": EventType(event_type).status.value, "updated_at": timestamp()}
    if fields:
        changes.update(fields)
    return changes


class BusJobFlow(JobFlow):
    """`JobFlow` on any backend, one job at a time: `begin_attempt` then `transition`."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def start_many(self, starts: Sequence[JobStart]) -> list[Started]:
        results: list[Started] = []
        for start in starts:
            attempt = await self.backend.jobs.begin_attempt(start.job_id, start.max_attempts)
            if attempt is None or not attempt.granted:
                results.append(Started(attempt))
                continue
            event = await self.backend.bus.publish(
                job_channel(start.job_id),
                EventType.STARTED,
                {"job_id": start.job_id, "attempt": attempt.number},
                source=f"/jobs/{start.job_id}",
                job=JobUpdate(start.job_id, start.fields),
            )
            results.append(Started(attempt, None if event is None else event.id))
        return results

    async def read_and_start_many(
        self, job_ids: Sequence[str], limits: Mapping[str, int], fields: Mapping[str, str]
    ) -> list[ReadStarted]:
        """`get_many`, then `start_many` of the jobs that may start, with the counts read."""
        found = await self.backend.jobs.get_many(job_ids)
        starts: list[JobStart] = []
        for fields_read in found:
            if fields_read is None or "id" not in fields_read:
                continue
            record = JobRecord.from_fields(fields_read)
            limit = limits.get(record.type)
            if not record.terminal and limit is not None and not record.callback_url:
                starts.append(JobStart(record.id, record.attempts + 1, limit, fields))
        started = iter(await self.start_many(starts))
        results: list[ReadStarted] = []
        for fields_read in found:
            if fields_read is None or "id" not in fields_read:
                results.append(ReadStarted(None, Started(None)))
                continue
            record = JobRecord.from_fields(fields_read)
            if record.terminal:
                results.append(ReadStarted(None, Started(None)))
            elif record.type not in limits or record.callback_url:
                results.append(ReadStarted(fields_read, None))
            else:
                results.append(ReadStarted(fields_read, next(started)))
        return results

    async def finish_many(self, steps: Sequence[JobStep]) -> list[str | None]:
        events: list[str | None] = []
        for step in steps:
            channel = job_channel(step.job_id)
            event = await self.backend.bus.publish(
                channel,
                step.event_type,
                {"job_id": step.job_id, **step.data},
                source=f"/jobs/{step.job_id}",
                job=JobUpdate(step.job_id, step.fields, expire=step.expire),
            )
            if event is not None and step.expire:
                await self.backend.bus.expire_history(channel, step.expire)
            events.append(None if event is None else event.id)
        return events


async def load_job(backend: Backend, job_id: str) -> JobRecord | None:
    fields = await backend.jobs.get(job_id)
    if fields is None or "id" not in fields:
        return None
    return JobRecord.from_fields(fields)


def encode_field(value: Any) -> str:
    return orjson.dumps(value).decode()
