"""The stores: job records and their index, the job queue, idempotency keys, webhook schedule.

Small interfaces, one per thing stored, so each can be implemented (and tested, see
tests/backends/test_contract_stores.py) on its own. A job's record is also changed by the bus
(`Bus.publish(..., job=JobUpdate(...))`), in the same atomic step as its event: the bus and
the job store of one backend share their state (`MemoryState`, one Redis connection pool).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


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
    """One job handed to a worker; `token` identifies the delivery to ack, touch or release
    within its queue `partition` (tokens of two partitions may be equal: compare deliveries)."""

    job_id: str
    token: str
    partition: int = 0


@dataclass(frozen=True, slots=True)
class JobStart:
    """A job a worker wants to start: count the attempt and publish `job.started` together."""

    job_id: str
    expected_attempt: int
    """The attempt number the worker read from the record (attempts + 1); a backend may use it
    to build the event before counting, and answers `conflict` when the count moved since."""
    max_attempts: int
    fields: Mapping[str, str]
    """The record's fields `job.started` sets (status, updated_at, progress)."""


@dataclass(frozen=True, slots=True)
class Started:
    """What starting a job came to (`JobFlow.start_many`)."""

    attempt: Attempt | None
    """None: the job is missing or has ended (nothing may run); else as `begin_attempt`."""
    event_id: str | None = None
    """`job.started`'s id, published when the attempt was granted; None if the job ended
    first."""
    conflict: bool = False
    """The record's attempt count changed after the worker read it: start it one at a time."""


@dataclass(frozen=True, slots=True)
class ReadStarted:
    """What reading a job's record and starting it in one step came to
    (`JobFlow.read_and_start_many`)."""

    record: dict[str, str] | None
    """The job's fields as they were before the start; None: the job is missing or has ended
    (nothing may run)."""
    started: Started | None
    """How the start went (as `start_many`'s); None when the job was read and not started
    (its type is not in `limits`, or it has a webhook): the caller starts it one step at a
    time."""


