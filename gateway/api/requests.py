"""Reading request bodies and parameters, answering bad input with a problem, never a 500."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.types import Scope

from gateway.errors import InvalidChannel, InvalidEventId
from gateway.events import parse_event_id, validate_channel
from gateway.jobs.registry import field_errors
from gateway.problems import Problem, bad_request, unprocessable

Body = TypeVar("Body", bound=BaseModel)

DETAIL_ERRORS: Final = 3
LISTED_ERRORS: Final = 50
"""Most refused fields a 422 lists: a body of a million bad items must not answer with a
million entries (`errors_total` then says how many there were)."""
"""Field errors spelled out in a 422's `detail`; `errors` lists all of them."""


HEADER_MAP: Final = "gateway.headers"
"""Scope key of `header_map`'s dict."""


def header_map(scope: Scope) -> dict[str, str]:
    """The request's headers by (lower-case) name, the first of a repeated one as Starlette's
    `Headers.get` gives it, decoded once per request and kept in the scope: the body limit,
    the guard and the routes look up several each, and `Headers` scans the list every time."""
    found: dict[str, str] | None = scope.get(HEADER_MAP)
    if found is None:
        found = {}
        for name, value in reversed(scope["headers"]):
            found[name.decode("latin-1")] = value.decode("latin-1")
        scope[HEADER_MAP] = found
    return found


def is_json_media_type(content_type: str | None) -> bool:
    """`application/json` or `application/<something>+json`, parameters aside.

    Exactly the types a cross-site page cannot send without the browser asking first (a CORS
    preflight): `text/plain`, forms, or no type at all are refused.
    """
    media = (content_type or "").partition(";")[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


async def read_json_object(request: Request) -> dict[str, Any]:
    if not is_json_media_type(header_map(request.scope).get("content-type")):
        raise Problem(
            415,
            "Unsupported Media Type",
            "send the body as application/json",
            code="unsupported-media-type",
        )
    body = await request.body()
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise bad_request("the body must be a JSON object")
    return value


async def read_body(request: Request, model: type[Body]) -> Body:
    """The JSON body as `model`: 415 if not JSON, 400 if malformed, 422 naming each bad field.

    orjson parses (its refusals, such as integers beyond 64 bits or nesting beyond 1024, stay
    400s); the model's validator, compiled once, checks the object.
    """
    return parse_body(model, await read_json_object(request))


def parse_body(model: type[Body], value: dict[str, Any]) -> Body:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise invalid_fields(field_errors(exc)) from None


def invalid_fields(
    errors: Sequence[tuple[str, str]], prefix: str = "", lead: str = "", **extra: Any
) -> Problem:
    """The 422 for refused fields: `detail` names them (`data.seconds: ...`), and `errors`
    lists each as `{"loc": "data.seconds", "msg": ...}`; `prefix` places them (`data`)."""
    located = [(".".join(part for part in (prefix, loc) if part), msg) for loc, msg in errors]
    shown = "; ".join(f"{loc}: {msg}" if loc else msg for loc, msg in located[:DETAIL_ERRORS])
    if len(located) > DETAIL_ERRORS:
        shown += f" (and {len(located) - DETAIL_ERRORS} more in errors)"
    listed = [{"loc": loc, "msg": msg} for loc, msg in located[:LISTED_ERRORS]]
    if len(located) > LISTED_ERRORS:
        extra["errors_total"] = len(located)
    return unprocessable(lead + shown, errors=listed, **extra)


def batch_items(body: dict[str, Any], field: str, cap: int) -> list[Any]:
    """The non-empty list `body[field]` of a batch request: 422 when it is not one, 413
    (`batch-too-large`, with `max_items`) when it holds more than `cap` items."""
    items = body.get(field)
    if not isinstance(items, list) or not items:
        raise unprocessable(
            f"'{field}' must be a non-empty list",
            errors=[{"loc": field, "msg": "must be a non-empty list"}],
        )
    if len(items) > cap:
        raise Problem(
            413,
            "Content Too Large",
            f"at most {cap} items per batch; this one has {len(items)}",
            code="batch-too-large",
            max_items=cap,
        )
    return items


def channel_param(name: str) -> str:
    try:
        return validate_channel(name)
    except InvalidChannel as exc:
        raise bad_request(str(exc)) from None


def event_id_param(value: str | None, what: str = "since") -> str | None:
    if value is None or value == "":
        return None
    try:
        parse_event_id(value)
    except InvalidEventId as exc:
        raise bad_request(f"invalid {what}: {exc}") from None
    return value


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"{name} must be an integer") from None
    if not low <= value <= high:
        raise bad_request(f"{name} must be between {low} and {high}")
    return value


def float_param(request: Request, name: str, default: float, low: float, high: float) -> float:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise bad_request(f"{name} must be a number") from None
    if not low <= value <= high:
        raise bad_request(f"{name} must be between {low:g} and {high:g}")
    return value
