"""ASGI middleware that decides, before any route runs, whether a request may proceed.

Access is declared on each route (`gateway.api.access`); the guard finds the route a request is
for and applies that declaration, and refuses requests to a route that declares none (deny by
default). Path parameters the decision depends on (job id, channel) are validated here, so a
malformed one is refused rather than skipping the check.

Before that, for every request: the `Host` must be one this gateway serves (in dev mode only
names of this machine, so a DNS-rebinding page cannot reach it); state-changing requests must
come from an allowed `Origin` and carry their body as `application/json` (a cross-site
`fetch(..., {mode: 'no-cors'})` can send neither); and the token cookie counts only for
requests from the gateway's own origin or an explicitly listed one. The guard also enforces the
request body limit, the per-key submission rate and streaming connections per client address.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from starlette._utils import get_route_path
from starlette.datastructures import Headers, QueryParams
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api.access import Access, Rule, access_of
from gateway.api.requests import header_map, is_json_media_type
from gateway.auth import COOKIE_TRUSTED, bearer_of, token_of
from gateway.errors import Forbidden, InvalidChannel, RateLimited
from gateway.events import validate_channel
from gateway.jobs.model import load_job
from gateway.limits import retry_after_header
from gateway.problems import Problem, bad_request, not_found, problem_for, problem_response
from gateway.protocol.v1 import SUBPROTOCOL
from gateway.services import Services
from gateway.settings import Settings
from gateway.tokens import ChannelToken
from gateway.vocabulary import CloseCode

log = logging.getLogger("gateway.auth")

UNSAFE_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DEFAULT_PORTS: Final = {"http": 80, "https": 443}
HOST_RE: Final = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(\d{1,5}))?$")
MAX_JOB_ID: Final = 64
HOSTS_REMEMBERED: Final = 1024
MATCHED_ROUTE: Final = "gateway.matched_route"
"""Where the guard leaves the route it found (and its child scope) for `MatchedRouter`."""


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
    return problem_for(exc).to_response()


def too_many(detail: str, wait: float) -> Problem:
    """429 with `Retry-After`: a rate limit or a connection count refused the request."""
    return Problem(
        429,
        "Too Many Requests",
        detail,
        code="rate-limited",
        headers={"Retry-After": retry_after_header(wait)},
    )


def _too_many(detail: str, wait: float) -> Response:
    return too_many(detail, wait).to_response()


def submission_key(scope: Scope, caller: Caller) -> str:
    """Whose submission rate a request counts against: its API key, else its address."""
    return "submit:" + (caller.api_key or client_address(scope))


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
                await _refuse_websocket(
                    scope, receive, send, CloseCode.TOO_BIG, "request headers too large"
                )
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
        length = header_map(scope).get("content-length")
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


Origin = tuple[str, str, int]
"""An origin as compared: scheme, host name (lower case, IPv6 without brackets), port."""


def parse_origin(value: str) -> Origin | None:
    """The scheme, host and port of an `Origin` value or URL (default port filled in); None for
    `null` and anything that is not an http(s) origin."""
    try:
        parts = urlsplit(value.strip())
        scheme, host, port = parts.scheme.lower(), parts.hostname, parts.port
    except ValueError:
        return None
    if scheme not in DEFAULT_PORTS or not host:
        return None
    return scheme, host.rstrip("."), port or DEFAULT_PORTS[scheme]


def parse_host(value: str | None) -> tuple[str, int | None] | None:
    """The name and port of a `Host` header; None when it is not a plain host[:port]."""
    match = HOST_RE.match(value or "")
    if match is None:
        return None
    name = match.group(1).lower().strip("[]").rstrip(".")
    return name, int(match.group(2)) if match.group(2) else None


def request_origin(scope: Scope, host: str | None) -> Origin | None:
    """The origin this request was addressed to: its scheme (ws is http, wss is https) and the
    `Host` it names."""
    parsed = parse_host(host)
    if parsed is None:
        return None
    raw = str(scope.get("scheme", "http"))
    scheme = {"ws": "http", "wss": "https"}.get(raw, raw)
    if scheme not in DEFAULT_PORTS:
        return None
    return scheme, parsed[0], parsed[1] or DEFAULT_PORTS[scheme]


class OriginPolicy:
    """`GATEWAY_ALLOWED_ORIGINS`, compared by scheme, host and port."""

    def __init__(self, allowed: Iterable[str]) -> None:
        allowed = tuple(allowed)
        self.any = "*" in allowed
        self.listed = frozenset(
            origin for origin in (parse_origin(value) for value in allowed) if origin is not None
        )

    def trusted(self, origin: str, scope: Scope, host: str | None) -> bool:
        """The page's own origin, or one listed by name: its requests may use the cookie."""
        parsed = parse_origin(origin)
        if parsed is None:
            return False
        return parsed in self.listed or parsed == request_origin(scope, host)

    def allowed(self, origin: str, scope: Scope, host: str | None) -> bool:
        """Trusted, or any origin under `*` (which never makes the cookie count)."""
        return self.any or self.trusted(origin, scope, host)


