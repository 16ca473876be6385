"""`Idempotency-Key` (IETF draft-ietf-httpapi-idempotency-key-header) for job submission.

The first request with a key claims it in the backend (Redis `SET NX`, so every gateway process
sees the claim) and stores its response when done; a retry with the same key and the same body
gets that response again, a retry with another body gets `422`, and a retry while the first is
still being processed gets `409`. A claim whose request died is released after
`IN_FLIGHT_TTL` seconds, so a crashed gateway does not lock a key for a day.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.api.guards import caller_of
from gateway.errors import BackendUnavailable
from gateway.problems import Problem, bad_request
from gateway.services import services_of

IN_FLIGHT_TTL = 60
"""Seconds a claimed key stays claimed without a stored response."""

REPLAYED_HEADERS = ("location", "content-type")


def idempotency_key_of(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    key = key.strip()
    if key.startswith('"') and key.endswith('"') and len(key) >= 2:
        key = key[1:-1]  # the draft defines the header as a Structured Field string
    if not 1 <= len(key) <= 255 or not key.isascii() or not key.isprintable():
        raise bad_request("Idempotency-Key must be 1-255 printable ASCII characters")
    return key


async def idempotent(request: Request, produce: Callable[[], Awaitable[Response]]) -> Response:
    """Run `produce` once per key and body; answer retries from the stored response."""
    key = idempotency_key_of(request)
    if key is None:
        return await produce()
    services = services_of(request)
    backend = services.backend
    api_key = caller_of(request.scope).api_key
    if api_key:  # one client's key never answers with another client's response
        key = hashlib.sha256(api_key.encode()).hexdigest()[:16] + ":" + key
    body = await request.body()
    fingerprint = hashlib.sha256(
        request.method.encode() + b" " + request.url.path.encode() + b"\n" + body
    ).hexdigest()
    claim = orjson.dumps({"fingerprint": fingerprint, "state": "processing"})
    ttl = services.settings.idempotency_ttl
    stored = await backend.idempotency.begin(key, claim, min(IN_FLIGHT_TTL, ttl))
    if stored is not None:
        return replay(orjson.loads(stored), fingerprint)
    try:
        response = await produce()
    except BaseException:
        with contextlib.suppress(BackendUnavailable):
            await backend.idempotency.abandon(key)
        raise
    if response.status_code >= 400:
        await backend.idempotency.abandon(key)
        return response
    record = {
        "fingerprint": fingerprint,
        "state": "done",
        "status": response.status_code,
        "headers": {k: v for k, v in response.headers.items() if k in REPLAYED_HEADERS},
        "body": base64.b64encode(bytes(response.body)).decode(),
    }
    await backend.idempotency.finish(key, orjson.dumps(record), ttl)
    return response


def replay(stored: dict[str, Any], fingerprint: str) -> Response:
    if stored.get("fingerprint") != fingerprint:
        raise Problem(
            422,
            "Unprocessable Content",
            "this Idempotency-Key was already used with a different request body",
            code="idempotency-key-reused",
        )
    if stored.get("state") != "done":
        raise Problem(
            409,
            "Conflict",
            "a request with this Idempotency-Key is still being processed; retry shortly",
            code="idempotency-key-in-flight",
            headers={"Retry-After": "1"},
        )
    return Response(
        base64.b64decode(stored["body"]),
        status_code=int(stored["status"]),
        headers={**stored["headers"], "Idempotent-Replayed": "true"},
    )
