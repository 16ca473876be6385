"""The control bus contract, against the memory implementation and a real redis-server: commands
reach every process and are answered, revocations hold until their expiry and reach processes
that were running and ones started later."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import redis.asyncio as redis

from gateway.backends.bundle import Backend
from gateway.backends.control import PRUNE_FLOOR, ControlBus, Disconnect
from gateway.backends.redis_control import REVOKED_KEY, RedisControl
from gateway.backends.url import open_backend
from tests.conftest import make_settings
from tests.support import async_wait_until


@pytest.fixture
async def control(backend: Backend) -> ControlBus:
    await backend.start_control()
    return backend.control


async def test_a_command_reaches_the_listeners_and_their_answers_add_up(
    control: ControlBus,
) -> None:
    heard: list[Mapping[str, Any]] = []

    def listener(command: Mapping[str, Any]) -> int:
        heard.append(command)
        return 2

    control.add_listener(listener)
    control.add_listener(lambda command: 1)
    outcome = await control.send({"op": "disconnect", "user": "alice"})
    assert outcome.processes == 1 and outcome.complete
    assert outcome.connections == 3
    assert [(c["op"], c["user"]) for c in heard] == [("disconnect", "alice")]


async def test_a_listener_that_raises_does_not_stop_the_others(control: ControlBus) -> None:
    def broken(command: Mapping[str, Any]) -> int:
        raise RuntimeError("boom")

    control.add_listener(broken)
    control.add_listener(lambda command: 1)
    outcome = await control.send({"op": "disconnect", "user": "x"})
    assert outcome.connections == 1 and outcome.complete


async def test_a_revocation_holds_until_its_expiry(control: ControlBus) -> None:
    now = time.time()
    assert not control.is_revoked("j1")
    await control.revoke("j1", now + 60)
    assert control.is_revoked("j1")
    assert not control.is_revoked("j1", now=now + 61)
    assert not control.is_revoked(None)


async def test_a_disconnect_reaches_the_listeners_and_is_kept_for_a_reread(
    control: ControlBus,
) -> None:
    heard: list[Mapping[str, Any]] = []
    reread: list[Sequence[Disconnect]] = []
    control.add_listener(lambda command: heard.append(command) or 1)
    control.add_reread_listener(lambda disconnects: reread.append(disconnects) or 0)
    outcome = await control.disconnect("u", 4002, "new token")
    assert outcome.connections == 1 and outcome.complete
    [command] = heard
    sent = Disconnect("u", 4002, "new token", command["at"])
    assert command == {
        "op": "disconnect",
        "user": "u",
        "code": 4002,
        "reason": "new token",
        "at": sent.at,
        "request": command["request"],
    }
    if isinstance(control, RedisControl):  # kept where a process cut off now finds it
        await control._reload()
        assert reread[-1] == [sent]


async def test_a_revocation_reaches_every_process_and_later_ones(redis_url: str) -> None:
    first = open_backend(make_settings(redis_url))
    second = open_backend(make_settings(redis_url))
    for backend in (first, second):
        await backend.start()
        await backend.start_control()
    late: Backend | None = None
    try:
        outcome = await first.control.revoke("jti-shared", time.time() + 60)
        # Every process answered, and answers only once it has the revocation in its list.
        assert outcome.processes == 2 and outcome.complete
        assert second.control.is_revoked("jti-shared")
        late = open_backend(make_settings(redis_url))
        await late.start()
        await late.start_control()
        assert late.control.is_revoked("jti-shared")
        heard: list[str] = []
        second.control.add_listener(lambda command: heard.append(command["op"]) or 1)
        outcome = await late.control.send({"op": "disconnect", "user": "u"})
        assert outcome.processes == 3 and outcome.complete and outcome.connections == 1
        assert heard == ["disconnect"]
    finally:
        for backend in (first, second, late):
            if backend is not None:
                await backend.close()


async def test_expired_revocations_are_swept_out_as_the_list_grows(control: ControlBus) -> None:
    now = time.time()
    for n in range(PRUNE_FLOOR - 1):
        control._remember(f"old-{n}", now - 1)  # expired: as if announced long ago
    assert control.revoked_count == PRUNE_FLOOR - 1
    await control.revoke("fresh", now + 60)
    assert control.revoked_count == 1 and control.is_revoked("fresh")


async def test_a_process_that_missed_an_announcement_rereads_the_list_on_reconnect(
    redis_url: str,
) -> None:
    backend = open_backend(make_settings(redis_url, pubsub_probe=0.2))
    await backend.start()
    await backend.start_control()
    client = redis.Redis.from_url(redis_url)
    reread: list[Sequence[Disconnect]] = []
    backend.control.add_reread_listener(lambda disconnects: reread.append(disconnects) or 0)
    try:
        # Stored while no announcement reached this process (as if it was cut off then).
        await client.zadd(REVOKED_KEY, {"missed": time.time() + 60})
        missed = Disconnect("u", 4002, "new token", time.time())
        await backend.control._store_disconnect(missed)
        assert not backend.control.is_revoked("missed")
        await client.client_kill_filter(_type="pubsub")
        await async_wait_until(
            lambda: backend.control.is_revoked("missed"), 10, "the list reread on reconnect"
        )
        # The listeners are told after the list is in place, with the kept disconnects.
        assert reread[-1] == [missed]
    finally:
        await client.aclose()
        await backend.close()
