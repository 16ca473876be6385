"""HTTP routes for channels: publish (server API, chat over HTTP), history, and SSE streams.

Thin: the rules are `gateway.channels.ChannelService`'s (the access guard has applied the
route's declared access before these run); its errors become problems in `problem_for`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from starlette.requests import Request
from starlette.responses import Response

from gateway.api.access import SERVER, GuardedRoute, channel_publish, channel_read
from gateway.api.bodies import PublishRequest
from gateway.api.guards import caller_of
from gateway.api.requests import (
    batch_items,
    channel_param,
    event_id_param,
    int_param,
    read_body,
    read_json_object,
)
from gateway.api.responses import json_response
from gateway.auth import token_of
from gateway.backends.bus import Publication
from gateway.errors import AccessDenied, EventTooLarge, InvalidInput, RateLimited
from gateway.presence import new_client_id, valid_client_id
from gateway.problems import bad_request, problem_for, unprocessable
from gateway.services import services_of
from gateway.transports.sse import EventStream, parse_positions

MAX_CHANNELS_PER_STREAM = 32
MAX_BATCH_EVENTS = 1000
"""Events one `POST /events/batch` may carry (413 beyond); the body limit applies too."""


@contextmanager
def answered_as_problems() -> Iterator[None]:
    """The channel service's refusals as problem+json (the bus being down is the app's 503)."""
    try:
        yield
    except (AccessDenied, InvalidInput, RateLimited) as exc:
        raise problem_for(exc) from None


async def publish_event(request: Request) -> Response:
    services = services_of(request)
    channel = channel_param(request.path_params["channel"])
    body = await read_body(request, PublishRequest)
    with answered_as_problems():
        event = await services.channels.publish(channel, body.type, body.data)
    assert event is not None
    return json_response({"id": event.id, "channel": channel}, 202)


async def publish_events(request: Request) -> Response:
    """`{"events": [{"channel", "type", "data"}, ...]}`: server API (an API key when keys are
    configured; tokens publish one event at a time), any channels, one round trip. Each item is
    checked as `POST /channels/{channel}/events` checks its event; the answer lists, in order,
    `{"id", "channel"}` for each published event or the problem that refused it."""
    service = services_of(request).channels
    items = batch_items(await read_json_object(request), "events", MAX_BATCH_EVENTS)
    answers: list[dict[str, object] | None] = [None] * len(items)
    chosen: list[tuple[int, Publication]] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            answers[index] = unprocessable(
                "each event is an object: {channel, type, data}",
                errors=[{"loc": f"events.{index}", "msg": "must be an object"}],
            ).body()
            continue
        try:
            chosen.append(
                (
                    index,
                    service.publication(
                        item.get("channel"), item.get("type", "message"), item.get("data")
                    ),
                )
            )
        except (AccessDenied, InvalidInput) as exc:
            answers[index] = problem_for(exc).body()
    published = await service.publish_many([publication for _index, publication in chosen])
    for (index, publication), outcome in zip(chosen, published, strict=True):
        if isinstance(outcome, EventTooLarge):
            answers[index] = problem_for(outcome).body()
        else:
            answers[index] = {"id": outcome.id, "channel": publication.channel}
    return json_response({"events": answers})


async def channel_history(request: Request) -> Response:
    services = services_of(request)
    channel = channel_param(request.path_params["channel"])
    since = event_id_param(request.query_params.get("since"))
    limit = int_param(request, "limit", 100, 1, 1000)
    caller = caller_of(request.scope)
    with answered_as_problems():
        history = await services.channels.history(
            channel, since, limit, api_key=caller.api_key, token=caller.token
        )
    last_id = history.events[-1].id if history.events else since
    head = {
        "channel": channel,
        "complete": history.complete,
        "more": history.more,
        "last_id": last_id,
    }
    # Splice the stored envelopes in as they are instead of decoding and re-encoding each one.
    events = b",".join(event.envelope for event in history.events)
    body = bytes(json_response(head).body)[:-1] + b',"events":[' + events + b"]}"
    return Response(body, media_type="application/json")


async def channel_stream(request: Request) -> Response:
    """`/events?channel=...`, or `/events` alone with a token that lists server-side
    subscriptions (docs/control.md): then the stream carries those channels."""
    services = services_of(request)
    service, caller = services.channels, caller_of(request.scope)
    with answered_as_problems():
        token = service.connection_token(token_of(request.scope), api_key=caller.api_key)
    channels = request.query_params.getlist("channel")
    if not channels:
        channels = list(service.policy.server_subscriptions(token))
    if not channels:
        raise bad_request("name at least one channel: /events?channel=room:lobby")
    if len(channels) > MAX_CHANNELS_PER_STREAM:
        raise bad_request(f"at most {MAX_CHANNELS_PER_STREAM} channels per stream")
    channels = list(dict.fromkeys(channel_param(channel) for channel in channels))
    with answered_as_problems():
        for channel in channels:
            service.authorize_read(channel, api_key=caller.api_key, token=caller.token)
    raw = request.headers.get("last-event-id") or request.query_params.get("since")
    positions = parse_positions(raw, channels)
    client = request.query_params.get("client")
    if client is not None and not valid_client_id(client):
        raise bad_request("client must be 1-64 letters, digits, '-' or '_'")
    client = client or new_client_id()
    raw_token = token_of(request.scope, api_key_value=caller.api_key)
    members = {
        channel: services.presence.member_for(client, caller.token, raw_token)
        for channel in channels
        if services.settings.tracks(channel)
    }
    return EventStream(
        services.hub,
        services.settings,
        positions,
        expires_at=caller.expires_at,
        members=members,
        token=token,
        sessions=services.control.sessions,
    )


routes = [
    GuardedRoute(
        "/channels/{channel}/events", publish_event, methods=["POST"], access=channel_publish()
    ),
    GuardedRoute(
        "/channels/{channel}/events", channel_history, methods=["GET"], access=channel_read()
    ),
    GuardedRoute("/events", channel_stream, methods=["GET"], access=channel_read(stream=True)),
    GuardedRoute("/events/batch", publish_events, methods=["POST"], access=SERVER),
]
