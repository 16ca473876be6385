"""Server-Sent Events: `GET /events?channel=...` and `GET /jobs/{id}/events`.

Thin: parse the resume position, attach a subscriber to the hub, write its queued frames.
A stream on one channel writes each event's shared frame (`id:` = the event id). A stream on
several channels writes a cursor as its `id:` (`room:a@1-0,room:b@5-2`), so `Last-Event-ID`
resumes each channel exactly where it stopped even though ids of different channels interleave.

Framing, chosen so the clients people already use work as their READMEs show them: every block
that ends with a blank line carries `data:` (JSON), so no parser ever dispatches an empty
message. Events have no `event:` line by default (they reach `EventSource.onmessage`; the
envelope carries `type`); signals (`gap`, `shutdown`, `error`, `heartbeat`) are JSON objects
with a `type` and no `id`. `?events=named` adds `event: <type>` lines for `addEventListener`.
`retry:` rides in the first block that carries data; keep-alives are lone comment lines.
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.datastructures import QueryParams
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from gateway.backends.presence import Member
from gateway.control import REVOKED_REASON, Sessions
from gateway.errors import BackendUnavailable, InvalidEventId
from gateway.events import (
    SSE_PING,
    SSE_PREAMBLE,
    Event,
    http_chunk,
    parse_event_id,
    sse_event_frame,
    sse_retry_line,
    with_sse_retry,
)
from gateway.hub import Hub
from gateway.metrics import METRICS
from gateway.outbound import Item, Outbound, Subscriber
from gateway.problems import bad_request
from gateway.settings import Settings
from gateway.tokens import ChannelToken
from gateway.transports.wire import ChunkedWire, chunked_wire
from gateway.vocabulary import CloseCode

log = logging.getLogger("gateway.sse")
END_TIMEOUT = 2.0
"""Seconds the last chunk of a stream may wait for a slow socket before the connection drops."""
PREAMBLE = SSE_PREAMBLE
PING = SSE_PING
HEARTBEAT_RANGE = (1.0, 3600.0)
TOKEN_EXPIRED_RETRY_MS = 3_600_000
"""The `retry:` after a token expired: an hour, so a client without a new token stays quiet."""
DELIVERED = METRICS.delivered
WRITES = METRICS.socket_writes
HEADERS = [
    # No charset parameter: SSE is always UTF-8, and clients compare the type exactly
    # (fetch-event-source's README checks `content-type === 'text/event-stream'`).
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
]


def parse_positions(raw: str | None, channels: list[str]) -> dict[str, str | None]:
    """Resume positions per channel from `Last-Event-ID`/`since`: a plain id or a cursor."""
    positions: dict[str, str | None] = dict.fromkeys(channels)
    if raw is None or raw == "":
        return positions
    try:
        if "@" in raw:
            for part in raw.split(","):
                channel, _, event_id = part.rpartition("@")
                parse_event_id(event_id)
                if channel in positions:
                    positions[channel] = event_id
        else:
            parse_event_id(raw)
            positions = dict.fromkeys(channels, raw)
    except InvalidEventId as exc:
        raise bad_request(f"invalid Last-Event-ID/since: {exc}") from None
    return positions


class StreamOptions:
    """What the client asked of the framing: `?events=named`, `?heartbeat=<seconds>`."""

    __slots__ = ("heartbeat", "named")

    def __init__(self, *, named: bool = False, heartbeat: float | None = None) -> None:
        self.named = named
        self.heartbeat = heartbeat

    @classmethod
    def from_query(cls, query: QueryParams) -> StreamOptions:
        """Parse the query; a bad value is a 400 problem (nothing has been sent yet)."""
        events = query.get("events", "message")
        if events not in ("message", "named"):
            raise bad_request(
                "events is 'message' (the default: every event is a message) or 'named'"
            )
        raw = query.get("heartbeat")
        heartbeat = None
        if raw is not None:
            low, high = HEARTBEAT_RANGE
            try:
                heartbeat = float(raw)
            except ValueError:
                heartbeat = -1.0
            if not low <= heartbeat <= high:
                raise bad_request(
                    f"heartbeat is seconds between heartbeat events, {low:g}-{high:g}"
                )
        return cls(named=events == "named", heartbeat=heartbeat)


class EventStream(Response):
    """The SSE response: history after `positions`, then live events, until the client leaves.

    `end_after_terminal` is for job streams: the stream ends after the job's terminal event.
    `expires_at` (epoch seconds) is the expiry of the token that authorized the stream: then the
    stream ends with an `error` event and a long `retry:`, so the client neither hangs on a
    stream it may no longer read nor reconnects in a storm (the reconnect gets a 401 anyway).
    With `token` and `sessions`, the stream is that token's user's connection for the control
    commands (`gateway.control`): it can be ended (`disconnected`) or unsubscribed.
    """

    def __init__(
        self,
        hub: Hub,
        settings: Settings,
        positions: dict[str, str | None],
        *,
        end_after_terminal: bool = False,
        headers: dict[str, str] | None = None,
        expires_at: float | None = None,
        members: dict[str, Member] | None = None,
        token: ChannelToken | None = None,
        sessions: Sessions | None = None,
    ) -> None:
        super().__init__(status_code=200, headers=headers)
        self.members = members or {}
        """Who the client is on each channel, for presence (`gateway.presence`)."""
        self.token = token
        self.sessions = sessions
        self.hub = hub
        self.settings = settings
        self.positions = positions
        self.end_after_terminal = end_after_terminal
        self.expires_at = expires_at

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        options = StreamOptions.from_query(QueryParams(scope.get("query_string", b"")))
        own = [(k, v) for k, v in self.raw_headers if k not in (b"content-length", b"content-type")]
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS + own})
        if scope.get("method") == "HEAD":
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await _Stream(self, send, chunked_wire(scope), options).run(receive)


class _Stream(Outbound):
    """One SSE connection once its headers are out.

    Frames go straight to the socket when the server allows it (`ChunkedWire`) and nothing is
    waiting before them; otherwise they queue and the drain task of `Outbound`, started only
    while there is a backlog, writes them through ASGI in one chunk per batch. The request's
    own coroutine just waits for the end: the client leaving, the job's terminal event, token
    expiry, shutdown, or the client falling too far behind (then the connection is dropped; it
    resumes with `Last-Event-ID`). Keep-alive comments come from a timer, not a task.
    """

    __slots__ = (
        "cursor",
        "disconnected",
        "ended",
        "ended_event",
        "expiry_timer",
        "heartbeat",
        "named",
        "ping_timer",
        "response",
        "retry_line",
        "send",
        "slow",
        "tasks",
        "wire",
    )

    transport = "sse"

    def __init__(
        self, response: EventStream, send: Send, wire: ChunkedWire | None, options: StreamOptions
    ) -> None:
        settings = response.settings
        super().__init__(Subscriber("sse", settings.slow_consumer_queue, named=options.named))
        self.response = response
        self.send = send
        self.wire = wire
        self.named = options.named
        self.heartbeat = options.heartbeat
        self.retry_line: bytes | None = sse_retry_line(settings.sse_retry_ms)
        """Goes out with the first block that carries data, then never again."""
        channels = list(response.positions)
        self.cursor = dict(response.positions) if len(channels) > 1 else None
        self.ended = False
        self.slow = False
        self.disconnected = False
        self.ping_timer: asyncio.TimerHandle | None = None
        self.expiry_timer: asyncio.TimerHandle | None = None
        self.ended_event: asyncio.Event | None = None
        self.tasks: set[asyncio.Task[None]] | None = None

    async def run(self, receive: Receive) -> None:
        response, subscriber, hub = self.response, self.subscriber, self.response.hub
        self.attach(self._write_now if self.wire is not None else None)
        hub.connect(subscriber)
        sessions = response.sessions
        tracked = sessions is None or sessions.track(self, response.token)
        try:
            subscriber.put(PREAMBLE, bounded=False)
            try:
                for channel, position in response.positions.items():
                    if not tracked:  # revoked since the route checked it: nothing is sent
                        self.disconnect(CloseCode.DISCONNECTED, REVOKED_REASON)
                        break
                    member = response.members.get(channel)
                    await hub.attach(subscriber, channel, position, member=member)
            except BackendUnavailable:
                subscriber.control("error", code="unavailable", message="bus unavailable; retry")
                self.finish()
            self._schedule()
            await self._wait_for_end(receive)
        finally:
            if sessions is not None:
                sessions.forget(self)
            for task in self.tasks or ():
                task.cancel()
            for timer in (self.ping_timer, self.expiry_timer):
                if timer is not None:
                    timer.cancel()
            await self.stop()
            await hub.disconnect(subscriber)
        await self._end_response()

    def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        self.ping_timer = loop.call_later(self._ping_interval, self._ping)
        expires_at = self.response.expires_at
        if expires_at is not None:
            delay = max(0.0, expires_at - time.time())
            self.expiry_timer = loop.call_later(delay, self._expire)

    @property
    def _ping_interval(self) -> float:
        return self.heartbeat or self.response.settings.sse_ping

    def _ping(self) -> None:
        """Keeps proxies from timing out the stream and lets clients notice a dead link.

        A comment line by default (invisible to a page's EventSource); with `?heartbeat=` a
        `{"type":"heartbeat"}` message the page can watch.
        """
        if self.ended:
            return
        if not self.subscriber.queue:
            if self.heartbeat is None:
                self.subscriber.put(PING, bounded=False)
            else:
                self.subscriber.control("heartbeat")
        loop = asyncio.get_running_loop()
        self.ping_timer = loop.call_later(self._ping_interval, self._ping)

    def _expire(self) -> None:
        message = "the token expired; get a new one"
        self.subscriber.control(
            "error", code="token_expired", message=message, retry=TOKEN_EXPIRED_RETRY_MS
        )
        self.finish()

    # --- control (gateway.control.Session) --------------------------------------------------

    def disconnect(self, code: int, reason: str) -> None:
        """A last `disconnected` message, then the end of the stream. With 4001 (do not come
        back) its `retry:` is an hour, so an EventSource stays away; with 4002, the usual."""
        if self.ended or self.finishing:
            return
        fields: dict[str, object] = {"code": code, "reason": reason}
        if code == CloseCode.DISCONNECTED:
            fields["retry"] = TOKEN_EXPIRED_RETRY_MS
        self.subscriber.control("disconnected", **fields)
        self.subscriber.close()
        self.finish()

    def server_unsubscribe(self, channel: str, reason: str) -> bool:
        """Detach the channel, then an `unsubscribed` message, its last."""
        if channel not in self.subscriber.channels or self.ended:
            return False

        async def unsubscribe() -> None:
            await self.response.hub.detach(self.subscriber, channel)
            self.subscriber.control("unsubscribed", channel=channel, reason=reason)

        task = asyncio.ensure_future(unsubscribe())
        if self.tasks is None:
            self.tasks = set()
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return True

    def _with_retry(self, frame: bytes) -> bytes:
        """Put the stream's `retry:` line into its first block that carries data."""
        line = self.retry_line
        if line is None or frame[:1] == b":":
            return frame
        self.retry_line = None
        return with_sse_retry(line, frame)

    def _frame(self, item: Item) -> tuple[bytes, bool]:
        """An item's SSE frame, and whether it is the job's last (the stream ends after it)."""
        if not isinstance(item, Event):
            return self._with_retry(item if isinstance(item, bytes) else item.encode()), False
        ends = self.response.end_after_terminal and item.terminal
        cursor = None
        if self.cursor is not None and not item.transient:  # presence events: no position
            self.cursor[item.channel] = item.id
            cursor = ",".join(f"{ch}@{pos}" for ch, pos in self.cursor.items() if pos)
        return self._with_retry(sse_event_frame(item, named=self.named, cursor=cursor)), ends

    def _write_now(self, items: list[Item]) -> bool:
        """The subscriber's sink: the items' frames in one chunk straight to the socket, if it
        can take them now. Items after the job's terminal event are dropped (the stream ends
        after it, as `write_batch` does)."""
        assert self.wire is not None
        if self.ended or self.finishing:
            return False
        if len(items) == 1 and self._plain(items[0]):
            # The common case: the event's shared chunk, encoded once for every subscriber.
            event = items[0]
            assert isinstance(event, Event)
            if not self.wire.write(event.sse_chunk):
                return False
            DELIVERED["sse"] += 1
            WRITES["sse"] += 1
            if self.response.end_after_terminal and event.terminal:
                self._end()
            return True
        saved = dict(self.cursor) if self.cursor is not None else None
        retry_line = self.retry_line
        frames: list[bytes] = []
        events = 0
        ends = False
        for item in items:
            frame, ends = self._frame(item)
            frames.append(frame)
            events += isinstance(item, Event)
            if ends:
                break
        if not self.wire.write(http_chunk(b"".join(frames))):
            self.cursor = saved
            self.retry_line = retry_line
            return False
        DELIVERED["sse"] += events
        WRITES["sse"] += 1
        if ends:
            self._end()
        return True

    def _plain(self, item: Item) -> bool:
        """An event written as its shared frame: one channel, unnamed, `retry:` already sent."""
        return (
            isinstance(item, Event)
            and self.cursor is None
            and not self.named
            and self.retry_line is None
        )

    def writable(self) -> bool:
        return not self.ended

    async def write_batch(self, items: list[Item]) -> int | None:
        parts: list[bytes] = []
        events = 0
        ends = False
        for item in items:
            frame, ends = self._frame(item)
            parts.append(frame)
            events += isinstance(item, Event)
            if ends:
                break
        await self.send({"type": "http.response.body", "body": b"".join(parts), "more_body": True})
        if ends:
            self._end()
        return events

    async def drained(self) -> None:
        if self.finishing or self.subscriber.closed:
            self._end()

    def gone(self) -> None:
        self._end()

    def evicted(self) -> None:
        log.info("SSE client too slow; dropping it so it resumes later")
        self.slow = True
        self._end()

    def _end(self) -> None:
        if self.ended:
            return
        self.ended = True
        if self.wire is not None:
            self.wire.nudge()
        elif self.ended_event is not None:
            self.ended_event.set()

    async def _wait_for_end(self, receive: Receive) -> None:
        if self.wire is not None:
            # uvicorn's receive() returns on disconnect, or when `ChunkedWire.nudge` wakes it.
            while not self.ended:
                if (await receive())["type"] == "http.disconnect":
                    self.disconnected = True
                    return
            return
        self.ended_event = asyncio.Event()
        watcher = asyncio.get_running_loop().create_task(self._watch(receive))
        try:
            if not self.ended:
                await self.ended_event.wait()
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    async def _watch(self, receive: Receive) -> None:
        message: Message = await receive()
        while message["type"] != "http.disconnect":
            message = await receive()
        self.disconnected = True
        self._end()

    async def _end_response(self) -> None:
        if self.disconnected:
            return
        if self.slow and self.wire is not None:
            self.wire.abort()
            return
        last = {"type": "http.response.body", "body": b"", "more_body": False}
        try:
            await asyncio.wait_for(self.send(last), END_TIMEOUT)
        except (TimeoutError, OSError):
            if self.wire is not None:
                self.wire.abort()
