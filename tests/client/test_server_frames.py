"""Frames of CONTRACT.md that this branch's gateway does not send yet (they come with the
`control` branch): server-side subscriptions, `unsubscribed`, close 4002 and 4001.

A real WebSocket server on a free port plays the gateway's side of the contract, frame by
frame, and checks what the client sends back; the client is the real one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Subprotocol

from gateway.client import Client, Disconnected, Event, Subscription

TIMEOUT = 10.0


def event(n: int, channel: str = "user:42") -> bytes:
    envelope = {"op": "event", "id": f"100-{n}", "channel": channel, "type": "note", "data": n}
    return orjson.dumps(envelope)


async def expect(ws: ServerConnection, **fields: object) -> dict[str, object]:
    """The client's next op, which must have these members."""
    op: dict[str, object] = orjson.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    while op.get("op") == "ping":  # the heartbeat may come in between
        await ws.send(orjson.dumps({"op": "pong", "ref": op.get("ref")}))
        op = orjson.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    assert {key: op.get(key) for key in fields} == fields, op
    return op


class ScriptedGateway:
    """Plays one script per connection, in order; records what went wrong."""

    def __init__(self) -> None:
        self.connections = 0
        self.failures: list[BaseException] = []
        self.port = 0

    async def handle(self, ws: ServerConnection) -> None:
        self.connections += 1
        script = (self.first, self.second)[self.connections - 1]
        try:
            await script(ws)
        except Exception as exc:
            self.failures.append(exc)
            raise

    async def first(self, ws: ServerConnection) -> None:
        """A token with `channels: ["user:42"]`: subscribed on connect, one event, then the
        user is disconnected with `reconnect: true`."""
        await ws.send(orjson.dumps({"op": "subscribed", "channel": "user:42", "server": True}))
        await ws.send(event(1))
        op = await expect(ws, op="subscribe", channel="room:own")
        await ws.send(orjson.dumps({"op": "ack", "ref": op["ref"], "channel": "room:own"}))
        await ws.close(4002, "pick up your new token")

    async def second(self, ws: ServerConnection) -> None:
        """Reconnected: subscribed again by the gateway, resumed by the client with `since`."""
        assert ws.request is not None
        assert ws.request.headers["Authorization"] == "Bearer token-2"
        await ws.send(orjson.dumps({"op": "subscribed", "channel": "user:42", "server": True}))
        await ws.send(event(2))  # live, before the client's subscribe: dropped, then replayed
        ops = [await expect(ws, op="subscribe"), await expect(ws, op="subscribe")]
        by_channel = {op["channel"]: op for op in ops}
        assert by_channel["user:42"]["since"] == "100-1"
        assert "since" not in by_channel["room:own"]
        for op in ops:
            answer = {"op": "ack", "ref": op["ref"], "channel": op["channel"], "already": True}
            await ws.send(orjson.dumps(answer))
        await ws.send(event(2))
        await ws.send(event(3))
        await ws.send(orjson.dumps({"op": "unsubscribed", "channel": "user:42", "reason": "moved"}))
        await ws.close(4001, "banned")


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedGateway]:
    gateway = ScriptedGateway()
    async with serve(
        gateway.handle, "127.0.0.1", 0, subprotocols=[Subprotocol("gateway.v1")]
    ) as server:
        gateway.port = server.sockets[0].getsockname()[1]
        yield gateway


async def test_server_subscriptions_resume_and_the_close_codes_of_the_contract(
    scripted: ScriptedGateway,
) -> None:
    async with Client(f"http://127.0.0.1:{scripted.port}", token="token-1") as gw:
        own = gw.subscribe("room:own")
        announced = gw.server_subscriptions()
        mine: Subscription = await asyncio.wait_for(anext(announced), TIMEOUT)
        assert (mine.channel, mine.server) == ("user:42", True)
        first = await asyncio.wait_for(anext(mine), TIMEOUT)
        assert isinstance(first, Event) and first.id == "100-1"
        gw.token = "token-2"  # used from the next connection on, after the 4002

        rest = [item async for item in mine]
        assert [item.id for item in rest if isinstance(item, Event)] == ["100-2", "100-3"]
        assert mine.ended_by == "moved"
        with pytest.raises(Disconnected) as closed:
            await asyncio.wait_for(anext(own), TIMEOUT)
        assert (closed.value.close_code, closed.value.reason) == (4001, "banned")
        assert gw.status.state == "closed" and gw.status.code == 4001
        with pytest.raises(Disconnected):
            gw.subscribe("room:later")
        assert [s async for s in announced] == [], "no announcement after the end"
    assert scripted.connections == 2, "4002 reconnected once; 4001 did not"
    assert scripted.failures == []
