"""`POST /tokens`: mint channel tokens for browsers (API key required, see `guards`).

Backends may just as well mint tokens themselves with any JWT library and `GATEWAY_SECRET`;
this route is for services that would rather not hold the secret.
"""

from __future__ import annotations

import secrets
import time

from starlette.requests import Request
from starlette.responses import Response

from gateway.api.access import SERVER_ONLY, GuardedRoute
from gateway.api.bodies import TokenRequest
from gateway.api.requests import invalid_fields, read_body
from gateway.api.responses import json_response
from gateway.errors import InvalidChannel
from gateway.events import validate_channel
from gateway.problems import unprocessable
from gateway.services import Services, services_of


def _check_channel_key(services: Services, name: str) -> None:
    namespace, sep, rest = name.partition(":")
    if rest == "*" and sep:
        if namespace not in services.policy.namespaces:
            raise unprocessable(f"unknown namespace in pattern {name[:60]!r}")
        return
    try:
        validate_channel(name)
    except InvalidChannel as exc:
        raise unprocessable(f"{name[:60]!r}: {exc}") from None
    if namespace not in services.policy.namespaces:
        raise unprocessable(f"unknown namespace in {name[:60]!r}")


async def mint_token(request: Request) -> Response:
    services = services_of(request)
    body = await read_body(request, TokenRequest)
    for name in body.channels:
        _check_channel_key(services, name)
    ttl = services.settings.token_ttl if body.ttl is None else body.ttl
    limit = services.settings.max_token_ttl
    if not 1 <= ttl <= limit:
        raise invalid_fields([("ttl", f"must be whole seconds between 1 and {limit}")])
    for name in body.subscriptions:
        _check_channel_key(services, name)
    channels = {name: sorted(set(rights)) for name, rights in body.channels.items()}
    subscriptions = list(dict.fromkeys(body.subscriptions))
    jti = secrets.token_urlsafe(12)
    token = services.policy.signer.mint(
        body.sub, channels, ttl, subscriptions=subscriptions, jti=jti
    )
    grant = {
        "token": token,
        "sub": body.sub,
        "channels": channels,
        "expires_at": int(time.time()) + ttl,
        "jti": jti,
    }
    if subscriptions:
        grant["subscriptions"] = subscriptions
    return json_response(grant, 201)


routes = [GuardedRoute("/tokens", mint_token, methods=["POST"], access=SERVER_ONLY)]
