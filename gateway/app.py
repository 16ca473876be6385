"""`create_app(settings)`: routes and the lifespan that wires backend, hub and embedded worker."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator, Callable
from types import FrameType
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Router
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.api import channels, compat, docs, health, jobs, presence, problem_pages
from gateway.api import control as control_routes
from gateway.api import tokens as token_routes
from gateway.api.access import (
    PUBLIC,
    WEBSOCKET,
    GuardedMount,
    GuardedRoute,
    GuardedWebSocketRoute,
)
from gateway.api.guards import MATCHED_ROUTE, AccessGuard, BodyLimit
from gateway.auth import ApiKeys, ChannelPolicy
from gateway.backends.url import open_backend
from gateway.errors import GatewayError
from gateway.hub import Hub
from gateway.jobs.registry import REGISTRY, HandlerRegistry
from gateway.jobs.services import JobServices
from gateway.jobs.worker import Worker
from gateway.limits import Limits
from gateway.logs import configure_logging, install_redaction
from gateway.outbound import Subscriber
from gateway.problems import (
    Problem,
    handle_gateway_error,
    handle_http_exception,
    handle_problem,
    handle_server_error,
)
from gateway.services import Services
from gateway.settings import Settings
from gateway.transports.wire import RAW_SEND
from gateway.transports.ws import websocket_app, websocket_endpoint

log = logging.getLogger("gateway")


class GatewayApp(Starlette):
    """Starlette, plus two things for the connections that stay open:

    - the server's own `send` in the scope (before middleware wraps it), which the transports
      use to find the socket for their fast path (`gateway.transports.wire`);
    - `/ws` goes straight to its guards and endpoint (`websocket_app`), past the router and the
      HTTP-only middleware: every layer is a coroutine frame that each open connection keeps
      for its whole life (~0.4 KB apiece; memory per idle connection is a target).
    """

    websocket_app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[RAW_SEND] = send
        if scope["type"] == "websocket" and scope["path"] == "/ws" and self.websocket_app:
            scope["app"] = self
            await self.websocket_app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


class MatchedRouter(Router):
    """Starlette's router, told by the access guard which route a request is for: the guard
    matched it already (`MATCHED_ROUTE`), so the router does not walk the routes again."""

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        matched = scope.pop(MATCHED_ROUTE, None)
        if matched is None or scope["type"] not in {"http", "websocket"}:
            await super().app(scope, receive, send)
            return
        route, child_scope = matched
        if "router" not in scope:
            scope["router"] = self
        scope.update(child_scope)
        await route.handle(scope, receive, send)


def create_app(
    settings: Settings | None = None, registry: HandlerRegistry | None = None
) -> Starlette:
    settings = settings or Settings.from_env()
    registry = registry or REGISTRY
    registry.load_modules(settings.handlers)
    backend = open_backend(settings)
    hub = Hub(backend.bus)
    services = JobServices(
        settings,
        backend,
        hub,
        ChannelPolicy.from_settings(settings, revoked=backend.control.is_revoked),
        ApiKeys(settings.api_keys),
        Limits.from_settings(settings),
        registry=registry,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await backend.start()
        await backend.start_control()
        # Start-up objects (modules, routes, settings) never die: move them out of the
        # collector's sight, and collect the young generation less often. The collector made
        # most of the p99 tail of a Starlette fan-out (bench-reference/ABOUT.md).
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        await services.presence.start()
        services.occupancy.start()
        worker = Worker(backend, registry, settings) if settings.runs_embedded_worker else None
        worker_task = asyncio.create_task(worker.run()) if worker is not None else None
        restore_signals = _drain_on_signals(hub, settings)
        install_redaction()
        announce_security(settings)
        log.info("gateway ready: backend=%s embedded_worker=%s", backend.kind, worker is not None)
        try:
            yield
        finally:
            restore_signals()
            hub.drain(settings.sse_retry_ms)
            if worker is not None and worker_task is not None:
                worker.stop()
                await worker_task
            await services.occupancy.close()
            await services.presence.close()
            await backend.close()

    async def index(request: Request) -> Response:
        return FileResponse(settings.static_dir / "index.html")

    routes: list[BaseRoute] = [
        GuardedRoute("/", index, methods=["GET"], access=PUBLIC),
        *jobs.routes,
        *channels.routes,
        *presence.routes,
        *compat.routes,
        *token_routes.routes,
        *control_routes.routes,
        *docs.routes,
        *problem_pages.routes,
        *health.routes,
        GuardedWebSocketRoute("/ws", websocket_endpoint, access=WEBSOCKET),
        GuardedMount(
            "/static",
            StaticFiles(directory=settings.static_dir, check_dir=False),
            access=PUBLIC,
            name="static",
        ),
    ]
    app = GatewayApp(
        routes=routes,
        lifespan=lifespan,
        middleware=security_middleware(settings, services),
        exception_handlers={
            Problem: handle_problem,
            HTTPException: handle_http_exception,
            GatewayError: handle_gateway_error,
            Exception: handle_server_error,
        },
    )
    app.router = MatchedRouter(routes=routes, lifespan=lifespan)
    app.state.services = services
    # The same guards as the middleware stack applies, in the same order (CORS is HTTP-only).
    app.websocket_app = BodyLimit(
        AccessGuard(websocket_app, services=services), limit=settings.max_body
    )
    return app


def security_middleware(settings: Settings, services: Services) -> list[Middleware]:
    """CORS outermost (so refusals carry CORS headers too), then the body limit, then access
    (which decides from the declarations of the app's routes)."""
    stack: list[Middleware] = []
    if settings.allowed_origins:
        wildcard = "*" in settings.allowed_origins
        stack.append(
            Middleware(
                CORSMiddleware,
                allow_origins=["*"] if wildcard else list(settings.allowed_origins),
                # Never `*` together with credentials: a wildcard allowlist sends no cookies.
                allow_credentials=not wildcard,
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "Idempotency-Key"],
                expose_headers=["Location", "Retry-After"],
                max_age=600,
            )
        )
    stack.append(Middleware(BodyLimit, limit=settings.max_body))
    stack.append(Middleware(AccessGuard, services=services))
    return stack


