"""The API descriptions exist, cover every route, resolve, pass the validators as served, say
truthfully who may call what, and hold up under schemathesis."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from starlette.routing import Route

from gateway.api.access import Rule, access_of
from gateway.api.docs import OPERATIONS, asyncapi_document, openapi_document
from gateway.app import create_app
from gateway.settings import Settings
from tests.support import GatewayProcess

NODE_DIR = Path(__file__).resolve().parent.parent / "node"
NODE_BIN = NODE_DIR / "node_modules" / ".bin"


def node_tool(name: str) -> Path:
    """A program from tests/node (`node` itself, or a package's bin), or a skip that says how
    to install it."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (Debian packages: nodejs npm)")
    tool = Path(node) if name == "node" else NODE_BIN / name
    if not (NODE_BIN / "redocly").exists() or not tool.exists():
        pytest.skip(
            f"tests/node/node_modules has no {name}: run "
            "`npm ci --prefix tests/node --no-audit --no-fund` (Debian package: npm)"
        )
    return tool


def _resolve(document: dict[str, Any], ref: str) -> Any:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def test_every_route_is_described() -> None:
    app = create_app(Settings())
    document = openapi_document(list(app.routes))
    for route in app.routes:
        if not isinstance(route, Route) or not route.methods:
            continue
        for method in route.methods - {"HEAD"}:
            assert (method, route.path) in OPERATIONS, f"{method} {route.path} is undocumented"
            assert method.lower() in document["paths"][route.path]
    for ref in _refs(document):
        assert _resolve(document, ref) is not None
    job_events = document["paths"]["/jobs/{job_id}/events"]["get"]
    assert job_events["parameters"][0] == {
        "name": "job_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "minLength": 1, "maxLength": 200},
    }


def test_who_may_call_an_operation_comes_from_its_route() -> None:
    """Each operation's security and access wording is its route's declaration, the one the
    guard enforces; summaries never say it a second time."""
    app = create_app(Settings())
    document = openapi_document(list(app.routes))
    checked = 0
    for route in app.routes:
        if not isinstance(route, Route) or not route.methods:
            continue
        access = access_of(route)
        assert access is not None, f"{route.path} declares no access"
        for method in route.methods - {"HEAD"}:
            operation = document["paths"][route.path][method.lower()]
            assert operation["security"] == access.security, (method, route.path)
            assert operation["description"].endswith(f"Who may call it: {access.rule.who}.")
            assert "API key" not in operation["summary"], (method, route.path)
            checked += 1
    assert checked == len(OPERATIONS)
    paths = document["paths"]
    token_or_key = [{"channelToken": []}, {"apiKey": []}]
    assert paths["/taskStatus/{job_id}"]["get"]["security"] == token_or_key
    assert paths["/results/{job_id}"]["get"]["security"] == token_or_key
    for path, method in (("/jobs", "get"), ("/tokens", "post")):
        assert paths[path][method]["security"] == [{"apiKey": []}]
        assert Rule.SERVER_ONLY.who in paths[path][method]["description"]


def test_asyncapi_describes_ws_and_sse(embedded_gateway: GatewayProcess) -> None:
    served = httpx.get(f"{embedded_gateway.url}/asyncapi.json").json()
    assert served == asyncapi_document(f"127.0.0.1:{embedded_gateway.port}", "ws")
    assert served["asyncapi"] == "3.1.0"
    assert {"ws", "jobEvents", "events"} <= set(served["channels"])
    ws_messages = served["channels"]["ws"]["messages"]
    for op in ("subscribe", "unsubscribe", "publish", "ping"):
        assert f"client.{op}" in ws_messages
    for op in ("ack", "error", "event", "gap", "pong", "shutdown"):
        assert f"server.{op}" in ws_messages
    for ref in _refs(served):
        assert _resolve(served, ref) is not None, ref


def test_openapi_is_served(embedded_gateway: GatewayProcess) -> None:
    document = httpx.get(f"{embedded_gateway.url}/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert "/jobs" in document["paths"] and "/tokens" in document["paths"]
    assert document["paths"]["/jobs"]["post"]["security"] == [{"apiKey": []}]
    assert document["paths"]["/healthz"]["get"]["security"] == []


def test_served_openapi_passes_openapi_spec_validator(embedded_gateway: GatewayProcess) -> None:
    document = httpx.get(f"{embedded_gateway.url}/openapi.json").json()
    validate(document)  # raises on any error
    ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids)), sorted(ids)


