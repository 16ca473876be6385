"""WebSocket protocol end to end against a real gateway process."""

from __future__ import annotations

import httpx
import orjson

from tests.support import GatewayProcess, ws_client, ws_recv, ws_send, ws_until


async def test_subprotocol_is_negotiated(embedded_gateway: GatewayProcess) -> None:
    async with ws_client(embedded_gateway.ws_url) as ws:
        assert ws.subprotocol == "gateway.v1"


async def test_subscribe_ack_then_history_then_live(embedded_gateway: GatewayProcess) -> None:
    url = embedded_gateway.url
    httpx.post(f"{url}/channels/room:ws-a/events", json={"type": "message", "data": {"n": 0}})
    async with ws_client(embedded_gateway.ws_url) as ws:
        await ws_send(ws, {"op": "subscribe", "channel": "room:ws-a", "ref": 1})
        ack = await ws_recv(ws)
        assert ack == {"op": "ack", "ref": 1, "channel": "room:ws-a", "recovered": True}
        replayed = await ws_recv(ws)
        assert replayed["op"] == "event" and replayed["data"] == {"n": 0}
        assert replayed["channel"] == "room:ws-a" and replayed["specversion"] == "1.0"
        httpx.post(f"{url}/channels/room:ws-a/events", json={"type": "message", "data": {"n": 1}})
        live = await ws_recv(ws)
        assert live["data"] == {"n": 1} and live["id"] > replayed["id"]


async def test_chat_between_clients(embedded_gateway: GatewayProcess) -> None:
    async with (
        ws_client(embedded_gateway.ws_url) as alice,
        ws_client(embedded_gateway.ws_url) as bob,
    ):
        for ws in (alice, bob):
            await ws_send(ws, {"op": "subscribe", "channel": "room:chat1", "ref": 1})
            assert (await ws_recv(ws))["op"] == "ack"
        await ws_send(
            alice,
            {
                "op": "publish",
                "channel": "room:chat1",
                "type": "message",
                "data": {"text": "hi bob"},
                "ref": 2,
            },
        )
        frames = await ws_until(alice, lambda f: f["op"] == "ack" and f["ref"] == 2)
        event_id = frames[-1]["id"]
        got = await ws_until(bob, lambda f: f["op"] == "event")
        assert got[-1]["data"] == {"text": "hi bob"} and got[-1]["id"] == event_id


async def test_subscribe_on_connect_with_query(embedded_gateway: GatewayProcess) -> None:
    job = httpx.post(
        embedded_gateway.url + "/jobs", json={"type": "sleep", "data": {"seconds": 0.2, "steps": 2}}
    ).json()
    async with ws_client(f"{embedded_gateway.ws_url}?channel=job:{job['id']}") as ws:
        frames = await ws_until(ws, lambda f: f.get("type") == "job.completed")
    assert frames[0]["op"] == "ack"
    types = [f["type"] for f in frames[1:]]
    assert types == ["job.queued", "job.started", "job.progress", "job.progress", "job.completed"]


async def test_unsubscribe_stops_delivery(embedded_gateway: GatewayProcess) -> None:
    url = embedded_gateway.url
    async with ws_client(embedded_gateway.ws_url) as ws:
        await ws_send(ws, {"op": "subscribe", "channel": "room:unsub", "ref": 1})
        await ws_recv(ws)
        await ws_send(ws, {"op": "unsubscribe", "channel": "room:unsub", "ref": 2})
        assert await ws_recv(ws) == {"op": "ack", "ref": 2, "channel": "room:unsub"}
        httpx.post(f"{url}/channels/room:unsub/events", json={"data": 1})
        await ws_send(ws, {"op": "ping", "ref": 3})
        assert await ws_recv(ws) == {"op": "pong", "ref": 3}


async def test_errors_are_frames_and_the_connection_survives(
    embedded_gateway: GatewayProcess,
) -> None:
    async with ws_client(embedded_gateway.ws_url) as ws:
        cases = [
            (b"not json", "invalid_json"),
            (orjson.dumps([1, 2]), "invalid_op"),
            (orjson.dumps({"op": "dance", "ref": 1}), "unknown_op"),
            (
                orjson.dumps({"op": "subscribe", "channel": "bad channel", "ref": 2}),
                "invalid_channel",
            ),
            (
                orjson.dumps({"op": "subscribe", "channel": "room:x", "since": "x", "ref": 3}),
                "invalid_since",
            ),
            (orjson.dumps({"op": "subscribe", "channel": "nope:x", "ref": 4}), "forbidden"),
            (
                orjson.dumps({"op": "publish", "channel": "job:abc", "data": 1, "ref": 5}),
                "forbidden",
            ),
            (
                orjson.dumps({"op": "unsubscribe", "channel": "room:never", "ref": 6}),
                "not_subscribed",
            ),
            (
                orjson.dumps({"op": "publish", "channel": "room:x", "type": 5, "ref": 7}),
                "invalid_type",
            ),
        ]
        for frame, code in cases:
            await ws.send(frame.decode())
            reply = await ws_recv(ws)
            assert reply["op"] == "error" and reply["code"] == code, (frame, reply)
        await ws.send(b"\x00binary")
        reply = await ws_recv(ws)
        assert reply["code"] == "binary_not_supported"
        await ws.send(orjson.dumps({"op": "ping", "ref": 99}).decode())
        assert await ws_recv(ws) == {"op": "pong", "ref": 99}
