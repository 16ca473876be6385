"""`POST /tokens`: mint channel tokens for browsers (API key required, see `guards`).

Backends may just as well mint tokens themselves with any JWT library and `GATEWAY_SECRET`;
this route is for services that would rather not hold the secret.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.api.access import SERVER_ONLY, GuardedRoute
from gateway.api.jobs import json_response
from gateway.api.requests import read_json_object
from gateway.errors import InvalidChannel
from gateway.events import validate_channel
from gateway.problems import unprocessable
from gateway.services import Services, services_of
from gateway.tokens import parse_grants


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
    body = await read_json_object(request)
    sub = body.get("sub")
    if not isinstance(sub, str) or not 0 < len(sub) <= 200:
        raise unprocessable("'sub' must be a 1-200 character string naming the subject")
    try:
        grants = parse_grants(body.get("channels"))
    except ValueError as exc:
        raise unprocessable(str(exc)) from None
    if not grants:
        raise unprocessable("'channels' must grant at least one channel or pattern")
    if len(grants) > 100:
        raise unprocessable("at most 100 entries in 'channels'")
    for name in grants:
        _check_channel_key(services, name)
    ttl: Any = body.get("ttl", services.settings.token_ttl)
    limit = services.settings.max_token_ttl
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= limit:
        raise unprocessable(f"'ttl' must be whole seconds between 1 and {limit}")
    token = services.policy.signer.mint(sub, {k: sorted(v) for k, v in grants.items()}, ttl)
    return json_response(
        {
            "token": token,
            "sub": sub,
            "channels": {k: sorted(v) for k, v in grants.items()},
            "expires_at": int(time.time()) + ttl,
        },
        201,
    )


routes = [GuardedRoute("/tokens", mint_token, methods=["POST"], access=SERVER_ONLY)]
