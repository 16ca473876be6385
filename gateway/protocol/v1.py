"""The `gateway.v1` WebSocket protocol, sans I/O: client frames to commands, answers to bytes.

No sockets and no asyncio, after the `websockets` library's sans-I/O `Protocol`: the transport
(`gateway.transports.ws`) hands each message it read to `parse` and writes the bytes the
encoders return. `parse` either returns a frozen command or raises `ProtocolError`, never
anything else, whatever the bytes. Errors become `error` frames here and nowhere else
(`error_frame`); the wording and codes are the ones docs/websocket.md lists.

Each frame's shape is declared here once, typed: the commands are dataclasses and the server's
frames `TypedDict`s (`COMMANDS`, `SERVER_FRAMES`), their field types annotated with the
patterns the parser checks. `/asyncapi.json` is their generated JSON Schema
(`gateway.api.docs`), and the encoders build the `TypedDict`s, so neither can drift.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal, NotRequired, Unpack

import orjson
from pydantic import Field, WithJsonSchema
from typing_extensions import TypedDict  # pydantic needs it below Python 3.12

from gateway.errors import (
    BackendUnavailable,
    EventTooLarge,
    Forbidden,
    GatewayError,
    InvalidChannel,
    InvalidEventId,
    InvalidEventType,
    InvalidInput,
    InvalidToken,
    OpError,
    ProtocolError,
    RateLimited,
)
from gateway.events import (
    CHANNEL_RE,
    EVENT_ID_RE,
    EVENT_TYPE_RE,
    PRESENCE_CURSOR_MAX,
    Event,
    decode_presence_cursor,
    encode_ws_message,
    parse_event_id,
    validate_channel,
    validate_event_type,
)

SUBPROTOCOL: Final = "gateway.v1"
Ref = Annotated[
    int | str | None,
    Field(description="the client's own reference for the op, echoed in its answer"),
]
"""What a client put in `ref` (an integer or a string; anything else comes back as null)."""
Channel = Annotated[
    str,
    Field(
        pattern=f"^{CHANNEL_RE.pattern}$",
        description="`namespace:name`, like `room:lobby`",
    ),
]
EventId = Annotated[
    str,
    Field(pattern=f"^{EVENT_ID_RE.pattern}$", description="`<ms>-<seq>`, an event's id"),
]
EventTypeName = Annotated[str, Field(pattern=f"^{EVENT_TYPE_RE.pattern}$")]


class Inherit(enum.Enum):
    """A command without a `token` member: the connection's own token (`?token=`, cookie or
    `Authorization`) applies. An explicit `"token": null` means no token for this op."""

    CONNECTION = "connection"


def _no_default(schema: dict[str, Any]) -> None:
    """`CONNECTION_TOKEN` is what an absent member means, never a value to send."""
    schema.pop("default", None)


CONNECTION_TOKEN: Final = Inherit.CONNECTION
TokenField = Annotated[
    str | Inherit | None,
    WithJsonSchema({"type": ["string", "null"]}),
    Field(
        description="absent: the connection's own token; null: no token for this op",
        json_schema_extra=_no_default,
    ),
]


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Receive the channel's events from now on, or from after `since` (history first)."""

    channel: Channel
    since: EventId | None = None
    token: TokenField = CONNECTION_TOKEN
    ref: Ref = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """Stop receiving the channel's events."""

    channel: Channel
    ref: Ref = None


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish an event on the channel."""

    channel: Channel
    type: EventTypeName = "message"
    data: Any = None
    token: TokenField = CONNECTION_TOKEN
    ref: Ref = None


@dataclass(frozen=True, slots=True)
class Ping:
    """Ask for a `pong`."""

    ref: Ref = None


PresenceLimit = Annotated[int, Field(ge=1, le=1000, description="entries per page")]
PresenceCursor = Annotated[
    str,
    Field(
        min_length=1,
        max_length=PRESENCE_CURSOR_MAX,
        description="the `next` of the page before (opaque)",
    ),
]
PRESENCE_PAGE = 100
"""Entries in a presence page when the op names no `limit`."""


@dataclass(frozen=True, slots=True)
class PresenceList:
    """Who is subscribed to the channel, one page (authorized like history; docs/presence.md)."""

    channel: Channel
    limit: PresenceLimit = PRESENCE_PAGE
    cursor: PresenceCursor | None = None
    token: TokenField = CONNECTION_TOKEN
    ref: Ref = None


@dataclass(frozen=True, slots=True)
class PresenceStatsQuery:
    """How many clients and users are subscribed to the channel (counts only, for big rooms)."""

    channel: Channel
    token: TokenField = CONNECTION_TOKEN
    ref: Ref = None


Command = Subscribe | Unsubscribe | Publish | Ping | PresenceList | PresenceStatsQuery
COMMANDS: Final[dict[str, type[Command]]] = {
    "subscribe": Subscribe,
    "unsubscribe": Unsubscribe,
    "publish": Publish,
    "ping": Ping,
    "presence": PresenceList,
    "presence_stats": PresenceStatsQuery,
}
"""Each client op (the frame's `op`) and the command it parses into."""
OPS: Final = tuple(COMMANDS)


class AckFrame(TypedDict):
    """An op succeeded."""

    op: Literal["ack"]
    ref: Ref
    channel: Channel
    recovered: NotRequired[
        Annotated[bool, Field(description="subscribe: whether the history since `since` was whole")]
    ]
    already: NotRequired[Annotated[bool, Field(description="subscribe: was subscribed before")]]
    id: NotRequired[Annotated[EventId | None, Field(description="publish: the event's id")]]


class AckFields(TypedDict, total=False):
    """What an `ack` adds, by op (the optional members of `AckFrame`)."""

    recovered: bool
    already: bool
    id: str | None


class PresenceEntry(TypedDict):
    """One client subscribed to a channel (the same entry as `presence.join` events carry)."""

    client: Annotated[str, Field(description="the client's id (`?client=`, else the gateway's)")]
    user: Annotated[str | None, Field(description="its token's `sub`")]
    info: Annotated[
        dict[str, Any] | None, Field(description="its token's `info` claim (size-bounded)")
    ]


class PresenceFrame(TypedDict):
    """The answer to `presence`: one page of the channel's entries."""

    op: Literal["presence"]
    ref: Ref
    channel: Channel
    clients: list[PresenceEntry]
    next: Annotated[str | None, Field(description="cursor of the next page; null: the last")]


class PresenceStatsFrame(TypedDict):
    """The answer to `presence_stats`."""

    op: Literal["presence_stats"]
    ref: Ref
    channel: Channel
    clients: Annotated[int, Field(ge=0, description="entries (clients) on the channel")]
    users: Annotated[int, Field(ge=0, description="distinct token subjects among them")]


class PongFrame(TypedDict):
    """The answer to `ping`."""

    op: Literal["pong"]
    ref: Ref


ERROR_CODES: Final = (
    "forbidden",
    "token_required",
    "invalid_token",
    "token_expired",
    "rate_limited",
    "too_many_subscriptions",
    "event_too_large",
    "invalid_json",
    "invalid_op",
    "unknown_op",
    "binary_not_supported",
    "invalid_channel",
    "invalid_since",
    "invalid_type",
    "not_subscribed",
    "invalid_limit",
    "invalid_cursor",
    "invalid_client",
    "unavailable",
)
"""The codes of `error` frames, for the documentation (docs/websocket.md explains each)."""


class ErrorFrame(TypedDict):
    """An op failed; the connection stays open."""

    op: Literal["error"]
    ref: Ref
    code: Annotated[
        str,
        Field(description="every code is explained in docs/websocket.md", examples=ERROR_CODES),
    ]
    message: str
    max_event_size: NotRequired[Annotated[int, Field(description="event_too_large: the limit")]]
    retry_after: NotRequired[
        Annotated[float, Field(description="rate_limited: seconds until the next op may pass")]
    ]


class GapFrame(TypedDict):
    """Events after `since` on `channel` are no longer in its history: some were missed."""

    op: Literal["gap"]
    channel: Channel
    since: EventId


class ShutdownFrame(TypedDict):
    """The gateway is restarting: reconnect after `retry` milliseconds."""

    op: Literal["shutdown"]
    message: str
    retry: Annotated[int, Field(ge=0)]


class EventFrame(TypedDict):
    """An event: its CloudEvents envelope (`gateway.events.Event.envelope`) with this `op`."""

    op: Literal["event"]


SERVER_FRAMES: Final[dict[str, type[Any]]] = {
    "ack": AckFrame,
    "error": ErrorFrame,
    "event": EventFrame,
    "gap": GapFrame,
    "pong": PongFrame,
    "presence": PresenceFrame,
    "presence_stats": PresenceStatsFrame,
    "shutdown": ShutdownFrame,
}
"""Each frame the gateway sends (its `op`) and its declared shape."""

ANSWERED: Final = (
    ProtocolError,
    OpError,
    Forbidden,
    InvalidToken,
    InvalidChannel,
    InvalidEventId,
    InvalidEventType,
    EventTooLarge,
    RateLimited,
    BackendUnavailable,
)
"""The errors an op can end in that are answered with an `error` frame (the connection stays
open); anything else is a failure of the gateway."""


def parse(frame: str | bytes, *, binary: bool = False) -> Command:
    """One client message as a command; `ProtocolError` when it is not one.

    `frame` is the message's text (bytes are taken as its UTF-8 encoding); `binary` says it
    came in a binary message, which the protocol does not take. The checks run in the order
    the errors have always been reported in: JSON, object, op, channel, then the op's fields.
    """
    if binary:
        raise ProtocolError("send JSON text frames, not binary", "binary_not_supported")
    try:
        op = orjson.loads(frame)
    except orjson.JSONDecodeError:
        raise ProtocolError("the frame is not valid JSON", "invalid_json") from None
    if not isinstance(op, dict):
        raise ProtocolError('frames are JSON objects like {"op": "ping"}', "invalid_op")
    return from_object(op)


def from_object(op: dict[str, Any]) -> Command:
    """A decoded frame (a JSON object) as a command; `ProtocolError` when it is not one."""
    ref = op.get("ref")
    if ref is not None and not isinstance(ref, int | str):
        ref = None
    name = op.get("op")
    if name == "subscribe":
        channel = _channel(op, ref)
        since = op.get("since")
        if since is not None:
            try:
                parse_event_id(since)
            except InvalidEventId as exc:
                raise ProtocolError(str(exc), "invalid_since", ref=ref) from None
        return Subscribe(channel, since, _token(op, ref), ref)
    if name == "unsubscribe":
        return Unsubscribe(_channel(op, ref), ref)
    if name == "publish":
        channel = _channel(op, ref)
        try:
            type_ = validate_event_type(op.get("type", "message"))
        except InvalidEventType as exc:
            raise ProtocolError(str(exc), "invalid_type", ref=ref) from None
        return Publish(channel, type_, op.get("data"), _token(op, ref), ref)
    if name == "ping":
        return Ping(ref)
    if name == "presence":
        return PresenceList(
            _channel(op, ref), _limit(op, ref), _cursor(op, ref), _token(op, ref), ref
        )
    if name == "presence_stats":
        return PresenceStatsQuery(_channel(op, ref), _token(op, ref), ref)
    raise ProtocolError(
        "op must be subscribe, unsubscribe, publish, ping, presence or presence_stats",
        "unknown_op",
        ref=ref,
    )


def _limit(op: dict[str, Any], ref: Ref) -> int:
    limit = op.get("limit", PRESENCE_PAGE)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise ProtocolError("limit must be an integer from 1 to 1000", "invalid_limit", ref=ref)
    return limit


def _cursor(op: dict[str, Any], ref: Ref) -> str | None:
    cursor = op.get("cursor")
    if cursor is None:
        return None
    try:
        decode_presence_cursor(cursor)
    except InvalidInput as exc:
        raise ProtocolError(str(exc), "invalid_cursor", ref=ref) from None
    return str(cursor)


def _channel(op: dict[str, Any], ref: Ref) -> str:
    try:
        return validate_channel(op.get("channel"))  # type: ignore[arg-type]
    except InvalidChannel as exc:
        raise ProtocolError(str(exc), "invalid_channel", ref=ref) from None


def _token(op: dict[str, Any], ref: Ref) -> TokenField:
    if "token" not in op:
        return CONNECTION_TOKEN
    token = op["token"]
    if token is not None and not isinstance(token, str):
        raise ProtocolError("token must be a string", "invalid_token", ref=ref)
    return token


def encode(command: Command) -> bytes:
    """A command as a client sends it (for clients and tests; `parse` reads it back)."""
    fields: dict[str, Any]
    if isinstance(command, Subscribe):
        fields = {"op": "subscribe", "channel": command.channel}
        if command.since is not None:
            fields["since"] = command.since
    elif isinstance(command, Unsubscribe):
        fields = {"op": "unsubscribe", "channel": command.channel}
    elif isinstance(command, Publish):
        fields = {"op": "publish", "channel": command.channel, "type": command.type}
        fields["data"] = command.data
    elif isinstance(command, PresenceList):
        fields = {"op": "presence", "channel": command.channel}
        if command.limit != PRESENCE_PAGE:
            fields["limit"] = command.limit
        if command.cursor is not None:
            fields["cursor"] = command.cursor
    elif isinstance(command, PresenceStatsQuery):
        fields = {"op": "presence_stats", "channel": command.channel}
    else:
        fields = {"op": "ping"}
    tokened = Subscribe | Publish | PresenceList | PresenceStatsQuery
    if isinstance(command, tokened) and command.token is not CONNECTION_TOKEN:
        fields["token"] = command.token
    if command.ref is not None:
        fields["ref"] = command.ref
    return orjson.dumps(fields)


def ack(ref: Ref, channel: str, **fields: Unpack[AckFields]) -> bytes:
    """An op succeeded: `recovered` (subscribe), `already` (subscribed before), `id` (publish)."""
    frame: AckFrame = {"op": "ack", "ref": ref, "channel": channel, **fields}
    return orjson.dumps(frame)


def presence_page(
    ref: Ref, channel: str, clients: list[PresenceEntry], following: str | None
) -> bytes:
    frame: PresenceFrame = {
        "op": "presence",
        "ref": ref,
        "channel": channel,
        "clients": clients,
        "next": following,
    }
    return orjson.dumps(frame)


def presence_stats(ref: Ref, channel: str, clients: int, users: int) -> bytes:
    frame: PresenceStatsFrame = {
        "op": "presence_stats",
        "ref": ref,
        "channel": channel,
        "clients": clients,
        "users": users,
    }
    return orjson.dumps(frame)


def pong(ref: Ref) -> bytes:
    frame: PongFrame = {"op": "pong", "ref": ref}
    return orjson.dumps(frame)


def control(op: str, **fields: Any) -> bytes:
    """A frame the gateway sends unprompted: `gap`, `shutdown` (`GapFrame`, `ShutdownFrame`)."""
    return encode_ws_message(op, **fields)


def event_frame(event: Event) -> str:
    """An `event` frame's text: the event's own, encoded once per process and shared by every
    subscriber (`Event.ws_frame`; `Event.ws_wire` is the whole WebSocket frame)."""
    return event.ws_frame


def error_frame(ref: Ref, exc: GatewayError) -> bytes:
    """The `error` frame that answers `exc`: the one mapping from errors to frames."""
    code, message, extra = _error_fields(exc)
    frame: ErrorFrame = {"op": "error", "ref": ref, "code": code, "message": message}
    return orjson.dumps({**frame, **extra})


def _error_fields(exc: GatewayError) -> tuple[str, str, dict[str, Any]]:
    if isinstance(exc, ProtocolError | OpError):
        return exc.code, exc.message, exc.extra
    if isinstance(exc, EventTooLarge):
        return exc.code, str(exc), {"max_event_size": exc.limit}
    if isinstance(exc, RateLimited):
        return exc.code, str(exc), {"retry_after": round(exc.retry_after, 3)}
    if isinstance(exc, BackendUnavailable):
        return "unavailable", "the event bus is unavailable; try again", {}
    if isinstance(exc, InvalidToken):
        return exc.code, exc.message, {}
    return exc.code, str(exc), {}
