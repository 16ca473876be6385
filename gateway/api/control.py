"""Control over connections (server API, docs/control.md): disconnect a user on every gateway,
unsubscribe a user from a channel, revoke a token by its `jti`.

Thin: the command goes to every gateway process through `gateway.control.ControlService`; the
answer says how many connections were acted on and how many processes answered.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response

from gateway.api.access import SERVER_ONLY, GuardedRoute
from gateway.api.bodies import DisconnectRequest, RevokeRequest, UnsubscribeRequest
from gateway.api.requests import channel_param, invalid_fields, read_body
from gateway.api.responses import json_response
from gateway.backends.control import Outcome
from gateway.problems import bad_request
from gateway.services import services_of
from gateway.tokens import CLOCK_SKEW

MAX_SUB = 200


def _sub(request: Request) -> str:
    sub: str = request.path_params["sub"]
    if not 0 < len(sub) <= MAX_SUB:
        raise bad_request(f"a user's `sub` is 1-{MAX_SUB} characters")
    return sub


def _outcome(outcome: Outcome) -> dict[str, object]:
    return {
        "connections": outcome.connections,
        "gateways": outcome.processes,
        "complete": outcome.complete,
    }


async def disconnect_user(request: Request) -> Response:
    services = services_of(request)
    sub = _sub(request)
    body = await read_body(request, DisconnectRequest)
    outcome = await services.control.disconnect_user(sub, body.reason, reconnect=body.reconnect)
    return json_response({"user": sub, **_outcome(outcome)})


async def unsubscribe_user(request: Request) -> Response:
    services = services_of(request)
    sub = _sub(request)
    body = await read_body(request, UnsubscribeRequest)
    channel = channel_param(body.channel)
    outcome = await services.control.unsubscribe_user(sub, channel, body.reason)
    return json_response({"user": sub, "channel": channel, **_outcome(outcome)})


async def revoke_token(request: Request) -> Response:
    services = services_of(request)
    body = await read_body(request, RevokeRequest)
    now = time.time()
    longest = now + services.settings.max_token_ttl + CLOCK_SKEW
    exp = body.exp if body.exp is not None else int(longest)
    if exp > longest:
        raise invalid_fields(
            [("exp", "no token accepted here lives that long (GATEWAY_MAX_TOKEN_TTL)")]
        )
    if exp <= now:  # already expired: refused as such, nothing to keep
        return json_response(
            {"jti": body.jti, "exp": exp, "connections": 0, "gateways": 0, "complete": True}
        )
    outcome = await services.control.revoke(body.jti, exp)
    return json_response({"jti": body.jti, "exp": exp, **_outcome(outcome)})


routes = [
    GuardedRoute("/users/{sub}/disconnect", disconnect_user, methods=["POST"], access=SERVER_ONLY),
    GuardedRoute(
        "/users/{sub}/unsubscribe", unsubscribe_user, methods=["POST"], access=SERVER_ONLY
    ),
    GuardedRoute("/tokens/revoke", revoke_token, methods=["POST"], access=SERVER_ONLY),
]
