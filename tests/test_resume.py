"""Resume semantics at the edges: latest id, trimmed history, and replay racing live publishes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx

from tests.support import (
    GatewayProcess,
    collect_sse,
    ws_client,
    ws_recv,
    ws_send,
    ws_until,
)


def publish(client: httpx.Client, url: str, channel: str, data: object) -> str:
    response = client.post(f"{url}/channels/{channel}/events", json={"data": data})
    assert response.status_code == 202, response.text
    event_id: str = response.json()["id"]
    return event_id


async def test_since_latest_replays_nothing_then_goes_live(
    embedded_gateway: GatewayProcess,
) -> None:
    url = embedded_gateway.url
    with httpx.Client() as client:
        latest = [publish(client, url, "room:latest", n) for n in range(3)][-1]
        async with ws_client(embedded_gateway.ws_url) as ws:
            await ws_send(
                ws, {"op": "subscribe", "channel": "room:latest", "since": latest, "ref": 1}
            )
            assert await ws_recv(ws) == {
                "op": "ack",
                "ref": 1,
                "channel": "room:latest",
                "recovered": True,
            }
            live = publish(client, url, "room:latest", "live")
            frame = await ws_recv(ws)
            assert frame["op"] == "event" and frame["id"] == live


async def test_trimmed_history_is_signalled_on_every_transport(
    redis_url: str, gateway_factory: Callable[..., GatewayProcess]
) -> None:
    gateway = gateway_factory(REDIS_URL=redis_url, GATEWAY_RETENTION="room=10/3600 job=100/3600")
    with httpx.Client() as client:
        ids = [publish(client, gateway.url, "room:trim", n) for n in range(300)]
        page = client.get(f"{gateway.url}/channels/room:trim/events?since={ids[0]}").json()
    assert page["complete"] is False
    async with ws_client(gateway.ws_url) as ws:
        await ws_send(ws, {"op": "subscribe", "channel": "room:trim", "since": ids[0], "ref": 1})
        ack = await ws_recv(ws)
        assert ack["op"] == "ack" and ack["recovered"] is False
        gap = await ws_recv(ws)
        assert gap == {"op": "gap", "channel": "room:trim", "since": ids[0]}
        first = await ws_recv(ws)
        assert first["op"] == "event" and first["id"] > ids[0]
    events = await collect_sse(
        f"{gateway.url}/events?channel=room:trim&since={ids[0]}",
        until=lambda e: e.id == ids[-1],
    )
    assert events[0].event == "gap" and events[0].json()["since"] == ids[0]
    assert events[-1].id == ids[-1]
    async with ws_client(gateway.ws_url) as ws:
        await ws_send(ws, {"op": "subscribe", "channel": "room:trim", "since": ids[-5], "ref": 2})
        ack = await ws_recv(ws)
        assert ack["recovered"] is True
        replay = await ws_until(ws, lambda f: f.get("id") == ids[-1])
        assert [f["id"] for f in replay] == ids[-4:]


async def test_replay_racing_many_publishers_has_no_gap_and_no_duplicate(
    redis_url: str, gateway_factory: Callable[..., GatewayProcess]
) -> None:
    gateway = gateway_factory(REDIS_URL=redis_url, GATEWAY_RETENTION="room=5000/3600")
    publishers, per_publisher = 6, 120
    channel = "room:race"
    with httpx.Client() as client:
        seed = [publish(client, gateway.url, channel, {"seed": n}) for n in range(20)]

    async def publish_many(p: int) -> None:
        async with httpx.AsyncClient() as client:
            for n in range(per_publisher):
                response = await client.post(
                    f"{gateway.url}/channels/{channel}/events", json={"data": {"p": p, "n": n}}
                )
                assert response.status_code == 202

    total = len(seed) + publishers * per_publisher

    async def subscriber(
        since_index: int | None, delay_publishes: int
    ) -> tuple[str | None, list[str]]:
        await asyncio.sleep(0.005 * delay_publishes)
        since = seed[since_index] if since_index is not None else None
        expected = total - (since_index + 1 if since_index is not None else 0)
        async with ws_client(gateway.ws_url) as ws:
            op = {"op": "subscribe", "channel": channel, "ref": 1}
            if since is not None:
                op["since"] = since
            await ws_send(ws, op)
            ids: list[str] = []
            while len(ids) < expected:
                frame = await ws_recv(ws, timeout=20)
                if frame["op"] == "event":
                    ids.append(frame["id"])
                else:
                    assert frame["op"] == "ack" and frame["recovered"] is True
            return since, ids

    results = await asyncio.gather(
        *(publish_many(p) for p in range(publishers)),
        *(subscriber(i, d) for i, d in [(None, 0), (5, 10), (19, 20), (0, 40), (10, 80)]),
    )
    async with httpx.AsyncClient() as client:
        history = (await client.get(f"{gateway.url}/channels/{channel}/events?limit=1000")).json()
    all_ids = [e["id"] for e in history["events"]]
    assert len(all_ids) == total
    for result in results[publishers:]:
        assert result is not None
        since, ids = result
        start = all_ids.index(since) + 1 if since is not None else 0
        assert ids == all_ids[start:], f"subscriber since={since} saw a gap or a duplicate"
