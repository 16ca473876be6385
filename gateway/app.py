"""`create_app(settings)`: routes and the lifespan that wires backend, hub and embedded worker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from types import FrameType
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from gateway.api import channels, compat, health, jobs
from gateway.auth import ChannelPolicy
from gateway.backends.base import Backend, BackendUnavailable
from gateway.backends.memory import MemoryBackend
from gateway.hub import Hub
from gateway.jobs.handlers import REGISTRY, HandlerRegistry
from gateway.jobs.worker import Worker
from gateway.problems import (
    Problem,
    handle_http_exception,
    handle_problem,
    handle_server_error,
    problem_response,
)
from gateway.services import Services
from gateway.settings import Settings
from gateway.transports.ws import websocket_endpoint

log = logging.getLogger("gateway")


def make_backend(settings: Settings) -> Backend:
    if settings.redis_url:
        from gateway.backends.redis import RedisBackend

        return RedisBackend(settings)
    return MemoryBackend(settings)


async def handle_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("backend unavailable: %s", exc)
    return problem_response(
        503,
        "Service Unavailable",
        "the event bus is unavailable; try again shortly",
        code="unavailable",
        headers={"Retry-After": "1"},
    )


def create_app(
    settings: Settings | None = None, registry: HandlerRegistry | None = None
) -> Starlette:
    settings = settings or Settings.from_env()
    registry = registry or REGISTRY
    registry.load_modules(settings.handlers)
    backend = make_backend(settings)
    hub = Hub(backend)
    services = Services(settings, backend, hub, ChannelPolicy(), registry)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await backend.start()
        worker = Worker(backend, registry, settings) if settings.runs_embedded_worker else None
        worker_task = asyncio.create_task(worker.run()) if worker is not None else None
        restore_signals = _drain_on_signals(hub, settings)
        log.info("gateway ready: backend=%s embedded_worker=%s", backend.kind, worker is not None)
        try:
            yield
        finally:
            restore_signals()
            hub.drain(settings.sse_retry_ms)
            if worker is not None and worker_task is not None:
                worker.stop()
                await worker_task
            await backend.close()

    async def index(request: Request) -> Response:
        return FileResponse(settings.static_dir / "index.html")

    routes = [
        Route("/", index, methods=["GET"]),
        *jobs.routes,
        *channels.routes,
        *compat.routes,
        *health.routes,
        WebSocketRoute("/ws", websocket_endpoint),
        Mount(
            "/static", StaticFiles(directory=settings.static_dir, check_dir=False), name="static"
        ),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            Problem: handle_problem,
            HTTPException: handle_http_exception,
            BackendUnavailable: handle_unavailable,
            Exception: handle_server_error,
        },
    )
    app.state.services = services
    return app


def _drain_on_signals(hub: Hub, settings: Settings) -> Callable[[], None]:
    """On SIGTERM/SIGINT, tell every client to go before uvicorn closes the connections.

    Chains in front of the server's own handler (installed before the lifespan starts), so
    WebSockets close with 1001 and SSE streams end with a `shutdown` event and a `retry:` hint,
    instead of uvicorn's bare 1012 close.
    """
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {}

    def handle(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(hub.drain, settings.sse_retry_ms)
        log.info("shutting down: asking %d client connections to reconnect", len(hub.connections))
        handler = previous.get(signum)
        if callable(handler):
            handler(signum, frame)

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
        logging.basicConfig(
            level=logging.DEBUG
            if settings.log_level in {"debug", "trace"}
            else settings.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    return create_app(settings)
