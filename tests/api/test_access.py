"""Access is declared on every route, and the guard decides from that declaration alone.

The first test enumerates the application's routes (HTTP routes per method, WebSocket routes,
mounts) and fails on any without a declaration. The in-process tests add routes the
application does not have (an undeclared `POST /jobs/{id}/retry`, declared probes) to show
that an undeclared route is refused and that a declared one gets exactly its rule, with
malformed path parameters refused before the endpoint runs. The rest run against real gateway
processes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute

from gateway.api.access import Access, Rule, access_of, channel_read, job_read
from gateway.api.access import GuardedRoute as Guarded
from gateway.app import create_app
from gateway.settings import Settings
from tests.support import GatewayProcess, gateway_env

API_KEY = "access-api-key-0123456789"
SECRET = "a" * 40
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _declarations(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """`(what, access)` for every method of every route, mounts and their children included."""
    for route in routes:
        if isinstance(route, Route):
            for method in sorted(route.methods or ()):
                yield f"{method} {prefix}{route.path}", access_of(route)
        elif isinstance(route, WebSocketRoute):
            yield f"WEBSOCKET {prefix}{route.path}", access_of(route)
        elif isinstance(route, Mount):
            yield f"MOUNT {prefix}{route.path}", access_of(route)
            yield from _declarations(list(route.routes), prefix + route.path)
        else:
            yield f"{type(route).__name__} {prefix}{getattr(route, 'path', '?')}", None


def test_every_route_and_method_declares_its_access() -> None:
    app = create_app(Settings())
    found = dict(_declarations(list(app.routes)))
    undeclared = sorted(what for what, access in found.items() if access is None)
    assert not undeclared, f"routes without an Access declaration: {undeclared}"
    # The enumeration sees every kind of route the application has.
    assert "WEBSOCKET /ws" in found and "MOUNT /static" in found and "POST /jobs" in found
    expected = {
        "POST /jobs": Rule.SERVER,
        "GET /jobs": Rule.SERVER_ONLY,
        "POST /tokens": Rule.SERVER_ONLY,
        "POST /jobs/{job_id}/cancel": Rule.SERVER,
        "GET /jobs/{job_id}": Rule.JOB_READ,
        "GET /results/{job_id}": Rule.JOB_READ,
        "GET /events": Rule.CHANNEL_READ,
        "POST /channels/{channel}/events": Rule.CHANNEL_PUBLISH,
        "WEBSOCKET /ws": Rule.WEBSOCKET,
        "GET /healthz": Rule.PUBLIC,
    }
    assert {what: found[what].rule for what in expected} == expected
    assert found["POST /submitTask"].submission and found["GET /jobs/{job_id}/events"].stream
    # The same declaration feeds the OpenAPI `security` of the operation.
    assert found["POST /jobs"].security == [{"apiKey": []}]
    assert found["GET /healthz"].security == []


def _probe(request: Request) -> Response:
    request.app.state.probed.append(request.url.path)
    return PlainTextResponse("ran")


@pytest.fixture
async def secure_app() -> AsyncIterator[tuple[httpx.AsyncClient, list[str]]]:
    """The real application in secure mode, in process, with probe routes added to its router
    (the endpoint records that it ran), called over ASGI; the lifespan is not started: no endpoint
    that needs the backend is called."""
    app = create_app(Settings(api_keys=(API_KEY,), secrets=(SECRET,)))
    probed: list[str] = []
    app.state.probed = probed
    extra: list[BaseRoute] = [
        Route("/jobs/{job_id}/retry", _probe, methods=["POST"]),  # declares nothing
        Route("/undeclared", _probe, methods=["GET"]),
        Guarded("/probe/job/{job_id}", _probe, methods=["GET"], access=job_read()),
        Guarded("/probe/channel/{channel}", _probe, methods=["GET"], access=channel_read()),
        Guarded("/probe/server", _probe, methods=["DELETE"], access=Access(Rule.SERVER)),
        Guarded("/probe/public", _probe, methods=["GET"], access=Access(Rule.PUBLIC)),
    ]
    app.router.routes[:0] = extra
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        yield client, probed


async def test_a_route_without_a_declaration_is_refused(
    secure_app: tuple[httpx.AsyncClient, list[str]],
) -> None:
    client, probed = secure_app
    for method, path in (("POST", "/jobs/abc/retry"), ("GET", "/undeclared")):
        for headers in ({}, AUTH):  # not even the server's API key gets through
            refused = await client.request(method, path, headers=headers)
            assert refused.status_code == 403, (method, path, refused.text)
            assert refused.headers["content-type"] == "application/problem+json"
    assert probed == []
    assert (await client.get("/probe/public")).text == "ran"


async def test_a_declared_rule_is_applied_and_bad_params_never_reach_the_endpoint(
    secure_app: tuple[httpx.AsyncClient, list[str]],
) -> None:
    client, probed = secure_app
    assert (await client.get("/probe/job/abc")).status_code == 401  # a job read needs a token
    assert (await client.get("/probe/channel/room:x")).status_code == 401
    assert (await client.delete("/probe/server")).status_code == 401
    for path, status in (
        ("/probe/job/" + "a" * 65, 404),
        ("/probe/job/a%20b", 404),
        ("/probe/channel/no-namespace", 400),
        ("/probe/channel/room:a%20b", 400),
    ):
        for headers in ({}, AUTH):  # malformed is refused with or without credentials
            refused = await client.get(path, headers=headers)
            assert refused.status_code == status, (path, refused.text)
            assert refused.headers["content-type"] == "application/problem+json"
    assert probed == []
    assert (await client.get("/probe/job/abc", headers=AUTH)).text == "ran"
    assert (await client.get("/probe/channel/room:x", headers=AUTH)).text == "ran"
    assert (await client.delete("/probe/server", headers=AUTH)).text == "ran"


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    process = GatewayProcess(
        gateway_env(GATEWAY_API_KEYS=API_KEY, GATEWAY_SECRET=SECRET),
        tmp_path_factory.mktemp("access") / "gateway.log",
    )
    process.start()
    yield process
    process.stop(5)


def test_malformed_path_parameters_are_refused_by_the_guard(secure: GatewayProcess) -> None:
    cases = [
        ("GET", "/jobs/a%20b", 404),
        ("GET", "/jobs/" + "a" * 65 + "/result", 404),
        ("GET", "/taskStatus/a%0Ab", 404),
        ("GET", "/channels/no-namespace/events", 400),
        ("POST", "/channels/room:a%20b/events", 400),
        ("GET", "/events?channel=room:ok&channel=bad%20name", 400),
        ("GET", "/events", 400),
    ]
    for method, path, status in cases:
        response = httpx.request(method, secure.url + path, json={} if method == "POST" else None)
        assert response.status_code == status, (method, path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    # Well-formed but unauthenticated: the credentials are what is missing.
    assert httpx.get(secure.url + "/jobs/abc").status_code == 401
    assert httpx.get(secure.url + "/events?channel=room:ok").status_code == 401


def test_unknown_paths_and_methods_run_no_endpoint(secure: GatewayProcess) -> None:
    assert httpx.post(secure.url + "/jobs/abc/retry", json={}).status_code == 404
    assert httpx.delete(secure.url + "/jobs/abc").status_code == 405
    assert httpx.put(secure.url + "/tokens", json={}).status_code == 405


def test_the_guard_matches_routes_under_a_root_path() -> None:
    """Routes are looked up by their first path segment; behind a proxy's `root_path` that is
    the segment after it, and a route the index misses is still found, never let through."""
    from starlette.routing import Route

    from gateway.api.guards import MATCHED_ROUTE, AccessGuard
    from gateway.app import create_app
    from gateway.settings import Settings

    app = create_app(Settings())
    guard = AccessGuard(app, services=app.state.services)
    for path, root in (
        ("/jobs/abc", ""),
        ("/gw/jobs/abc", "/gw"),
        ("/gw/channels/room:a/events", "/gw"),
    ):
        scope = {"type": "http", "method": "GET", "path": path, "root_path": root, "app": app}
        found = guard._route(scope)
        assert found is not None and isinstance(found[0], Route), path
        assert scope[MATCHED_ROUTE][0] is found[0]
