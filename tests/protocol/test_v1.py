"""`gateway.protocol.v1`: frames to commands and answers to bytes, without any I/O."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import (
    BackendUnavailable,
    EventTooLarge,
    Forbidden,
    OpError,
    ProtocolError,
    RateLimited,
)
from gateway.events import Event
from gateway.protocol import v1
from gateway.protocol.v1 import CONNECTION_TOKEN, Ping, Publish, Subscribe, Unsubscribe


def error_of(frame: str | bytes, *, binary: bool = False) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        v1.parse(frame, binary=binary)
    return caught.value


def test_parses_every_op() -> None:
    assert v1.parse('{"op":"ping","ref":4}') == Ping(4)
    assert v1.parse(b'{"op":"subscribe","channel":"room:a","since":"1-0","ref":1}') == Subscribe(
        "room:a", "1-0", CONNECTION_TOKEN, 1
    )
    assert v1.parse('{"op":"unsubscribe","channel":"room:a","ref":"x"}') == Unsubscribe(
        "room:a", "x"
    )
    assert v1.parse('{"op":"publish","channel":"room:a","data":{"t":1}}') == Publish(
        "room:a", "message", {"t": 1}
    )


def test_token_member_absent_null_or_given() -> None:
    assert v1.parse('{"op":"subscribe","channel":"room:a"}').token is CONNECTION_TOKEN  # type: ignore[union-attr]
    assert v1.parse('{"op":"subscribe","channel":"room:a","token":null}').token is None  # type: ignore[union-attr]
    assert v1.parse('{"op":"publish","channel":"room:a","token":"t"}').token == "t"  # type: ignore[union-attr]


def test_ref_other_than_int_or_str_is_null() -> None:
    assert v1.parse('{"op":"ping","ref":[1]}') == Ping(None)
    assert error_of('{"op":"nope","ref":{"a":1}}').ref is None


@pytest.mark.parametrize(
    ("frame", "code", "ref"),
    [
        ("{", "invalid_json", None),
        (b"\xff\xfe", "invalid_json", None),
        ("[1]", "invalid_op", None),
        ('{"op":"dance","ref":1}', "unknown_op", 1),
        ('{"op":"subscribe","channel":"lobby","ref":2}', "invalid_channel", 2),
        ('{"op":"subscribe","channel":"room:a","since":"x","ref":3}', "invalid_since", 3),
        ('{"op":"publish","channel":"room:a","type":"a b","ref":4}', "invalid_type", 4),
        ('{"op":"publish","channel":"room:a","token":5,"ref":5}', "invalid_token", 5),
        ('{"op":"unsubscribe","channel":7}', "invalid_channel", None),
    ],
)
def test_errors(frame: str | bytes, code: str, ref: Any) -> None:
    error = error_of(frame)
    assert (error.code, error.ref) == (code, ref)


def test_checks_run_in_the_documented_order() -> None:
    # The channel first, then the type, then the token.
    bad = '{"op":"publish","channel":"x","type":"a b","token":5}'
    assert error_of(bad).code == "invalid_channel"
    assert error_of('{"op":"publish","channel":"room:a","type":"a b","token":5}').code == (
        "invalid_type"
    )


def test_binary_messages_are_refused() -> None:
    assert error_of(b'{"op":"ping"}', binary=True).code == "binary_not_supported"


@pytest.mark.parametrize(
    ("exc", "ref", "expected"),
    [
        (
            ProtocolError("the frame is not valid JSON", "invalid_json"),
            None,
            b'{"op":"error","ref":null,"code":"invalid_json",'
            b'"message":"the frame is not valid JSON"}',
        ),
        (
            Forbidden("the token does not allow publish on room:lobby"),
            2,
            b'{"op":"error","ref":2,"code":"forbidden",'
            b'"message":"the token does not allow publish on room:lobby"}',
        ),
        (
            RateLimited("publishing too fast; slow down", 0.12345),
            "r",
            b'{"op":"error","ref":"r","code":"rate_limited",'
            b'"message":"publishing too fast; slow down","retry_after":0.123}',
        ),
        (
            EventTooLarge("room:a", 10, 5),
            1,
            b'{"op":"error","ref":1,"code":"event_too_large","message":"the event is 10 bytes '
            b'encoded; room:a takes at most 5 (GATEWAY_MAX_EVENT_SIZE)","max_event_size":5}',
        ),
        (
            BackendUnavailable("redis down"),
            1,
            b'{"op":"error","ref":1,"code":"unavailable",'
            b'"message":"the event bus is unavailable; try again"}',
        ),
        (
            OpError("not_subscribed", "not subscribed to room:a"),
            3,
            b'{"op":"error","ref":3,"code":"not_subscribed","message":"not subscribed to room:a"}',
        ),
    ],
)
def test_error_frames_are_the_documented_bytes(exc: Any, ref: Any, expected: bytes) -> None:
    assert v1.error_frame(ref, exc) == expected


def test_replies() -> None:
    assert v1.ack(1, "room:a", recovered=True, already=True) == (
        b'{"op":"ack","ref":1,"channel":"room:a","recovered":true,"already":true}'
    )
    assert (
        v1.ack(None, "room:a", id="1-0") == b'{"op":"ack","ref":null,"channel":"room:a","id":"1-0"}'
    )
    assert v1.pong("x") == b'{"op":"pong","ref":"x"}'
    assert v1.control("gap", channel="room:a", since="1-0") == (
        b'{"op":"gap","channel":"room:a","since":"1-0"}'
    )
    event = Event(b'{"specversion":"1.0","id":"1-0"}', id="1-0", channel="room:a", type="t")
    assert v1.event_frame(event) == '{"op":"event","specversion":"1.0","id":"1-0"}'


# --- properties ---------------------------------------------------------------------------


def _parse_outcome(frame: str | bytes) -> None:
    try:
        command = v1.parse(frame)
    except ProtocolError as exc:
        assert exc.code in {
            "invalid_json",
            "invalid_op",
            "unknown_op",
            "invalid_channel",
            "invalid_since",
            "invalid_type",
            "invalid_token",
        }
        v1.error_frame(exc.ref, exc)  # always encodable
        return
    assert isinstance(command, Subscribe | Unsubscribe | Publish | Ping)


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_protocol_error(frame: bytes) -> None:
    _parse_outcome(frame)


@settings(max_examples=500)
@given(st.text(max_size=300))
def test_any_text_parses_or_raises_protocol_error(frame: str) -> None:
    _parse_outcome(frame)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
objects = st.dictionaries(
    st.sampled_from(["op", "channel", "since", "type", "data", "token", "ref", "x"]),
    json_values | st.sampled_from(["subscribe", "publish", "ping", "unsubscribe", "room:a"]),
    max_size=7,
)


@settings(max_examples=500)
@given(objects)
def test_any_json_object_parses_or_raises_protocol_error(op: dict[str, Any]) -> None:
    _parse_outcome(orjson.dumps(op))


names = st.from_regex(r"[a-z]{1,8}:[A-Za-z0-9_.:-]{1,20}", fullmatch=True)
refs = st.none() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=10)
tokens = st.just(CONNECTION_TOKEN) | st.none() | st.text(max_size=20)
event_ids = st.builds(
    lambda ms, seq: f"{ms}-{seq}", st.integers(0, 2**64 - 2), st.integers(0, 2**64 - 1)
)
commands = st.one_of(
    st.builds(Subscribe, names, st.none() | event_ids, tokens, refs),
    st.builds(Unsubscribe, names, refs),
    st.builds(
        Publish,
        names,
        st.from_regex(r"[A-Za-z0-9_.:-]{1,100}", fullmatch=True),
        json_values,
        tokens,
        refs,
    ),
    st.builds(Ping, refs),
)


@settings(max_examples=500)
@given(commands)
def test_encode_parse_round_trip(command: v1.Command) -> None:
    assert v1.parse(v1.encode(command)) == command
    assert v1.parse(v1.encode(command).decode()) == command


def test_commands_are_frozen() -> None:
    with pytest.raises(AttributeError):
        Ping(1).ref = 2  # type: ignore[misc]


def test_the_protocol_does_no_io() -> None:
    import ast
    from pathlib import Path

    tree = ast.parse(Path(v1.__file__).read_text())
    imported = {
        alias.name.split(".")[0]
        for n in ast.walk(tree)
        if isinstance(n, ast.Import)
        for alias in n.names
    }
    imported |= {
        (n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
    }
    assert not imported & {"asyncio", "socket", "starlette", "uvicorn", "websockets"}