def test_served_openapi_passes_redocly_lint(embedded_gateway: GatewayProcess) -> None:
    """Redocly's recommended rules, no rule turned off: no errors and no warnings."""
    redocly = node_tool("redocly")
    result = subprocess.run(
        [
            str(redocly),
            "lint",
            "--extends",
            "recommended",
            "--format",
            "json",
            f"{embedded_gateway.url}/openapi.json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=NODE_DIR,
    )
    report = json.loads(result.stdout)
    assert report["totals"] == {"errors": 0, "warnings": 0, "ignored": 0}, report["problems"]
    assert result.returncode == 0, result.stderr[-2000:]


def test_served_asyncapi_passes_the_asyncapi_parser(embedded_gateway: GatewayProcess) -> None:
    """@asyncapi/parser (what AsyncAPI Studio and generators use): no errors, no warnings."""
    node = node_tool("node")
    result = subprocess.run(
        [str(node), "validate-asyncapi.mjs", f"{embedded_gateway.url}/asyncapi.json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=NODE_DIR,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    diagnostics = json.loads(result.stdout)
    assert [d for d in diagnostics if d["severity"] <= 1] == []


@pytest.fixture
def secure_gateway(gateway_factory: Callable[..., GatewayProcess]) -> GatewayProcess:
    return gateway_factory(
        GATEWAY_API_KEYS="k" * 32,
        GATEWAY_SECRET="s" * 40,
        GATEWAY_SUBMIT_RATE="0",
        GATEWAY_PUBLISH_RATE="0",
    )


def test_declared_security_is_what_the_gateway_enforces(secure_gateway: GatewayProcess) -> None:
    """In secure mode, every operation the document calls public answers without credentials,
    every other one refuses them with 401/403, and each declared credential gets through."""
    url = secure_gateway.url
    api_key = {"Authorization": "Bearer " + "k" * 32}
    job = httpx.post(f"{url}/jobs", json={"type": "sleep", "data": {"seconds": 0}}, headers=api_key)
    assert job.status_code == 202, job.text
    minted = httpx.post(
        f"{url}/tokens",
        json={"sub": "t", "channels": {"room:lobby": ["subscribe", "publish"]}},
        headers=api_key,
    )
    assert minted.status_code == 201, minted.text
    tokens = {"job": job.json()["token"], "room": minted.json()["token"]}
    values = {"job_id": job.json()["id"], "channel": "room:lobby", "code": "not-found"}
    document = httpx.get(f"{url}/openapi.json").json()
    checked = 0
    with httpx.Client(timeout=10) as client:

        def status(method: str, path: str, headers: dict[str, str]) -> int:
            target = url + path.format(**values)
            params = {"channel": "room:lobby"} if path == "/events" else {}
            body = {"type": "message", "data": {}} if method == "POST" else None
            with client.stream(method, target, params=params, json=body, headers=headers) as r:
                return r.status_code  # streams (SSE) are left unread

        for path, item in document["paths"].items():
            for method, operation in item.items():
                method = method.upper()
                anonymous = status(method, path, {})
                if operation["security"] == []:
                    assert anonymous not in {401, 403}, (method, path, anonymous)
                    continue
                assert anonymous in {401, 403}, (method, path, anonymous)
                for requirement in operation["security"]:
                    (scheme,) = requirement
                    if scheme == "apiKey":
                        credential = api_key
                    else:
                        token = tokens["job" if "{job_id}" in path else "room"]
                        credential = {"Authorization": f"Bearer {token}"}
                    answered = status(method, path, credential)
                    assert answered not in {401, 403}, (method, path, scheme, answered)
                checked += 1
    assert checked >= 12


def test_schemathesis_finds_no_server_errors(
    gateway_factory: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    """Fuzz every operation from the gateway's own document (bounded: a few examples each)."""
    gateway = gateway_factory(GATEWAY_SUBMIT_RATE="0", GATEWAY_PUBLISH_RATE="0")
    command = shutil.which("schemathesis") or shutil.which("st")
    args = [command] if command else [sys.executable, "-m", "schemathesis.cli"]
    result = subprocess.run(
        [
            *args,
            "run",
            f"{gateway.url}/openapi.json",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance",
            "--max-examples",
            "8",
            "--phases",
            "examples,coverage,fuzzing",
            "--request-timeout",
            "5",
            "--seed",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert httpx.get(f"{gateway.url}/healthz").status_code == 200
    assert "Traceback" not in gateway.output()
