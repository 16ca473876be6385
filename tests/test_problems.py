"""Problem `type` URIs point at pages the gateway serves: every code it can answer with is in the
one table, and each resolves to a 200 explanation on a running gateway."""

from __future__ import annotations

import ast
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest

from gateway.problems import PROBLEM_TYPES, Problem, code_for_status, problem_response
from tests.support import GatewayProcess

JSON = "application/json"
GATEWAY_SOURCE = Path(__file__).resolve().parent.parent / "gateway"


def _literal(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def codes_in_source() -> dict[str, str]:
    """Every problem code written in the gateway's source, with where it is written.

    Codes reach a problem through `Problem(..., code=)`, `problem_response(..., code=)`,
    `Forbidden(message, code)` (default `forbidden`) and `TokenError(code, message)`; any
    other expression as a code must be one of those passed through (`exc.code`).
    """
    found: dict[str, str] = {"forbidden": "Forbidden's default"}
    for path in sorted(GATEWAY_SOURCE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            keyword = next((k.value for k in node.keywords if k.arg == "code"), None)
            if name in {"Problem", "problem_response"}:
                expr = keyword
            elif name == "Forbidden":
                expr = node.args[1] if len(node.args) > 1 else keyword
            elif name == "TokenError":
                expr = node.args[0] if node.args else keyword
            else:
                continue
            where = f"{path.relative_to(GATEWAY_SOURCE.parent)}:{node.lineno}"
            if expr is None:
                continue  # the default: a code from the table (see test_bare_status)
            code = _literal(expr)
            if code is not None:
                found[code] = where
            else:
                passthrough = isinstance(expr, ast.Attribute) and expr.attr == "code"
                known = isinstance(expr, ast.Name) and expr.id == "code"
                assert passthrough or known, f"{where}: a problem code that is not a literal"
    return found


def test_every_code_the_gateway_uses_is_explained() -> None:
    found = codes_in_source()
    assert {"not-found", "token_required", "content-too-large", "api_key_required"} <= set(found)
    missing = {code: where for code, where in found.items() if code not in PROBLEM_TYPES}
    assert missing == {}, "add these codes to gateway.problems.PROBLEM_TYPES"


def test_bare_status_gets_a_code_from_the_table() -> None:
    assert Problem(413, "Content Too Large").code == "content-too-large"
    assert code_for_status(418) == "http-error"
    body = problem_response(503, "Service Unavailable").body
    assert b'"type":"/problems/unavailable"' in bytes(body)
    for problem in PROBLEM_TYPES.values():
        if problem.status is not None:
            assert PROBLEM_TYPES[code_for_status(problem.status)].status == problem.status


def test_every_problem_type_resolves_on_the_gateway(embedded_gateway: GatewayProcess) -> None:
    index = httpx.get(f"{embedded_gateway.url}/problems")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    for code, problem in PROBLEM_TYPES.items():
        assert f'href="/problems/{code}"' in index.text
        page = httpx.get(f"{embedded_gateway.url}/problems/{code}")
        assert page.status_code == 200, code
        assert page.headers["content-type"].startswith("text/html")
        assert problem.title in page.text and f"<code>{code}</code>" in page.text
    unknown = httpx.get(f"{embedded_gateway.url}/problems/no-such-code")
    assert unknown.status_code == 404
    assert unknown.json()["type"] == "/problems/not-found"


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("GET", "/no/such/route", {}, 404),
        ("PUT", "/jobs", {}, 405),
        ("GET", "/jobs/unknown-job", {}, 404),
        ("POST", "/jobs", {"content": b"{not json", "headers": {"content-type": JSON}}, 400),
        ("POST", "/jobs", {"content": b"x", "headers": {"content-type": "text/plain"}}, 415),
        ("POST", "/jobs", {"json": {"type": "no-such-type"}}, 422),
        ("GET", "/jobs", {"params": {"limit": "many"}}, 400),
        ("GET", "/jobs", {"headers": {"x-big": "x" * 40_000}}, 431),
        ("POST", "/jobs", {"content": b"x" * 2_000_000}, 413),
        ("GET", "/events", {"params": {"channel": "nope:x"}}, 403),
    ],
)
def test_real_problem_responses_link_to_their_explanation(
    embedded_gateway: GatewayProcess,
    method: str,
    path: str,
    kwargs: dict[str, object],
    status: int,
) -> None:
    response = httpx.request(method, embedded_gateway.url + path, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"].startswith("/problems/")
    explained = httpx.get(urljoin(str(response.url), problem["type"]))
    assert explained.status_code == 200, problem
    assert problem["title"] in explained.text


def test_problem_for_maps_gateway_errors() -> None:
    from gateway.errors import (
        BackendUnavailable,
        EventTooLarge,
        Forbidden,
        HandlerError,
        InvalidChannel,
        InvalidEventType,
        RateLimited,
    )
    from gateway.problems import problem_for

    refused = problem_for(Forbidden("needs a token", "token_required"))
    assert (refused.status, refused.title, refused.code) == (401, "Unauthorized", "token_required")
    assert refused.headers == {"WWW-Authenticate": 'Bearer realm="gateway"'}
    forbidden = problem_for(Forbidden("no"))
    assert (forbidden.status, forbidden.code, forbidden.headers) == (403, "forbidden", {})
    limited = problem_for(RateLimited("slow down", 0.2))
    assert (limited.status, limited.code, limited.headers) == (
        429,
        "rate-limited",
        {"Retry-After": "1"},
    )
    large = problem_for(EventTooLarge("room:a", 10, 5))
    assert (large.status, large.code, large.extra) == (
        413,
        "event-too-large",
        {"max_event_size": 5},
    )
    bad_type = problem_for(InvalidEventType())
    assert (bad_type.status, bad_type.detail) == (
        422,
        "'type' must be 1-100 characters of [A-Za-z0-9_.:-]",
    )
    assert problem_for(InvalidChannel("bad")).status == 400
    assert problem_for(BackendUnavailable("down")).status == 503
    assert problem_for(HandlerError("x")).status == 500