def announce_security(settings: Settings) -> None:
    """Say loudly when the gateway is open, so nobody deploys dev mode by accident, and what a
    half-configured gateway (a secret without API keys) allows and refuses."""
    if settings.dev_mode:
        hosts = " ".join(settings.allowed_hosts) or f"localhost, loopback, {settings.host}"
        log.warning(
            "\n%s\n  DEV MODE: no GATEWAY_API_KEYS and no GATEWAY_SECRET are configured.\n"
            "  Anyone who can reach this port may submit jobs, publish, and read every channel.\n"
            "  Set both (and --require-auth) before exposing the gateway.\n"
            "  Host names served (GATEWAY_ALLOWED_HOSTS): %s\n%s",
            "!" * 78,
            hosts,
            "!" * 78,
        )
        return
    if not settings.api_keys:
        log.warning(
            "OPEN SERVER API: no GATEWAY_API_KEYS configured; anyone may submit jobs, cancel "
            "them and publish on any channel. Channel reads need tokens, and so nobody may mint "
            "them: POST /tokens (and GET /jobs) need an API key and are refused; mint tokens in "
            "your backend with GATEWAY_SECRET."
        )
    if not settings.secrets:
        log.warning(
            "no GATEWAY_SECRET configured: channel tokens are signed with a random per-process "
            "secret and will not verify in other processes or after a restart"
        )
    log.info(
        "auth: %d API key(s), %d token secret(s), allowed origins: %s, allowed hosts: %s",
        len(settings.api_keys),
        len(settings.secrets),
        " ".join(settings.allowed_origins) or "same origin",
        " ".join(settings.allowed_hosts) or "any",
    )


DRAIN_GRACE = 5.0
"""Longest a SIGTERM waits for clients to take their `1001` close or `shutdown` event (normally
milliseconds) before uvicorn closes what is left with a bare `1012`."""


def _drain_on_signals(hub: Hub, settings: Settings) -> Callable[[], None]:
    """On SIGTERM/SIGINT, tell every client to go before uvicorn closes the connections.

    Chains in front of the server's own handler (installed before the lifespan starts), so
    WebSockets close with 1001 and SSE streams end with a `shutdown` event and a `retry:` hint,
    instead of uvicorn's bare 1012 close. The server's handler is passed the signal only once
    the clients are gone (or after `DRAIN_GRACE`): uvicorn closes every open connection on its
    next 0.1 s tick after it, which could come before the tasks sending the 1001 closes ran.
    A second signal goes straight through (Ctrl+C twice forces the exit).
    """
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {}
    draining: set[asyncio.Task[None]] = set()
    signalled = False

    def pass_on(signum: int, frame: FrameType | None) -> None:
        handler = previous.get(signum)
        if callable(handler):
            handler(signum, frame)

    async def pass_on_when_gone(
        told: set[Subscriber], signum: int, frame: FrameType | None
    ) -> None:
        # Only the connections told to go: one that reconnects meanwhile must not hold this up.
        deadline = loop.time() + DRAIN_GRACE
        while not told.isdisjoint(hub.connections) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)  # a bounded poll: once per shutdown, no event to wait on
        pass_on(signum, frame)

    def drain(signum: int, frame: FrameType | None) -> None:
        log.info("shutting down: asking %d client connections to reconnect", len(hub.connections))
        told = set(hub.connections)
        hub.drain(settings.sse_retry_ms)
        task = loop.create_task(pass_on_when_gone(told, signum, frame))
        draining.add(task)
        task.add_done_callback(draining.discard)

    def handle(signum: int, frame: FrameType | None) -> None:
        nonlocal signalled
        if signalled:
            pass_on(signum, frame)
            return
        signalled = True
        loop.call_soon_threadsafe(drain, signum, frame)

    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[signum] = signal.getsignal(signum)
            signal.signal(signum, handle)
        except ValueError:  # not the main thread (e.g. an in-process test server)
            previous.pop(signum, None)

    def restore() -> None:
        for signum, handler in previous.items():
            with contextlib.suppress(ValueError):
                signal.signal(signum, handler)

    return restore


def app_from_env() -> Starlette:
    """Factory for `uvicorn --factory gateway.app:app_from_env` (and `gateway serve --workers`)."""
    settings = Settings.from_env()
    if not logging.getLogger().handlers:
        configure_logging(settings.log_level)
    return create_app(settings)
