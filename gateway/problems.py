"""RFC 9457 problem details: the one shape every HTTP error of the gateway takes.

Every problem carries a `type` URI that the gateway itself serves (`/problems/<code>`, a public
route in `gateway.api.problem_pages`) with a human explanation, so a client that meets an
unfamiliar error can look it up where the error came from. `PROBLEM_TYPES` is the one table of
codes: their status, title and explanation; the pages and the docs' list are made from it, and a
test requires every code the gateway can answer with to be in it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import (
    EventTooLarge,
    Forbidden,
    GatewayError,
    InvalidChannel,
    InvalidEventId,
    InvalidEventType,
    InvalidInput,
    InvalidToken,
    RateLimited,
    Unavailable,
)
from gateway.limits import retry_after_header

log = logging.getLogger("gateway")

PROBLEM_TYPE_BASE: Final = "/problems/"
"""Relative to the gateway that answered (RFC 9457 §3.1.1): it serves the explanations itself,
wherever it is deployed, so no host name is baked in."""


@dataclass(frozen=True, slots=True)
class ProblemType:
    """What a problem code means: its HTTP status, title, and what a client should do."""

    status: int | None
    """None: the code is used with several statuses."""
    title: str
    explanation: str


PROBLEM_TYPES: Final[dict[str, ProblemType]] = {
    # The first code listed for a status is the one a bare status maps to.
    "bad-request": ProblemType(
        400,
        "Bad Request",
        "The request is malformed: a query parameter, header or JSON body the gateway cannot "
        "use, such as a `limit` out of range, a malformed `since` or `Last-Event-ID`, an invalid "
        "channel name or a body that is not a JSON object. `detail` says which. Sending the same "
        "request again fails the same way.",
    ),
    "host-not-allowed": ProblemType(
        400,
        "Bad Request",
        "The request's `Host` is not a name this gateway serves. Without "
        "`GATEWAY_ALLOWED_HOSTS`, a gateway in dev mode answers only to names of its own "
        "machine (`localhost`, loopback addresses, its bind address), so a page on a DNS name "
        "rebound to 127.0.0.1 cannot reach it. Use one of those names, or list yours in "
        "`GATEWAY_ALLOWED_HOSTS`.",
    ),
    "api_key_required": ProblemType(
        401,
        "Unauthorized",
        "This is a server-side call (submitting or cancelling jobs, listing jobs, minting "
        "tokens) and the gateway has API keys configured. Send one of them as "
        "`Authorization: Bearer <key>` or `X-API-Key: <key>`. Keys belong on servers, never in "
        "a browser page.",
    ),
    "token_required": ProblemType(
        401,
        "Unauthorized",
        "Reading (or publishing to) this channel needs a channel token: a JWT signed with the "
        "gateway's secret that names the channel. Send it as `?token=`, in the `gateway_token` "
        "cookie or as `Authorization: Bearer <token>`. `POST /jobs` returns a token for the "
        "job's own channel; your backend can mint others with `POST /tokens`.",
    ),
    "invalid_token": ProblemType(
        401,
        "Unauthorized",
        "The token is not one this gateway accepts: malformed, signed with another secret, or "
        "with claims it cannot use. Tokens signed while no `GATEWAY_SECRET` was configured only "
        "verify in the process that made them, and only until it restarts.",
    ),
    "token_expired": ProblemType(
        401,
        "Unauthorized",
        "The token's `exp` has passed. Get a new token and reconnect; resume with the last "
        "event id you saw (`Last-Event-ID` or `since`) so nothing is missed.",
    ),
    "token_revoked": ProblemType(
        401,
        "Unauthorized",
        "The token's `jti` was revoked (`POST /tokens/revoke`); it is refused until it "
        "expires. Get a new token; connections that held it were closed with 4001.",
    ),
    "forbidden": ProblemType(
        403,
        "Forbidden",
        "The credentials are valid but do not allow this: the token has no right on this "
        "channel, the channel's namespace is unknown or closed to clients (`job:` channels are "
        "written by workers only), or a `user:<id>` channel belongs to another subject.",
    ),
    "origin-not-allowed": ProblemType(
        403,
        "Forbidden",
        "A request that changes something came from a page on an origin this gateway does not "
        "trust: neither its own origin nor one listed in `GATEWAY_ALLOWED_ORIGINS`. Browsers "
        "name the page's origin, so a foreign page cannot create jobs or publish with a visitor's "
        "cookie. Call from your own origin, or list it.",
    ),
    "not-found": ProblemType(
        404,
        "Not Found",
        "There is nothing at this address: no such route, a job that never existed or whose "
        "record expired after `GATEWAY_JOB_TTL` seconds, or an unknown problem code.",
    ),
    "method-not-allowed": ProblemType(
        405,
        "Method Not Allowed",
        "The route exists but not with this HTTP method; the `Allow` header lists the ones it "
        "takes.",
    ),
    "request-timeout": ProblemType(
        408,
        "Request Timeout",
        "The connection did not send a complete request head within `GATEWAY_HEADER_TIMEOUT` "
        "seconds of opening (or of its previous response), so the gateway closed it: "
        "connections that never become requests would otherwise pile up. Send the whole head "
        "at once.",
    ),
    "conflict": ProblemType(
        409,
        "Conflict",
        "The request does not fit the job's current state: asking for the result of a job that "
        "has not completed, or cancelling one that already ended. `job_status` says where the "
        "job is.",
    ),
    "idempotency-key-in-flight": ProblemType(
        409,
        "Conflict",
        "A request with the same `Idempotency-Key` is still being processed. Retry after "
        "`Retry-After` seconds to get its response.",
    ),
    "content-too-large": ProblemType(
        413,
        "Content Too Large",
        "The request body is larger than `GATEWAY_MAX_BODY` bytes (`max_body` in the problem "
        "says how many). Send less, or put large inputs somewhere the job can read them.",
    ),
    "event-too-large": ProblemType(
        413,
        "Content Too Large",
        "The event's JSON envelope is larger than its namespace allows (`GATEWAY_MAX_EVENT_SIZE`; "
        "`max_event_size` in the problem says how many bytes). Publish less and link to large "
        "data instead: every subscriber and the channel's history would carry the event.",
    ),
    "batch-too-large": ProblemType(
        413,
        "Content Too Large",
        "A batch request (`POST /jobs/batch`, `POST /events/batch`) carries more items than one "
        "batch may (`max_items` in the problem says how many). Split it into several requests.",
    ),
    "unsupported-media-type": ProblemType(
        415,
        "Unsupported Media Type",
        "Request bodies are JSON: send them with `Content-Type: application/json`.",
    ),
    "unprocessable": ProblemType(
        422,
        "Unprocessable Content",
        "The request is well-formed but cannot be carried out: an unknown job type "
        "(`job_types` lists the known ones), job data its handler rejects, a `callback_url` "
        "refused (not http(s), or on a private address), an event `type` that is not a valid "
        "name, or a token request with unknown namespaces or a `ttl` out of range.",
    ),
    "idempotency-key-reused": ProblemType(
        422,
        "Unprocessable Content",
        "This `Idempotency-Key` was already used with a different request body. Use a new key "
        "for a new request; reuse a key only to retry the very same request.",
    ),
    "rate-limited": ProblemType(
        429,
        "Too Many Requests",
        "A limit was reached: job submissions per API key or address (`GATEWAY_SUBMIT_RATE`), "
        "publishes per token (`GATEWAY_PUBLISH_RATE`), or open streaming connections per "
        "address (`GATEWAY_MAX_CONNECTIONS_PER_CLIENT`), or new connections per second per "
        "address (`GATEWAY_CONNECT_RATE`). Wait `Retry-After` seconds.",
    ),
    "too-many-connections": ProblemType(
        429,
        "Too Many Requests",
        "This address already holds as many open TCP connections as the gateway allows one "
        "address (`GATEWAY_MAX_CONNECTIONS_PER_CLIENT` streams plus a small headroom), so the "
        "connection was refused before any request was read. Close idle connections, reuse "
        "keep-alive ones, and retry after `Retry-After` seconds.",
    ),
    "headers-too-large": ProblemType(
        431,
        "Request Header Fields Too Large",
        "The request head (request line, query string and headers) is over 32 KiB.",
    ),
    "internal": ProblemType(
        500,
        "Internal Server Error",
        "The gateway failed while handling the request. The error is in the gateway's log; "
        "nothing about it is sent to clients. Retrying may work if the cause was passing.",
    ),
    "unavailable": ProblemType(
        503,
        "Service Unavailable",
        "The event bus (Redis) cannot be reached right now; the gateway reconnects by itself. "
        "Retry after `Retry-After` seconds. `/readyz` answers 503 for as long as this lasts.",
    ),
    "http-error": ProblemType(
        None,
        "HTTP Error",
        "An HTTP error without a more specific code; `status` and `detail` say what happened.",
    ),
}

_CODE_FOR_STATUS: Final[dict[int | None, str]] = {
    problem.status: code for code, problem in reversed(PROBLEM_TYPES.items())
}


def code_for_status(status: int) -> str:
    """The generic code of a bare HTTP status (one raised without a code of its own)."""
    return _CODE_FOR_STATUS.get(status, "http-error")


def problem_type_uri(code: str) -> str:
    return PROBLEM_TYPE_BASE + code


class Problem(GatewayError):
    """Raise from a route to answer with `application/problem+json`.

    A `GatewayError` like every error the gateway raises on purpose; its `code` is the problem
    code (the `type` URI's last part)."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str = "",
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.code = code or code_for_status(status)
        self.headers = headers or {}
        self.extra = extra

    def to_response(self) -> Response:
        return problem_response(
            self.status, self.title, self.detail, code=self.code, headers=self.headers, **self.extra
        )

    def body(self) -> dict[str, Any]:
        """The problem object itself: what a batch answer holds in place of a refused item."""
        return problem_body(self.status, self.title, self.detail, self.code, **self.extra)


def problem_body(
    status: int, title: str, detail: str = "", code: str | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "type": problem_type_uri(code or code_for_status(status)),
        "title": title,
        "status": status,
        "detail": detail or title,
        **extra,
    }


def problem_response(
    status: int,
    title: str,
    detail: str = "",
    *,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    return Response(
        orjson.dumps(problem_body(status, title, detail, code, **extra)),
        status_code=status,
        media_type="application/problem+json",
        headers=headers,
    )


def bad_request(detail: str, **extra: Any) -> Problem:
    return Problem(400, "Bad Request", detail, code="bad-request", **extra)


def not_found(detail: str) -> Problem:
    return Problem(404, "Not Found", detail, code="not-found")


def unprocessable(detail: str, **extra: Any) -> Problem:
    return Problem(422, "Unprocessable Content", detail, code="unprocessable", **extra)


def conflict(detail: str, **extra: Any) -> Problem:
    return Problem(409, "Conflict", detail, code="conflict", **extra)


def problem_for(exc: GatewayError) -> Problem:
    """The problem that answers an error of `gateway.errors` over HTTP: the one mapping.

    Errors without an HTTP meaning of their own are a failure of the gateway (500).
    """
    if isinstance(exc, Forbidden):
        title = "Unauthorized" if exc.status == 401 else "Forbidden"
        headers = {"WWW-Authenticate": 'Bearer realm="gateway"'} if exc.status == 401 else None
        return Problem(exc.status, title, str(exc), code=exc.code, headers=headers)
    if isinstance(exc, RateLimited):
        headers = {"Retry-After": retry_after_header(exc.retry_after)}
        return Problem(429, "Too Many Requests", str(exc), code="rate-limited", headers=headers)
    if isinstance(exc, EventTooLarge):
        return Problem(
            413, "Content Too Large", str(exc), code="event-too-large", max_event_size=exc.limit
        )
    if isinstance(exc, InvalidEventType):
        return unprocessable(f"'{exc.field}' {exc.rule}")
    if isinstance(exc, InvalidChannel | InvalidEventId):
        return bad_request(str(exc))
    if isinstance(exc, InvalidToken):
        return problem_for(Forbidden(str(exc), exc.code))
    if isinstance(exc, InvalidInput):
        return unprocessable(str(exc))
    if isinstance(exc, Unavailable):
        return Problem(
            503,
            "Service Unavailable",
            "the event bus is unavailable; try again shortly",
            code="unavailable",
            headers={"Retry-After": "1"},
        )
    return Problem(
        500, "Internal Server Error", "the gateway failed; the error is logged", code="internal"
    )


async def handle_gateway_error(request: Request, exc: Exception) -> Response:
    """Any `GatewayError` a route lets through, answered by `problem_for`."""
    assert isinstance(exc, GatewayError)
    problem = problem_for(exc)
    if problem.status == 503:
        log.warning("backend unavailable: %s", exc)
    elif problem.status >= 500:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return problem.to_response()


async def handle_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return exc.to_response()


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = code_for_status(exc.status_code)
    return problem_response(
        exc.status_code,
        PROBLEM_TYPES[code].title,
        str(exc.detail),
        headers=dict(exc.headers or {}),
        code=code,
    )


async def handle_server_error(request: Request, exc: Exception) -> Response:
    return problem_response(
        500, "Internal Server Error", "the gateway failed; the error is logged", code="internal"
    )
