"""`Backend`: one bus and its stores, built together by `open_backend` and held as one object."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gateway.backends.bus import Bus
from gateway.backends.control import ControlBus
from gateway.backends.memory_presence import MemoryPresenceStore
from gateway.backends.presence import PresenceStore
from gateway.backends.stores import (
    IdempotencyStore,
    JobFlow,
    JobQueue,
    JobStore,
    WebhookSchedule,
)


async def _nothing() -> None:
    return None


@dataclass(frozen=True, slots=True)
class Backend:
    """The bus and the stores of one implementation, which may share state or connections.

    `start()` before use, `close()` once at the end: the bus's reader, then what the parts
    share (`release`, e.g. the Redis connection pool).
    """

    bus: Bus
    jobs: JobStore
    queue: JobQueue
    idempotency: IdempotencyStore
    webhooks: WebhookSchedule
    control: ControlBus
    """Commands to every gateway process and the revocation list; started by the gateway
    (`start_control`), not by workers, which have no connections to act on."""
    release: Callable[[], Awaitable[None]] = _nothing
    presence: PresenceStore = field(default_factory=MemoryPresenceStore)
    """Who is subscribed where (`gateway.presence`); the Redis backend passes its own."""
    flow: JobFlow | None = None
    """Batched job transitions for workers, when the backend has a faster way than one job
    at a time (`gateway.jobs.model.BusJobFlow`, which works on any backend)."""

    @property
    def kind(self) -> str:
        """`memory` or `redis`: what `/readyz` reports."""
        return self.bus.kind

    async def start(self) -> None:
        await self.bus.start()

    async def start_control(self) -> None:
        await self.control.start()

    async def close(self) -> None:
        try:
            await self.control.close()
            await self.bus.close()
        finally:
            await self.release()
