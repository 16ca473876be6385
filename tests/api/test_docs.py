"""The API descriptions exist, cover every route, resolve, and hold up under schemathesis."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from starlette.routing import Route

from gateway.api.docs import OPERATIONS, asyncapi_document, openapi_document
from gateway.app import create_app
from gateway.settings import Settings
from tests.support import GatewayProcess


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


def test_asyncapi_describes_ws_and_sse(embedded_gateway: GatewayProcess) -> None:
    served = httpx.get(f"{embedded_gateway.url}/asyncapi.json").json()
    assert served == asyncapi_document()
    assert served["asyncapi"] == "3.0.0"
    assert {"ws", "jobEvents", "events"} <= set(served["channels"])
    ws_messages = served["channels"]["ws"]["messages"]
    for op in ("subscribe", "unsubscribe", "publish", "ping"):
        assert f"client.{op}" in ws_messages
    for op in ("ack", "error", "event", "gap", "pong"):
        assert f"server.{op}" in ws_messages
    for ref in _refs(served):
        assert _resolve(served, ref) is not None, ref


def test_openapi_is_served(embedded_gateway: GatewayProcess) -> None:
    document = httpx.get(f"{embedded_gateway.url}/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert "/jobs" in document["paths"] and "/tokens" in document["paths"]
    assert document["paths"]["/jobs"]["post"]["security"] == [{"apiKey": []}]


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
