"""HTTP routes for presence: `GET /channels/{channel}/presence` (one page of who is
subscribed) and `GET /channels/{channel}/presence/stats` (counts only).

Thin: authorized like history by the access guard and again by `gateway.presence.Presence`
(the namespace's subscribe rule; presence must be on for the namespace).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.api.access import GuardedRoute, channel_read
from gateway.api.channels import answered_as_problems
from gateway.api.guards import caller_of
from gateway.api.requests import channel_param, int_param
from gateway.api.responses import json_response
from gateway.errors import InvalidInput
from gateway.events import decode_presence_cursor
from gateway.problems import bad_request
from gateway.protocol.v1 import PRESENCE_PAGE
from gateway.services import services_of


async def channel_presence(request: Request) -> Response:
    services = services_of(request)
    channel = channel_param(request.path_params["channel"])
    limit = int_param(request, "limit", PRESENCE_PAGE, 1, 1000)
    cursor = request.query_params.get("cursor") or None
    try:
        after = decode_presence_cursor(cursor) if cursor is not None else None
    except InvalidInput as exc:
        raise bad_request(str(exc)) from None
    caller = caller_of(request.scope)
    with answered_as_problems():
        clients, following = await services.presence.members(
            channel, after, limit, api_key=caller.api_key, token=caller.token
        )
    return json_response({"channel": channel, "clients": clients, "next": following})


async def channel_presence_stats(request: Request) -> Response:
    services = services_of(request)
    channel = channel_param(request.path_params["channel"])
    caller = caller_of(request.scope)
    with answered_as_problems():
        stats = await services.presence.stats(channel, api_key=caller.api_key, token=caller.token)
    return json_response({"channel": channel, "clients": stats.clients, "users": stats.users})


routes = [
    GuardedRoute(
        "/channels/{channel}/presence", channel_presence, methods=["GET"], access=channel_read()
    ),
    GuardedRoute(
        "/channels/{channel}/presence/stats",
        channel_presence_stats,
        methods=["GET"],
        access=channel_read(),
    ),
]