@dataclass(frozen=True, slots=True)
class JobStep:
    """One job state change for a batch: its event's data and the record fields it sets."""

    job_id: str
    event_type: str
    data: Mapping[str, Any]
    fields: Mapping[str, str]
    expire: int = 0
    """Seconds the record and its history are kept from now (terminal events); 0 keeps them."""


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

    async def get_many(self, job_ids: Sequence[str]) -> list[dict[str, str] | None]:
        """`get` of several jobs, in order (one round trip where the backend can)."""
        return [await self.get(job_id) for job_id in job_ids]

    async def statuses(self, job_ids: Sequence[str]) -> list[str | None]:
        """The `status` field of several jobs, in order; None for unknown or expired jobs."""
        return [
            None if fields is None else fields.get("status")
            for fields in await self.get_many(job_ids)
        ]

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
    """Jobs waiting for a worker, with visibility timeouts: a dead worker's jobs come back.

    The queue is split in `partitions` (`GATEWAY_QUEUE_PARTITIONS`): a job always goes to the
    partition its id hashes to (`queue_partition`), each partition keeps its own order, and a
    worker reads every partition. Order across partitions is not kept.
    """

    partitions: int = 1

    @abc.abstractmethod
    async def enqueue(self, job_id: str, delay: float = 0.0) -> None:
        """Queue a job for a worker on its partition, now or after `delay` seconds."""

    async def claim(self, consumer: str, block: float) -> Delivery | None:
        """Take the next due job of any partition, waiting up to `block` seconds; None when
        there is none."""
        deadline = time.monotonic() + block
        start = self._next_claim % self.partitions
        self._next_claim = start + 1
        while True:
            for offset in range(self.partitions):
                partition = (start + offset) % self.partitions
                taken = await self.claim_many(consumer, partition, 1, block=0)
                if taken:
                    return taken[0]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            # Wait on one partition for a short while, then look at all of them again.
            wait = remaining if self.partitions == 1 else min(remaining, 0.05)
            taken = await self.claim_many(consumer, start, 1, block=wait)
            if taken:
                return taken[0]
            if time.monotonic() >= deadline:
                return None

    _next_claim: int = 0

    @abc.abstractmethod
    async def claim_many(
        self, consumer: str, partition: int, count: int, block: float
    ) -> list[Delivery]:
        """Take up to `count` due jobs of one partition (moving its due delayed jobs onto it
        first), waiting up to `block` seconds for the first when there is none (0: no wait)."""

    @abc.abstractmethod
    async def wait_for_jobs(self, partition: int, timeout: float) -> None:
        """Wait until a job may be new on the partition (taking none), at most `timeout`
        seconds and no longer than until its next delayed job falls due (as last seen by
        `claim_many`). Lets a worker wait without holding a slot for a job it cannot run."""

    @abc.abstractmethod
    async def reclaim(self, consumer: str, min_idle: float, count: int = 50) -> list[Delivery]:
        """Take over up to `count` jobs (of all partitions) delivered to workers silent for
        `min_idle` seconds."""

    async def touch(self, consumer: str, delivery: Delivery) -> None:
        """Tell the queue the delivery is still being worked on (resets its idle time)."""
        await self.touch_many(consumer, [delivery])

    @abc.abstractmethod
    async def touch_many(self, consumer: str, deliveries: Sequence[Delivery]) -> None:
        """`touch` every delivery given (one round trip where the backend can)."""

    async def ack(self, delivery: Delivery) -> None:
        """The delivery is finished (done, or failed for good)."""
        await self.ack_many([delivery])

    @abc.abstractmethod
    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """`ack` every delivery given (one round trip where the backend can)."""

    async def ack_soon(self, deliveries: Sequence[Delivery]) -> None:
        """`ack_many`, or, where the backend can, in front of each partition's next
        `claim_many` (the same round trip; `flush_acks` sends what is still waiting). Only for
        deliveries whose outcome is already stored: an ack that waits leaves the delivery
        pending a little longer, and a re-claim of it finds the job ended."""
        await self.ack_many(deliveries)

    async def flush_acks(self) -> None:
        """Send every ack `ack_soon` still holds (a worker stopping); `ack_soon` itself
        holds none here."""
        return None

    @abc.abstractmethod
    async def requeue(self, delivery: Delivery, delay: float = 0.0) -> None:
        """Finish the delivery and queue its job again (now or after `delay`), in one step.

        One step, not `enqueue` then `ack`: a worker stopped between the two would leave the
        old delivery pending beside the new one, and the job would later run twice at once.
        """


class JobFlow(abc.ABC):
    """A worker's job state changes in batches: many jobs' events and record changes in one
    round trip, each job's own change still atomic with its event (as `Bus.publish` with a
    `JobUpdate`). `gateway.jobs.model.BusJobFlow` does the same one job at a time on any
    backend; a backend may offer a faster one (`Backend.flow`)."""

    @abc.abstractmethod
    async def start_many(self, starts: Sequence[JobStart]) -> list[Started]:
        """For each job: count the attempt against its limit (`JobStore.begin_attempt`) and,
        when granted, publish `job.started` with `{"attempt": n}` and set `fields`, in one
        atomic step per job."""

    @abc.abstractmethod
    async def read_and_start_many(
        self, job_ids: Sequence[str], limits: Mapping[str, int], fields: Mapping[str, str]
    ) -> list[ReadStarted]:
        """For each job: read its record and, when its type has a limit in `limits` (max
        attempts by job type) and it has no webhook, start it as `start_many` does with the
        count it finds, setting `fields`. A worker's batch needs no read of its own (one round
        trip less); where the backend can, read and start are one atomic step, so nothing
        changes the count between them (no `conflict`)."""

    @abc.abstractmethod
    async def finish_many(self, steps: Sequence[JobStep]) -> list[str | None]:
        """Publish each step's event with its record change: the event ids (None: the job
        had ended); a step with `expire` also bounds the job's history to it
        (`Bus.expire_history`)."""


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
