"""The event bus: publish with history, read history, deliver live events to listeners.

Two implementations keep the same contract (tests/backends/test_contract_bus.py runs against
both): `MemoryBus` for one process, `RedisBus` for many processes sharing Redis.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.errors import EventTooLarge
from gateway.events import Event
from gateway.settings import Settings

log = logging.getLogger("gateway.bus")

EventListener = Callable[[Event], None]
"""Receives every live event of a subscribed channel; must not block (the hub queues frames)."""

RecoveryListener = Callable[[Collection[str] | None], Awaitable[None]]
"""Called after the bus reconnected and re-subscribed, so a listener can fetch what it missed:
with the channels that were re-subscribed (a Cluster shard's reader came back: only that
shard's channels missed anything), or None for every channel (the one connection came back).

Buses call it before delivering any live event of the new connection (the call itself, not
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
class JobUpdate:
    """Fields to set on a job record in the same atomic step as publishing its event."""

    job_id: str
    fields: Mapping[str, str]
    expire: int = 0
    """Seconds to keep the record from now (set on terminal events); 0 keeps it as it is."""


@dataclass(frozen=True, slots=True)
class Publication:
    """One event to publish: an item of `Bus.publish_many`, or a new job's first event."""

    channel: str
    type: str
    data: Any
    source: str | None = None


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job to store, index, announce and queue in one step (`Bus.submit_jobs`)."""

    job_id: str
    fields: Mapping[str, str]
    """The job record as stored."""
    created_ms: int
    """The job index's sort key."""
    event: Publication
    """The job's first event (`job.queued`)."""
    update: JobUpdate
    """What that event changes on the record."""


class Bus(abc.ABC):
    """Publish (history + live, atomically), history reads, live subscriptions, listeners.

    Any number of listeners hear every live event of every subscribed channel (the hub, a
    bridge, ...); subscriptions are per bus, not per listener.
    """

    kind: str

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Tuples, rebuilt on change: delivery iterates them on the hot path without copying,
        # and a listener added or removed during a delivery takes effect on the next one.
        self._listeners: tuple[EventListener, ...] = ()
        self._recovery_listeners: tuple[RecoveryListener, ...] = ()

    def add_listener(self, listener: EventListener) -> None:
        self._listeners = (*self._listeners, listener)

    def remove_listener(self, listener: EventListener) -> None:
        self._listeners = tuple(fn for fn in self._listeners if fn != listener)

    def add_recovery_listener(self, listener: RecoveryListener) -> None:
        self._recovery_listeners = (*self._recovery_listeners, listener)

    def remove_recovery_listener(self, listener: RecoveryListener) -> None:
        self._recovery_listeners = tuple(fn for fn in self._recovery_listeners if fn != listener)

    def _deliver(self, event: Event) -> None:
        """Hand a live event to every listener; one that raises does not starve the others
        (nor stop the reader that called this)."""
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("event listener %r failed on %s", listener, event.channel)

    def _recovered(self, channels: Collection[str] | None = None) -> asyncio.Future[None] | None:
        """Call every recovery listener now (for `channels`, None: all), and run what they
        return together."""
        if not self._recovery_listeners:
            return None
        waits = [listener(channels) for listener in self._recovery_listeners]
        return asyncio.ensure_future(_together(waits))

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect; called once before use."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and tasks."""

    @abc.abstractmethod
    async def ping(self) -> bool:
        """True when the store answers and live delivery works (readiness)."""

    async def shard_status(self) -> dict[str, bool] | None:
        """For a store made of shards (a Redis Cluster): each shard and whether it answers;
        None for a store of one piece."""
        return None

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

    @abc.abstractmethod
    async def publish_and_enqueue(
        self, channel: str, type_: str, data: Any, *, source: str | None, job: JobUpdate
    ) -> Event | None:
        """A new job's first event, then the job on the backend's queue, in that order (so
        whatever a worker publishes comes after it), in one round trip: submission latency is
        a target. Only for a job just stored, which publish never refuses."""

    @abc.abstractmethod
    async def publish_many(
        self, publications: Sequence[Publication]
    ) -> list[Event | EventTooLarge]:
        """Publish each event as `publish` does (no job updates), in one round trip.

        The answer has one entry per publication, in order: its event, or the `EventTooLarge`
        that kept it out (the others are still published). Events of one channel are stored in
        the order given. Raises `BackendUnavailable` when the backend cannot be reached: then
        any of them may or may not have been published.
        """

    @abc.abstractmethod
    async def submit_jobs(self, jobs: Sequence[NewJob]) -> list[Event]:
        """Store each job's record and index entry, publish its first event (updating the
        record in the same atomic step) and put it on the job queue's partition, after the
        event, for all `jobs` in one round trip: what `publish_and_enqueue` does for one job
        whose record is already stored. Raises `EventTooLarge` before writing anything."""

    @abc.abstractmethod
    async def publish_live(self, channel: str, type_: str, data: Any) -> Event:
        """Deliver a transient event (`Event.live_only`: presence join/leave) to every process's
        listeners, without history: nobody replays it, nobody resumes from it."""

    @abc.abstractmethod
    async def history(self, channel: str, since: str | None, limit: int = 1000) -> History:
        """Retained events after `since` (all retained when None), oldest first."""

    @abc.abstractmethod
    async def subscribe(self, channel: str) -> None:
        """Start live delivery of the channel's events to the listeners."""

    @abc.abstractmethod
    async def unsubscribe(self, channel: str) -> None:
        """Stop live delivery of the channel's events."""

    @abc.abstractmethod
    async def expire_history(self, channel: str, seconds: int) -> None:
        """Let a channel's history expire within `seconds` (a finished job's events go with it)."""


async def _together(waits: list[Awaitable[None]]) -> None:
    await asyncio.gather(*waits)
