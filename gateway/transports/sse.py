"""Server-Sent Events: `GET /events?channel=...` and `GET /jobs/{id}/events`.

Thin: parse the resume position, attach a subscriber to the hub, write its queued frames.
A stream on one channel writes each event's shared frame (`id:` = the event id). A stream on
several channels writes a cursor as its `id:` (`room:a@1-0,room:b@5-2`), so `Last-Event-ID`
resumes each channel exactly where it stopped even though ids of different channels interleave.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.types import Receive, Scope, Send

from gateway.backends.base import BackendUnavailable
from gateway.events import (
    Event,
    InvalidEventId,
    encode_sse_frame,
    encode_ws_message,
    parse_event_id,
)
from gateway.hub import Hub, Item, Subscriber
from gateway.metrics import METRICS
from gateway.problems import bad_request
from gateway.settings import Settings

log = logging.getLogger("gateway.sse")
SEND_TIMEOUT = 10.0
"""Seconds a single write may block before the client is treated as gone (slow or dead)."""


class GatewayEventSource(EventSourceResponse):
    """EventSourceResponse that ends quietly when a write times out (a client that stopped
    reading), instead of surfacing the timeout as an application error."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with contextlib.suppress(SendTimeoutError):
            await super().__call__(scope, receive, send)


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


def control_frame(event: str, **fields: Any) -> bytes:
    return encode_sse_frame(None, event, encode_ws_message(event, **fields))


def sse_response(
    hub: Hub,
    settings: Settings,
    positions: dict[str, str | None],
    *,
    end_after_terminal: bool = False,
    headers: dict[str, str] | None = None,
    expires_at: float | None = None,
) -> EventSourceResponse:
    """Stream the channels' history after `positions`, then live events.

    `end_after_terminal` is for job streams: the stream ends after the job's terminal event.
    `expires_at` (epoch seconds) is the expiry of the token that authorized the stream: then the
    stream ends with an `error` event and a long `retry:`, so the client neither hangs on a
    stream it may no longer read nor reconnects in a storm (the reconnect gets a 401 anyway).
    """
    channels = list(positions)
    cursor = dict(positions) if len(channels) > 1 else None

    async def body() -> AsyncIterator[bytes]:
        subscriber = Subscriber("sse", settings.slow_consumer_queue)
        hub.connect(subscriber)
        try:
            yield f"retry: {settings.sse_retry_ms}\n\n".encode()
            try:
                for channel in channels:
                    await hub.attach(subscriber, channel, positions[channel])
            except BackendUnavailable:
                yield control_frame("error", code="unavailable", message="bus unavailable; retry")
                return
            frame_of = _frame_writer(cursor)
            while True:
                if not await _wait_until_expiry(subscriber, expires_at):
                    yield control_frame(
                        "error", code="token_expired", message="the token expired; get a new one"
                    )
                    yield f"retry: {TOKEN_EXPIRED_RETRY_MS}\n\n".encode()
                    return
                if subscriber.overflowed:
                    log.info("SSE client too slow; ending its stream so it resumes later")
                    return
                items = subscriber.take()
                chunk, ended = frame_of(items, end_after_terminal)
                if chunk:
                    yield chunk
                    METRICS.frames_delivered.labels("sse").inc(len(items))
                    METRICS.observe_lag("sse", items[-1])
                if ended or subscriber.closed:
                    return
        finally:
            await hub.disconnect(subscriber)

    return GatewayEventSource(
        body(),
        ping=settings.sse_ping,
        ping_message_factory=lambda: ServerSentEvent(comment="ping"),
        send_timeout=SEND_TIMEOUT,
        shutdown_event=anyio.Event(),
        shutdown_grace_period=2.0,
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


TOKEN_EXPIRED_RETRY_MS = 3_600_000
"""The `retry:` after a token expired: an hour, so a client without a new token stays quiet."""


async def _wait_until_expiry(subscriber: Subscriber, expires_at: float | None) -> bool:
    """Wait for queued items; False when the token expires first."""
    if expires_at is None:
        await subscriber.wait()
        return True
    remaining = expires_at - time.time()
    if remaining <= 0:
        return False
    return await subscriber.wait(timeout=remaining)


def _frame_writer(
    cursor: dict[str, str | None] | None,
) -> Callable[[list[Item], bool], tuple[bytes, bool]]:
    """Join queued items into one write; report whether a job's terminal event was written."""

    def frames(items: list[Item], end_after_terminal: bool) -> tuple[bytes, bool]:
        parts: list[bytes] = []
        for item in items:
            if not isinstance(item, Event):
                parts.append(item if isinstance(item, bytes) else item.encode())
                continue
            if cursor is None:
                parts.append(item.sse_frame)
            else:
                cursor[item.channel] = item.id
                marker = ",".join(f"{ch}@{pos}" for ch, pos in cursor.items() if pos)
                parts.append(b"id: " + marker.encode() + b"\n" + item.sse_body)
            if end_after_terminal and item.terminal:
                return b"".join(parts), True
        return b"".join(parts), False

    return frames
