"""The `gateway.v1` WebSocket protocol, sans I/O: client frames to commands, answers to bytes.

No sockets and no asyncio, after the `websockets` library's sans-I/O `Protocol`: the transport
(`gateway.transports.ws`) hands each message it read to `parse` and writes the bytes the
encoders return. `parse` either returns a frozen command or raises `ProtocolError`, never
anything else, whatever the bytes. Errors become `error` frames here and nowhere else
(`error_frame`); the wording and codes are the ones docs/websocket.md lists.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Final

import orjson

from gateway.errors import (
    BackendUnavailable,
    EventTooLarge,
    Forbidden,
    GatewayError,
    InvalidChannel,
    InvalidEventId,
    InvalidEventType,
    InvalidToken,
    OpError,
    ProtocolError,
    RateLimited,
)
from gateway.events import (
    Event,
    encode_ws_message,
    parse_event_id,
    validate_channel,
    validate_event_type,
)

SUBPROTOCOL: Final = "gateway.v1"
Ref = int | str | None
"""What a client put in `ref` (an integer or a string; anything else comes back as null)."""


class Inherit(enum.Enum):
    """A command without a `token` member: the connection's own token (`?token=`, cookie or
    `Authorization`) applies. An explicit `"token": null` means no token for this op."""

    CONNECTION = "connection"


CONNECTION_TOKEN: Final = Inherit.CONNECTION
TokenField = str | None | Inherit


@dataclass(frozen=True, slots=True)
class Subscribe:
    channel: str
    since: str | None = None
    token: TokenField = CONNECTION_TOKEN
    ref: Ref = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    channel: str
    ref: Ref = None


@dataclass(frozen=True, slots=True)
class Publish:
    channel: str
    type: str = "message"
    data: Any = None
    token: TokenField = CONNECTION_TOKEN
    ref: Ref = None


@dataclass(frozen=True, slots=True)
class Ping:
    ref: Ref = None


Command = Subscribe | Unsubscribe | Publish | Ping
OPS: Final = ("subscribe", "unsubscribe", "publish", "ping")

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
    raise ProtocolError("op must be subscribe, unsubscribe, publish or ping", "unknown_op", ref=ref)


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
    else:
        fields = {"op": "ping"}
    if isinstance(command, Subscribe | Publish) and command.token is not CONNECTION_TOKEN:
        fields["token"] = command.token
    if command.ref is not None:
        fields["ref"] = command.ref
    return orjson.dumps(fields)


def ack(ref: Ref, channel: str, **fields: Any) -> bytes:
    """An op succeeded: `recovered` (subscribe), `already` (subscribed before), `id` (publish)."""
    return encode_ws_message("ack", ref=ref, channel=channel, **fields)


def pong(ref: Ref) -> bytes:
    return encode_ws_message("pong", ref=ref)


def control(op: str, **fields: Any) -> bytes:
    """A frame the gateway sends unprompted: `gap`, `shutdown`."""
    return encode_ws_message(op, **fields)


def event_frame(event: Event) -> str:
    """An `event` frame's text: the event's own, encoded once per process and shared by every
    subscriber (`Event.ws_frame`; `Event.ws_wire` is the whole WebSocket frame)."""
    return event.ws_frame


def error_frame(ref: Ref, exc: GatewayError) -> bytes:
    """The `error` frame that answers `exc`: the one mapping from errors to frames."""
    code, message, extra = _error_fields(exc)
    return encode_ws_message("error", ref=ref, code=code, message=message, **extra)


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