class HostPolicy:
    """Which `Host` names this gateway answers to.

    Configured (`GATEWAY_ALLOWED_HOSTS`): those names, `.example.com` for it and its subdomains,
    `*` for any. Otherwise, in dev mode, only names of this machine: loopback addresses,
    `localhost` and `*.localhost`, and the bind address. A page on a rebound DNS name (the
    attacker's name resolving to 127.0.0.1) sends its own name as `Host` and is refused. In
    secure mode the credentials protect the gateway, and any `Host` is accepted.
    """

    def __init__(self, settings: Settings) -> None:
        self.patterns: tuple[str, ...] | None
        if settings.allowed_hosts:
            self.patterns = tuple(_host_pattern(value) for value in settings.allowed_hosts)
        elif settings.dev_mode:
            self.patterns = (".localhost", _host_pattern(settings.host))
        else:
            self.patterns = None
        self.loopback = not settings.allowed_hosts
        self._decided: dict[str, bool] = {}
        """Decisions by `Host` value: a client sends the same one on every request."""

    def allows(self, host: str | None) -> bool:
        if self.patterns is None or "*" in self.patterns or host is None:
            return True  # no Host at all (HTTP/1.0) is no browser, so no rebinding page
        known = self._decided.get(host)
        if known is None:
            known = self._allows(host)
            if len(self._decided) >= HOSTS_REMEMBERED:
                self._decided.clear()
            self._decided[host] = known
        return known

    def _allows(self, host: str) -> bool:
        assert self.patterns is not None
        parsed = parse_host(host)
        if parsed is None:
            return False
        name = parsed[0]
        if self.loopback and _is_loopback(name):
            return True
        for pattern in self.patterns:
            if name == pattern:
                return True
            if pattern.startswith(".") and (name == pattern[1:] or name.endswith(pattern)):
                return True
        return False


def _host_pattern(value: str) -> str:
    """`*.example.com` and `.example.com` alike; names lower case, IPv6 without brackets."""
    value = value.lower().strip("[]").rstrip(".")
    return value[1:] if value.startswith("*.") else value


