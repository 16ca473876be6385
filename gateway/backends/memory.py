"""In-process bus and stores: the embedded default when no `REDIS_URL` is set.

Mirrors the Redis implementation's semantics (stream-style ids, per-channel retention by size
and TTL, a job queue with visibility timeouts) so one contract test suite holds both to the
same promises. The bus holds the job store and queue it was opened with: a job event changes
the record in the same step, and nothing here awaits inside a step, so each is atomic.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.backends.bundle import Backend
from gateway.backends.bus import (
    Bus,
    History,
    JobUpdate,
    NewJob,
    Publication,
    check_event_size,
)
from gateway.backends.control import MemoryControl
from gateway.backends.redis_keys import queue_partition
from gateway.backends.stores import (
    Attempt,
    Delivery,
    IdempotencyStore,
    JobQueue,
    JobStore,
    WebhookSchedule,
)
from gateway.errors import EventTooLarge
from gateway.events import (
    Event,
    EventKey,
    envelope_tail,
    format_event_id,
    namespace_of,
    now_ms,
    parse_event_id,
    splice_envelope,
)
from gateway.metrics import METRICS
from gateway.settings import Settings
from gateway.vocabulary import JOB_TERMINAL_STATUSES


def open_memory(settings: Settings) -> Backend:
    jobs = MemoryJobStore()
    queue = MemoryJobQueue(settings.queue_partitions)
    bus = MemoryBus(settings, jobs, queue)
    return Backend(
        bus,
        jobs,
        queue,
        MemoryIdempotencyStore(),
        MemoryWebhookSchedule(),
        control=MemoryControl(),
    )


@dataclass(slots=True)
class _Entry:
    event: Event
    prev: str
    size: int
    """Bytes the entry counts towards the byte budget (its envelope without the id, as in Redis)."""


@dataclass(slots=True)
class _Log:
    entries: deque[_Entry] = field(default_factory=deque)
    last: EventKey = (0, 0)
    expires_at: float = 0.0
    held: int = 0
    """Bytes of the retained entries."""


@dataclass(slots=True)
class _Job:
    fields: dict[str, str]
    expires_at: float = 0.0


@dataclass(slots=True)
class _Pending:
    job_id: str
    consumer: str
    touched: float


class MemoryJobStore(JobStore):
    def __init__(self) -> None:
        self._jobs: dict[str, _Job] = {}
        self._index: dict[str, int] = {}

    def record(self, job_id: str) -> _Job | None:
        """The live record (the bus updates it in place), or None when unknown or expired."""
        job = self._jobs.get(job_id)
        if job is not None and job.expires_at and job.expires_at <= time.monotonic():
            del self._jobs[job_id]
            return None
        return job

    async def create(
        self, job_id: str, fields: Mapping[str, str], created_ms: int | None = None
    ) -> None:
        self._jobs[job_id] = _Job(dict(fields))
        if created_ms is not None:
            self._index[job_id] = created_ms

    async def get(self, job_id: str) -> dict[str, str] | None:
        job = self.record(job_id)
        return dict(job.fields) if job is not None else None

    async def update(self, job_id: str, fields: Mapping[str, str]) -> None:
        job = self.record(job_id)
        if job is not None:
            job.fields.update(fields)

    async def begin_attempt(self, job_id: str, max_attempts: int) -> Attempt | None:
        """Atomic because nothing here awaits between the check and the count."""
        job = self.record(job_id)
        if job is None or job.fields.get("status") in JOB_TERMINAL_STATUSES:
            return None
        done = int(job.fields.get("attempts", "0"))
        if done >= max_attempts:
            return Attempt(done, granted=False)
        job.fields["attempts"] = str(done + 1)
        return Attempt(done + 1, granted=True)

    async def index(self, job_id: str, created_ms: int) -> None:
        self._index[job_id] = created_ms

    async def job_index(self, before: tuple[int, str] | None, limit: int) -> list[tuple[int, str]]:
        pairs = sorted(((ms, job_id) for job_id, ms in self._index.items()), reverse=True)
        if before is not None:
            pairs = [pair for pair in pairs if pair < before]
        return pairs[:limit]

    async def unindex(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            self._index.pop(job_id, None)


class MemoryJobQueue(JobQueue):
    """One ready deque and one delayed heap per partition, like the Redis streams."""

    def __init__(self, partitions: int = 1) -> None:
        self.partitions = partitions
        self._ready: list[deque[str]] = [deque() for _ in range(partitions)]
        self._delayed: list[list[tuple[float, int, str]]] = [[] for _ in range(partitions)]
        self._pending: dict[tuple[int, str], _Pending] = {}
        self._tokens = itertools.count(1)
        self._wakeup = [asyncio.Event() for _ in range(partitions)]

    async def enqueue(self, job_id: str, delay: float = 0.0) -> None:
        self._enqueue(queue_partition(job_id, self.partitions), job_id, delay)

    def _enqueue(self, partition: int, job_id: str, delay: float) -> None:
        if delay > 0:
            entry = (time.monotonic() + delay, next(self._tokens), job_id)
            heapq.heappush(self._delayed[partition], entry)
        else:
            self._ready[partition].append(job_id)
        self._wakeup[partition].set()

    def _promote_due(self, partition: int) -> float | None:
        """Move due delayed jobs to the ready queue; return seconds until the next one is due."""
        now = time.monotonic()
        delayed = self._delayed[partition]
        while delayed and delayed[0][0] <= now:
            self._ready[partition].append(heapq.heappop(delayed)[2])
        return delayed[0][0] - now if delayed else None

    async def claim_many(
        self, consumer: str, partition: int, count: int, block: float
    ) -> list[Delivery]:
        deadline = time.monotonic() + block
        ready = self._ready[partition]
        while True:
            next_due = self._promote_due(partition)
            if ready:
                taken: list[Delivery] = []
                now = time.monotonic()
                while ready and len(taken) < count:
                    job_id = ready.popleft()
                    token = str(next(self._tokens))
                    self._pending[partition, token] = _Pending(job_id, consumer, now)
                    taken.append(Delivery(job_id, token, partition))
                return taken
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            wait = remaining if next_due is None else min(remaining, next_due)
            wakeup = self._wakeup[partition]
            wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), timeout=wait)

    async def wait_for_jobs(self, partition: int, timeout: float) -> None:
        next_due = self._promote_due(partition)
        if self._ready[partition]:
            return
        wakeup = self._wakeup[partition]
        wakeup.clear()
        wait = timeout if next_due is None else min(timeout, next_due)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wakeup.wait(), timeout=wait)

    async def reclaim(self, consumer: str, min_idle: float, count: int = 50) -> list[Delivery]:
        now = time.monotonic()
        taken: list[Delivery] = []
        for (partition, token), pending in self._pending.items():
            if len(taken) >= count:
                break
            if now - pending.touched >= min_idle:
                pending.consumer = consumer
                pending.touched = now
                taken.append(Delivery(pending.job_id, token, partition))
        return taken

    async def touch_many(self, consumer: str, deliveries: Sequence[Delivery]) -> None:
        now = time.monotonic()
        for delivery in deliveries:
            pending = self._pending.get((delivery.partition, delivery.token))
            if pending is not None:
                pending.touched = now

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            self._pending.pop((delivery.partition, delivery.token), None)

    async def requeue(self, delivery: Delivery, delay: float = 0.0) -> None:
        # Nothing awaits between the two: nothing else runs in between.
        self._pending.pop((delivery.partition, delivery.token), None)
        self._enqueue(delivery.partition, delivery.job_id, delay)


class MemoryBus(Bus):
    kind = "memory"

    def __init__(self, settings: Settings, jobs: MemoryJobStore, queue: MemoryJobQueue) -> None:
        super().__init__(settings)
        self._jobs = jobs
        self._queue = queue
        self._logs: dict[str, _Log] = {}
        self._subscribed: set[str] = set()

    async def ping(self) -> bool:
        return True

    def _log(self, channel: str) -> _Log | None:
        log = self._logs.get(channel)
        if log is not None and log.expires_at <= time.monotonic():
            del self._logs[channel]
            return None
        return log

    async def publish(
        self,
        channel: str,
        type_: str,
        data: Any,
        *,
        source: str | None = None,
        job: JobUpdate | None = None,
    ) -> Event | None:
        record = None
        if job is not None:
            record = self._jobs.record(job.job_id)
            if record is None or record.fields.get("status") in JOB_TERMINAL_STATUSES:
                return None
        retention = self.settings.retention_for(channel)
        tail = envelope_tail(channel, type_, data, source)
        check_event_size(self.settings, channel, tail)
        log = self._log(channel)
        if log is None:
            log = self._logs[channel] = _Log()
        ms = now_ms()
        key = (ms, 0) if ms > log.last[0] else (log.last[0], log.last[1] + 1)
        event_id = format_event_id(key)
        prev = log.entries[-1].event.id if log.entries else ""
        event = Event(splice_envelope(event_id, tail), id=event_id, channel=channel, type=type_)
        log.entries.append(_Entry(event, prev, len(tail)))
        log.held += len(tail)
        log.last = key
        log.expires_at = time.monotonic() + retention.ttl
        while len(log.entries) > 1 and (
            len(log.entries) > retention.size or log.held > retention.max_bytes
        ):
            log.held -= log.entries.popleft().size
        if record is not None and job is not None:
            record.fields.update(job.fields)
            record.fields["last_event_id"] = event_id
            if job.expire:
                record.expires_at = time.monotonic() + job.expire
        METRICS.events_published.labels(namespace_of(channel)).inc()
        if channel in self._subscribed:
            self._deliver(event)
        return event

    async def publish_and_enqueue(
        self, channel: str, type_: str, data: Any, *, source: str | None, job: JobUpdate
    ) -> Event | None:
        event = await self.publish(channel, type_, data, source=source, job=job)
        if event is not None:
            await self._queue.enqueue(job.job_id)
        return event

    async def publish_many(
        self, publications: Sequence[Publication]
    ) -> list[Event | EventTooLarge]:
        answers: list[Event | EventTooLarge] = []
        for item in publications:
            try:
                event = await self.publish(item.channel, item.type, item.data, source=item.source)
            except EventTooLarge as exc:
                answers.append(exc)
                continue
            assert event is not None  # no job update: never refused
            answers.append(event)
        return answers

    async def submit_jobs(self, jobs: Sequence[NewJob]) -> list[Event]:
        """Nothing here awaits anything outside this process: the whole batch is one step."""
        for job in jobs:  # the size check first, as Redis does, before anything is stored
            item = job.event
            check_event_size(
                self.settings,
                item.channel,
                envelope_tail(item.channel, item.type, item.data, item.source),
            )
        for job in jobs:
            await self._jobs.create(job.job_id, job.fields, job.created_ms)
        events = []
        for job in jobs:
            item = job.event
            event = await self.publish_and_enqueue(
                item.channel, item.type, item.data, source=item.source, job=job.update
            )
            assert event is not None  # a record stored a moment ago is not terminal
            events.append(event)
        return events

    async def publish_live(self, channel: str, type_: str, data: Any) -> Event:
        event = Event.live_only(channel, type_, data)
        if channel in self._subscribed:
            self._deliver(event)
        return event

    async def history(self, channel: str, since: str | None, limit: int = 1000) -> History:
        log = self._log(channel)
        entries = list(log.entries) if log is not None else []
        if since is None:
            chosen = entries[: limit + 1]
            complete = not chosen or chosen[0].prev == ""
        else:
            after = parse_event_id(since)
            chosen = [entry for entry in entries if entry.event.key > after][: limit + 1]
            if chosen:
                complete = chosen[0].prev == since
            else:
                complete = bool(entries) and entries[-1].event.id == since
        more = len(chosen) > limit
        return History([entry.event for entry in chosen[:limit]], complete, more)

    async def subscribe(self, channel: str) -> None:
        self._subscribed.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._subscribed.discard(channel)

    async def expire_history(self, channel: str, seconds: int) -> None:
        log = self._log(channel)
        if log is not None:
            log.expires_at = min(log.expires_at, time.monotonic() + seconds)


class MemoryIdempotencyStore(IdempotencyStore):
    def __init__(self) -> None:
        self._keys: dict[str, tuple[bytes, float]] = {}

    async def begin(self, key: str, value: bytes, ttl: int) -> bytes | None:
        now = time.monotonic()
        stored = self._keys.get(key)
        if stored is not None and stored[1] > now:
            return stored[0]
        self._keys[key] = (value, now + ttl)
        return None

    async def finish(self, key: str, value: bytes, ttl: int) -> None:
        self._keys[key] = (value, time.monotonic() + ttl)

    async def abandon(self, key: str) -> None:
        self._keys.pop(key, None)


class MemoryWebhookSchedule(WebhookSchedule):
    def __init__(self) -> None:
        self._due: dict[str, tuple[bytes, float]] = {}

    async def schedule(self, delivery_id: str, payload: bytes, due: float) -> None:
        self._due[delivery_id] = (payload, due)

    async def claim(self, limit: int, lease: float) -> list[tuple[str, bytes]]:
        now = time.time()
        due = sorted(
            (entry[1], delivery_id) for delivery_id, entry in self._due.items() if entry[1] <= now
        )[:limit]
        claimed = []
        for _due, delivery_id in due:
            payload = self._due[delivery_id][0]
            self._due[delivery_id] = (payload, now + lease)
            claimed.append((delivery_id, payload))
        return claimed

    async def finish(self, delivery_id: str) -> None:
        self._due.pop(delivery_id, None)
