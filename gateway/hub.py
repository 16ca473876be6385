"""Local fan-out: one backend subscription per channel per process, bounded queues per connection.

The backend's reader hands each event to `Hub.dispatch`, which writes it straight to each local
subscriber's socket when that socket can take it now (see `Subscriber`), and otherwise queues it
for the connection's drain task; it never awaits a client socket. The bytes are built once per
event (`Event.ws_wire` / `Event.sse_chunk`) and shared by every subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from gateway.backends.base import Backend, BackendUnavailable
from gateway.events import Event, EventKey, encode_sse_signal, encode_ws_message, parse_event_id
from gateway.metrics import METRICS

log = logging.getLogger("gateway.hub")

Transport = Literal["ws", "sse"]
Item = Event | bytes | str
"""A queued item: an event (its frame is taken at write time) or an encoded control frame."""


class _ChannelState:
    __slots__ = ("buffer", "last")

    def __init__(self) -> None:
        self.last: EventKey = (0, 0)
        self.buffer: list[Event] | None = []


@dataclass(frozen=True, slots=True)
class Attached:
    """What a subscriber got on attaching: replayed count, and whether history was complete."""

    replayed: int
    complete: bool
    last_id: str | None


class Subscriber:
    """The outbound side of one connection: a direct write when possible, else a bounded queue.

    When the connection has a `sink` (a synchronous write straight to its socket, see
    `gateway.transports.wire`) and nothing is queued or being written, an item is handed to the
    sink at once: no task wakes up per subscriber per event. Otherwise it is queued and
    `on_pending` asks the connection to drain the queue (through ASGI, which waits for a slow
    socket). A subscriber that lets `limit` items pile up is a slow consumer: it is marked
    `overflowed`, stops receiving, and is disconnected so it can resume from its last id.
    """

    __slots__ = (
        "_wakeup",
        "channels",
        "closed",
        "limit",
        "on_overflow",
        "on_pending",
        "overflowed",
        "queue",
        "sink",
        "transport",
        "writing",
    )

    def __init__(self, transport: Transport, limit: int) -> None:
        self.transport = transport
        self.limit = limit
        self.queue: list[Item] = []
        self.channels: dict[str, _ChannelState] = {}
        self.overflowed = False
        self.closed = False
        self.writing = False
        """True while a writer holds items taken from the queue: direct writes must wait."""
        self.sink: Callable[[Item], bool] | None = None
        """Writes an item now if the socket takes it (True), else refuses (False)."""
        self.on_pending: Callable[[], None] | None = None
        """Called when items were queued or the subscriber closed: someone must drain."""
        self.on_overflow: Callable[[], None] | None = None
        """Called once when the backlog overflows, for a writer that may be stuck in a send."""
        self._wakeup: asyncio.Event | None = None
        """Only for `wait()` (long polling); connections with a drain task never make one."""

    def offer(self, event: Event) -> None:
        """A live event from the hub: dropped if already seen, else written or queued."""
        state = self.channels.get(event.channel)
        if state is None:
            return
        if state.buffer is not None:
            state.buffer.append(event)
            return
        if event.key <= state.last:
            return
        state.last = event.key
        self.put(event)

    def put(self, item: Item, *, bounded: bool = True, direct: bool = True) -> None:
        """Write or queue an item; a live backlog beyond `limit` marks the subscriber as overflowed.

        Replayed history is queued unbounded (`bounded=False`): its size is already bounded by
        retention, and it is the very thing a resuming client asked for. `direct=False` always
        queues: replies to a client's own ops are batched by the drain task, so a client that
        floods ops without reading the replies overflows its queue quickly instead of keeping
        the process busy writing replies into its socket buffers.
        """
        if self.overflowed or self.closed:
            return
        sink = self.sink
        if direct and sink is not None and not self.queue and not self.writing and sink(item):
            return
        if bounded and len(self.queue) >= self.limit:
            self.overflowed = True
            self.queue = []
            METRICS.slow_consumers.labels(self.transport).inc()
            if self.on_overflow is not None:
                self.on_overflow()
        else:
            self.queue.append(item)
        self._wake()

    def close(self) -> None:
        """Wake the writer so it notices the connection is over."""
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
        if self.on_pending is not None:
            self.on_pending()

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until something is queued (or the subscriber closed); False on timeout."""
        if self.queue or self.overflowed or self.closed:
            return True
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        self._wakeup.clear()
        try:
            await asyncio.wait_for(self._wakeup.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def take(self) -> list[Item]:
        """Everything queued so far, to be written in one go."""
        items, self.queue = self.queue, []
        return items

    def control(self, op: str, **fields: Any) -> None:
        """Queue a control frame (`gap`, `shutdown`, ...) in this transport's framing."""
        if self.transport == "ws":
            self.put(encode_ws_message(op, **fields).decode(), bounded=False)
            return
        self.put(encode_sse_signal(op, fields), bounded=False)


class Hub:
    """Maps channels to local subscribers and keeps one backend subscription per channel."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._subscribers: dict[str, set[Subscriber]] = {}
        self._ready: dict[str, asyncio.Future[None]] = {}
        self._last: dict[str, EventKey] = {}
        self.connections: set[Subscriber] = set()
        self.draining = False
        backend.set_listener(self.dispatch)
        backend.set_recovery_listener(self.recover)
        METRICS.watch_queues(lambda: [s.queue for s in self.connections])

    @property
    def channels(self) -> Iterable[str]:
        return self._subscribers.keys()

    def subscriber_count(self, channel: str | None = None) -> int:
        if channel is not None:
            return len(self._subscribers.get(channel, ()))
        return sum(len(subs) for subs in self._subscribers.values())

    def dispatch(self, event: Event) -> None:
        subscribers = self._subscribers.get(event.channel)
        if not subscribers:
            return
        if event.key > self._last.get(event.channel, (0, 0)):
            self._last[event.channel] = event.key
        for subscriber in subscribers:
            subscriber.offer(event)
        # Direct writes are done by now; queued ones observe their own lag when drained.
        METRICS.observe_lag(subscriber.transport, event)

    async def attach(
        self,
        subscriber: Subscriber,
        channel: str,
        since: str | None,
        on_history: Callable[[bool], None] | None = None,
    ) -> Attached:
        """Subscribe, then replay history after `since`, then go live without gap or duplicate.

        Live events that arrive while the history is read are buffered and only those newer
        than the last replayed event are delivered. `on_history(complete)` runs before the
        replayed events are queued (the WebSocket ack goes ahead of them).
        """
        after = parse_event_id(since) if since is not None else None
        state = subscriber.channels.get(channel)
        if state is not None:
            return Attached(0, True, None)
        state = subscriber.channels[channel] = _ChannelState()
        METRICS.subscriptions.inc()
        self._subscribers.setdefault(channel, set()).add(subscriber)
        try:
            await self._ensure_subscribed(channel)
            replayed, complete, last = await self._replay(subscriber, channel, since, on_history)
        except BaseException:
            await self.detach(subscriber, channel)
            raise
        if last is not None:
            state.last = last
        elif after is not None:
            state.last = after
        if last is not None and last > self._last.get(channel, (0, 0)):
            self._last[channel] = last
        buffered, state.buffer = state.buffer or [], None
        for event in buffered:
            subscriber.offer(event)
        return Attached(replayed, complete, _format(state.last) if state.last != (0, 0) else since)

    async def _replay(
        self,
        subscriber: Subscriber,
        channel: str,
        since: str | None,
        on_history: Callable[[bool], None] | None,
    ) -> tuple[int, bool, EventKey | None]:
        position, count, last = since, 0, None
        complete = True
        while True:
            history = await self.backend.history(channel, position, limit=500)
            if position == since:
                complete = history.complete
                if on_history is not None:
                    on_history(complete)
                if not complete and since is not None:
                    subscriber.control("gap", channel=channel, since=since)
            for event in history.events:
                subscriber.put(event, bounded=False)
            count += len(history.events)
            if history.events:
                last = history.events[-1].key
                position = history.events[-1].id
            if not history.more:
                return count, complete, last

    async def _ensure_subscribed(self, channel: str) -> None:
        ready = self._ready.get(channel)
        if ready is None:
            ready = self._ready[channel] = asyncio.get_running_loop().create_future()
            try:
                await self.backend.subscribe(channel)
            except BaseException as exc:
                self._ready.pop(channel, None)
                ready.set_exception(exc)
                ready.exception()
                raise
            ready.set_result(None)
        await asyncio.shield(ready)

    async def detach(self, subscriber: Subscriber, channel: str) -> None:
        if subscriber.channels.pop(channel, None) is not None:
            METRICS.subscriptions.dec()
        subscribers = self._subscribers.get(channel)
        if subscribers is None:
            return
        subscribers.discard(subscriber)
        if not subscribers:
            del self._subscribers[channel]
            self._last.pop(channel, None)
            if self._ready.pop(channel, None) is not None:
                with contextlib.suppress(BackendUnavailable, OSError):
                    await self.backend.unsubscribe(channel)

    async def detach_all(self, subscriber: Subscriber) -> None:
        subscriber.close()
        for channel in list(subscriber.channels):
            await self.detach(subscriber, channel)

    def connect(self, subscriber: Subscriber) -> None:
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

    async def recover(self) -> None:
        """After the bus reconnected: fetch from history what live delivery missed meanwhile."""
        pending = list(self._subscribers)
        delay = 0.05
        while pending:
            failed = []
            for channel in pending:
                if channel not in self._subscribers:
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
            history = await self.backend.history(channel, position, limit=500)
            if position == start and start is not None and not history.complete:
                for subscriber in self._subscribers.get(channel, ()):
                    subscriber.control("gap", channel=channel, since=start)
            for event in history.events:
                self.dispatch(event)
            if not history.more or not history.events:
                return
            position = history.events[-1].id


def _format(key: EventKey) -> str:
    return f"{key[0]}-{key[1]}"
