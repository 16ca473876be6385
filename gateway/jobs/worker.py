"""The worker runtime: claim jobs from the queue, run their handlers, publish every state change.

Runs as `gateway worker` (a process of its own) or embedded in `gateway serve`. A delivery is
acknowledged only after the job reached a final state or was re-queued; a worker that dies
mid-job leaves it pending, and another worker re-claims it after the visibility timeout.

Every delivery a worker holds, running or re-claimed and waiting for a free slot, is kept alive
by one heartbeat, so nothing it holds is re-claimed again while it is alive. Each run of a
handler is counted and checked against the job's limit in one atomic step before it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections import deque
from collections.abc import Awaitable, Coroutine, Generator
from typing import Any

from gateway.backends.bundle import Backend
from gateway.backends.stores import Delivery, JobFlow, JobStep
from gateway.errors import BackendUnavailable, HandlerError
from gateway.events import Event, iso_time
from gateway.jobs.model import (
    BusJobFlow,
    JobRecord,
    encode_field,
    job_changes,
    load_job,
    transition,
)
from gateway.jobs.registry import HandlerRegistry, HandlerSpec, JobContext
from gateway.metrics import METRICS
from gateway.settings import Settings
from gateway.vocabulary import EventType, JobStatus
from gateway.webhooks.dispatcher import WebhookDispatcher
from gateway.webhooks.schedule import Callback

log = logging.getLogger("gateway.worker")

CANCEL_POLL_INTERVAL = 0.25
"""How often the records of the jobs running are checked for a cancel request (one batched
read of their statuses per interval, whatever the number of jobs)."""

CLAIM_BLOCK = 0.5
"""Seconds an empty partition's reader waits for new jobs at a time (and so, at most, for a
job delayed by another process to be moved onto the queue)."""


class Worker:
    """Runs jobs from every queue partition with `settings.concurrency` slots.

    One reader per partition takes as many jobs as there are free slots (never more: a job
    taken is a slot held) and hands them over as a batch: each job's record is read, its
    attempt counted and `job.started` published in one step, one pipeline for the batch
    (`JobFlow.read_and_start_many`). A handler that finishes without waiting (`noop`) is
    completed with the rest of its batch (`finish_many`); once that is confirmed the batch's
    acks go in front of the partition's next read (`JobQueue.ack_soon`): three round trips a
    batch. One that awaits gets a task of its own with its timeout and cancel handling, as do
    retries and failures.
    """

    def __init__(
        self,
        backend: Backend,
        registry: HandlerRegistry,
        settings: Settings,
        *,
        name: str | None = None,
    ) -> None:
        self.backend = backend
        self.registry = registry
        self.settings = settings
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{random.getrandbits(24):06x}"
        self.flow: JobFlow = backend.flow or BusJobFlow(backend)
        self._stopping = asyncio.Event()
        self._loops_ended = False
        """Set once no job is held: the heartbeat and cancel-watch loops end by themselves."""
        self._held: dict[Delivery, None] = {}
        """Deliveries this worker holds, each in a slot: being started, running or finishing."""
        self._reserved = 0
        """Slots promised to reads still in flight."""
        self._waiting: deque[asyncio.Future[None]] = deque()
        """Readers waiting for a free slot, in turn."""
        self._running: dict[Delivery, asyncio.Task[None]] = {}
        """Jobs run in a task of their own (handlers that await, retries, failures)."""
        self._batches: set[asyncio.Task[None]] = set()
        self._watched: dict[Delivery, tuple[str, JobContext, asyncio.Future[Any]]] = {}
        """Handlers running now: their job ids are polled for cancel requests together."""
        self._stoppers: set[asyncio.Task[None]] = set()
        self._callbacks: dict[str, Callback | None] = {}
        self._counters: dict[tuple[str, str], Any] = {}
        self.webhooks = WebhookDispatcher(backend, settings)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self, grace: float = 10.0) -> None:
        """Work until `stop()`; then give running jobs `grace` seconds before re-queueing them."""
        readers = [
            asyncio.create_task(self._read_forever(partition), name=f"worker-reader-{partition}")
            for partition in range(self.backend.queue.partitions)
        ]
        reclaimer = asyncio.create_task(self._reclaim_forever(), name="worker-reclaimer")
        heartbeat = asyncio.create_task(self._heartbeat_forever(), name="worker-heartbeat")
        watcher = asyncio.create_task(self._watch_cancels_forever(), name="worker-cancels")
        webhooks = asyncio.create_task(self.webhooks.run(self._stopping), name="worker-webhooks")
        try:
            await self._stopping.wait()
        finally:
            reclaimer.cancel()
            # Readers stop after their current read (giving back what it brought); batches
            # and running jobs get the grace period.
            deadline = time.monotonic() + grace
            for turn in self._waiting:
                turn.cancel()  # readers waiting for a slot: nothing more to read
            await asyncio.wait(readers, timeout=CLAIM_BLOCK + 5)
            busy = [*self._batches, *self._running.values()]
            while busy and time.monotonic() < deadline:
                await asyncio.wait(busy, timeout=max(deadline - time.monotonic(), 0))
                busy = [t for t in [*self._batches, *self._running.values()] if not t.done()]
            for task in busy:
                task.cancel()
            await asyncio.gather(*busy, return_exceptions=True)
            self._loops_ended = True
            heartbeat.cancel()
            watcher.cancel()
            for task in readers:
                task.cancel()
            await asyncio.gather(
                *readers, reclaimer, heartbeat, watcher, webhooks, return_exceptions=True
            )
            # The last batches' acks waited for reads that will not come.
            try:
                await self.backend.queue.flush_acks()
            except BackendUnavailable as exc:
                log.warning("cannot ack finished jobs (%s); they will be re-claimed", exc)

    # Slots -------------------------------------------------------------------------------

    def _free(self) -> int:
        return self.settings.concurrency - len(self._held) - self._reserved

    async def _reserve(self, most: int) -> int:
        """Promise up to `most` free slots (at least one) to a read. Readers waiting for a
        slot are served in turn, so one partition's reader cannot keep the slots from the
        others'."""
        if self._waiting or self._free() <= 0:
            turn = asyncio.get_running_loop().create_future()
            self._waiting.append(turn)
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._reserved -= 1  # the slot handed over with the turn
                    self._slots_freed()
                raise
            extra = max(min(self._free(), most - 1), 0)
            self._reserved += extra
            return 1 + extra
        count = min(self._free(), most)
        self._reserved += count
        return count

    def _slots_freed(self) -> None:
        """Hand free slots to the readers waiting, one each, first come first served."""
        while self._waiting and self._free() > 0:
            turn = self._waiting.popleft()
            if not turn.done():
                self._reserved += 1
                turn.set_result(None)

    def _hold(self, deliveries: list[Delivery]) -> list[Delivery]:
        """Take slots for deliveries; one this worker already holds is not taken twice."""
        fresh = [d for d in deliveries if d not in self._held]
        for delivery in fresh:
            self._held[delivery] = None
        return fresh

    def _release(self, delivery: Delivery) -> None:
        if self._held.pop(delivery, 0) is None:
            self._slots_freed()

    # Reading the queue ---------------------------------------------------------------------

    async def _read_forever(self, partition: int) -> None:
        """Take jobs of one partition while slots are free; a batch each read.

        A read takes at most as many jobs as slots are free and never waits; on an empty
        partition the reader then waits for new entries holding no slot (`wait_for_jobs`), so
        any number of partitions share the slots.
        """
        queue = self.backend.queue
        while not self._stopping.is_set():
            reserved = await self._reserve(self.settings.concurrency)
            failure: Exception | None = None
            taken: list[Delivery] = []
            try:
                taken = await queue.claim_many(self.name, partition, reserved, block=0)
            except Exception as exc:
                # BackendUnavailable, or anything else (a client library caught mid-reset by a
                # failover): a reader that died of it would claim nothing ever again, silently.
                failure = exc
            finally:
                self._reserved -= reserved
            # Taken jobs hold their slots before any freed slot is handed on.
            fresh = self._hold(taken)
            if len(taken) < reserved:
                self._slots_freed()
            if failure is not None:
                if isinstance(failure, BackendUnavailable):
                    log.warning("cannot claim jobs (%s); retrying", failure)
                else:
                    log.error("claiming jobs failed unexpectedly; retrying", exc_info=failure)
                await asyncio.sleep(0.5 + random.random())
                continue
            if not taken:
                try:
                    await queue.wait_for_jobs(partition, CLAIM_BLOCK)
                except Exception as exc:  # as for claims: never let the reader die
                    log.warning("cannot wait for jobs (%r); retrying", exc)
                    await asyncio.sleep(0.5 + random.random())
                continue
            if self._stopping.is_set():
                for delivery in fresh:
                    await self._give_back(delivery)
                    self._release(delivery)
                return
            self._start_batch(fresh)

    def _start_batch(self, deliveries: list[Delivery]) -> None:
        if not deliveries:
            return
        task = asyncio.create_task(self._run_batch(deliveries))
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    def _run_alone(self, delivery: Delivery, job: Awaitable[None]) -> None:
        """Run one job's remaining work in a task of its own; its slot frees when it ends."""
        task = asyncio.create_task(self._alone(delivery, job))
        self._running[delivery] = task

    async def _alone(self, delivery: Delivery, job: Awaitable[None]) -> None:
        try:
            await self._guarded(delivery, job)
        finally:
            self._running.pop(delivery, None)
            self._release(delivery)

    async def _reclaim_forever(self) -> None:
        """Take over deliveries of silent workers, no more than there are free slots for.

        A delivery this worker already holds is skipped: it is in a slot (kept alive by the
        heartbeat) and must not run twice at once.
        """
        interval = max(self.settings.visibility_timeout / 2, 0.05)
        # Ends on `stop()` by itself as well as by cancellation: a cancellation that meets a
        # client library's own timeout can be swallowed (asyncio.timeout on Python 3.11), and
        # the shutdown would then wait for this loop forever.
        while not self._stopping.is_set():
            await asyncio.sleep(interval)
            if self._stopping.is_set():
                return
            free = self._free()
            if free <= 0:
                continue
            self._reserved += free
            reclaimed: list[Delivery] = []
            try:
                reclaimed = await self.backend.queue.reclaim(
                    self.name, self.settings.visibility_timeout, count=free
                )
            except Exception as exc:  # as for claims: never let the reclaimer die
                log.warning("cannot reclaim stalled jobs (%r)", exc)
            finally:
                self._reserved -= free
            # Taken jobs hold their slots before any freed slot is handed on.
            fresh = self._hold(reclaimed)
            self._slots_freed()
            for delivery in fresh:
                log.info("re-claimed job %s from a silent worker", delivery.job_id)
            self._start_batch(fresh)

    async def _heartbeat_forever(self) -> None:
        """Reset the idle time of every delivery held, so no live worker's job is re-claimed."""
        interval = max(self.settings.visibility_timeout / 3, 0.05)
        while not self._loops_ended:  # (see `_reclaim_forever`)
            await asyncio.sleep(interval)
            held = list(self._held)
            try:
                await self.backend.queue.touch_many(self.name, held)
            except BackendUnavailable as exc:
                log.warning("heartbeat failed for %d jobs (%s)", len(held), exc)

    async def _watch_cancels_forever(self) -> None:
        """Tell running handlers their job was cancelled: one read of every running job's
        status per interval (not one per job)."""
        while not self._loops_ended:  # (see `_reclaim_forever`)
            await asyncio.sleep(CANCEL_POLL_INTERVAL)
            watched = list(self._watched.items())
            if not watched:
                continue
            try:
                statuses = await self.backend.jobs.statuses(
                    [job_id for _, (job_id, _, _) in watched]
                )
            except BackendUnavailable:
                continue
            for (delivery, (_job_id, ctx, task)), status in zip(watched, statuses, strict=True):
                if status == JobStatus.CANCELLED and not ctx.cancelled.is_set():
                    ctx.cancelled.set()
                    stopper = asyncio.create_task(self._stop_cancelled(task))
                    self._stoppers.add(stopper)
                    stopper.add_done_callback(self._stoppers.discard)
                    self._watched.pop(delivery, None)

    async def _stop_cancelled(self, task: asyncio.Future[Any]) -> None:
        """A handler told of its job's cancel gets `cancel_grace` seconds to stop by itself."""
        await asyncio.wait({task}, timeout=self.settings.cancel_grace)
        task.cancel()

    # Running batches ------------------------------------------------------------------------

    async def _run_batch(self, deliveries: list[Delivery]) -> None:
        """Start a batch of jobs together, run them, and complete together those whose
        handler returned without waiting; the others go on in tasks of their own."""
        alone: set[Delivery] = set()
        try:
            await self._batch(deliveries, alone)
        except BackendUnavailable as exc:
            log.warning("a batch of %d jobs: backend unavailable (%s)", len(deliveries), exc)
            for delivery in deliveries:
                if delivery not in alone:
                    alone.add(delivery)
                    self._run_alone(delivery, self._run_job(delivery))
        except Exception:
            log.exception("a batch of %d jobs: worker error", len(deliveries))
        finally:
            for delivery in deliveries:
                if delivery not in alone:
                    self._release(delivery)

    async def _batch(self, deliveries: list[Delivery], alone: set[Delivery]) -> None:
        done: list[Delivery] = []
        """Deliveries to ack at the end of the batch."""
        started_fields = job_changes(EventType.STARTED, {"progress": "0.0"})
        opened = await self.flow.read_and_start_many(
            [d.job_id for d in deliveries], self._limits(), started_fields
        )
        steps: list[JobStep] = []
        finishing: list[tuple[Delivery, JobRecord, HandlerSpec, int, int]] = []
        for delivery, read in zip(deliveries, opened, strict=True):
            fields, started = read.record, read.started
            if fields is None or "id" not in fields:
                done.append(delivery)  # missing or ended: nothing may run
                continue
            record = JobRecord.from_fields(fields)
            if started is None:
                # Rare: no handler (failed) or a webhook to schedule: one at a time.
                alone.add(delivery)
                self._run_alone(delivery, self._run_job(delivery, record))
                continue
            attempt = started.attempt
            spec = self.registry.get(record.type)
            if started.conflict or spec is None:
                alone.add(delivery)
                self._run_alone(delivery, self._run_job(delivery, record))
            elif attempt is None or (attempt.granted and started.event_id is None):
                done.append(delivery)
            elif not attempt.granted:
                alone.add(delivery)
                self._run_alone(delivery, self._refuse(delivery, record, attempt.number))
            else:
                self._count(record.type, JobStatus.RUNNING)
                most = self._max_attempts(spec)
                step = self._run_now(delivery, record, spec, attempt.number, most)
                if step is None:
                    alone.add(delivery)
                else:
                    steps.append(step)
                    finishing.append((delivery, record, spec, attempt.number, most))
        if steps:
            try:
                await self.flow.finish_many(steps)
            except BackendUnavailable as exc:
                # Ride out the outage one job at a time, as `_transition` does; the handlers
                # ran: never run them again for it.
                log.warning("completing %d jobs: backend unavailable (%s)", len(steps), exc)
                for (delivery, record, spec, attempts, most), step in zip(
                    finishing, steps, strict=True
                ):
                    alone.add(delivery)
                    result = step.data["result"]
                    job = self._conclude(delivery, record, spec, attempts, most, result)
                    self._run_alone(delivery, job)
            else:
                for delivery, record, *_ in finishing:
                    self._count(record.type, JobStatus.COMPLETED)
                    done.append(delivery)
        # Every completion is confirmed: the acks may go with the partitions' next reads.
        await self.backend.queue.ack_soon(done)

    def _run_now(
        self,
        delivery: Delivery,
        record: JobRecord,
        spec: HandlerSpec,
        attempts: int,
        max_attempts: int,
    ) -> JobStep | None:
        """Run the handler up to its first wait, here in the batch (no task for a handler
        that never waits). Returns the completion to publish with the batch when it returned
        a result; otherwise the rest goes on in a task of its own (None)."""
        ctx = self._context(record, attempts)
        began = time.monotonic()
        coroutine = spec.fn(ctx)
        if not isinstance(coroutine, Coroutine):  # an awaitable of another kind: await it
            job = self._finish_running(
                delivery, record, spec, attempts, max_attempts, ctx, coroutine, began
            )
            self._run_alone(delivery, job)
            return None
        try:
            first = coroutine.send(None)
        except StopIteration as stop:
            self._observe(record.type, began)
            result = stop.value
            try:
                fields = {"progress": "1.0", "result": encode_field(result), "error": ""}
            except Exception:
                # Not JSON: the one-at-a-time path reports it as it always did.
                job = self._conclude(delivery, record, spec, attempts, max_attempts, result)
                self._run_alone(delivery, job)
                return None
            return JobStep(
                record.id,
                EventType.COMPLETED,
                {"result": result, "result_url": f"/jobs/{record.id}/result"},
                job_changes(EventType.COMPLETED, fields),
                expire=self.settings.job_ttl,
            )
        except BackendUnavailable as exc:
            # As from any handler: the job is left to be re-claimed (logged by `_guarded`).
            self._observe(record.type, began)
            self._run_alone(delivery, _raise(exc))
            return None
        except BaseException as exc:
            self._observe(record.type, began)
            outcome = self._failure(spec, record, exc)
            job = self._conclude(delivery, record, spec, attempts, max_attempts, outcome)
            self._run_alone(delivery, job)
            return None
        resumed = _resume(coroutine, first)
        self._run_alone(
            delivery,
            self._finish_running(
                delivery, record, spec, attempts, max_attempts, ctx, resumed, began
            ),
        )
        return None

    async def _finish_running(
        self,
        delivery: Delivery,
        record: JobRecord,
        spec: HandlerSpec,
        attempts: int,
        max_attempts: int,
        ctx: JobContext,
        handler: Awaitable[Any],
        began: float,
    ) -> None:
        try:
            outcome = await self._await_handler(delivery, spec, record, ctx, handler, began)
        finally:
            self._observe(record.type, began)
        await self._conclude(delivery, record, spec, attempts, max_attempts, outcome)

    def _count(self, job_type: str, status: str) -> None:
        """`gateway_jobs` +1, its labelled child looked up once per type and status."""
        counter = self._counters.get((job_type, status))
        if counter is None:
            counter = self._counters[job_type, status] = METRICS.jobs.labels(job_type, status)
        counter.inc()

    def _observe(self, job_type: str, began: float) -> None:
        key = (job_type, "")
        histogram = self._counters.get(key)
        if histogram is None:
            histogram = self._counters[key] = METRICS.job_duration.labels(job_type)
        histogram.observe(time.monotonic() - began)

    # One job at a time ---------------------------------------------------------------------

    async def _give_back(self, delivery: Delivery) -> None:
        with contextlib.suppress(BackendUnavailable):
            await self.backend.queue.requeue(delivery)

    async def _guarded(self, delivery: Delivery, job: Awaitable[None]) -> None:
        try:
            await job
        except asyncio.CancelledError:
            log.warning("job %s interrupted by shutdown; giving it back", delivery.job_id)
            await asyncio.shield(self._requeue_interrupted(delivery))
            raise
        except BackendUnavailable as exc:
            log.warning(
                "job %s: backend unavailable (%s); it will be re-claimed", delivery.job_id, exc
            )
        except Exception:
            log.exception("job %s: worker error", delivery.job_id)
        finally:
            self._callbacks.pop(delivery.job_id, None)

    async def _requeue_interrupted(self, delivery: Delivery) -> None:
        with contextlib.suppress(BackendUnavailable):
            await self._transition(
                delivery.job_id,
                EventType.RETRYING,
                {"error": {"type": "interrupted", "message": "worker shut down"}, "delay": 0},
            )
        await self._give_back(delivery)

    async def _run_job(self, delivery: Delivery, record: JobRecord | None = None) -> None:
        """The whole of one job, one step at a time (records read by the batch are reused)."""
        if record is None:
            record = await load_job(self.backend, delivery.job_id)
        if record is None or record.terminal:
            await self.backend.queue.ack(delivery)
            return
        self._callbacks[record.id] = record.callback
        spec = self.registry.get(record.type)
        if spec is None:
            await self._fail(
                record,
                {"type": "unknown_type", "message": f"no handler for {record.type!r}"},
                record.attempts,
            )
            await self.backend.queue.ack(delivery)
            return
        max_attempts = self._max_attempts(spec)
        # Counted and checked in one step: of two deliveries of the job, never both pass.
        attempt = await self.backend.jobs.begin_attempt(record.id, max_attempts)
        if attempt is None:
            await self.backend.queue.ack(delivery)
            return
        attempts = attempt.number
        if not attempt.granted:
            await self._refuse(delivery, record, attempts)
            return
        # `attempts` on the record is the backend's count alone: writing this run's number
        # back could lower it under a concurrent delivery and let one run too many through.
        started = await self._transition(
            record.id, EventType.STARTED, {"attempt": attempts}, {"progress": "0.0"}
        )
        if started is None:
            await self.backend.queue.ack(delivery)
            return
        self._count(record.type, JobStatus.RUNNING)
        ctx = self._context(record, attempts)
        began = time.monotonic()
        await self._finish_running(
            delivery, record, spec, attempts, max_attempts, ctx, spec.fn(ctx), began
        )

    async def _refuse(self, delivery: Delivery, record: JobRecord, attempts: int) -> None:
        """The delivery after the last allowed attempt: the job fails without running."""
        error = {"type": "too_many_deliveries", "message": f"gave up after {attempts} deliveries"}
        await self._fail(record, error, attempts)
        await self.backend.queue.ack(delivery)

    async def _conclude(
        self,
        delivery: Delivery,
        record: JobRecord,
        spec: HandlerSpec,
        attempts: int,
        max_attempts: int,
        outcome: Any,
    ) -> None:
        """Publish how the run ended (retry, failure or completion) and finish the delivery."""
        if outcome is CANCELLED:
            log.info("job %s: handler stopped after a cancel request", record.id)
            self._count(record.type, JobStatus.CANCELLED)
        elif isinstance(outcome, _Failure):
            if attempts < max_attempts:
                delay = spec.retry.delay(attempts, random.random())
                await self._transition(
                    record.id,
                    EventType.RETRYING,
                    {
                        "attempt": attempts,
                        "error": outcome.error,
                        "delay": delay,
                        "next_attempt_at": _iso_in(delay),
                    },
                    {"error": encode_field(outcome.error)},
                )
                self._count(record.type, JobStatus.RETRYING)
                await self.backend.queue.requeue(delivery, delay=delay)
                return
            await self._fail(record, outcome.error, attempts)
        else:
            await self._transition(
                record.id,
                EventType.COMPLETED,
                {"result": outcome, "result_url": f"/jobs/{record.id}/result"},
                {"progress": "1.0", "result": encode_field(outcome), "error": ""},
                expire=self.settings.job_ttl,
            )
            self._count(record.type, JobStatus.COMPLETED)
        await self.backend.queue.ack(delivery)

    async def _transition(
        self,
        job_id: str,
        event_type: str,
        data: dict[str, Any],
        fields: dict[str, str] | None = None,
        *,
        expire: int = 0,
    ) -> Event | None:
        """Publish a job's state change, riding out a short bus outage (Redis restarting).

        Gives up after the visibility timeout: by then the job may be re-claimed elsewhere.
        """
        delay = 0.05
        deadline = time.monotonic() + self.settings.visibility_timeout
        while True:
            try:
                return await transition(
                    self.backend,
                    job_id,
                    event_type,
                    data,
                    fields,
                    expire=expire,
                    callback=self._callbacks.get(job_id),
                )
            except BackendUnavailable:
                if time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 2.0)

    def _limits(self) -> dict[str, int]:
        """Max attempts by job type, for every type this worker has a handler for."""
        return {spec.name: self._max_attempts(spec) for spec in self.registry.specs()}

    def _max_attempts(self, spec: HandlerSpec | None) -> int:
        if spec is not None and spec.retry.max_attempts is not None:
            return spec.retry.max_attempts
        return self.settings.max_attempts

    def _context(self, record: JobRecord, attempt: int) -> JobContext:
        async def report(fraction: float, message: str, extra: dict[str, Any]) -> None:
            await self._transition(
                record.id,
                EventType.PROGRESS,
                {"progress": fraction, "message": message, **extra},
                {"progress": repr(fraction), "message": message},
            )

        return JobContext(
            job_id=record.id,
            type=record.type,
            data=record.data,
            attempt=attempt,
            report=report,
            data_dir=self.settings.data_dir,
        )

    async def _await_handler(
        self,
        delivery: Delivery,
        spec: HandlerSpec,
        record: JobRecord,
        ctx: JobContext,
        handler: Awaitable[Any],
        began: float,
    ) -> Any:
        """Wait for a running handler within its timeout (counted from `began`), telling it
        of a cancel request (`_watch_cancels_forever`); its result or `_Failure`/CANCELLED."""
        timeout = self.timeout_for(spec)
        task: asyncio.Future[Any] = asyncio.ensure_future(handler)
        self._watched[delivery] = (record.id, ctx, task)
        try:
            left = None if timeout is None else max(timeout - (time.monotonic() - began), 0)
            done, _pending = await asyncio.wait({task}, timeout=left)
        finally:
            self._watched.pop(delivery, None)
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if ctx.cancelled.is_set():
            return CANCELLED
        if not done:
            return _Failure({"type": "timeout", "message": f"handler ran past {timeout:g}s"})
        try:
            return task.result()
        except BaseException as exc:
            return self._failure(spec, record, exc)

    def _failure(self, spec: HandlerSpec, record: JobRecord, exc: BaseException) -> _Failure:
        """What a handler's exception makes of its run (BackendUnavailable propagates)."""
        if isinstance(exc, asyncio.CancelledError):
            return _Failure({"type": "cancelled", "message": "the handler was cancelled"})
        if isinstance(exc, HandlerError):
            return _Failure({"type": "handler_error", "message": str(exc)})
        if isinstance(exc, BackendUnavailable) or not isinstance(exc, Exception):
            raise exc
        log.error("handler %s raised on job %s", spec.name, record.id, exc_info=exc)
        return _Failure({"type": type(exc).__name__, "message": str(exc)[:2000]})

    def timeout_for(self, spec: HandlerSpec) -> float | None:
        """Per-type setting, else the handler's own, else the default; None runs unbounded."""
        timeout = self.settings.job_timeouts.get(spec.name) or spec.timeout
        return timeout or self.settings.job_timeout or None

    async def _fail(self, record: JobRecord, error: dict[str, Any], attempts: int) -> None:
        await self._transition(
            record.id,
            EventType.FAILED,
            {"error": error, "attempts": attempts},
            # The record's `attempts` counts handler runs (set by `begin_attempt` alone); a
            # delivery refused for being one too many is not one.
            {"error": encode_field(error)},
            expire=self.settings.job_ttl,
        )
        METRICS.jobs.labels(record.type, JobStatus.FAILED).inc()


CANCELLED = object()
"""The handler's outcome when its job was cancelled while it ran: nothing more to publish."""


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error: dict[str, Any]) -> None:
        self.error = error


class _Resumed:
    """A coroutine already run up to its first wait, to be awaited (in a task) from there.

    `first` is what it yielded (the future it waits for); the task waiting on this gets it,
    and from then on every value, result and exception is passed through unchanged.
    """

    __slots__ = ("coroutine", "first")

    def __init__(self, coroutine: Coroutine[Any, Any, Any], first: Any) -> None:
        self.coroutine = coroutine
        self.first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        pending = self.first
        while True:
            try:
                sent = yield pending
            except BaseException as exc:
                try:
                    pending = self.coroutine.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    pending = self.coroutine.send(sent)
                except StopIteration as stop:
                    return stop.value


async def _resume(coroutine: Coroutine[Any, Any, Any], first: Any) -> Any:
    return await _Resumed(coroutine, first)


async def _raise(exc: BaseException) -> None:
    raise exc


def _iso_in(seconds: float) -> str:
    return iso_time(int((time.time() + seconds) * 1000))
