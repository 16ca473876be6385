"""`GET /openapi.json` (OpenAPI 3.1) and `GET /asyncapi.json` (AsyncAPI 3.1).

The OpenAPI document is built from the app's own routes: every route is listed with its real
methods and path parameters, and `OPERATIONS` adds what a route alone cannot say (bodies,
parameters, responses). A test checks that no route is missing from `OPERATIONS`, so the document
cannot silently drift from the code; schemathesis then fuzzes the gateway from it, and
openapi-spec-validator, `redocly lint` and `@asyncapi/parser` check both documents as served.

Request and response bodies are the models of `gateway.api.bodies` (the ones the routes validate
with), and each job type's `data` is its handler's input model: `OPERATIONS` names them with
`Schema(model)`, and the document carries their generated JSON Schema under
`components/schemas`. The WebSocket frames are `gateway.protocol.v1`'s declarations (`COMMANDS`,
`SERVER_FRAMES`) the same way. No schema is written here by hand beside its model.

Who may call an operation comes from the route's own access declaration (`gateway.api.access`),
the one the guard enforces: its `security` is `Access.security`, and its description says the
rule in the words of `Rule.who`. Summaries here say what an operation does, never who may call it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal, Union

import orjson
from pydantic import BaseModel, Field, TypeAdapter, create_model
from pydantic.json_schema import JsonSchemaMode
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api import bodies
from gateway.api.access import PUBLIC, GuardedRoute, access_of
from gateway.api.responses import json_response
from gateway.errors import ProtocolError
from gateway.jobs.registry import REGISTRY, HandlerRegistry
from gateway.jobs.services import job_services_of
from gateway.protocol import v1

SCHEMA_REF: Final = "#/components/schemas/{model}"
CHANNEL_RE_TEXT: Final = bodies.CHANNEL_PATTERN
EVENT_ID: Final = {"type": "string", "pattern": bodies.EVENT_ID_PATTERN}

_PARAM: Final = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)(?::[a-z]+)?}")


@dataclass(frozen=True, slots=True)
class Schema:
    """Where a document says `Schema(Model)`, the model's JSON Schema goes when it is built."""

    type: Any
    mode: JsonSchemaMode = "serialization"


class JobRequestByType:
    """Stands for `JobRequest` with `data` as each job type's input model: one variant per
    registered type, `type` the discriminator (Redoc shows a tab per type)."""


PROBLEM: Final = Schema(bodies.Problem)


def _problem_responses(*codes: int) -> dict[str, Any]:
    reasons = {
        400: "bad input",
        401: "missing, invalid or expired credentials",
        403: "credentials do not allow this",
        404: "not found",
        409: "conflict with the job's state",
        413: "body over GATEWAY_MAX_BODY, or event over GATEWAY_MAX_EVENT_SIZE",
        431: "request head over 32 KiB",
        415: "not JSON",
        422: "well-formed but invalid",
        429: "rate limited; see Retry-After",
        503: "event bus unavailable",
    }
    return {
        str(code): {
            "description": reasons[code],
            "content": {"application/problem+json": {"schema": PROBLEM}},
        }
        for code in codes
    }


def _json(schema: dict[str, Any] | Schema | type, description: str = "OK") -> dict[str, Any]:
    if isinstance(schema, type):
        schema = Schema(schema)
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(model: type) -> dict[str, Any]:
    schema = Schema(model, "validation")
    return {"required": True, "content": {"application/json": {"schema": schema}}}