def _is_loopback(name: str) -> bool:
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def valid_job_id(value: Any) -> bool:
    """A job id that can exist: what makes a valid `job:<id>` channel, at most 64 characters."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_JOB_ID:
        return False
    try:
        validate_channel("job:" + value)
    except InvalidChannel:
        return False
    return True


class AccessGuard:
    """Host, Origin and body media type, then each route's declared access; connection counts
    and the submission rate. See the module docstring and `gateway.api.access.Rule`."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services
        self.origins = OriginPolicy(services.settings.allowed_origins)
        self.hosts = HostPolicy(services.settings)
        self._indexed: list[BaseRoute] | None = None
        self._indexed_count = 0
        self._index: dict[str, list[BaseRoute]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in {"http", "websocket"}:
            await self.app(scope, receive, send)
            return
        headers = header_map(scope)
        host = headers.get("host")
        if not self.hosts.allows(host):
            log.info("refused a request for host %r", (host or "")[:200])
            detail = "this gateway does not serve that host name (GATEWAY_ALLOWED_HOSTS)"
            if kind == "websocket":
                await _refuse_websocket(scope, receive, send, CloseCode.POLICY, "host not allowed")
            else:
                await problem_response(400, "Bad Request", detail, code="host-not-allowed")(
                    scope, receive, send
                )
            return
        origin = headers.get("origin")
        scope[COOKIE_TRUSTED] = origin is None or self.origins.trusted(origin, scope, host)
        found = self._route(scope)
        if kind == "websocket":
            await self._websocket(scope, receive, send, Headers(scope=scope), found)
            return
        if found is None:
            await self.app(scope, receive, send)  # no endpoint runs: the router answers 404/405
            return
        route, params = found
        access = access_of(route) if route is not None else None
        if access is None:
            log.error("refused %s %s: the route declares no access", scope["method"], route)
            await _undeclared()(scope, receive, send)
            return
        refusal = self._check_request_shape(scope, headers, origin, host)
        if refusal is None:
            keys = self.services.api_keys
            api_key = keys.match(bearer_of(headers)) or keys.match(headers.get("x-api-key"))
            caller = Caller(api_key=api_key)
            scope.setdefault("state", {})["caller"] = caller
            refusal = await self._check(scope, access, params, caller)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        if access.stream:
            await self._counted(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _route(self, scope: Scope) -> tuple[BaseRoute | None, Mapping[str, Any]] | None:
        """The route the router will run for this request, and its path parameters.

        Read from the application's router at request time (`scope["app"]`), so a route added
        after start-up is not missed. Without a router to ask, the request counts as one for
        an undeclared route (`(None, {})`) and is refused.
        """
        routes = getattr(scope.get("app"), "routes", None)
        if not isinstance(routes, list):
            return None, {}
        candidates = self._candidates(routes, get_route_path(scope))
        # The index only narrows the search: when it finds nothing, every route is asked, so
        # no request can reach a route the guard did not match (and check) first.
        for group in (candidates, routes):
            for route in group:
                match, child = route.matches(scope)
                if match == Match.FULL:
                    scope[MATCHED_ROUTE] = (route, child)
                    return route, child.get("path_params", {})
        return None

    def _candidates(self, routes: list[BaseRoute], path: str) -> list[BaseRoute]:
        """The routes that could match `path`, in the router's order: those whose path starts
        with the same literal segment (`/jobs/...`), and those that start with a parameter.
        Rebuilt when the routes list changes; a request is matched against a few, not all."""
        if self._indexed is not routes or self._indexed_count != len(routes):
            self._index = _index_routes(routes)
            self._indexed, self._indexed_count = routes, len(routes)
        first = path[1:].partition("/")[0]
        found = self._index.get(first)
        return found if found is not None else self._index[""]

    def _check_request_shape(
        self, scope: Scope, headers: Mapping[str, str], origin: str | None, host: str | None
    ) -> Response | None:
        """State-changing requests: from an allowed origin, with a JSON body if any.

        A foreign page can make a browser send a POST without asking (`mode: 'no-cors'`), but
        only with a CORS-safelisted content type (`text/plain`, forms), never
        `application/json`; and the browser always names the page's origin.
        """
        if scope["method"] not in UNSAFE_METHODS:
            return None
        if origin is not None and not self.origins.allowed(origin, scope, host):
            log.info("refused %s from origin %r", scope["method"], origin[:200])
            return problem_response(
                403,
                "Forbidden",
                "requests from this origin may not change anything (GATEWAY_ALLOWED_ORIGINS)",
                code="origin-not-allowed",
            )
        length = headers.get("content-length", "0")
        has_body = not length.isdigit() or int(length) > 0 or "transfer-encoding" in headers
        if has_body and not is_json_media_type(headers.get("content-type")):
            return problem_response(
                415,
                "Unsupported Media Type",
                "send the body as application/json",
                code="unsupported-media-type",
            )
        return None

    async def _check(
        self, scope: Scope, access: Access, params: Mapping[str, Any], caller: Caller
    ) -> Response | None:
        rule = access.rule
        if rule in {Rule.PUBLIC, Rule.WEBSOCKET}:
            return None
        if rule == Rule.SERVER:
            return self._check_server(scope, access, caller)
        if rule == Rule.SERVER_ONLY:
            return self._check_server_only(caller)
        if rule == Rule.JOB_READ:
            job_id = params.get(access.param or "")
            if not valid_job_id(job_id):
                return not_found(f"no job {str(job_id)[:MAX_JOB_ID]!r}").to_response()
            return await self._check_read(scope, access, [f"job:{job_id}"], caller)
        if rule == Rule.CHANNEL_READ:
            param = access.param or "channel"
            if param in params:
                names = [params[param]]
            else:
                names = QueryParams(scope.get("query_string", b"")).getlist(param)
            if not names and access.stream:
                # `/events` alone: the token's server-side subscriptions (docs/control.md).
                try:
                    token = self.services.channels.connection_token(
                        token_of(scope), api_key=caller.api_key
                    )
                except Forbidden as exc:
                    return _refuse(exc)
                names = list(self.services.policy.server_subscriptions(token))
            if not names:
                return bad_request(f"name at least one channel: ?{param}=room:lobby").to_response()
            try:
                channels = list(dict.fromkeys(validate_channel(name) for name in names))
            except InvalidChannel as exc:
                return bad_request(str(exc)).to_response()
            return await self._check_read(scope, access, channels, caller)
        if rule == Rule.CHANNEL_PUBLISH:
            try:
                channel = validate_channel(params.get(access.param or "channel", ""))
            except InvalidChannel as exc:
                return bad_request(str(exc)).to_response()
            return self._check_publish(scope, channel, caller)
        log.error("refused: unknown access rule %r", rule)
        return _undeclared()

    def _check_server(self, scope: Scope, access: Access, caller: Caller) -> Response | None:
        if self.services.api_keys.enabled and caller.api_key is None:
            needed = "this call needs an API key: Authorization: Bearer <key>"
            return _refuse(Forbidden(needed, "api_key_required"))
        if access.submission:
            wait = self.services.limits.submit.take(submission_key(scope, caller))
            if wait > 0:
                return _too_many("too many job submissions; slow down", wait)
        return None

    def _check_server_only(self, caller: Caller) -> Response | None:
        if caller.api_key is not None or self.services.settings.dev_mode:
            return None
        if self.services.api_keys.enabled:
            needed = "this call needs an API key: Authorization: Bearer <key>"
            return _refuse(Forbidden(needed, "api_key_required"))
        return _refuse(
            Forbidden(
                "this call needs an API key and none is configured (GATEWAY_API_KEYS); "
                "without one, mint channel tokens in your backend with GATEWAY_SECRET"
            )
        )

    async def _check_read(
        self, scope: Scope, access: Access, channels: list[str], caller: Caller
    ) -> Response | None:
        if caller.api_key is not None:
            return None
        service = self.services.channels
        try:
            caller.token = service.token(token_of(scope), api_key=None)
            for channel in channels:
                service.authorize_read(channel, api_key=None, token=caller.token)
        except Forbidden as exc:
            if exc.code == "token_expired" and access.rule == Rule.JOB_READ and access.stream:
                # EventSource retries after an error; a 204 makes it stop for good once the
                # job it follows has ended, so an old tab does not retry forever.
                record = await load_job(self.services.backend, channels[0].partition(":")[2])
                if record is None or record.terminal:
                    return Response(status_code=204)
            return _refuse(exc)
        return None

    def _check_publish(self, scope: Scope, channel: str, caller: Caller) -> Response | None:
        """Without API keys configured the server API is open; with them, a caller without a
        key is a client, held to the channel service's client-publish rule."""
        if caller.api_key is not None or not self.services.api_keys.enabled:
            return None
        services = self.services
        channels = services.channels
        try:
            caller.token = channels.authorize_http_publish(channel, raw_token=token_of(scope))
        except (Forbidden, RateLimited) as exc:
            return problem_for(exc).to_response()
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

    async def _websocket(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: Headers,
        found: tuple[BaseRoute | None, Mapping[str, Any]] | None,
    ) -> None:
        origin = headers.get("origin")
        if origin is not None and not self.origins.allowed(origin, scope, headers.get("host")):
            log.info("refused WebSocket from origin %r", origin[:200])
            await _refuse_websocket(scope, receive, send, CloseCode.POLICY, "origin not allowed")
            return
        if found is not None and (found[0] is None or access_of(found[0]) is None):
            log.error("refused WebSocket %s: the route declares no access", found[0])
            await _refuse_websocket(scope, receive, send, CloseCode.POLICY, "forbidden")
            return
        counter = self.services.limits.connections
        address = client_address(scope)
        if not counter.acquire(address):
            await _refuse_websocket(
                scope, receive, send, CloseCode.TRY_AGAIN, "too many connections from this address"
            )
            return
        try:
            await self.app(scope, receive, send)
        finally:
            counter.release(address)


def _index_routes(routes: list[BaseRoute]) -> dict[str, list[BaseRoute]]:
    """First literal path segment -> the routes a path starting with it may match, in order;
    `""` -> those for any other path (routes whose path starts with a parameter, or that have
    no plain path: those go in every list)."""
    firsts: list[str | None] = []
    for route in routes:
        path = getattr(route, "path", None)
        first = path[1:].partition("/")[0] if isinstance(path, str) else None
        if first is not None and ("{" in first or (first == "" and path != "/")):
            first = None  # a parameter first, or a mount at the root: any path may match
        firsts.append(first)
    index: dict[str, list[BaseRoute]] = {}
    for key in {first for first in firsts if first is not None} | {""}:
        index[key] = [
            route
            for route, first in zip(routes, firsts, strict=True)
            if first is None or first == key
        ]
    return index


def _undeclared() -> Response:
    return problem_response(
        403, "Forbidden", "this route declares no access, so nobody may call it", code="forbidden"
    )


async def _refuse_websocket(
    scope: Scope, receive: Receive, send: Send, code: int, reason: str
) -> None:
    """Complete the handshake only to close with a code and reason the client can read.

    The accept echoes the `gateway.v1` subprotocol when the client offered it: a browser that
    offered one and gets none back fails the handshake (1006, no reason) instead.
    """
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    offered = scope.get("subprotocols") or []
    accept: Message = {"type": "websocket.accept"}
    if SUBPROTOCOL in offered:
        accept["subprotocol"] = SUBPROTOCOL
    await send(accept)
    await send({"type": "websocket.close", "code": code, "reason": reason})
