"""Event envelope, event ids, channel names and frame encoding.

The one place that knows how an event looks on the bus, over WebSocket and over SSE. An event is
encoded to JSON once when it is published; each transport's frame is derived from those bytes
once per process and the same bytes are written to every subscriber.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import struct
import time
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from gateway.errors import InvalidChannel, InvalidEventId, InvalidEventType, InvalidInput
from gateway.vocabulary import JOB_TERMINAL_TYPES

SPECVERSION: Final = "1.0"
# Checked with `fullmatch` only: `re.match` with `$` would let a trailing newline through.
CHANNEL_RE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,200}")
EVENT_ID_RE: Final = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
EVENT_TYPE_RE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
EVENT_ID_PART_MAX: Final = 2**64 - 1
"""Each part of a Redis stream id is an unsigned 64-bit number."""

EventKey = tuple[int, int]
"""A parsed event id, `(milliseconds, sequence)`: ordered like the ids themselves."""


def validate_channel(name: str) -> str:
    """Return `name` if it is a valid `namespace:name` channel, else raise `InvalidChannel`."""
    if not isinstance(name, str) or not CHANNEL_RE.fullmatch(name):
        raise InvalidChannel(
            "channel names are 1-200 characters of [A-Za-z0-9_.:-], like 'room:lobby'"
        )
    namespace, sep, rest = name.partition(":")
    if not sep or not namespace or not rest:
        raise InvalidChannel("channel names have a namespace: 'namespace:name', like 'room:lobby'")
    return name


def validate_event_type(value: object) -> str:
    """Return `value` if it is a valid event type, else raise `InvalidEventType`."""
    if not isinstance(value, str) or not EVENT_TYPE_RE.fullmatch(value):
        raise InvalidEventType()
    return value


def namespace_of(channel: str) -> str:
    return channel.partition(":")[0]


def parse_event_id(value: str) -> EventKey:
    """Parse `<ms>-<seq>` into a sortable key; raise `InvalidEventId` for anything else.

    Both parts must fit Redis's unsigned 64 bits, and the largest id is refused too: nothing
    can come after it, and Redis answers an error (not an empty range) when asked to.
    """
    match = EVENT_ID_RE.fullmatch(value) if isinstance(value, str) else None
    key = (int(match.group(1)), int(match.group(2))) if match is not None else None
    if key is None or max(key) > EVENT_ID_PART_MAX or key == (EVENT_ID_PART_MAX,) * 2:
        shown = value[:60] if isinstance(value, str) else type(value).__name__
        raise InvalidEventId(
            f"event ids look like '1732060800000-0' (two numbers below 2**64), not {shown!r}"
        )
    return key


def format_event_id(key: EventKey) -> str:
    return f"{key[0]}-{key[1]}"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


_formatted_second: tuple[int, str] = (-1, "")
"""The last whole second `iso_time` formatted (formatting is most of its cost; a busy
process stamps thousands of events in the same second)."""


def iso_time(ms: int) -> str:
    """RFC 3339 UTC timestamp with milliseconds, as CloudEvents `time` wants it."""
    global _formatted_second
    second, milli = divmod(ms, 1000)
    if _formatted_second[0] != second:
        stamp = datetime.fromtimestamp(second, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _formatted_second = (second, stamp)
    return f"{_formatted_second[1]}{milli:03d}Z"


def envelope_tail(channel: str, type_: str, data: Any, source: str | None = None) -> bytes:
    """Encode everything of the envelope but `specversion` and `id`, which the bus assigns.

    The result is the JSON object's remainder after `{"specversion":"1.0","id":"<id>",`, so the
    backend can splice the stream entry id in without re-encoding (`splice_envelope`).
    """
    body = orjson.dumps(
        {
            "source": source or "/channels/" + channel,
            "type": type_,
            "channel": channel,
            "time": iso_time(now_ms()),
            "data": data,
        }
    )
    return body[1:]


_HEAD: Final = b'{"specversion":"' + SPECVERSION.encode() + b'","id":"'


def splice_envelope(event_id: str, tail: bytes) -> bytes:
    return _HEAD + event_id.encode() + b'",' + tail


class Event:
    """One published event: its envelope bytes plus the lazily built transport frames.

    Built once per process per event and shared by every subscriber, so the frames are encoded
    once no matter how many connections receive them.
    """

    __slots__ = (
        "_sse",
        "_sse_body",
        "_sse_chunk",
        "_ws",
        "_ws_wire",
        "channel",
        "envelope",
        "id",
        "key",
        "transient",
        "type",
    )

    def __init__(
        self, envelope: bytes, *, id: str, channel: str, type: str, transient: bool = False
    ) -> None:
        self.envelope = envelope
        self.id = id
        self.transient = transient
        """Live only (presence.join/leave): not in history, its id no position to resume from."""
        self.key = (0, 0) if transient else parse_event_id(id)
        self.channel = channel
        self.type = type
        self._sse: bytes | None = None
        self._sse_body: bytes | None = None
        self._ws: str | None = None
        self._ws_wire: bytes | None = None
        self._sse_chunk: bytes | None = None

    @classmethod
    def from_envelope(cls, envelope: bytes) -> Event:
        fields = orjson.loads(envelope)
        return cls(
            envelope,
            id=fields["id"],
            channel=fields["channel"],
            type=fields["type"],
            transient=fields.get("transient") is True,
        )

    @classmethod
    def live_only(cls, channel: str, type_: str, data: Any) -> Event:
        """A transient event: CloudEvents needs an `id`, so it gets a unique one that is not a
        stream id (`t-<hex>`), and `"transient": true` says it is no position to resume from."""
        event_id = "t-" + secrets.token_hex(8)
        envelope = (
            _HEAD + event_id.encode() + b'","transient":true,' + envelope_tail(channel, type_, data)
        )
        return cls(envelope, id=event_id, channel=channel, type=type_, transient=True)

    @property
    def terminal(self) -> bool:
        return self.type in JOB_TERMINAL_TYPES

    def to_dict(self) -> dict[str, Any]:
        value: dict[str, Any] = orjson.loads(self.envelope)
        return value

    @property
    def sse_frame(self) -> bytes:
        """The SSE frame with this event's own id (single-channel streams)."""
        if self._sse is None:
            head = b"" if self.transient else b"id: " + self.id.encode() + b"\n"
            self._sse = head + self.sse_body
        return self._sse

    @property
    def sse_body(self) -> bytes:
        """The frame without its `id:` line, for streams that write a cursor id of their own.

        No `event:` line: unnamed events reach `EventSource.onmessage` and every other client's
        default handler; the envelope carries the `type`.
        """
        if self._sse_body is None:
            self._sse_body = encode_sse_frame(None, None, self.envelope)
        return self._sse_body

    @property
    def ws_frame(self) -> str:
        """The WebSocket text frame: `{"op":"event", ...envelope}`."""
        if self._ws is None:
            self._ws = '{"op":"event",' + self.envelope[1:].decode()
        return self._ws

    @property
    def ws_wire(self) -> bytes:
        """The whole WebSocket frame as it goes on the wire (server frames are not masked), so
        one encoding serves every subscriber's socket."""
        if self._ws_wire is None:
            self._ws_wire = ws_text_frame(self.ws_frame.encode())
        return self._ws_wire

    @property
    def sse_chunk(self) -> bytes:
        """`sse_frame` as one HTTP/1.1 chunk, ready for a chunked response's socket."""
        if self._sse_chunk is None:
            self._sse_chunk = http_chunk(self.sse_frame)
        return self._sse_chunk

    def __repr__(self) -> str:
        return f"Event(id={self.id!r}, channel={self.channel!r}, type={self.type!r})"