HEAD_TOO_LARGE: Final = {"$ref": "#/components/responses/HeadersTooLarge"}
SSE: Final = {
    "description": "Server-Sent Events: history, then live events",
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}
TOKEN_QUERY: Final = {
    "name": "token",
    "in": "query",
    "required": False,
    "description": "channel token (EventSource cannot send headers)",
    "schema": {"type": "string"},
}
CLIENT_QUERY: Final = {
    "name": "client",
    "in": "query",
    "required": False,
    "description": "a stable client id for presence (docs/presence.md): the same id back within "
    "GATEWAY_PRESENCE_GRACE makes no leave and no join",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
}
SINCE_QUERY: Final = {"name": "since", "in": "query", "required": False, "schema": EVENT_ID}
LAST_EVENT_ID: Final = {"name": "Last-Event-ID", "in": "header", "required": False}
SSE_OPTIONS: Final = [
    {
        "name": "events",
        "in": "query",
        "required": False,
        "description": "`named` adds an `event: <type>` line to each message (for "
        "`addEventListener`); by default every message is unnamed and reaches `onmessage`",
        "schema": {"type": "string", "enum": ["message", "named"], "default": "message"},
    },
    {
        "name": "heartbeat",
        "in": "query",
        "required": False,
        "description": 'seconds between `{"type":"heartbeat"}` messages, which a page\'s '
        "EventSource can watch to notice a dead link",
        "schema": {"type": "number", "minimum": 1, "maximum": 3600},
    },
]
LAST_EVENT_ID_SCHEMA: Final = {"type": "string", "maxLength": 4000}
JOB_RESPONSES: Final = _problem_responses(400, 401, 403, 404, 503)
WRITE_RESPONSES: Final = _problem_responses(400, 401, 403, 413, 415, 422, 429, 503)

