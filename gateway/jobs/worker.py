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
from typing import Any

from gateway.backends.bundle import Backend
from gateway.backends.stores import Delivery
from gateway.errors import BackendUnavailable, HandlerError
from gateway.events import Event, iso_time
from gateway.jobs.model import JobRecord, encode_field, load_job, transition
from gateway.jobs.registry import HandlerRegistry, HandlerSpec, JobContext
from gateway.metrics import METRICS
from gateway.settings import Settings
from gateway.vocabulary import EventType, JobStatus
from gateway.webhooks.dispatcher import WebhookDispatcher
from gateway.webhooks.schedule import Callback

log = logging.getLogger("gateway.worker")

CANCEL_POLL_INTERVAL = 0.25
"""How often a running job's record is checked for a cancel request (one HGET per job)."""


class Worker:
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
        self._stopping = asyncio.Event()
        self._reclaimed: asyncio.Queue[Delivery] = asyncio.Queue()
        self._held: dict[str, Delivery] = {}
        """Deliveries this worker holds by token: running, or re-claimed and waiting for a slot."""
        self._running: dict[str, asyncio.Task[None]] = {}
        self._callbacks: dict[str, Callback | None] = {}
        self.webhooks = WebhookDispatcher(backend, settings)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self, grace: float = 10.0) -> None:
        """Work until `stop()`; then give running jobs `grace` seconds before re-queueing them."""
        slots = [
            asyncio.create_task(self._slot(), name=f"worker-slot-{i}")
            for i in range(self.settings.concurrency)
        ]
        reclaimer = asyncio.create_task(self._reclaim_forever(), name="worker-reclaimer")
        heartbeat = asyncio.create_task(self._heartbeat_forever(), name="worker-heartbeat")
        webhooks = asyncio.create_task(self.webhooks.run(self._stopping), name="worker-webhooks")
        try:
            await self._stopping.wait()
        finally:
            reclaimer.cancel()
            running = list(self._running.values())
            if running:
                _done, pending = await asyncio.wait(running, timeout=grace)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            heartbeat.cancel()
            for task in slots:
                task.cancel()
            await asyncio.gather(*slots, reclaimer, heartbeat, webhooks, return_exceptions=True)

    async def _slot(self) -> None:
        while not self._stopping.is_set():
            delivery: Delivery | None
            try:
                delivery = self._reclaimed.get_nowait()
            except asyncio.QueueEmpty:
                try:
                    delivery = await self.backend.queue.claim(self.name, block=1.0)
                except BackendUnavailable as exc:
                    log.warning("cannot claim jobs (%s); retrying", exc)
                    await asyncio.sleep(0.5 + random.random())
                    continue
                except Exception:
                    # Anything else (a client library caught mid-reset by a failover): a slot
                    # that died of it would claim nothing ever again, silently.
                    log.exception("claiming jobs failed unexpectedly; retrying")
                    await asyncio.sleep(0.5 + random.random())
                    continue
            if delivery is None:
                continue
            self._held[delivery.token] = delivery
            if self._stopping.is_set():
                await self._give_back(delivery)
                self._held.pop(delivery.token, None)
                return
            task = asyncio.create_task(self._process(delivery))
            self._running[delivery.token] = task
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                if not task.done():
                    raise
            finally:
                self._running.pop(delivery.token, None)
                self._held.pop(delivery.token, None)

    async def _reclaim_forever(self) -> None:
        """Take over deliveries of silent workers, no more than there are free slots for.

        A delivery this worker already holds is skipped: it waits for a slot (kept alive by
        the heartbeat) and must not be queued twice, or two slots would run one job at once.
        """
        interval = max(self.settings.visibility_timeout / 2, 0.05)
        while True:
            await asyncio.sleep(interval)
            free = self.settings.concurrency - len(self._held)
            if free <= 0:
                continue
            try:
                reclaimed = await self.backend.queue.reclaim(
                    self.name, self.settings.visibility_timeout, count=free
                )
            except BackendUnavailable as exc:
                log.warning("cannot reclaim stalled jobs (%s)", exc)
                continue
            except Exception:
                # As in `_slot`: dead, it would leave every abandoned job unclaimed for good.
                log.exception("reclaiming stalled jobs failed unexpectedly; retrying")
                continue
            for delivery in reclaimed:
                if delivery.token not in self._held:
                    log.info("re-claimed job %s from a silent worker", delivery.job_id)
                    self._held[delivery.token] = delivery
                    self._reclaimed.put_nowait(delivery)

    async def _heartbeat_forever(self) -> None:
        """Reset the idle time of every delivery held, so no live worker's job is re-claimed."""
        interval = max(self.settings.visibility_timeout / 3, 0.05)
        while True:
            await asyncio.sleep(interval)
            held = list(self._held.values())
            results = await asyncio.gather(
                *(self.backend.queue.touch(self.name, delivery) for delivery in held),
                return_exceptions=True,
            )
            failed = [result for result in results if isinstance(result, Exception)]
            if failed:
                log.warning(
                    "heartbeat failed for %d of %d jobs (%s)", len(failed), len(held), failed[0]
                )

    async def _give_back(self, delivery: Delivery) -> None:
        with contextlib.suppress(BackendUnavailable):
            await self.backend.queue.requeue(delivery)

    async def _process(self, delivery: Delivery) -> None:
        try:
            await self._run_job(delivery)
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

    async def _run_job(self, delivery: Delivery) -> None:
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
            error = {
                "type": "too_many_deliveries",
                "message": f"gave up after {attempts} deliveries",
            }
            await self._fail(record, error, attempts)
            await self.backend.queue.ack(delivery)
            return
        # `attempts` on the record is the backend's count alone: writing this run's number
        # back could lower it under a concurrent delivery and let one run too many through.
        started = await self._transition(
            record.id, EventType.STARTED, {"attempt": attempts}, {"progress": "0.0"}
        )
        if started is None:
            await self.backend.queue.ack(delivery)
            return
        METRICS.jobs.labels(record.type, JobStatus.RUNNING).inc()
        began = time.monotonic()
        try:
            outcome = await self._call_handler(spec, record, attempts)
        finally:
            METRICS.job_duration.labels(record.type).observe(time.monotonic() - began)
        if outcome is CANCELLED:
            log.info("job %s: handler stopped after a cancel request", record.id)
            METRICS.jobs.labels(record.type, JobStatus.CANCELLED).inc()
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
                METRICS.jobs.labels(record.type, JobStatus.RETRYING).inc()
                await self.backend.queue.requeue(delivery, delay=delay)
                return
            else:
                await self._fail(record, outcome.error, attempts)
        else:
            await self._transition(
                record.id,
                EventType.COMPLETED,
                {"result": outcome, "result_url": f"/jobs/{record.id}/result"},
                {"progress": "1.0", "result": encode_field(outcome), "error": ""},
                expire=self.settings.job_ttl,
            )
            METRICS.jobs.labels(record.type, JobStatus.COMPLETED).inc()
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

    def _max_attempts(self, spec: HandlerSpec | None) -> int:
        if spec is not None and spec.retry.max_attempts is not None:
            return spec.retry.max_attempts
        return self.settings.max_attempts

    async def _call_handler(self, spec: HandlerSpec, record: JobRecord, attempt: int) -> Any:
        async def report(fraction: float, message: str, extra: dict[str, Any]) -> None:
            await self._transition(
                record.id,
                EventType.PROGRESS,
                {"progress": fraction, "message": message, **extra},
                {"progress": repr(fraction), "message": message},
            )

        ctx = JobContext(
            job_id=record.id,
            type=record.type,
            data=record.data,
            attempt=attempt,
            report=report,
            data_dir=self.settings.data_dir,
        )
        timeout = self.timeout_for(spec)
        task: asyncio.Future[Any] = asyncio.ensure_future(spec.fn(ctx))
        watcher = asyncio.create_task(self._watch_cancel(record.id, ctx, task))
        try:
            done, _pending = await asyncio.wait({task}, timeout=timeout)
        finally:
            watcher.cancel()
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if ctx.cancelled.is_set():
            return CANCELLED
        if not done:
            return _Failure({"type": "timeout", "message": f"handler ran past {timeout:g}s"})
        try:
            return task.result()
        except asyncio.CancelledError:
            return _Failure({"type": "cancelled", "message": "the handler was cancelled"})
        except HandlerError as exc:
            return _Failure({"type": "handler_error", "message": str(exc)})
        except BackendUnavailable:
            raise
        except Exception as exc:
            log.exception("handler %s raised on job %s", spec.name, record.id)
            return _Failure({"type": type(exc).__name__, "message": str(exc)[:2000]})

    def timeout_for(self, spec: HandlerSpec) -> float | None:
        """Per-type setting, else the handler's own, else the default; None runs unbounded."""
        timeout = self.settings.job_timeouts.get(spec.name) or spec.timeout
        return timeout or self.settings.job_timeout or None

    async def _watch_cancel(self, job_id: str, ctx: JobContext, task: asyncio.Future[Any]) -> None:
        """Tell the handler when its job was cancelled; stop it if it ignores that for long.

        Polls the job record, which works the same in a worker process and the embedded
        worker and costs one HGET per running job per interval.
        """
        while not task.done():
            await asyncio.sleep(CANCEL_POLL_INTERVAL)
            try:
                fields = await self.backend.jobs.get(job_id)
            except BackendUnavailable:
                continue
            if fields is not None and fields.get("status") == JobStatus.CANCELLED:
                ctx.cancelled.set()
                await asyncio.wait({task}, timeout=self.settings.cancel_grace)
                task.cancel()
                return

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


def _iso_in(seconds: float) -> str:
    return iso_time(int((time.time() + seconds) * 1000))
