"""HTTP routes for channels: publish (server API, chat over HTTP), history, and SSE streams."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.api.access import GuardedRoute, channel_publish, channel_read
from gateway.api.bodies import PublishRequest
from gateway.api.guards import caller_of
from gateway.api.requests import channel_param, event_id_param, int_param, read_body
from gateway.api.responses import json_response
from gateway.errors import EventTooLarge, Forbidden
from gateway.problems import Problem, bad_request
from gateway.services import services_of
from gateway.transports.sse import parse_positions, sse_response

MAX_CHANNELS_PER_STREAM = 32


def forbidden(exc: Forbidden) -> Problem:
    return Problem(403, "Forbidden", str(exc), code="forbidden")


async def publish_event(request: Request) -> Response:
    services = services_of(request)
    channel = channel_param(request.path_params["channel"])
    body = await read_body(request, PublishRequest)
    try:
        services.policy.check_namespace(channel)
    except Forbidden as exc:
        raise forbidden(exc) from None
    try:
        event = await services.backend.publish(channel, body.type, body.data)
    except EventTooLarge as exc:
        raise Problem(
            413, "Content Too Large", str(exc), code="event-too-large", max_event_size=exc.limit
        ) from None
    assert event is not None
    return json_response({"id": event.id, "channel": channel}, 202)


async def channel_history(request: Request) -> Response:
    services = services_of(request)
    channel = channel_param(request.path_params["channel"])
    since = event_id_param(request.query_params.get("since"))
    limit = int_param(request, "limit", 100, 1, 1000)
    try:
        services.policy.check_namespace(channel)  # rights: api.guards
    except Forbidden as exc:
        raise forbidden(exc) from None
    history = await services.backend.history(channel, since, limit=limit)
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
    services = services_of(request)
    channels = request.query_params.getlist("channel")
    if not channels:
        raise bad_request("name at least one channel: /events?channel=room:lobby")
    if len(channels) > MAX_CHANNELS_PER_STREAM:
        raise bad_request(f"at most {MAX_CHANNELS_PER_STREAM} channels per stream")
    channels = list(dict.fromkeys(channel_param(channel) for channel in channels))
    for channel in channels:
        try:
            services.policy.check_namespace(channel)  # rights: api.guards
        except Forbidden as exc:
            raise forbidden(exc) from None
    raw = request.headers.get("last-event-id") or request.query_params.get("since")
    positions = parse_positions(raw, channels)
    return sse_response(
        services.hub, services.settings, positions, expires_at=caller_of(request.scope).expires_at
    )


routes = [
    GuardedRoute(
        "/channels/{channel}/events", publish_event, methods=["POST"], access=channel_publish()
    ),
    GuardedRoute(
        "/channels/{channel}/events", channel_history, methods=["GET"], access=channel_read()
    ),
    GuardedRoute("/events", channel_stream, methods=["GET"], access=channel_read(stream=True)),
]
