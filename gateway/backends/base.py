"""The backend interface: everything the gateway asks of its bus and store.

Two implementations keep the same contract (tests/backends/test_contract.py runs against both):
`MemoryBackend` for one process with no Redis, `RedisBackend` for many processes sharing Redis.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.errors import EventTooLarge
from gateway.events import Event
from gateway.settings import Settings

# Re-exported for `gateway.api.jobs` until it imports it from `gateway.vocabulary`.
from gateway.vocabulary import JOB_TERMINAL_STATUSES as JOB_TERMINAL_STATUSES

EventListener = Callable[[Event], None]
"""Receives every live event of a subscribed channel; must not block (the hub queues frames)."""

RecoveryListener = Callable[[], Awaitable[None]]
"""Called after the bus reconnected and re-subscribed, so the hub can fetch what it missed.

Backends call it before delivering any live event of the new connection (the call itself, not
the awaitable it returns, is where the hub starts holding live events back)."""


def check_event_size(settings: Settings, channel: str, encoded: bytes) -> None:
    """Refuse an encoded event (its stored envelope) over the channel's limit."""
    limit = settings.max_event_size_for(channel)
    if limit and len(encoded) > limit:
        raise EventTooLarge(channel, len(encoded), limit)


@dataclass(frozen=True, slots=True)
class History:
    """Events after a position, and whether that position was still inside the retained window.

    `complete` is False when events after `since` were trimmed, expired or lost (Redis restarted
    without persistence): the reader must be told of the gap instead of seeing silence.
    """

    events: list[Event]
    complete: bool
    more: bool = False


@dataclass(frozen=True, slots=True)
class Delivery:
    """One job handed to a worker; `token` identifies the delivery to ack, touch or release."""

    job_id: str
    token: str


@dataclass(frozen=True, slots=True)
class Attempt:
    """The answer to "may this job run once more?", decided in one atomic step.

    Counting and checking apart would let two deliveries of one job both pass the check.
    """

    number: int
    """The attempt about to run when `granted`; otherwise how many attempts already ran."""
    granted: bool


@dataclass(frozen=True, slots=True)
class JobUpdate:
    """Fields to set on a job record in the same atomic step as publishing its event."""

    job_id: str
    fields: Mapping[str, str]
    expire: int = 0
    """Seconds to keep the record from now (set on terminal events); 0 keeps it as it is."""


