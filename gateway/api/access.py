"""Who may call a route, declared where the route is defined.

Every route of the application carries an `Access`: `AccessGuard` (`gateway.api.guards`) finds
the route a request is for and derives its decision from that declaration alone. A route
without one is refused (403) and `tests/api/test_access.py` fails on it, so a new endpoint
cannot be reachable without anyone deciding who may call it (deny by default).

`Access.security` gives the same declaration as an OpenAPI security requirement, so the API
description cannot drift from what is enforced.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.types import ASGIApp


class Rule(StrEnum):
    """What a caller must prove. `AccessGuard` (`gateway.api.guards`) enforces it; `who` says
    it in words for the API description and docs/http-api.md (a test holds the page to it)."""

    PUBLIC = "public"
    SERVER = "server"
    SERVER_ONLY = "server_only"
    JOB_READ = "job_read"
    CHANNEL_READ = "channel_read"
    CHANNEL_PUBLISH = "channel_publish"
    WEBSOCKET = "websocket"

    @property
    def label(self) -> str:
        """The rule's name in the docs' access columns: `server only`."""
        return self.value.replace("_", " ")

    @property
    def who(self) -> str:
        """Who gets through, in Markdown (outside dev mode; in dev mode everything is open)."""
        return WHO[self]


WHO: Final[dict[Rule, str]] = {
    Rule.PUBLIC: "anyone",
    Rule.SERVER: (
        "a server with one of `GATEWAY_API_KEYS`; anyone while no API keys are configured"
    ),
    Rule.SERVER_ONLY: (
        "a server with one of `GATEWAY_API_KEYS`, and nobody while `GATEWAY_SECRET` is set "
        "without API keys: these calls hand out what channel tokens guard (minting tokens, "
        "listing every job), so mint tokens in your backend with the secret instead"
    ),
    Rule.JOB_READ: (
        "a channel token with `subscribe` on `job:<id>` (such as the job's own token from "
        "`POST /jobs`), or an API key"
    ),
    Rule.CHANNEL_READ: (
        "a channel token the channel policy lets subscribe to each channel read (one with "
        "`subscribe` on it; for `user:<name>`, one whose `sub` is the name), or an API key"
    ),
    Rule.CHANNEL_PUBLISH: (
        "an API key, or a channel token with `publish` on the channel (rate-limited per "
        "token); anyone while no API keys are configured"
    ),
    Rule.WEBSOCKET: (
        "anyone from an allowed `Origin` may open the connection (Host and connection limits "
        "checked); each `subscribe` and `publish` on it is then authorized by the channel "
        "policy, as channel read and channel publish are"
    ),
}
"""The one wording of each rule (`Rule.who`)."""


API_KEY: Final = "apiKey"
CHANNEL_TOKEN: Final = "channelToken"
"""OpenAPI security scheme names (`components.securitySchemes` in `gateway.api.docs`)."""


@dataclass(frozen=True, slots=True)
class Access:
    """A route's access declaration.

    `param` names where the job id or channel comes from: a path parameter, or for
    `CHANNEL_READ` without one in the path, the repeated `?channel=` query parameter.
    `submission` routes count against the per-key submission rate; `stream` routes hold a
    connection open and count against the per-address connection limit.
    """

    rule: Rule
    param: str | None = None
    submission: bool = False
    stream: bool = False

    @property
    def security(self) -> list[dict[str, list[str]]]:
        """The OpenAPI `security` requirement of the operation (scheme names of `docs`)."""
        if self.rule in {Rule.PUBLIC, Rule.WEBSOCKET}:
            return []
        if self.rule in {Rule.SERVER, Rule.SERVER_ONLY}:
            return [{API_KEY: []}]
        if self.rule == Rule.CHANNEL_PUBLISH:
            return [{API_KEY: []}, {CHANNEL_TOKEN: []}]
        return [{CHANNEL_TOKEN: []}, {API_KEY: []}]


PUBLIC: Final = Access(Rule.PUBLIC)
SERVER: Final = Access(Rule.SERVER)
SUBMISSION: Final = Access(Rule.SERVER, submission=True)
SERVER_ONLY: Final = Access(Rule.SERVER_ONLY)
WEBSOCKET: Final = Access(Rule.WEBSOCKET)


def job_read(param: str = "job_id", *, stream: bool = False) -> Access:
    return Access(Rule.JOB_READ, param=param, stream=stream)


def channel_read(param: str = "channel", *, stream: bool = False) -> Access:
    return Access(Rule.CHANNEL_READ, param=param, stream=stream)


def channel_publish(param: str = "channel") -> Access:
    return Access(Rule.CHANNEL_PUBLISH, param=param)


class GuardedRoute(Route):
    """A Starlette `Route` that declares its `access`."""

    def __init__(
        self,
        path: str,
        endpoint: Callable[..., Any],
        *,
        methods: Sequence[str],
        access: Access,
        name: str | None = None,
    ) -> None:
        super().__init__(path, endpoint, methods=list(methods), name=name)
        self.access = access


class GuardedWebSocketRoute(WebSocketRoute):
    """A Starlette `WebSocketRoute` that declares its `access`."""

    def __init__(self, path: str, endpoint: Callable[..., Any], *, access: Access) -> None:
        super().__init__(path, endpoint)
        self.access = access


class GuardedMount(Mount):
    """A Starlette `Mount` that declares the `access` of everything under it."""

    def __init__(self, path: str, app: ASGIApp, *, access: Access, name: str | None = None) -> None:
        super().__init__(path, app=app, name=name)
        self.access = access


def access_of(route: BaseRoute) -> Access | None:
    """The route's declaration, or None when it has none (and is therefore refused)."""
    access = getattr(route, "access", None)
    return access if isinstance(access, Access) else None