OPERATIONS: Final[dict[tuple[str, str], dict[str, Any]]] = {
    ("GET", "/"): {
        "summary": "The live dashboard",
        "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}},
    },
    ("POST", "/jobs"): {
        "summary": "Submit a job",
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
            }
        ],
        "requestBody": _body(JobRequestByType),
        "responses": {
            "202": _json(bodies.Job, "accepted"),
            **WRITE_RESPONSES,
            **_problem_responses(409),
        },
    },
    ("POST", "/jobs/batch"): {
        "summary": "Submit up to 1000 jobs in one request, each checked and answered alone",
        "requestBody": _body(bodies.JobBatchRequest),
        "responses": {
            "202": _json(bodies.JobBatchAccepted, "each job's answer or problem, in order"),
            **WRITE_RESPONSES,
        },
    },
    ("GET", "/jobs"): {
        "summary": "Recent jobs, newest first",
        "parameters": [
            {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer"}},
            {"name": "status", "in": "query", "required": False, "schema": {"type": "string"}},
            {"name": "type", "in": "query", "required": False, "schema": {"type": "string"}},
            {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"}},
        ],
        "responses": {"200": _json(bodies.JobPage), **_problem_responses(400, 401, 503)},
    },
    ("GET", "/job-types"): {
        "summary": "The registered job types, each with the JSON Schema of its `data`",
        "responses": {"200": _json(bodies.JobTypes)},
    },
    ("GET", "/jobs/{job_id}"): {
        "summary": "A job's state; `wait` long-polls for something newer than `since`",
        "parameters": [
            {"name": "wait", "in": "query", "required": False, "schema": {"type": "number"}},
            SINCE_QUERY,
            TOKEN_QUERY,
        ],
        "responses": {"200": _json(bodies.Job), **JOB_RESPONSES},
    },
    ("GET", "/jobs/{job_id}/result"): {
        "summary": "A completed job's result",
        "parameters": [TOKEN_QUERY],
        "responses": {
            "200": _json(bodies.JobResult),
            **JOB_RESPONSES,
            **_problem_responses(409),
        },
    },
    ("POST", "/jobs/{job_id}/cancel"): {
        "summary": "Cancel a queued or running job",
        "responses": {
            "200": _json(bodies.Job),
            "202": _json(bodies.Job),
            **WRITE_RESPONSES,
            **_problem_responses(404, 409),
        },
    },
    ("GET", "/jobs/{job_id}/events"): {
        "summary": "The job's events as SSE; ends after the terminal event",
        "parameters": [
            TOKEN_QUERY,
            SINCE_QUERY,
            {**LAST_EVENT_ID, "schema": LAST_EVENT_ID_SCHEMA},
            *SSE_OPTIONS,
        ],
        "responses": {
            "200": SSE,
            "204": {"description": "the job ended at Last-Event-ID: stop reconnecting"},
            **JOB_RESPONSES,
            **_problem_responses(429),
        },
    },
    ("POST", "/channels/{channel}/events"): {
        "summary": "Publish an event on a channel",
        "requestBody": _body(bodies.PublishRequest),
        "responses": {
            "202": _json(bodies.PublishAccepted, "accepted"),
            **WRITE_RESPONSES,
        },
    },
    ("POST", "/events/batch"): {
        "summary": "Publish up to 1000 events on any channels in one request (server API)",
        "requestBody": _body(bodies.EventBatchRequest),
        "responses": {
            "200": _json(bodies.EventBatchAccepted, "each event's id or problem, in order"),
            **WRITE_RESPONSES,
        },
    },
    ("GET", "/channels/{channel}/events"): {
        "summary": "A channel's history as JSON",
        "parameters": [
            SINCE_QUERY,
            {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer"}},
            TOKEN_QUERY,
        ],
        "responses": {"200": _json(bodies.ChannelHistory), **JOB_RESPONSES},
    },
    ("GET", "/channels/{channel}/presence"): {
        "summary": "Who is subscribed to a channel, one page (docs/presence.md)",
        "parameters": [
            {
                "name": "limit",
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
            },
            {
                "name": "cursor",
                "in": "query",
                "required": False,
                "description": "the `next` of the page before",
                "schema": {"type": "string", "maxLength": 1024},
            },
            TOKEN_QUERY,
        ],
        "responses": {"200": _json(bodies.ChannelPresence), **JOB_RESPONSES},
    },
    ("GET", "/channels/{channel}/presence/stats"): {
        "summary": "How many clients and users are subscribed to a channel",
        "parameters": [TOKEN_QUERY],
        "responses": {"200": _json(bodies.ChannelPresenceStats), **JOB_RESPONSES},
    },
    ("GET", "/events"): {
        "summary": "SSE on one or more channels",
        "description": "Without `channel`, a token's server-side subscriptions (its "
        "`subscriptions`, and `GATEWAY_PERSONAL_CHANNEL`): see docs/control.md.",
        "parameters": [
            {
                "name": "channel",
                "in": "query",
                "required": False,
                "style": "form",
                "explode": True,
                "schema": {"type": "array", "items": {"type": "string"}},
            },
            SINCE_QUERY,
            TOKEN_QUERY,
            {**LAST_EVENT_ID, "schema": LAST_EVENT_ID_SCHEMA},
            *SSE_OPTIONS,
            CLIENT_QUERY,
        ],
        "responses": {"200": SSE, **JOB_RESPONSES, **_problem_responses(429)},
    },
    ("POST", "/submit-job"): {
        "summary": "Seed-compatible submit (`jobType`, `jobData`)",
        "requestBody": _body(bodies.SubmitJobRequest),
        "responses": {"202": _json(bodies.SubmitJobAccepted, "accepted"), **WRITE_RESPONSES},
    },
    ("POST", "/submitTask"): {
        "summary": "Seed-compatible submit (`taskName`, `parameters`, `callbackUrl`)",
        "requestBody": _body(bodies.SubmitTaskRequest),
        "responses": {"202": _json(bodies.SubmitTaskAccepted, "accepted"), **WRITE_RESPONSES},
    },
    ("GET", "/taskStatus/{job_id}"): {
        "summary": "Seed-compatible job status",
        "parameters": [TOKEN_QUERY],
        "responses": {"200": _json(bodies.TaskStatus), **JOB_RESPONSES},
    },
    ("GET", "/results/{job_id}"): {
        "summary": "Seed-compatible job result",
        "parameters": [TOKEN_QUERY],
        "responses": {
            "200": _json(bodies.JobResult),
            **JOB_RESPONSES,
            **_problem_responses(409),
        },
    },
    ("POST", "/tokens"): {
        "summary": "Mint a channel token",
        "requestBody": _body(bodies.TokenRequest),
        "responses": {
            "201": _json(bodies.TokenGrant, "created"),
            **WRITE_RESPONSES,
        },
    },
    ("POST", "/tokens/revoke"): {
        "summary": "Revoke tokens by `jti` until their expiry; close connections holding one",
        "requestBody": _body(bodies.RevokeRequest),
        "responses": {"200": _json(bodies.TokenRevoked), **WRITE_RESPONSES},
    },
    ("POST", "/users/{sub}/disconnect"): {
        "summary": "Close every connection of a user, on every gateway (4001 / 4002)",
        "requestBody": _body(bodies.DisconnectRequest),
        "responses": {"200": _json(bodies.UserDisconnected), **WRITE_RESPONSES},
    },
    ("POST", "/users/{sub}/unsubscribe"): {
        "summary": "End a user's subscriptions to a channel, on every gateway",
        "requestBody": _body(bodies.UnsubscribeRequest),
        "responses": {"200": _json(bodies.UserUnsubscribed), **WRITE_RESPONSES},
    },
    ("GET", "/healthz"): {"summary": "Liveness", "responses": {"200": _json(bodies.Health)}},
    ("GET", "/readyz"): {
        "summary": "Readiness: the bus is reachable and pub/sub alive",
        "responses": {
            "200": _json(bodies.Readiness),
            "503": _json(bodies.Readiness, "not ready"),
        },
    },
    ("GET", "/metrics"): {
        "summary": "Prometheus metrics",
        "responses": {"200": {"description": "text", "content": {"text/plain": {}}}},
    },
    ("GET", "/openapi.json"): {
        "summary": "This document",
        "responses": {"200": _json({"type": "object"})},
    },
    ("GET", "/asyncapi.json"): {
        "summary": "The WebSocket and SSE channels (AsyncAPI 3.1)",
        "responses": {"200": _json({"type": "object"})},
    },
    ("GET", "/problems"): {
        "summary": "What each problem `type` means (HTML)",
        "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}},
    },
    ("GET", "/problems/{code}"): {
        "summary": "One problem type explained (HTML); the `type` URI of problem responses",
        "responses": {
            "200": {"description": "HTML", "content": {"text/html": {}}},
            **_problem_responses(404),
        },
    },
}


def _schemas(
    types: Iterable[Schema], jobs: Any = bodies.JobRequest
) -> tuple[dict[Schema, Any], dict[str, Any]]:
    """Each type's JSON Schema (a `$ref` for models), and the definitions they refer to;
    `jobs` is the type `JobRequestByType` stands for."""
    wanted = list(dict.fromkeys(types))
    adapters = [
        (item, item.mode, TypeAdapter(jobs if item.type is JobRequestByType else item.type))
        for item in wanted
    ]
    found, definitions = TypeAdapter.json_schemas(adapters, ref_template=SCHEMA_REF)
    return {item: found[item, item.mode] for item in wanted}, definitions.get("$defs", {})


@functools.lru_cache(maxsize=16)
def _openapi_schemas(
    variants: tuple[type[BaseModel], ...],
) -> tuple[dict[Schema, Any], dict[str, Any]]:
    """The schemas of `OPERATIONS`, for these job types: generated once per set of job types
    (tens of milliseconds; the document is public), shared by every document built after."""
    if not variants:
        jobs: Any = bodies.JobRequest
    elif len(variants) == 1:
        jobs = variants[0]
    else:
        jobs = Annotated[Union[variants], Field(discriminator="type")]  # noqa: UP007
    return _schemas([*_placeholders(OPERATIONS), PROBLEM], jobs)


ENVELOPE: Final = Schema(bodies.EventEnvelope)
JOB_EVENT: Final = Schema(bodies.JobEvent)
_COMMAND_SCHEMAS: Final = {op: Schema(cls, "validation") for op, cls in v1.COMMANDS.items()}
_FRAME_SCHEMAS: Final = {op: Schema(cls) for op, cls in v1.SERVER_FRAMES.items()}
CLIENT_EXAMPLES: Final = (
    v1.Subscribe("room:lobby", ref=1),
    v1.Subscribe("room:lobby", since="1732060800000-0", ref=2),
    v1.Unsubscribe("room:lobby", ref=3),
    v1.Publish("room:lobby", "chat.message", {"text": "hello"}, ref=4),
    v1.Ping(ref=5),
    v1.PresenceList("room:lobby", ref=6),
    v1.PresenceStatsQuery("room:lobby", ref=7),
)
"""Example client frames (`v1.encode` writes them; a test parses each back)."""
SERVER_EXAMPLES: Final = (
    v1.ack(1, "room:lobby", recovered=True),
    v1.ack(4, "room:lobby", id="1732060800000-0"),
    v1.error_frame(2, ProtocolError("not a channel", "invalid_channel", ref=2)),
    v1.pong(5),
    v1.presence_page(6, "room:lobby", [{"client": "tab-1", "user": "42", "info": None}], None),
    v1.presence_stats(7, "room:lobby", 1, 1),
    v1.control("gap", channel="room:lobby", since="1732060800000-0"),
    v1.control("shutdown", message="the gateway is restarting", retry=1000),
    v1.subscribed("user:42"),
    v1.unsubscribed("room:lobby", "unsubscribed"),
)
"""Example server frames, as the encoders write them (a test validates them against the
schemas)."""


@functools.lru_cache(maxsize=1)
def _asyncapi_schemas() -> tuple[dict[Schema, Any], dict[str, Any]]:
    """The WebSocket frames' schemas, generated from `gateway.protocol.v1`'s declarations: a
    command's `op` is its key in `v1.COMMANDS` (a server frame's is a field of its own)."""
    commands = _COMMAND_SCHEMAS
    schemas, definitions = _schemas(
        [*commands.values(), *_FRAME_SCHEMAS.values(), ENVELOPE, JOB_EVENT]
    )
    for op, item in commands.items():
        definition = definitions[schemas[item]["$ref"].rpartition("/")[2]]
        definition["properties"] = {"op": {"const": op}, **definition["properties"]}
        definition["required"] = ["op", *definition.get("required", [])]
    return schemas, definitions


def _ws_message(op: str, payload: Any, *, sent_by: str = "client") -> dict[str, Any]:
    """The message of frames whose `op` is `op` sent by the client or the server (`presence`
    is both a client op and the server's answer), with the examples of them."""
    if sent_by == "client":
        frames = [orjson.loads(v1.encode(command)) for command in CLIENT_EXAMPLES]
    else:
        frames = [orjson.loads(frame) for frame in SERVER_EXAMPLES]
    examples = [{"payload": frame} for frame in frames if frame["op"] == op]
    return {"name": op, "payload": payload, **({"examples": examples} if examples else {})}


def _placeholders(node: Any) -> Iterable[Schema]:
    if isinstance(node, Schema):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _placeholders(value)
    elif isinstance(node, list):
        for value in node:
            yield from _placeholders(value)


def _filled(node: Any, schemas: dict[Schema, Any]) -> Any:
    if isinstance(node, Schema):
        return schemas.get(node, node)
    if isinstance(node, dict):
        return {key: _filled(value, schemas) for key, value in node.items()}
    if isinstance(node, list):
        return [_filled(value, schemas) for value in node]
    return node


def job_variants(registry: HandlerRegistry) -> tuple[type[BaseModel], ...]:
    """`JobRequest` per registered job type: `type` the name, `data` the input model."""
    return tuple(
        _job_variant(spec.name, spec.input, spec.description, orjson.dumps(spec.example).decode())
        for spec in registry.specs()
    )


@functools.lru_cache(maxsize=256)
def _job_variant(
    name: str, input: type[BaseModel] | None, description: str, example: str
) -> type[BaseModel]:
    """`JobRequest` for job type `name`: `type` its name, `data` its input model, `example`
    (JSON) the handler's example `data`."""
    words = re.findall(r"[A-Za-z0-9]+", name)
    type_: Any = Literal[name]
    data: Any = Any if input is None else input | None
    model: type[BaseModel] = create_model(
        "".join(word[:1].upper() + word[1:] for word in words) + "Job",
        __base__=bodies.JobRequest,
        __doc__=f"A `{name}` job: {description}" if description else f"A `{name}` job.",
        type=(type_, Field(description="the job type")),
        data=(data, Field(None, description="the job type's input; null is `{}`")),
    )
    if example != "null":
        model.model_config["json_schema_extra"] = {
            "examples": [{"type": name, "data": orjson.loads(example)}]
        }
        model.model_rebuild(force=True)
    return model


def openapi_document(routes: list[Any], registry: HandlerRegistry | None = None) -> dict[str, Any]:
    """Build the document from the app's routes and job types (see the module docstring)."""
    if registry is None:
        registry = REGISTRY
        registry.load_modules(())
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not isinstance(route, Route) or not route.methods:
            continue
        path = _PARAM.sub(r"{\1}", route.path)
        for method in sorted(route.methods - {"HEAD"}):
            operation = dict(
                OPERATIONS.get((method, path))
                or {"summary": route.name, "responses": {"200": {"description": "OK"}}}
            )
            names = _PARAM.findall(route.path)
            if names:
                operation["parameters"] = [
                    {
                        "name": name,
                        "in": "path",
                        "required": True,
                        "schema": _path_schema(name),
                    }
                    for name in names
                ] + list(operation.get("parameters", []))
            operation["operationId"] = operation_id(method, path)
            access = access_of(route)
            if access is not None:  # undeclared routes are refused, and a test fails on them
                operation["security"] = access.security
                who = f"Who may call it: {access.rule.who}."
                description = operation.get("description")
                operation["description"] = f"{description}\n\n{who}" if description else who
            # Every request passes the size guard first, so any operation can answer 431.
            operation["responses"] = {**operation["responses"], "431": HEAD_TOO_LARGE}
            paths.setdefault(path, {})[method.lower()] = operation
    schemas, definitions = _openapi_schemas(job_variants(registry))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "gateway",
            "version": "1",
            "description": (
                "Real-time notification gateway for background jobs. Each operation's security "
                "and description say who may call it; with neither GATEWAY_API_KEYS nor "
                "GATEWAY_SECRET set (dev mode) every operation is open."
            ),
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        # Relative: the gateway that serves this document (OpenAPI resolves it against the
        # document's own URL), wherever it is deployed.
        "servers": [{"url": "/", "description": "the gateway serving this document"}],
        "paths": _filled(paths, schemas),
        "components": {
            "schemas": definitions,
            "responses": {"HeadersTooLarge": _filled(_problem_responses(431)["431"], schemas)},
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a server API key (GATEWAY_API_KEYS); also as X-API-Key",
                },
                "channelToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "channel token; also ?token= or the gateway_token cookie",
                },
            },
        },
    }


