"""The API descriptions exist, cover every route, resolve, pass the validators as served, say
truthfully who may call what, and hold up under schemathesis."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NotRequired, get_origin, get_type_hints

import httpx
import orjson
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from starlette.routing import Route

from gateway.api import bodies
from gateway.api.access import Rule, access_of
from gateway.api.docs import OPERATIONS, asyncapi_document, openapi_document
from gateway.app import create_app
from gateway.errors import ProtocolError
from gateway.protocol import v1
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


def _ws_payload(document: dict[str, Any], name: str) -> dict[str, Any]:
    """The schema of WebSocket message `name` (`client.subscribe`), its `$ref` followed."""
    message = _resolve(document, document["channels"]["ws"]["messages"][name]["$ref"])
    payload: dict[str, Any] = message["payload"]
    return _resolve(document, payload["$ref"]) if "$ref" in payload else payload


def _validator(document: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """A validator for `schema` whose `#/components/...` references resolve in `document`."""
    return Draft202012Validator({"allOf": [schema], "components": document["components"]})


def test_every_ws_frame_is_a_message_with_its_declared_fields() -> None:
    """Each command of `gateway.protocol.v1` and each server frame it declares has a message,
    whose properties are the declaration's fields and whose required ones are those without a
    default (plus `op`): the document cannot drift from the protocol module."""
    document = asyncapi_document()
    assert set(document["channels"]["ws"]["messages"]) == {
        *(f"client.{op}" for op in v1.COMMANDS),
        *(f"server.{op}" for op in v1.SERVER_FRAMES),
    }
    for op, command in v1.COMMANDS.items():
        schema = _ws_payload(document, f"client.{op}")
        fields = dataclasses.fields(command)
        assert list(schema["properties"]) == ["op", *(f.name for f in fields)], op
        assert schema["properties"]["op"] == {"const": op}
        no_default = [f.name for f in fields if f.default is dataclasses.MISSING]
        assert schema["required"] == ["op", *no_default], op
    for op, frame in v1.SERVER_FRAMES.items():
        schema = _ws_payload(document, f"server.{op}")
        if op == "event":
            assert len(schema["allOf"]) == 2
            schema = _resolve(document, schema["allOf"][0]["$ref"])
        hints = get_type_hints(frame, include_extras=True)  # `__required_keys__` cannot see
        optional = {key for key, hint in hints.items() if get_origin(hint) is NotRequired}
        assert list(schema["properties"]) == list(hints), op  # through the string annotations
        assert schema["required"] == [key for key in hints if key not in optional], op
        assert schema["properties"]["op"]["const"] == op
    channel = _ws_payload(document, "client.subscribe")["properties"]["channel"]
    assert channel["pattern"] == bodies.CHANNEL_PATTERN
    since = _ws_payload(document, "client.subscribe")["properties"]["since"]["anyOf"][0]
    assert since["pattern"] == bodies.EVENT_ID_PATTERN


def test_ws_examples_parse_and_match_their_schemas() -> None:
    """Every client example is a frame `v1.parse` takes (and `v1.encode` writes back); every
    example matches its message's schema, with no member the schema does not declare."""
    document = asyncapi_document()
    examples = 0
    for name, ref in document["channels"]["ws"]["messages"].items():
        message = _resolve(document, ref["$ref"])
        validator = _validator(document, message["payload"])
        declared = _ws_payload(document, name).get("properties", {})
        for example in message.get("examples", []):
            payload = example["payload"]
            assert list(validator.iter_errors(payload)) == [], (name, payload)
            assert set(payload) <= set(declared), (name, payload)
            if name.startswith("client."):
                command = v1.parse(orjson.dumps(payload))
                assert orjson.loads(v1.encode(command)) == payload
            examples += 1
    assert examples >= len(v1.COMMANDS) + len(v1.SERVER_FRAMES) - 1  # all but `event`


def test_ws_schemas_refuse_what_the_parser_refuses() -> None:
    """Where the document states a rule, it is the parser's: a bad channel, `since` or `type`
    fails both."""
    document = asyncapi_document()
    bad = [
        ("client.subscribe", {"op": "subscribe", "channel": "a b"}),
        ("client.subscribe", {"op": "subscribe", "channel": "room:a", "since": "x"}),
        ("client.publish", {"op": "publish", "channel": "room:a", "type": "a b"}),
        ("client.publish", {"op": "publish", "channel": "room:a", "token": 5}),
        ("client.unsubscribe", {"op": "unsubscribe"}),
    ]
    for name, payload in bad:
        message = _resolve(document, document["channels"]["ws"]["messages"][name]["$ref"])
        assert list(_validator(document, message["payload"]).iter_errors(payload)), payload
        with pytest.raises(ProtocolError):
            v1.parse(orjson.dumps(payload))


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
    values = {"job_id": job.json()["id"], "channel": "room:lobby", "code": "not-found", "sub": "t"}
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