def encode_sse_frame(event_id: str | None, event_type: str | None, data: bytes) -> bytes:
    """One SSE frame; `data` must be single-line JSON (orjson never emits raw newlines).

    `event_type` None writes no `event:` line (the default framing: the client sees a `message`).
    """
    head = b"id: " + event_id.encode() + b"\n" if event_id is not None else b""
    if event_type is not None:
        head += b"event: " + event_type.encode() + b"\n"
    return head + b"data: " + data + b"\n\n"


def encode_sse_signal(kind: str, fields: dict[str, Any], *, named: bool = False) -> bytes:
    """A stream signal (`gap`, `shutdown`, `error`, `heartbeat`) as an SSE frame.

    The data is a JSON object whose `type` names the signal, so a client that parses every
    message as JSON can tell signals from events (events carry `specversion` and `id`). A
    `retry` field also goes out as the frame's `retry:` line, in the same block as the data:
    a block of its own would reach lenient parsers as an empty message.
    """
    frame = encode_sse_frame(None, kind if named else None, orjson.dumps({"type": kind, **fields}))
    retry = fields.get("retry")
    if isinstance(retry, int):
        frame = b"retry: %d\n%b" % (retry, frame)
    return frame


SSE_PREAMBLE: Final = b": gateway event stream\n"
"""A stream's first bytes: a comment line, so proxies pass the response on at once."""
SSE_PING: Final = b":\n"
"""Keep-alive: one comment line and no blank line after it. A comment-only block (`: ping` and
a blank line) reaches httpx-sse (after the first id) and fetch-event-source as an empty message."""


