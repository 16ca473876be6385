"""One channel's events as an async iterator that outlives connections.

A `Subscription` keeps its own position (the id of the last event it took in) and a bounded
buffer. The connection reads frames for every subscription and never waits on a consumer: when
a buffer is full the subscription stops taking events, asks the gateway to stop sending them
(`unsubscribe`), and once its consumer has caught up subscribes again from its position, so the
gateway's history fills in what was skipped. A slow consumer therefore costs bounded memory and
delays no other subscription on the connection.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Final

from gateway.client.items import Event, Gap, Item
from gateway.errors import ClientError
from gateway.events import parse_event_id

BUFFER: Final = 1000
"""Items a subscription holds for its consumer before it pauses (see the module docstring)."""


class Subscription:
    """The items of one channel, in order, each once: `async for item in subscription`.

    Items are `Event`s and, where the gateway's history no longer had what was missed, a `Gap`.
    The iteration ends when the subscription is closed (`aclose()`, leaving an `async with`
    block, closing the client) or the gateway ends it (`unsubscribed`; `ended_by` says why);
    it raises the `ClientError` that ended it otherwise (a refused subscribe, `Disconnected`).
    """

    def __init__(
        self,
        channel: str,
        *,
        since: str | None,
        token: str | None,
        server: bool,
        limit: int,
        on_room: Callable[[Subscription], None],
        on_close: Callable[[Subscription], None],
    ) -> None:
        self.channel = channel
        self.server = server
        """True when the gateway made it (the token's `channels` claim), not `subscribe()`."""
        self.token = token
        self.position = since
        """The id of the last event taken in: a reconnect resumes after it."""
        self._after = _order(since) if since is not None else None
        self.ended_by: str | None = None
        """The reason the gateway gave when it ended the subscription (`unsubscribed`)."""
        self.pending_ref: int | None = None
        """The `ref` of a `subscribe` not yet acknowledged: until its `ack`, this channel's
        events belong to an earlier subscription (or to the gateway's own) and are dropped."""
        self.paused = False
        self._limit = limit
        self._items: deque[Item] = deque()
        self._wakeup: asyncio.Event = asyncio.Event()
        self._failure: ClientError | None = None
        self._done = False
        self._on_room = on_room
        self._on_close = on_close
        self._acknowledged: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def __repr__(self) -> str:
        return f"<Subscription {self.channel} at {self.position} ({len(self._items)} buffered)>"

    # --- consumer side ------------------------------------------------------------------------

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Item:
        while not self._items:
            if self._failure is not None:
                raise self._failure
            if self._done:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()
        item = self._items.popleft()
        if self.paused and len(self._items) <= self._limit // 2:
            self.paused = False
            self._on_room(self)
        return item

    async def subscribed(self) -> None:
        """Wait until the gateway acknowledged the subscription; raise its refusal if it
        refused. Events published after this returns are delivered (before it, an event may
        or may not be, unless it is still in the channel's history to replay)."""
        await asyncio.shield(self._acknowledged)

    async def aclose(self) -> None:
        """Unsubscribe and end the iteration (what was buffered is dropped)."""
        if not self._done:
            self._items.clear()
            self._finish()
            self._on_close(self)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    # --- connection side ----------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self._done

    @property
    def half_full(self) -> bool:
        return len(self._items) >= self._limit // 2

    def take_event(self, event: Event) -> bool:
        """Buffer an event, unless it is old or belongs to a superseded subscription; returns
        False when the buffer is full: the caller pauses the channel at the gateway."""
        if self.pending_ref is not None or self.paused or self._done:
            return True
        key = _order(event.id)
        if self._after is not None and key <= self._after:
            return True  # a replay overlapping what was taken in already
        if len(self._items) >= self._limit:
            self.paused = True
            return False
        self._items.append(event)
        self.position, self._after = event.id, key
        self._wakeup.set()
        return True

    def take_gap(self, gap: Gap) -> None:
        if self.pending_ref is None and not self.paused and not self._done:
            self._items.append(gap)
            self._wakeup.set()

    def acknowledged(self) -> None:
        self.pending_ref = None
        if not self._acknowledged.done():
            self._acknowledged.set_result(None)

    def fail(self, error: ClientError) -> None:
        """End with `error`, raised once the consumer has taken what is buffered."""
        if self._done:
            return
        self._failure = error
        self._finish()
        if not self._acknowledged.done():
            self._acknowledged.set_exception(error)
            self._acknowledged.exception()  # retrieved: nobody need await `subscribed()`

    def end(self, reason: str | None) -> None:
        """End after what is buffered: the gateway unsubscribed, or the client closed."""
        if self.ended_by is None:
            self.ended_by = reason
        self._finish()
        if not self._acknowledged.done():
            self._acknowledged.set_result(None)

    def _finish(self) -> None:
        self._done = True
        self._wakeup.set()


def _order(event_id: str) -> tuple[int, int]:
    """An id's sort key: `<ms>-<seq>` as two numbers (the full check only for odd ones)."""
    ms, _, seq = event_id.partition("-")
    if ms.isdigit() and seq.isdigit():
        return int(ms), int(seq)
    return parse_event_id(event_id)
