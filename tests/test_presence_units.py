"""Presence's pure parts and its bookkeeping in one process (the memory backend): cursors, the
ops' parsing, the namespace setting, entries, transient events, and local counting and grace."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jwt
import orjson
import pytest

from gateway.auth import ChannelPolicy
from gateway.backends.memory import open_memory
from gateway.backends.presence import Member
from gateway.channels import ChannelService
from gateway.errors import InvalidInput, ProtocolError
from gateway.events import (
    Event,
    decode_presence_cursor,
    encode_presence_cursor,
    sse_event_frame,
)
from gateway.limits import Limits
from gateway.outbound import Subscriber
from gateway.presence import Presence, valid_client_id
from gateway.protocol import v1
from gateway.settings import Settings
from gateway.tokens import TokenSigner
from tests.support import async_wait_until

SECRET = "unit-secret-0123456789abcdef0123456789"


def test_cursors_round_trip_and_refuse_what_they_did_not_make() -> None:
    for key in ("alice\x1ftab-1", "\x1fc1", "ü\x1f-"):
        assert decode_presence_cursor(encode_presence_cursor(key)) == key
    for bad in ("", "!", "%%%", "YQ=", "a" * 2000):
        with pytest.raises(InvalidInput):
            decode_presence_cursor(bad)


def test_presence_ops_parse_with_defaults_and_bounds() -> None:
    command = v1.parse('{"op":"presence","channel":"room:a","ref":1}')
    assert command == v1.PresenceList("room:a", ref=1)
    assert command.limit == v1.PRESENCE_PAGE
    cursor = encode_presence_cursor("u\x1fc")
    full = {"op": "presence", "channel": "room:a", "limit": 5, "cursor": cursor, "ref": "r"}
    assert orjson.loads(v1.encode(v1.parse(orjson.dumps(full)))) == full
    stats = v1.parse('{"op":"presence_stats","channel":"room:a","token":null}')
    assert stats == v1.PresenceStatsQuery("room:a", token=None)
    for bad, code in (
        ({"op": "presence", "channel": "room:a", "limit": 0}, "invalid_limit"),
        ({"op": "presence", "channel": "room:a", "limit": 1001}, "invalid_limit"),
        ({"op": "presence", "channel": "room:a", "limit": True}, "invalid_limit"),
        ({"op": "presence", "channel": "room:a", "cursor": 5}, "invalid_cursor"),
        ({"op": "presence", "channel": "room:a", "cursor": "!"}, "invalid_cursor"),
        ({"op": "presence_stats", "channel": "nope"}, "invalid_channel"),
    ):
        with pytest.raises(ProtocolError) as refused:
            v1.parse(orjson.dumps(bad))
        assert refused.value.code == code


def test_namespace_settings_take_none_for_none() -> None:
    settings = Settings.from_env({"GATEWAY_PRESENCE": "none", "GATEWAY_OCCUPANCY": "job,user"})
    assert settings.presence == () and settings.occupancy == ("job", "user")
    assert settings.to_env()["GATEWAY_PRESENCE"] == "none"  # so workers N keep it off
    assert not settings.tracks("news:a") and settings.tracks("user:1")
    assert Settings().presence_for("room:a") == (True, True, False)


def test_client_ids() -> None:
    assert valid_client_id("tab-1_A") and valid_client_id("x" * 64)
    for bad in ("", "x" * 65, "a b", "é", "a/b", None):
        assert not valid_client_id(bad)


def test_an_entry_is_keyed_by_user_and_client() -> None:
    member = Member("tab", "42", {"name": "n"})
    assert Member.decode(member.encode()) == member
    assert member.entry() == {"client": "tab", "user": "42", "info": {"name": "n"}}
    assert member.key != Member("tab", "43").key != Member("tab", None).key


def test_a_live_only_event_has_no_position_anywhere() -> None:
    event = Event.live_only("room:a", "presence.join", {"client": "c"})
    assert event.transient and not event.id[0].isdigit()
    body = event.to_dict()
    assert body["transient"] is True and body["id"] == event.id and body["type"] == "presence.join"
    again = Event.from_envelope(event.envelope)
    assert again.transient and again.id == event.id
    assert not event.sse_frame.startswith(b"id:") and b"\nid:" not in event.sse_frame
    for frame in (
        sse_event_frame(event, named=True, cursor=None),
        sse_event_frame(event, named=False, cursor="room:a@1-0"),
    ):
        assert b"id:" not in frame
    assert event.ws_frame.startswith('{"op":"event",')


def make_presence(**changes: Any) -> Presence:
    settings = Settings(secrets=(SECRET,)).replace(**changes)
    backend = open_memory(settings)
    policy = ChannelPolicy.from_settings(settings)
    return Presence(settings, backend, ChannelService(policy, Limits(), backend))


def test_members_take_the_token_s_sub_and_a_bounded_info_object() -> None:
    presence = make_presence(presence_info_bytes=40)
    signer = TokenSigner([SECRET])
    now = int(time.time())

    def with_info(info: Any) -> Any:
        claims = {"sub": "42", "exp": now + 60, "iat": now, "channels": {}, "info": info}
        raw = jwt.encode(claims, SECRET, algorithm="HS256")
        return presence.member_for("tab", signer.verify(raw)).info

    assert with_info({"name": "Ann"}) == {"name": "Ann"}
    assert with_info({"name": "x" * 100}) is None  # over GATEWAY_PRESENCE_INFO_BYTES
    assert with_info(["not", "an", "object"]) is None
    member = presence.member_for("bad id!", None)
    assert valid_client_id(member.client) and member.client != "bad id!"
    assert member.user is None
    # Open mode checks no token, but one that verifies still names its user.
    raw = signer.mint("7", {}, 60)
    assert presence.member_for("t", None, raw).user == "7"
    assert presence.member_for("t", None, "garbage").user is None


async def test_one_client_on_two_connections_is_one_entry_and_leaves_once() -> None:
    presence = make_presence(presence_grace=0.0)
    events: list[Event] = []
    presence.backend.bus.add_listener(events.append)
    await presence.backend.bus.subscribe("room:a")
    one, two = Subscriber("ws", 10), Subscriber("ws", 10)
    member = Member("tab", "42")
    await presence.joined(one, "room:a", member)
    await presence.joined(two, "room:a", member)
    assert (await presence.store.stats("room:a")).clients == 1
    await presence.left(one, "room:a", disconnected=True)
    assert (await presence.store.stats("room:a")).clients == 1
    await presence.left(two, "room:a", disconnected=False)
    assert (await presence.store.stats("room:a")).clients == 0
    assert [e.type for e in events] == ["presence.join", "presence.leave"]
    await presence.left(two, "room:a", disconnected=False)  # twice: nothing more
    assert len(events) == 2


async def test_a_client_back_within_the_grace_never_left() -> None:
    presence = make_presence(presence_grace=0.2)
    events: list[Event] = []
    presence.backend.bus.add_listener(events.append)
    await presence.backend.bus.subscribe("room:g")
    member = Member("tab", "42")
    first = Subscriber("ws", 10)
    await presence.joined(first, "room:g", member)
    await presence.left(first, "room:g", disconnected=True)
    assert (await presence.store.stats("room:g")).clients == 1  # in its grace
    again = Subscriber("ws", 10)
    await presence.joined(again, "room:g", member)
    await asyncio.sleep(0.3)  # past the first grace: its timer was cancelled
    assert (await presence.store.stats("room:g")).clients == 1
    await presence.left(again, "room:g", disconnected=True)
    await async_wait_until(lambda: len(events) == 2, 5, "the leave after the grace")
    assert [e.type for e in events] == ["presence.join", "presence.leave"]
    assert (await presence.store.stats("room:g")).clients == 0


async def test_join_and_leave_events_stop_above_the_room_size_limit() -> None:
    presence = make_presence(presence_grace=0.0, presence_events_max=2)
    events: list[Event] = []
    presence.backend.bus.add_listener(events.append)
    await presence.backend.bus.subscribe("room:big")
    subscribers = [Subscriber("ws", 10) for _ in range(3)]
    for n, subscriber in enumerate(subscribers):
        await presence.joined(subscriber, "room:big", Member(f"c{n}", None))
    for subscriber in subscribers:
        await presence.left(subscriber, "room:big", disconnected=False)
    clients = [(e.type, e.to_dict()["data"]["client"]) for e in events]
    # Only a change that leaves more than 2 clients goes unannounced: the third join.
    assert clients == [
        ("presence.join", "c0"),
        ("presence.join", "c1"),
        ("presence.leave", "c0"),
        ("presence.leave", "c1"),
        ("presence.leave", "c2"),
    ]


async def test_channels_outside_the_tracked_namespaces_cost_nothing() -> None:
    presence = make_presence()
    subscriber = Subscriber("ws", 10)
    await presence.joined(subscriber, "user:1", Member("t", "1"))
    assert (await presence.store.stats("user:1")).clients == 0
    await presence.joined(subscriber, "job:1", None)  # counted (GATEWAY_OCCUPANCY), anonymous
    assert (await presence.store.stats("job:1")).clients == 1


async def test_a_dead_gateway_is_reaped_once_by_one_survivor() -> None:
    presence = make_presence()
    other = Presence(presence.settings, presence.backend, presence.channels)
    events: list[Event] = []
    presence.backend.bus.add_listener(events.append)
    await presence.backend.bus.subscribe("room:r")
    await other.joined(Subscriber("ws", 10), "room:r", Member("gone", "1"))
    await other.store.beat(other.gateway, time.time() - 1)  # its heartbeat ran out
    await presence.tick()
    await presence.tick()
    assert [e.type for e in events] == ["presence.join", "presence.leave"]
    assert (await presence.store.stats("room:r")).clients == 0
