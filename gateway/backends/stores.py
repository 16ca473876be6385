"""The stores: job records and their index, the job queue, idempotency keys, webhook schedule.

Small interfaces, one per thing stored, so each can be implemented (and tested, see
tests/backends/test_contract_stores.py) on its own. A job's record is also changed by the bus
(`Bus.publish(..., job=JobUpdate(...))`), in the same atomic step as its event: the bus and
the job store of one backend share their state (`MemoryState`, one Redis connection pool).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Attempt:
    """The answer to "may this job run once more?", decided in one atomic step.

    Counting and checking apart would let two deliveries of one job both pass the check.
    """

    number: int
    """The attempt about to run when `granted`; otherwise how many attempts already ran."""
    granted: bool


@dataclass(frozen=True, slots=True)
class Delivery:
    """One job handed to a worker; `token` identifies the delivery to ack, touch or release."""

    job_id: str
    token: str


class JobStore(abc.ABC):
    """Job records (hashes of string fields) and the index `GET /jobs` lists."""

    @abc.abstractmethod
    async def create(
        self, job_id: str, fields: Mapping[str, str], created_ms: int | None = None
    ) -> None:
        """Store a new job record; with `created_ms`, index it too, in the same round trip
        (submission latency is a target)."""

    @abc.abstractmethod
    async def get(self, job_id: str) -> dict[str, str] | None:
        """The job record's fields, or None when unknown or expired."""

    @abc.abstractmethod
    async def update(self, job_id: str, fields: Mapping[str, str]) -> None:
        """Set fields of an existing job record without publishing an event."""

    @abc.abstractmethod
    async def begin_attempt(self, job_id: str, max_attempts: int) -> Attempt | None:
        """Count one more run of the job in its `attempts`, unless it already ran `max_attempts`
        times (then refuse and leave the count alone); atomically, so concurrent deliveries of
        one job never pass the limit together. None when the job is missing or has ended."""

    @abc.abstractmethod
    async def index(self, job_id: str, created_ms: int) -> None:
        """Add a job to the index `GET /jobs` lists, ordered by creation time."""

    @abc.abstractmethod
    async def job_index(self, before: tuple[int, str] | None, limit: int) -> list[tuple[int, str]]:
        """Indexed `(created_ms, job_id)` pairs strictly older than `before`, newest first.

        The index may still name jobs whose records expired; readers prune them with
        `unindex` when they find the record gone.
        """

    @abc.abstractmethod
    async def unindex(self, job_ids: list[str]) -> None:
        """Drop expired jobs from the index."""


class JobQueue(abc.ABC):
    """Jobs waiting for a worker, with visibility timeouts: a dead worker's jobs come back."""

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
        """The delivery is finished (done, or failed for good)."""

    @abc.abstractmethod
    async def requeue(self, delivery: Delivery, delay: float = 0.0) -> None:
        """Finish the delivery and queue its job again (now or after `delay`), in one step.

        One step, not `enqueue` then `ack`: a worker stopped between the two would leave the
        old delivery pending beside the new one, and the job would later run twice at once.
        """


class IdempotencyStore(abc.ABC):
    """`Idempotency-Key` claims, shared by every gateway process."""

    @abc.abstractmethod
    async def begin(self, key: str, value: bytes, ttl: int) -> bytes | None:
        """Claim `key` with `value` for `ttl` seconds, or return the value already stored.

        None means the caller owns the key now.
        """

    @abc.abstractmethod
    async def finish(self, key: str, value: bytes, ttl: int) -> None:
        """Store the final value of a claimed key for `ttl` seconds."""

    @abc.abstractmethod
    async def abandon(self, key: str) -> None:
        """Forget a claimed key (the request failed before anything was created)."""


class WebhookSchedule(abc.ABC):
    """Webhook deliveries due at a time, leased to the worker that claims them."""

    @abc.abstractmethod
    async def schedule(self, delivery_id: str, payload: bytes, due: float) -> None:
        """Persist a webhook delivery (new or rescheduled) due at unix time `due`."""

    @abc.abstractmethod
    async def claim(self, limit: int, lease: float) -> list[tuple[str, bytes]]:
        """Take up to `limit` due deliveries, hiding them for `lease` seconds.

        A worker that dies mid-delivery leaves it hidden only until the lease ends; then
        another worker claims it again, so no delivery is lost.
        """

    @abc.abstractmethod
    async def finish(self, delivery_id: str) -> None:
        """Forget a delivery that succeeded or failed for good."""
