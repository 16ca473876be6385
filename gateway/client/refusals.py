"""The gateway's refusals as exceptions: problem+json answers and `error` frames, one mapping.

Both carry a code word; the exception class follows from the HTTP status, or for a frame from
its code (docs/websocket.md lists them), so a caller catches `RequestForbidden` whether the
refusal came over HTTP or WebSocket.
"""

from __future__ import annotations

from typing import Any, Final

import httpx

from gateway.errors import (
    ClientError,
    Conflict,
    GatewayUnavailable,
    NotFound,
    RequestForbidden,
    RequestInvalid,
    RequestRateLimited,
)

FORBIDDEN_CODES: Final = frozenset(
    {"forbidden", "token_required", "invalid_token", "token_expired"}
)
RETRY_CODES: Final = frozenset({"unavailable"})
"""`error` frame codes after which the same op may succeed later: resent, never raised."""


def refusal_of_response(response: httpx.Response, action: str) -> ClientError:
    """The exception for an HTTP answer of 400 or more; `action` says what was attempted."""
    status = response.status_code
    body = _json_object(response)
    code = str(body.get("type", "")).rpartition("/")[2] or None
    detail = str(body.get("detail") or body.get("title") or response.text[:500])
    message = f"{action}: {status} {body.get('title', response.reason_phrase)}: {detail}"
    if status == 429:
        retry_after = _seconds(response.headers.get("Retry-After"))
        return RequestRateLimited(message, retry_after=retry_after, status=status, code=code)
    cls: type[ClientError]
    if status in (401, 403):
        cls = RequestForbidden
    elif status == 404:
        cls = NotFound
    elif status == 409:
        cls = Conflict
    elif status >= 500:
        cls = GatewayUnavailable
    elif status in (400, 413, 422):
        cls = RequestInvalid
    else:
        cls = ClientError
    return cls(message, status=status, code=code)


def refusal_of_frame(frame: dict[str, Any], action: str) -> ClientError:
    """The exception for an `error` frame that answered an op."""
    code = str(frame.get("code", "error"))
    message = f"{action}: {code}: {frame.get('message', '')}"
    if code == "rate_limited":
        retry_after = frame.get("retry_after")
        seconds = float(retry_after) if isinstance(retry_after, int | float) else 1.0
        return RequestRateLimited(message, retry_after=seconds, code=code)
    if code in FORBIDDEN_CODES:
        return RequestForbidden(message, code=code)
    if code in RETRY_CODES:
        return GatewayUnavailable(message, code=code)
    return RequestInvalid(message, code=code)


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _seconds(header: str | None) -> float:
    try:
        return max(0.0, float(header)) if header else 1.0
    except ValueError:
        return 1.0