def sse_retry_line(retry_ms: int) -> bytes:
    """The `retry:` line a stream sends once, in its first block that carries data."""
    return b"retry: %d\n" % retry_ms


def with_sse_retry(retry_line: bytes, frame: bytes) -> bytes:
    """`frame` with the stream's `retry:` line in front (a signal with its own keeps that)."""
    return frame if frame.startswith(b"retry:") else retry_line + frame


def sse_event_frame(event: Event, *, named: bool, cursor: str | None) -> bytes:
    """An event's SSE frame on one stream: `event:` line when `named`, `id:` the event's own
    id or, on a multi-channel stream, the stream's `cursor` (`room:a@1-0,room:b@5-2`)."""
    if cursor is None and not named:
        return event.sse_frame
    body = event.sse_body
    if named:
        body = b"event: " + event.type.encode() + b"\n" + body
    if event.transient:
        return body  # no `id:` line: the stream's position (Last-Event-ID) stays as it was
    marker = event.id if cursor is None else cursor
    return b"id: " + marker.encode() + b"\n" + body


def control_frame(transport: str, op: str, fields: dict[str, Any], *, named: bool = False) -> Frame:
    """A control frame (`gap`, `shutdown`, `error`, `heartbeat`) in the transport's framing: a
    WebSocket message's text, or an SSE signal's bytes."""
    if transport == "ws":
        return encode_ws_message(op, **fields).decode()
    return encode_sse_signal(op, fields, named=named)


Frame = Event | bytes | str
"""What a connection writes: an event (its shared frame), or an encoded control frame (bytes:
SSE frames and WebSocket payloads; str: WebSocket text)."""


def ws_wire_frame(item: Frame) -> bytes:
    """An item as the bytes of its WebSocket frame (events: encoded once, shared)."""
    if isinstance(item, Event):
        return item.ws_wire
    return ws_text_frame(item.encode() if isinstance(item, str) else item)


def ws_text(item: Frame) -> str:
    """An item as the text of an ASGI `websocket.send`."""
    if isinstance(item, Event):
        return item.ws_frame
    return item if isinstance(item, str) else item.decode()


def encode_ws_message(op: str, **fields: Any) -> bytes:
    """A control frame of the WebSocket protocol (`ack`, `error`, `gap`, `pong`)."""
    return orjson.dumps({"op": op, **fields})


def ws_text_frame(payload: bytes) -> bytes:
    """An unmasked, final, uncompressed WebSocket text frame (RFC 6455 §5.2)."""
    size = len(payload)
    if size < 126:
        head = bytes((0x81, size))
    elif size < 65536:
        head = struct.pack("!BBH", 0x81, 126, size)
    else:
        head = struct.pack("!BBQ", 0x81, 127, size)
    return head + payload


def http_chunk(data: bytes) -> bytes:
    """One chunk of an HTTP/1.1 chunked body."""
    return b"%x\r\n%b\r\n" % (len(data), data)


PRESENCE_CURSOR_MAX: Final = 1024
"""Longest presence cursor accepted (a cursor encodes one entry key: user and client id)."""


def encode_presence_cursor(key: str) -> str:
    """A presence page's `next`: the last entry key of the page, opaque and URL-safe."""
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def decode_presence_cursor(cursor: str) -> str:
    """The entry key a cursor stands for; `InvalidInput` for anything `encode_presence_cursor`
    did not make."""
    if not isinstance(cursor, str) or not cursor or len(cursor) > PRESENCE_CURSOR_MAX:
        raise InvalidInput("cursor must be a `next` value from a presence page")
    padded = cursor + "=" * (-len(cursor) % 4)
    try:
        key = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        key = ""
    if not key or encode_presence_cursor(key) != cursor:
        raise InvalidInput("cursor must be a `next` value from a presence page")
    return key