def operation_id(method: str, path: str) -> str:
    """`getJobsJobIdResult`: unique per method and path (route names are not: two routes share
    the handler name `get_result`)."""
    words = re.findall(r"[A-Za-z0-9]+", path) or ["root"]
    return method.lower() + "".join(word[0].upper() + word[1:] for word in words)


def _path_schema(name: str) -> dict[str, Any]:
    if name == "channel":
        return {"type": "string", "pattern": CHANNEL_RE_TEXT}
    return {"type": "string", "minLength": 1, "maxLength": 200}


def asyncapi_document(host: str = "localhost:8000", protocol: str = "ws") -> dict[str, Any]:
    """The WebSocket protocol and the SSE streams as AsyncAPI 3.1, on the server at `host`
    (AsyncAPI has no relative servers: the one that serves the document names itself)."""
    schemas, definitions = _asyncapi_schemas()
    envelope = schemas[ENVELOPE]
    client_messages = {op: schemas[item] for op, item in _COMMAND_SCHEMAS.items()}
    server_messages = {op: schemas[item] for op, item in _FRAME_SCHEMAS.items()}
    server_messages["event"] = {"allOf": [server_messages["event"], envelope]}
    messages = {
        **{f"client.{k}": _ws_message(k, v) for k, v in client_messages.items()},
        **{f"server.{k}": _ws_message(k, v, sent_by="server") for k, v in server_messages.items()},
        "sse.event": {
            "name": "event",
            "contentType": "text/event-stream",
            "description": "`id: <id>` and `data: <envelope>` (plus `event: <type>` with "
            "`?events=named`); signals have no `id` and their data is "
            '`{"type": "gap" | "shutdown" | "error" | "heartbeat" | "disconnected" | '
            '"unsubscribed", ...}`',
            "payload": envelope,
        },
        "sse.jobEvent": {
            "name": "jobEvent",
            "contentType": "text/event-stream",
            "description": "as `sse.event`, on a job's channel: the job's own event types",
            "payload": schemas[JOB_EVENT],
        },
    }
    refs = {name: {"$ref": f"#/components/messages/{name}"} for name in messages}
    return {
        "asyncapi": "3.1.0",
        "info": {
            "title": "gateway real-time channels",
            "version": "1",
            "description": (
                "WebSocket `/ws` (subprotocol gateway.v1, JSON text frames) and SSE streams. "
                "Close codes: 1000 normal, 1001 going away, 1007 text not UTF-8, 1008 policy "
                "(auth, origin, token expired), 1009 too big, 1011 internal, 1013 try again "
                "later, 4001 disconnected by the server (do not reconnect), 4002 disconnected "
                "by the server (reconnect), 4008 slow consumer, 4029 read budget exceeded "
                "(frames or bytes per second); 4400 is reserved for protocol errors (not "
                "sent: bad ops get error frames)."
            ),
        },
        "servers": {
            "gateway": {"host": host, "protocol": protocol, "pathname": "/"},
        },
        "channels": {
            "ws": {
                "address": "/ws",
                "description": (
                    "Query: `channel` (repeatable) and `since` subscribe at once; `token`; "
                    "`client`, a stable id of 1-64 letters, digits, `-` or `_` that presence "
                    "shows and that keeps a client present across a reconnect within "
                    "GATEWAY_PRESENCE_GRACE (docs/presence.md). `presence.join` / "
                    '`presence.leave` events carry `"transient": true` and an id that is no '
                    "position to resume from."
                ),
                "messages": {name: refs[name] for name in messages if not name.startswith("sse.")},
            },
            "jobEvents": {
                "address": "/jobs/{job_id}/events",
                "parameters": {"job_id": {"description": "the job id"}},
                "messages": {"sse.jobEvent": refs["sse.jobEvent"]},
            },
            "events": {
                "address": "/events",
                "messages": {"sse.event": refs["sse.event"]},
            },
        },
        "operations": {
            **{
                f"send_{k}": {
                    "action": "send",
                    "channel": {"$ref": "#/channels/ws"},
                    "messages": [{"$ref": f"#/channels/ws/messages/client.{k}"}],
                }
                for k in client_messages
            },
            **{
                f"receive_{k}": {
                    "action": "receive",
                    "channel": {"$ref": "#/channels/ws"},
                    "messages": [{"$ref": f"#/channels/ws/messages/server.{k}"}],
                }
                for k in server_messages
            },
            "receiveJobEvents": {
                "action": "receive",
                "channel": {"$ref": "#/channels/jobEvents"},
                "messages": [{"$ref": "#/channels/jobEvents/messages/sse.jobEvent"}],
            },
            "receiveEvents": {
                "action": "receive",
                "channel": {"$ref": "#/channels/events"},
                "messages": [{"$ref": "#/channels/events/messages/sse.event"}],
            },
        },
        "components": {"schemas": definitions, "messages": messages},
    }


async def openapi(request: Request) -> Response:
    registry = job_services_of(request).registry
    return json_response(openapi_document(list(request.app.routes), registry))


async def asyncapi(request: Request) -> Response:
    protocol = "wss" if request.url.scheme == "https" else "ws"
    return json_response(asyncapi_document(request.url.netloc, protocol))


routes = [
    GuardedRoute("/openapi.json", openapi, methods=["GET"], access=PUBLIC),
    GuardedRoute("/asyncapi.json", asyncapi, methods=["GET"], access=PUBLIC),
]