class Backend(abc.ABC):
    """Bus (publish, history, live subscriptions) and store (jobs, queue) in one interface."""

    kind: str

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._listener: EventListener = _ignore
        self._recovery: RecoveryListener | None = None

    def set_listener(self, listener: EventListener) -> None:
        self._listener = listener

    def set_recovery_listener(self, listener: RecoveryListener) -> None:
        self._recovery = listener

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect; called once before use."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and tasks."""

    @abc.abstractmethod
    async def ping(self) -> bool:
        """True when the store answers and live delivery works (readiness)."""

    # --- bus -------------------------------------------------------------------------------

    @abc.abstractmethod
    async def publish(
        self,
        channel: str,
        type_: str,
        data: Any,
        *,
        source: str | None = None,
        job: JobUpdate | None = None,
    ) -> Event | None:
        """Append to the channel's history and deliver live, atomically.

        The history is then trimmed to the channel's retention (events and bytes, oldest
        first). Raises `EventTooLarge` over the namespace's event size limit. With `job`, the
        job record is updated (and its `last_event_id` set) in the same step; the event is
        refused (None returned) when the job is missing or already terminal, so no event ever
        follows a job's terminal event.
        """

    async def publish_and_enqueue(
        self, channel: str, type_: str, data: Any, *, source: str | None, job: JobUpdate
    ) -> Event | None:
        """A new job's first event, then the job on the queue, in that order (so whatever a
        worker publishes comes after it). Backends may send both in one round trip; only for
        a job just stored, which publish never refuses."""
        event = await self.publish(channel, type_, data, source=source, job=job)
        if event is not None:
            await self.enqueue(job.job_id)
        return event

    @abc.abstractmethod
    async def history(self, channel: str, since: str | None, limit: int = 1000) -> History:
        """Retained events after `since` (all retained when None), oldest first."""

    @abc.abstractmethod
    async def subscribe(self, channel: str) -> None:
        """Start live delivery of the channel's events to the listener."""

    @abc.abstractmethod
    async def unsubscribe(self, channel: str) -> None:
        """Stop live delivery of the channel's events."""

    # --- jobs ------------------------------------------------------------------------------

    @abc.abstractmethod
    async def create_job(self, job_id: str, fields: Mapping[str, str]) -> None:
        """Store a new job record."""

    @abc.abstractmethod
    async def get_job(self, job_id: str) -> dict[str, str] | None:
        """The job record's fields, or None when unknown or expired."""

    @abc.abstractmethod
    async def update_job(self, job_id: str, fields: Mapping[str, str]) -> None:
        """Set fields of an existing job record without publishing an event."""

    @abc.abstractmethod
    async def begin_attempt(self, job_id: str, max_attempts: int) -> Attempt | None:
        """Count one more run of the job in its `attempts`, unless it already ran `max_attempts`
        times (then refuse and leave the count alone); atomically, so concurrent deliveries of
        one job never pass the limit together. None when the job is missing or has ended."""

    @abc.abstractmethod
    async def enqueue(self, job_id: str, delay: float = 0.0) -> None:
        """Queue a job for a worker, now or after `delay` seconds."""

    @abc.abstractmethod
    async def claim(self, consumer: str, block: float) -> Delivery | None:
        """Take the next due job, waiting up to `block` seconds; None when there is none."""

    @abc.abstractmethod
    async def reclaim(self, consumer: str, min_idle: float, count: int = 50) -> list[Delivery]:
        """Take over up to `count` jobs delivered to workers silent for `min_idle` seconds."""

    @abc.abstractmethod
    async def touch(self, consumer: str, delivery: Delivery) -> None:
        """Tell the queue the delivery is still being worked on (resets its idle time)."""

    @abc.abstractmethod
    async def ack(self, delivery: Delivery) -> None:
        """The delivery is finished (done, failed for good, or re-queued for later)."""

    # --- job index and retention -------------------------------------------------------------

    @abc.abstractmethod
    async def index_job(self, job_id: str, created_ms: int) -> None:
        """Add a job to the index `GET /jobs` lists, ordered by creation time."""

    async def store_job(self, job_id: str, fields: Mapping[str, str], created_ms: int) -> None:
        """Store a new job record and index it (`create_job` + `index_job`); backends may do
        both in one round trip: submission latency is a target."""
        await self.create_job(job_id, fields)
        await self.index_job(job_id, created_ms)

    @abc.abstractmethod
    async def job_index(self, before: tuple[int, str] | None, limit: int) -> list[tuple[int, str]]:
        """Indexed `(created_ms, job_id)` pairs strictly older than `before`, newest first.

        The index may still name jobs whose records expired; readers prune them with
        `unindex_jobs` when they find the record gone.
        """

    @abc.abstractmethod
    async def unindex_jobs(self, job_ids: list[str]) -> None:
        """Drop expired jobs from the index."""

    @abc.abstractmethod
    async def expire_history(self, channel: str, seconds: int) -> None:
        """Let a channel's history expire within `seconds` (a finished job's events go with it)."""

    # --- idempotency keys --------------------------------------------------------------------

    @abc.abstractmethod
    async def idempotency_begin(self, key: str, value: bytes, ttl: int) -> bytes | None:
        """Claim `key` with `value` for `ttl` seconds, or return the value already stored.

        None means the caller owns the key now; shared by every gateway process.
        """

    @abc.abstractmethod
    async def idempotency_finish(self, key: str, value: bytes, ttl: int) -> None:
        """Store the final value of a claimed key for `ttl` seconds."""

    @abc.abstractmethod
    async def idempotency_abandon(self, key: str) -> None:
        """Forget a claimed key (the request failed before anything was created)."""

    # --- webhook delivery schedule -----------------------------------------------------------

    @abc.abstractmethod
    async def schedule_webhook(self, delivery_id: str, payload: bytes, due: float) -> None:
        """Persist a webhook delivery (new or rescheduled) due at unix time `due`."""

    @abc.abstractmethod
    async def claim_webhooks(self, limit: int, lease: float) -> list[tuple[str, bytes]]:
        """Take up to `limit` due deliveries, hiding them for `lease` seconds.

        A worker that dies mid-delivery leaves it hidden only until the lease ends; then
        another worker claims it again, so no delivery is lost.
        """

    @abc.abstractmethod
    async def finish_webhook(self, delivery_id: str) -> None:
        """Forget a delivery that succeeded or failed for good."""


def _ignore(event: Event) -> None:
    return None
