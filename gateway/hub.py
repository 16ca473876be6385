"""Local fan-out: one bus subscription per channel per process, bounded queues per connection.

The bus reader hands each event to `Hub.dispatch`, which writes it straight to each local
subscriber's socket when that socket can take it (see `Subscriber`: all the frames one
connection gets in one loop iteration go out in one write at its end, `DueWrites`), and
otherwise queues it for the connection's drain task; it never awaits a client socket. The
bytes are built once per event (`Event.ws_wire` / `Event.sse_chunk`) and shared by every
subscriber.

History is replayed in pages, each read only once the connection has written the one before
(`Subscriber.wait_for_room`), so a client that does not read holds one page, not the channel's
whole history; pages are shared by subscribers replaying the same channel from the same place
(`PageReader`). Live events that go by meanwhile count against the slow-consumer limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import weakref
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Protocol

from gateway.backends.bus import Bus, History
from gateway.backends.presence import Member
from gateway.errors import BackendUnavailable
from gateway.events import Event, EventKey, parse_event_id
from gateway.metrics import METRICS
from gateway.outbound import ChannelState, DueWrites, Subscriber

log = logging.getLogger("gateway.hub")


REPLAY_FIRST_PAGE = 16
"""Events in a replay's first history page, read before the sizes of the events are known."""
REPLAY_PAGE_EVENTS = 100
"""Most events in one history page."""
REPLAY_PAGE_BYTES = 256 * 1024
"""Bytes a history page aims at: pages of large events hold fewer of them, so a connection that
does not read pins little memory however large the channel's events are."""


@dataclass(frozen=True, slots=True)
class Attached:
    """What a subscriber got on attaching: whether the history after its position was complete."""

    complete: bool


class Page:
    """One history page as read for replays; weakly cached while some replay still holds it."""

    __slots__ = ("__weakref__", "history")

    def __init__(self, history: History) -> None:
        self.history = history


class PageReader:
    """Reads history pages for replays, sharing them between subscribers.

    Subscribers that replay a channel from the same position (many clients resuming after a
    deploy with the same last id, or joining a room at once) share one read and the same
    `Event` objects, so the frames are encoded once too. A page is shared only when more
    history follows it: its contents cannot change any more. The last page can still grow, and
    a subscriber must have started holding live events before that read was sent (see
    `Hub._replay_rest`), so a subscriber that joined another's read of it reads it again.
    """

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._pages: weakref.WeakValueDictionary[tuple[str, str | None, int], Page] = (
            weakref.WeakValueDictionary()
        )
        self._reading: dict[tuple[str, str | None, int], asyncio.Future[Page]] = {}
        self.reads = 0
        """History reads sent to the bus (for tests)."""

    async def read(self, channel: str, since: str | None, count: int) -> Page:
        key = (channel, since, count)
        page = self._pages.get(key)
        if page is not None:
            return page
        reading = self._reading.get(key)
        if reading is None:
            return await asyncio.shield(self._start(key))
        page = await asyncio.shield(reading)
        if page.history.more:
            return page
        return await asyncio.shield(self._start(key))

    def _start(self, key: tuple[str, str | None, int]) -> asyncio.Future[Page]:
        """The read runs as a task of its own, so a subscriber leaving does not cancel it for
        the others waiting on it."""
        reading = asyncio.ensure_future(self._fetch(key))
        self._reading[key] = reading

        def done(_: asyncio.Future[Page]) -> None:
            if self._reading.get(key) is reading:
                del self._reading[key]
            if not reading.cancelled():
                reading.exception()  # retrieved: each waiter gets it, even if none is left

        reading.add_done_callback(done)
        return reading

    async def _fetch(self, key: tuple[str, str | None, int]) -> Page:
        channel, since, count = key
        self.reads += 1
        page = Page(await self.bus.history(channel, since, limit=count))
        if page.history.more:
            self._pages[key] = page
        return page


