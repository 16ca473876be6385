"""The outbound side of a connection, shared by WebSocket and SSE.

`Subscriber` is what the hub delivers to: a synchronous write straight to the socket when it
can take the bytes, else a bounded queue. Frames due for one connection in the same event-loop
iteration are coalesced into one write (`DueWrites`). `Outbound` is the rest of a connection's write
path, written once for both transports: the drain task that exists only while there is a
backlog (`kick`), finishing after what is queued (`finish`), and the slow consumer's eviction
(`evict`). Transports supply the bytes (`write_batch`) and what ending means for them.
The delivery of one event to many subscribers never goes through here beyond `Subscriber.put`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from gateway.events import Event, EventKey, Frame, control_frame
from gateway.metrics import METRICS

Transport = Literal["ws", "sse"]
Item = Frame
"""A queued item: an event (its frame is taken at write time) or an encoded control frame."""
DRAINED = METRICS.drained
log = logging.getLogger("gateway.outbound")


class ChannelState:
    """One subscription of one connection: replaying history, or live.

    While replaying, live events are kept (`buffer`) only while a history read is in flight, so
    none is lost at the switch to live; otherwise they are passed over (the next page has them)
    and counted in `behind`, the backlog a client that does not read runs up without any of it
    being held.
    """

    __slots__ = ("behind", "behind_from", "buffer", "held", "last", "live", "replay")

    def __init__(self, after: EventKey | None) -> None:
        self.last: EventKey = after or (0, 0)
        self.live = False
        self.held = False
        """Subscribed but not started (`Hub.hold`): live events are let go, as the history
        read that starts it has every one of them; so a held subscription keeps nothing."""
        self.buffer: list[Event] | None = []
        self.replay: asyncio.Task[None] | None = None
        self.behind = 0
        self.behind_from: EventKey = (0, 0)


class Subscriber:
    """The outbound side of one connection: a direct write when possible, else a bounded queue.

    When the connection has a `sink` (a synchronous write straight to its socket, see
    `gateway.transports.wire`) and nothing is queued or being written, an item is due: it is
    kept in `due` and handed to the sink, with every other item due for this connection, at
    the end of the current event-loop iteration (`DueWrites`, one `call_soon` per iteration
    for all connections, no timer): several events for one connection in one iteration (a
    client on many busy channels, a burst read from the bus in one go, a history page) go out
    in one socket write, and no task wakes up per subscriber per event. Without `due_writes`
    (a subscriber no hub connected) the sink is called at once. Otherwise it is queued and
    `on_pending` asks the connection to drain the queue (through ASGI, which waits for a slow
    socket). A subscriber that lets `limit` items pile up is a slow consumer: it is marked
    `overflowed`, stops receiving, and is disconnected so it can resume from its last id.
    Items due do not count against `limit` (they are as good as written, like the direct
    writes they stand for), but at most `limit` of them wait: the limit-th is written at once.
    """

    __slots__ = (
        "_room",
        "_wakeup",
        "_writing",
        "channels",
        "closed",
        "due",
        "due_writes",
        "limit",
        "named",
        "on_overflow",
        "on_pending",
        "overflowed",
        "queue",
        "sink",
        "transport",
    )

    def __init__(self, transport: Transport, limit: int, *, named: bool = False) -> None:
        self.transport = transport
        self.limit = limit
        self.named = named
        """SSE only: signals carry an `event:` line (`?events=named`)."""
        self.queue: list[Item] = []
        self.channels: dict[str, ChannelState] = {}
        self.overflowed = False
        self.closed = False
        self._writing = False
        self.sink: Callable[[list[Item]], bool] | None = None
        """Writes items now, in order and in one socket write, if the socket takes them (True),
        else refuses them all (False)."""
        self.due: list[Item] | None = None
        """Items for the sink, written at the end of this loop iteration (`flush`)."""
        self.due_writes: DueWrites | None = None
        """Where this subscriber asks for its `flush` (the hub's, set by `Hub.connect`)."""
        self.on_pending: Callable[[], None] | None = None
        """Called when items were queued or the subscriber closed: someone must drain."""
        self.on_overflow: Callable[[], None] | None = None
        """Called once when the backlog overflows, for a writer that may be stuck in a send."""
        self._wakeup: asyncio.Event | None = None
        """Only for `wait()` (long polling); connections with a drain task never make one."""
        self._room: asyncio.Event | None = None
        """Only while a replay waits for the connection to write what it has."""

    @property
    def writing(self) -> bool:
        """True while a writer holds items taken from the queue: direct writes must wait."""
        return self._writing

    @writing.setter
    def writing(self, value: bool) -> None:
        self._writing = value
        if not value and self._room is not None:
            self._room.set()

    def offer(self, event: Event) -> None:
        """A live event from the hub: dropped if already seen, else written or queued."""
        state = self.channels.get(event.channel)
        if state is None:
            return
        if not state.live:
            if state.held:
                return
            if state.buffer is not None:
                state.buffer.append(event)
            else:
                self.pass_over(state, event)
            return
        if event.key <= state.last:
            return
        state.last = event.key
        self.put(event)

    def offer_transient(self, event: Event) -> None:
        """A live-only event (presence): written to live subscriptions, with no position to
        keep; a subscription still replaying history misses it (it asks for presence)."""
        state = self.channels.get(event.channel)
        if state is not None and state.live:
            self.put(event)

    def pass_over(self, state: ChannelState, event: Event) -> None:
        """A live event a replaying subscription will read from history: count it as backlog.

        Queued items plus live events not yet replayed over `limit` make a slow consumer, as
        a live backlog does: a client that stops reading mid-replay is cut off too.
        """
        if event.key <= state.last or self.overflowed:
            return
        if state.behind == 0:
            state.behind_from = event.key
        state.behind += 1
        if len(self.queue) + state.behind > self.limit:
            self._overflow()

    def put(self, item: Item, *, bounded: bool = True, direct: bool = True) -> None:
        """Write or queue an item; a live backlog beyond `limit` marks the subscriber as overflowed.

        Replayed history is queued unbounded (`bounded=False`): the hub queues a page only once
        the one before has been written, and live events that went by meanwhile are counted
        (`pass_over`). `direct=False` always queues: replies to a client's own ops are batched by
        the drain task, so a client that floods ops without reading the replies overflows its
        queue quickly instead of keeping the process busy writing replies into its socket buffers.
        """
        if self.overflowed or self.closed:
            return
        sink = self.sink
        if direct and sink is not None and not self.queue and not self._writing:
            due = self.due
            if due is not None:
                due.append(item)
                if len(due) >= self.limit:
                    self.flush()
                return
            writes = self.due_writes
            if writes is not None:
                self.due = [item]
                writes.add(self)
                return
            if sink([item]):
                return
        elif self.due:
            self.flush()  # what is due goes ahead of a queued item
        if bounded and len(self.queue) >= self.limit:
            self._overflow()
            return
        self.queue.append(item)
        self._wake()

    def _overflow(self) -> None:
        self.overflowed = True
        self.queue = []
        self.due = None
        METRICS.slow_consumers.labels(self.transport).inc()
        if self.on_overflow is not None:
            self.on_overflow()
        self._wake()

    def close(self) -> None:
        """Wake the writer so it notices the connection is over."""
        self.closed = True
        self._wake()

    async def wait_for_room(self) -> bool:
        """Wait until everything queued has been written; False once the subscriber overflowed
        or closed. A replay reads its next page only then, so what a connection holds is
        bounded by a page however slowly it reads."""
        while not (self.overflowed or self.closed):
            if not self.queue and not self.due and not self._writing:
                return True
            if self._room is None:
                self._room = asyncio.Event()
            self._room.clear()
            await self._room.wait()
        return False

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
        if self._room is not None and (self.overflowed or self.closed):
            self._room.set()
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

    def flush(self) -> None:
        """Write what is due in one go through the sink; if the socket refuses it now (paused
        by flow control, closing), it goes to the front of the queue for the drain task."""
        items, self.due = self.due, None
        if not items or self.overflowed:
            return
        sink = self.sink
        if sink is not None and not self.queue and not self._writing and sink(items):
            if self._room is not None:
                self._room.set()
            return
        self.queue[:0] = items
        self._wake()

    def take(self) -> list[Item]:
        """Everything due or queued so far, in order, to be written in one go."""
        items, self.queue = self.queue, []
        due, self.due = self.due, None
        if due:
            items[:0] = due
        if self._room is not None:
            self._room.set()
        return items

    def control(self, op: str, **fields: Any) -> None:
        """Queue a control frame (`gap`, `shutdown`, ...) in this transport's framing."""
        self.put(control_frame(self.transport, op, fields, named=self.named), bounded=False)


class DueWrites:
    """The subscribers with items due in this loop iteration, flushed by one `call_soon`.

    The callback is scheduled when the first subscriber of an iteration has something due, so
    it runs after everything else that iteration had ready (the bus reader's whole read, every
    event in it delivered): each connection then gets one write for all of them. No timer:
    nothing waits longer than the iteration it arrived in.
    """

    __slots__ = ("subscribers",)

    def __init__(self) -> None:
        self.subscribers: list[Subscriber] = []

    def add(self, subscriber: Subscriber) -> None:
        if not self.subscribers:
            asyncio.get_running_loop().call_soon(self.flush)
        self.subscribers.append(subscriber)

    def flush(self) -> None:
        subscribers, self.subscribers = self.subscribers, []
        for subscriber in subscribers:
            try:
                subscriber.flush()
            except Exception:  # one broken connection must not keep the others' frames
                log.exception("writing to a connection failed")


class Outbound:
    """A connection's writer: drains its subscriber's queue while there is a backlog.

    Subclasses say how a batch goes out (`write_batch`), when writing stops (`writable`), what
    to do once the queue is drained and the connection is due to end (`drained`), when the
    client is gone (`gone`) and when it is evicted as a slow consumer (`evicted`).
    """

    __slots__ = ("drainer", "finishing", "subscriber")

    transport: ClassVar[Transport]
    gone_errors: ClassVar[tuple[type[BaseException], ...]] = (OSError,)
    """Raised by a write when the client is gone."""

    def __init__(self, subscriber: Subscriber) -> None:
        self.subscriber = subscriber
        self.drainer: asyncio.Task[None] | None = None
        self.finishing = False

    def attach(self, sink: Callable[[list[Item]], bool] | None) -> None:
        """Hook into the subscriber: `sink` writes directly when the socket allows it."""
        subscriber = self.subscriber
        if sink is not None:
            subscriber.sink = sink
        subscriber.on_pending = self.kick
        subscriber.on_overflow = self.evict

    async def stop(self) -> None:
        """The connection is over: no more draining."""
        self.subscriber.on_pending = None
        if self.drainer is not None:
            self.drainer.cancel()
            await asyncio.gather(self.drainer, return_exceptions=True)

    def kick(self) -> None:
        """Items were queued (or the connection is ending): make sure a drain task runs."""
        if self.drainer is None and self.writable():
            self.drainer = asyncio.get_running_loop().create_task(self._drain())

    def finish(self) -> None:
        """End the connection once what is already queued has been written."""
        self.finishing = True
        self.kick()

    def evict(self) -> None:
        """A slow consumer: stop writing, then end it the transport's way (`evicted`)."""
        if self.drainer is not None:
            self.drainer.cancel()
        self.evicted()

    async def _drain(self) -> None:
        subscriber = self.subscriber
        transport = self.transport
        try:
            while self.writable() and (items := subscriber.take()):
                subscriber.writing = True
                events = await self.write_batch(items)
                if events is None:
                    return
                subscriber.writing = False
                DRAINED[transport] += events
                METRICS.observe_lag(transport, items[-1])
            await self.drained()
        except self.gone_errors:
            self.gone()
        finally:
            subscriber.writing = False
            self.drainer = None

    def writable(self) -> bool:
        return not self.subscriber.overflowed

    async def write_batch(self, items: list[Item]) -> int | None:
        """Write queued items; the number of events among those written, None to stop."""
        raise NotImplementedError

    async def drained(self) -> None:
        """The queue is empty: end the connection if it is due (`finishing`, closed)."""

    def gone(self) -> None:
        """A write failed because the client is gone (the reader notices it too)."""

    def evicted(self) -> None:
        raise NotImplementedError


def count_events(items: list[Item]) -> int:
    return sum(isinstance(item, Event) for item in items)
