"""The client's pure parts: a subscription's buffer and position, refusals, the records."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from gateway.client import Event, Gap, Job, Subscription
from gateway.client.refusals import refusal_of_frame, refusal_of_response
from gateway.errors import (
    ClientError,
    Conflict,
    GatewayUnavailable,
    NotFound,
    RequestForbidden,
    RequestInvalid,
    RequestRateLimited,
)


def event(n: int, channel: str = "room:a") -> Event:
    return Event.from_envelope(
        {"id": f"100-{n}", "channel": channel, "type": "tick", "data": {"n": n}}
    )


class Calls:
    def __init__(self) -> None:
        self.room: list[Subscription] = []
        self.closed: list[Subscription] = []


def subscription(calls: Calls, *, limit: int = 10, since: str | None = None) -> Subscription:
    return Subscription(
        "room:a",
        since=since,
        token=None,
        server=False,
        limit=limit,
        on_room=calls.room.append,
        on_close=calls.closed.append,
    )


async def drain(sub: Subscription) -> list[Event | Gap]:
    return [item async for item in sub]


async def test_events_are_taken_in_order_once_and_the_position_follows() -> None:
    sub = subscription(Calls(), since="100-1")
    for n in (1, 2, 2, 3, 1):  # at or before the position: a replay overlapping, dropped
        assert sub.take_event(event(n))
    assert sub.position == "100-3"
    sub.end(None)
    assert [item.id for item in await drain(sub) if isinstance(item, Event)] == ["100-2", "100-3"]


async def test_events_before_the_ack_of_a_resubscribe_are_dropped() -> None:
    sub = subscription(Calls())
    sub.pending_ref = 7
    assert sub.take_event(event(1))
    sub.take_gap(Gap("room:a", "100-0"))
    sub.acknowledged()
    await asyncio.wait_for(sub.subscribed(), 1)
    sub.take_event(event(2))
    sub.end(None)
    assert await drain(sub) == [event(2)]


async def test_a_full_buffer_pauses_and_draining_to_half_asks_for_more() -> None:
    calls = Calls()
    sub = subscription(calls, limit=4)
    assert all(sub.take_event(event(n)) for n in range(4))
    assert not sub.take_event(event(4)), "full: the caller pauses the channel"
    assert sub.paused and sub.position == "100-3"
    assert sub.take_event(event(5)), "dropped quietly while paused"
    for _ in range(2):
        await anext(sub)
    assert calls.room == [sub] and not sub.paused
    assert sub.position == "100-3", "the resubscribe starts after the last event buffered"


async def test_a_gap_is_an_item_between_events() -> None:
    sub = subscription(Calls(), since="100-0")
    sub.take_gap(Gap("room:a", "100-0"))
    sub.take_event(event(9))
    sub.end("unsubscribed by the gateway")
    assert await drain(sub) == [Gap("room:a", "100-0"), event(9)]
    assert sub.ended_by == "unsubscribed by the gateway"


async def test_a_failure_is_raised_after_what_was_buffered() -> None:
    sub = subscription(Calls())
    sub.take_event(event(1))
    refusal = RequestForbidden("no", code="forbidden")
    sub.fail(refusal)
    assert await anext(sub) == event(1)
    with pytest.raises(RequestForbidden):
        await anext(sub)
    with pytest.raises(RequestForbidden):
        await sub.subscribed()


async def test_aclose_drops_the_buffer_and_unsubscribes_once() -> None:
    calls = Calls()
    async with subscription(calls) as sub:
        sub.take_event(event(1))
    assert calls.closed == [sub]
    await sub.aclose()
    assert calls.closed == [sub]
    assert await drain(sub) == []


async def test_a_waiting_consumer_wakes_for_the_next_event() -> None:
    sub = subscription(Calls())
    waiting = asyncio.ensure_future(anext(sub))
    await asyncio.sleep(0)
    assert not waiting.done()
    sub.take_event(event(1))
    assert await asyncio.wait_for(waiting, 1) == event(1)


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("forbidden", RequestForbidden),
        ("token_required", RequestForbidden),
        ("token_expired", RequestForbidden),
        ("invalid_channel", RequestInvalid),
        ("too_many_subscriptions", RequestInvalid),
        ("unavailable", GatewayUnavailable),
    ],
)
def test_error_frames_map_to_exceptions(code: str, cls: type[ClientError]) -> None:
    error = refusal_of_frame({"op": "error", "code": code, "message": "why"}, "subscribe x")
    assert type(error) is cls and error.code == code and error.status is None
    assert "why" in str(error)


def test_a_rate_limited_frame_carries_retry_after() -> None:
    error = refusal_of_frame({"op": "error", "code": "rate_limited", "retry_after": 0.5}, "x")
    assert isinstance(error, RequestRateLimited) and error.retry_after == 0.5


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, RequestInvalid),
        (401, RequestForbidden),
        (403, RequestForbidden),
        (404, NotFound),
        (409, Conflict),
        (413, RequestInvalid),
        (422, RequestInvalid),
        (503, GatewayUnavailable),
        (418, ClientError),
    ],
)
def test_problems_map_to_exceptions(status: int, cls: type[ClientError]) -> None:
    body = {"type": "/problems/some-code", "title": "T", "status": status, "detail": "said why"}
    response = httpx.Response(status, json=body)
    error = refusal_of_response(response, "POST /jobs")
    assert type(error) is cls and error.status == status and error.code == "some-code"
    assert str(error) == f"POST /jobs: {status} T: said why"


def test_a_429_carries_its_retry_after_header() -> None:
    response = httpx.Response(429, headers={"Retry-After": "3"}, json={"title": "Too Many"})
    error = refusal_of_response(response, "POST /channels/room:a/events")
    assert isinstance(error, RequestRateLimited) and error.retry_after == 3.0


def test_a_job_resource_becomes_a_job() -> None:
    job = Job.from_resource(
        {"id": "j1", "type": "sleep", "status": "completed", "last_event_id": "5-0", "token": "t"}
    )
    assert (job.channel, job.ended, job.token, job.last_event_id) == ("job:j1", True, "t", "5-0")
    assert Job.from_resource({"id": "j2", "status": "queued"}).token is None


def test_a_terminal_event_ends_a_job() -> None:
    done = Event.from_envelope({"id": "1-0", "channel": "job:j", "type": "job.failed"})
    assert done.ends_job and not done.job_succeeded
    assert not event(1).ends_job