class Membership(Protocol):
    """Told when a subscriber attaches to a channel and detaches from it (`gateway.presence`)."""

    async def joined(self, subscriber: Subscriber, channel: str, member: Member | None) -> None:
        """Before the subscriber's history is read; never raises for the backend."""

    async def left(self, subscriber: Subscriber, channel: str, *, disconnected: bool) -> None:
        """`disconnected`: with its connection (else by unsubscribing)."""


class Hub:
    """Maps channels to local subscribers and keeps one bus subscription per channel."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.pages = PageReader(bus)
        self._subscribers: dict[str, set[Subscriber]] = {}
        self._ready: dict[str, asyncio.Future[None]] = {}
        self._last: dict[str, EventKey] = {}
        self._held: dict[str, list[Event]] = {}
        """Live events of channels being recovered, held back until the history filled the gap."""
        self.connections: set[Subscriber] = set()
        self.due_writes = DueWrites()
        """Coalesces each connection's frames of one loop iteration into one write."""
        self.draining = False
        self.membership: Membership | None = None
        bus.add_listener(self.dispatch)
        bus.add_recovery_listener(self.recover)
        METRICS.watch_queues(lambda: [s.queue for s in self.connections])

    @property
    def channels(self) -> Iterable[str]:
        return self._subscribers.keys()

    def subscriber_count(self, channel: str | None = None) -> int:
        if channel is not None:
            return len(self._subscribers.get(channel, ()))
        return sum(len(subs) for subs in self._subscribers.values())

    def dispatch(self, event: Event) -> None:
        held = self._held.get(event.channel)
        if held is not None:
            held.append(event)
            return
        self._deliver(event)

    def _deliver(self, event: Event) -> None:
        subscribers = self._subscribers.get(event.channel)
        if not subscribers:
            return
        if event.transient:
            for subscriber in subscribers:
                subscriber.offer_transient(event)
            return
        if event.key > self._last.get(event.channel, (0, 0)):
            self._last[event.channel] = event.key
        for subscriber in subscribers:
            subscriber.offer(event)
        # Direct writes go out at the end of this loop iteration; queued ones observe their own
        # lag when drained.
        METRICS.observe_lag(subscriber.transport, event)

    async def attach(
        self,
        subscriber: Subscriber,
        channel: str,
        since: str | None,
        on_history: Callable[[bool], None] | None = None,
        member: Member | None = None,
    ) -> Attached:
        """Subscribe, then replay history after `since`, then go live without gap or duplicate.

        Returns once the first page of history is queued; the rest is paged in as the
        connection writes it. `on_history(complete)` runs before any replayed event is queued
        (the WebSocket ack goes ahead of them). `member` is who the subscriber is, for presence.
        """
        after = parse_event_id(since) if since is not None else None
        if channel in subscriber.channels:
            return Attached(True)
        state = await self._join(subscriber, channel, ChannelState(after), member)
        return await self._replay(subscriber, channel, state, since, on_history)

    async def hold(
        self, subscriber: Subscriber, channel: str, member: Member | None = None
    ) -> None:
        """Subscribe without delivering anything yet: live events are kept until `release`
        says where the subscription starts (a server-side subscription waiting for the client
        to resume it with `since`, `gateway.control`). `member` as for `attach`."""
        if channel in subscriber.channels:
            return
        state = ChannelState(None)
        state.held = True
        await self._join(subscriber, channel, state, member)

    async def _join(
        self, subscriber: Subscriber, channel: str, state: ChannelState, member: Member | None
    ) -> ChannelState:
        """Register the subscriber on the channel (its bus subscription, its presence); undone
        if that fails, so a failed subscribe leaves nothing behind."""
        subscriber.channels[channel] = state
        METRICS.subscriptions.inc()
        self._subscribers.setdefault(channel, set()).add(subscriber)
        try:
            await self._ensure_subscribed(channel)
            if self.membership is not None:
                await self.membership.joined(subscriber, channel, member)
        except BaseException:
            await self.detach(subscriber, channel)
            raise
        return state

    async def release(
        self,
        subscriber: Subscriber,
        channel: str,
        since: str | None,
        on_history: Callable[[bool], None] | None = None,
    ) -> Attached:
        """Start a held subscription: history after `since` (all retained without it), then
        the live events kept meanwhile and on, without gap or duplicate, as `attach` does."""
        state = subscriber.channels.get(channel)
        if state is None or state.live or state.replay is not None:
            return Attached(True)
        if since is not None:
            state.last = max(state.last, parse_event_id(since))
        # From here live events are kept until the replay reaches them: the history read
        # below is sent after this, so it has every event let go while held.
        state.held = False
        return await self._replay(subscriber, channel, state, since, on_history)

    async def _replay(
        self,
        subscriber: Subscriber,
        channel: str,
        state: ChannelState,
        since: str | None,
        on_history: Callable[[bool], None] | None,
    ) -> Attached:
        count = min(REPLAY_FIRST_PAGE, _page_room(subscriber.limit))
        try:
            page = await self.pages.read(channel, since, count)
        except BaseException:
            await self.detach(subscriber, channel)
            raise
        history = page.history
        if on_history is not None:
            on_history(history.complete)
        if subscriber.channels.get(channel) is not state:
            return Attached(history.complete)  # detached meanwhile
        if not history.complete and since is not None:
            subscriber.control("gap", channel=channel, since=since)
        self._replay_page(subscriber, state, history.events)
        if history.more:
            self._pass_over_buffer(subscriber, state)
            state.replay = asyncio.ensure_future(
                self._replay_rest(subscriber, channel, state, page)
            )
            state.replay.add_done_callback(_report_failure)
        else:
            self._go_live(subscriber, channel, state)
        return Attached(history.complete)

    async def _replay_rest(
        self, subscriber: Subscriber, channel: str, state: ChannelState, page: Page
    ) -> None:
        """Page in the history after the first page, each page once the last one is written.

        `page` (the last one queued) stays referenced while this waits, which keeps it in the
        shared cache for subscribers stalled at the same place. History trimmed between two
        pages is signalled with a `gap`, as at the start.
        """
        delay = 0.05
        while await subscriber.wait_for_room():
            count = _next_count(page.history.events, subscriber.limit)
            position = _format(state.last)
            state.buffer = []
            try:
                page = await self.pages.read(channel, position, count)
            except BackendUnavailable as exc:
                self._pass_over_buffer(subscriber, state)
                log.warning("replay of %s paused (%s); retrying in %.2fs", channel, exc, delay)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.05
            history = page.history
            if not history.complete:
                subscriber.control("gap", channel=channel, since=position)
            self._replay_page(subscriber, state, history.events)
            if not history.more:
                self._go_live(subscriber, channel, state)
                return
            self._pass_over_buffer(subscriber, state)

    @staticmethod
    def _replay_page(subscriber: Subscriber, state: ChannelState, events: list[Event]) -> None:
        for event in events:
            subscriber.put(event, bounded=False)
        if not events:
            return
        if state.behind:
            caught_up = sum(1 for event in events if event.key >= state.behind_from)
            state.behind = max(0, state.behind - caught_up)
        state.last = max(state.last, events[-1].key)

    @staticmethod
    def _pass_over_buffer(subscriber: Subscriber, state: ChannelState) -> None:
        """More history follows: the live events held during the read are in it."""
        buffered, state.buffer = state.buffer or [], None
        for event in buffered:
            subscriber.pass_over(state, event)

    def _go_live(self, subscriber: Subscriber, channel: str, state: ChannelState) -> None:
        state.live = True
        state.replay = None
        state.behind = 0
        if channel in self._subscribers and state.last > self._last.get(channel, (0, 0)):
            self._last[channel] = state.last
        buffered, state.buffer = state.buffer or [], None
        for event in buffered:
            subscriber.offer(event)

    async def _ensure_subscribed(self, channel: str) -> None:
        ready = self._ready.get(channel)
        if ready is None:
            ready = self._ready[channel] = asyncio.get_running_loop().create_future()
            try:
                await self.bus.subscribe(channel)
            except BaseException as exc:
                self._ready.pop(channel, None)
                ready.set_exception(exc)
                ready.exception()
                raise
            ready.set_result(None)
        await asyncio.shield(ready)

    async def detach(self, subscriber: Subscriber, channel: str) -> None:
        state = subscriber.channels.pop(channel, None)
        if state is not None:
            METRICS.subscriptions.dec()
            if state.replay is not None:
                state.replay.cancel()
            if self.membership is not None:
                await self.membership.left(subscriber, channel, disconnected=subscriber.closed)
        subscribers = self._subscribers.get(channel)
        if subscribers is None:
            return
        subscribers.discard(subscriber)
        if not subscribers:
            del self._subscribers[channel]
            self._last.pop(channel, None)
            self._held.pop(channel, None)
            if self._ready.pop(channel, None) is not None:
                with contextlib.suppress(BackendUnavailable, OSError):
                    await self.bus.unsubscribe(channel)

    async def detach_all(self, subscriber: Subscriber) -> None:
        subscriber.close()
        for channel in list(subscriber.channels):
            await self.detach(subscriber, channel)

    def connect(self, subscriber: Subscriber) -> None:
        subscriber.due_writes = self.due_writes
        self.connections.add(subscriber)
        METRICS.connections.labels(subscriber.transport).inc()

    async def disconnect(self, subscriber: Subscriber) -> None:
        if subscriber in self.connections:
            self.connections.discard(subscriber)
            METRICS.connections.labels(subscriber.transport).dec()
        await self.detach_all(subscriber)

    def drain(self, retry_ms: int) -> None:
        """Shutdown: tell every connection to reconnect elsewhere (or here, after the restart)."""
        self.draining = True
        for subscriber in list(self.connections):
            subscriber.control("shutdown", message="the gateway is restarting", retry=retry_ms)
            subscriber.close()

    def recover(self, channels: Collection[str] | None = None) -> Awaitable[None]:
        """After the bus reconnected: fetch from history what live delivery missed meanwhile,
        on `channels` (those the bus re-subscribed; None: every channel held here).

        Live events are held back from here until each channel's history is read: one
        delivered first would move subscribers past the missed ones, dropped then as already
        seen. So the holding starts in this call, which the bus makes before it delivers
        anything live, not in the awaitable it returns.
        """
        pending = [
            channel
            for channel in (self._subscribers if channels is None else channels)
            if channel in self._subscribers
        ]
        for channel in pending:
            self._held.setdefault(channel, [])
        return self._recover(pending)

    async def _recover(self, pending: list[str]) -> None:
        delay = 0.05
        while pending:
            failed = []
            for channel in pending:
                if channel not in self._subscribers:
                    self._held.pop(channel, None)
                    continue
                try:
                    await self._recover_channel(channel)
                except BackendUnavailable:
                    failed.append(channel)
            if not failed:
                return
            log.warning("recovery of %d channels failed; retrying in %.2fs", len(failed), delay)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 5.0)
            pending = failed

    async def _recover_channel(self, channel: str) -> None:
        last = self._last.get(channel)
        start = _format(last) if last is not None else None
        position = start
        while True:
            history = await self.bus.history(channel, position, limit=500)
            if position == start and start is not None and not history.complete:
                for subscriber in self._subscribers.get(channel, ()):
                    subscriber.control("gap", channel=channel, since=start)
            for event in history.events:
                self._deliver(event)
            if not history.more or not history.events:
                # No await from the last read to here: nothing live can slip in between.
                for event in self._held.pop(channel, ()):
                    self._deliver(event)
                return
            position = history.events[-1].id


def _format(key: EventKey) -> str:
    return f"{key[0]}-{key[1]}"


def _page_room(limit: int) -> int:
    """A page takes at most half the slow-consumer limit: the rest is for live events that
    arrive while a client that does read is writing it."""
    return max(1, limit // 2)


def _next_count(events: list[Event], limit: int) -> int:
    """Events in the next page: as many of the size just seen as fit `REPLAY_PAGE_BYTES`."""
    most = min(REPLAY_PAGE_EVENTS, _page_room(limit))
    if not events:
        return most
    average = sum(len(event.envelope) for event in events) / len(events)
    return max(1, min(most, int(REPLAY_PAGE_BYTES / average)))


def _report_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("replay failed", exc_info=task.exception())
