"""What the jobs layer does when a channel gains its first subscriber or loses its last
(`gateway.presence`): the occupancy webhook, and cancelling jobs nobody watches.

A job submitted with `cancel_when_unwatched: N` is cancelled once its channel has had no
subscriber for N seconds (from submission, or from its last subscriber leaving). The store
keeps the deadlines (`PresenceStore.watch_job` / `job_watched` / `due_jobs`); every gateway
process polls for due ones, each claimed by one process, and the channel's count is read again
before cancelling, so a job that is watched when its deadline comes is never cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

from gateway.backends.bundle import Backend
from gateway.errors import BackendUnavailable
from gateway.events import Event, namespace_of
from gateway.jobs.model import job_channel, load_job, transition
from gateway.settings import Settings
from gateway.vocabulary import EventType
from gateway.webhooks.schedule import PendingDelivery

log = logging.getLogger("gateway.occupancy")

OCCUPANCY_WEBHOOK_ID: Final = "occupancy"
"""The webhook schedule's "job" for occupancy deliveries: they go out one after another, in
the order they happened (the dispatcher orders deliveries per job id)."""
POLL_INTERVAL: Final = 0.5
"""How often each gateway looks for unwatched jobs past their grace (one cheap store call)."""
UNWATCHED_REASON: Final = "unwatched"


class JobOccupancy:
    """An occupancy listener (`Presence.occupancy_listeners`) and the unwatched-jobs loop."""

    def __init__(self, backend: Backend, settings: Settings) -> None:
        self.backend = backend
        self.settings = settings
        self._task: asyncio.Task[None] | None = None

    async def changed(self, channel: str, occupied: bool, event: Event | None) -> None:
        url = self.settings.occupancy_webhook
        if event is not None and url:
            pending = PendingDelivery(
                OCCUPANCY_WEBHOOK_ID, event.id, event.type, url, event.envelope.decode()
            )
            await self.backend.webhooks.schedule(pending.id, pending.encode(), time.time())
        if namespace_of(channel) == "job":
            job_id = channel.partition(":")[2]
            await self.backend.presence.job_watched(job_id, occupied, time.time())

    async def watch(self, job_id: str, grace: float) -> None:
        """A new job opted in to `cancel_when_unwatched: grace`."""
        await self.backend.presence.watch_job(job_id, grace, time.time())

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gateway-unwatched-jobs")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await self.cancel_due()
            except BackendUnavailable as exc:
                log.warning("cannot look for unwatched jobs: %s", exc)
            except Exception:
                log.exception("unwatched jobs: unexpected failure")
            await asyncio.sleep(POLL_INTERVAL)

    async def cancel_due(self) -> list[str]:
        """Cancel the opted-in jobs whose grace ran out while nobody watched; their ids."""
        store = self.backend.presence
        cancelled = []
        for job_id in await store.due_jobs(time.time(), lease=30.0):
            if (await store.stats(job_channel(job_id))).clients:
                # Watched after all (the deadline raced a subscriber): due again on vacating.
                await store.job_watched(job_id, True, time.time())
                continue
            record = await load_job(self.backend, job_id)
            if record is not None and not record.terminal:
                event = await transition(
                    self.backend,
                    job_id,
                    EventType.CANCELLED,
                    {"reason": UNWATCHED_REASON, "was": record.status},
                    expire=self.settings.job_ttl,
                    callback=record.callback,
                )
                if event is not None:
                    cancelled.append(job_id)
                    log.info("job %s cancelled: unwatched", job_id)
            await store.unwatch_job(job_id)
        return cancelled
