"""ASGI middleware that decides, before any route runs, whether a request may proceed.

One table of who may call what, instead of a check sprinkled into every route (and into the
seed-compatible aliases, which are easy to forget): server-only routes need an API key, reads of
a channel need a token with `subscribe` (or an API key), HTTP publishes need an API key or a
token with `publish`. It also enforces the request body limit, the per-key submission rate,
streaming connections per client address, and the WebSocket Origin check.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from starlette.datastructures import Headers, QueryParams
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.auth import Forbidden, bearer_of, token_of
from gateway.events import InvalidChannel, validate_channel
from gateway.jobs.model import load_job
from gateway.limits import retry_after_header
from gateway.problems import Problem, problem_response
from gateway.services import Services
from gateway.tokens import ChannelToken

log = logging.getLogger("gateway.auth")

SERVER_ONLY: Final = re.compile(r"^/(?:jobs|submit-job|submitTask|tokens|jobs/[^/]+/cancel)$")
SERVER_READS: Final = re.compile(r"^/jobs$")
"""`GET /jobs` lists every job: with API keys configured, only the server may see that."""
SUBMISSIONS: Final = re.compile(r"^/(?:jobs|submit-job|submitTask)$")
JOB_READS: Final = re.compile(
    r"^/(?:jobs/(?P<a>[^/]+)(?:/result|/events)?|taskStatus/(?P<b>[^/]+)|results/(?P<c>[^/]+))$"
)
JOB_EVENTS: Final = re.compile(r"^/jobs/[^/]+/events$")
CHANNEL_EVENTS: Final = re.compile(r"^/channels/(?P<channel>[^/]+)/events$")
STREAMS: Final = re.compile(r"^/(?:events|jobs/[^/]+/events)$")


@dataclass(slots=True)
class Caller:
    """What a request proved about itself; kept in `request.state.caller` for the routes."""

    api_key: str | None = None
    token: ChannelToken | None = None

    @property
    def expires_at(self) -> float | None:
        """When the subscription this request opened must end (its token's expiry)."""
        return self.token.exp if self.token is not None else None


def caller_of(scope: Scope) -> Caller:
    caller = scope.get("state", {}).get("caller")
    return caller if isinstance(caller, Caller) else Caller()


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _refuse(exc: Forbidden) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="gateway"'} if exc.status == 401 else None
    title = "Unauthorized" if exc.status == 401 else "Forbidden"
    return problem_response(exc.status, title, str(exc), code=exc.code, headers=headers)


def _too_many(detail: str, wait: float) -> Response:
    return problem_response(
        429,
        "Too Many Requests",
        detail,
        code="rate-limited",
        headers={"Retry-After": retry_after_header(wait)},
    )


MAX_HEADER_BYTES: Final = 32 * 1024
"""Request heads larger than this get 431: the HTTP parser alone would accept far more."""


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413: by `Content-Length` before reading,
    and by counting as the body streams in (chunked uploads have no length). Oversized request
    heads get 431 first."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in {"http", "websocket"}:
            await self.app(scope, receive, send)
            return
        head = sum(len(k) + len(v) + 4 for k, v in scope["headers"])
        head += len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        if head > MAX_HEADER_BYTES:
            if scope["type"] == "websocket":
                await _refuse_websocket(receive, send, 1009, "request headers too large")
            else:
                await problem_response(
                    431,
                    "Request Header Fields Too Large",
                    f"the request head is over {MAX_HEADER_BYTES} bytes",
                    code="headers-too-large",
                )(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None:
            if not length.isdigit():
                await problem_response(
                    400, "Bad Request", "Content-Length must be a number", code="bad-request"
                )(scope, receive, send)
                return
            if int(length) > self.limit:
                await self._too_large()(scope, receive, send)
                return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise self._problem()
            return message

        await self.app(scope, counting_receive, send)

    def _problem(self) -> Problem:
        return Problem(
            413,
            "Content Too Large",
            f"the request body is over {self.limit} bytes (GATEWAY_MAX_BODY)",
            code="content-too-large",
            max_body=self.limit,
        )

    def _too_large(self) -> Response:
        return self._problem().to_response()


class AccessGuard:
    """API keys, channel authorization for HTTP/SSE, submission rate, connection counts, and the
    WebSocket Origin check; see the module docstring."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services
        self.allowed_origins = frozenset(services.settings.allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        keys = self.services.api_keys
        api_key = keys.match(bearer_of(headers)) or keys.match(headers.get("x-api-key"))
        caller = Caller(api_key=api_key)
        scope.setdefault("state", {})["caller"] = caller
        refusal = await self._check_http(scope, headers, caller)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        if scope["method"] in {"GET", "HEAD"} and STREAMS.match(scope["path"]):
            await self._counted(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _check_http(self, scope: Scope, headers: Headers, caller: Caller) -> Response | None:
        # HEAD runs the GET route (headers such as ETag included), so it is authorized as one.
        method = "GET" if scope["method"] == "HEAD" else scope["method"]
        path = scope["path"]
        keys = self.services.api_keys
        if method == "POST" and SERVER_ONLY.match(path):
            if keys.enabled and caller.api_key is None:
                needed = "this call needs an API key: Authorization: Bearer <key>"
                return _refuse(Forbidden(needed, "api_key_required"))
            if SUBMISSIONS.match(path):
                who = caller.api_key or client_address(scope)
                wait = self.services.limits.submit.take("submit:" + who)
                if wait > 0:
                    return _too_many("too many job submissions; slow down", wait)
            return None
        if method == "GET" and SERVER_READS.match(path) and keys.enabled and not caller.api_key:
            return _refuse(Forbidden("listing jobs needs an API key", "api_key_required"))
        channels = self._read_channels(method, path, scope)
        if channels:
            return await self._check_read(scope, path, channels, caller)
        match = CHANNEL_EVENTS.match(path)
        if method == "POST" and match is not None:
            return self._check_publish(scope, match["channel"], caller)
        return None

    def _read_channels(self, method: str, path: str, scope: Scope) -> list[str]:
        if method != "GET":
            return []
        match = JOB_READS.match(path)
        if match is not None:
            job_id = match["a"] or match["b"] or match["c"]
            return _valid_channels([f"job:{job_id}"])
        match = CHANNEL_EVENTS.match(path)
        if match is not None:
            return _valid_channels([match["channel"]])
        if path == "/events":
            return _valid_channels(QueryParams(scope.get("query_string", b"")).getlist("channel"))
        return []

    async def _check_read(
        self, scope: Scope, path: str, channels: list[str], caller: Caller
    ) -> Response | None:
        if caller.api_key is not None:
            return None
        policy = self.services.policy
        try:
            if not policy.open_mode:
                caller.token = policy.verify(token_of(scope))
            for channel in channels:
                policy.check_subscribe(channel, caller.token)
        except Forbidden as exc:
            if exc.code == "token_expired" and JOB_EVENTS.match(path):
                # EventSource retries after an error; a 204 makes it stop for good once the
                # job it follows has ended, so an old tab does not retry forever.
                record = await load_job(self.services.backend, channels[0].partition(":")[2])
                if record is None or record.terminal:
                    return Response(status_code=204)
            return _refuse(exc)
        return None

    def _check_publish(self, scope: Scope, raw_channel: str, caller: Caller) -> Response | None:
        keys = self.services.api_keys
        if caller.api_key is not None or not keys.enabled:
            return None
        try:
            channel = validate_channel(raw_channel)
        except InvalidChannel:
            return None  # the route answers 400
        policy = self.services.policy
        try:
            caller.token = policy.verify(token_of(scope))
            if caller.token is None:
                raise Forbidden(
                    "publishing needs an API key or a channel token with 'publish'",
                    "token_required",
                )
            policy.check_client_publish(channel, caller.token)
        except Forbidden as exc:
            return _refuse(exc)
        wait = self.services.limits.publish.take("token:" + caller.token.raw)
        if wait > 0:
            return _too_many("too many publishes with this token; slow down", wait)
        return None

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        counter = self.services.limits.connections
        address = client_address(scope)
        if not counter.acquire(address):
            limit = self.services.settings.max_connections_per_client
            await _too_many(f"at most {limit} streaming connections per client address", 5)(
                scope, receive, send
            )
            return
        try:
            await self.app(scope, receive, send)
        finally:
            counter.release(address)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is not None and not self._origin_allowed(origin, headers.get("host", "")):
            log.info("refused WebSocket from origin %r", origin[:200])
            await _refuse_websocket(receive, send, 1008, "origin not allowed")
            return
        counter = self.services.limits.connections
        address = client_address(scope)
        if not counter.acquire(address):
            await _refuse_websocket(receive, send, 1013, "too many connections from this address")
            return
        try:
            await self.app(scope, receive, send)
        finally:
            counter.release(address)

    def _origin_allowed(self, origin: str, host: str) -> bool:
        """Allowed origins from configuration; by default only the page's own origin (the Origin
        header's host:port equals the Host header), which stops cross-site WebSocket hijacking."""
        if "*" in self.allowed_origins or origin in self.allowed_origins:
            return True
        try:
            return urlsplit(origin).netloc.lower() == host.lower() and bool(host)
        except ValueError:
            return False


def _valid_channels(names: Iterable[str]) -> list[str]:
    """The valid channel names; invalid ones are left for the route to answer with 400."""
    valid: list[str] = []
    for name in names:
        try:
            valid.append(validate_channel(name))
        except InvalidChannel:
            continue
    return valid


async def _refuse_websocket(receive: Receive, send: Send, code: int, reason: str) -> None:
    """Complete the handshake only to close with a code and reason the client can read."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": code, "reason": reason})
