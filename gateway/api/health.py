"""Liveness, readiness and metrics."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from gateway.api.access import PUBLIC, GuardedRoute
from gateway.api.responses import json_response
from gateway.metrics import METRICS
from gateway.services import services_of


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    services = services_of(request)
    bus = services.backend.bus
    ready = await bus.ping() and not services.hub.draining
    body: dict[str, object] = {
        "status": "ready" if ready else "not ready",
        "backend": services.backend.kind,
        "draining": services.hub.draining,
    }
    shards = await bus.shard_status()
    if shards is not None:
        body["shards"] = {name: "ok" if up else "unreachable" for name, up in shards.items()}
    return json_response(body, 200 if ready else 503)


async def metrics(request: Request) -> Response:
    return Response(generate_latest(METRICS.registry), media_type=CONTENT_TYPE_LATEST)


routes = [
    GuardedRoute("/healthz", healthz, methods=["GET"], access=PUBLIC),
    GuardedRoute("/readyz", readyz, methods=["GET"], access=PUBLIC),
    GuardedRoute("/metrics", metrics, methods=["GET"], access=PUBLIC),
]
