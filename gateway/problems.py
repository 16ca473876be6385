"""RFC 9457 problem details: the one shape every HTTP error of the gateway takes."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

PROBLEM_TYPE_BASE = "https://gateway.dev/problems/"


class Problem(Exception):
    """Raise from a route to answer with `application/problem+json`."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str = "",
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.code = code or title.lower().replace(" ", "-")
        self.headers = headers or {}
        self.extra = extra

    def to_response(self) -> Response:
        return problem_response(
            self.status, self.title, self.detail, code=self.code, headers=self.headers, **self.extra
        )


def problem_response(
    status: int,
    title: str,
    detail: str = "",
    *,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    body = {
        "type": PROBLEM_TYPE_BASE + (code or title.lower().replace(" ", "-")),
        "title": title,
        "status": status,
        "detail": detail or title,
        **extra,
    }
    return Response(
        orjson.dumps(body),
        status_code=status,
        media_type="application/problem+json",
        headers=headers,
    )


def bad_request(detail: str, **extra: Any) -> Problem:
    return Problem(400, "Bad Request", detail, code="bad-request", **extra)


def not_found(detail: str) -> Problem:
    return Problem(404, "Not Found", detail, code="not-found")


def unprocessable(detail: str, **extra: Any) -> Problem:
    return Problem(422, "Unprocessable Content", detail, code="unprocessable", **extra)


def conflict(detail: str, **extra: Any) -> Problem:
    return Problem(409, "Conflict", detail, code="conflict", **extra)


async def handle_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return exc.to_response()


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    titles = {404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request"}
    title = titles.get(exc.status_code, "HTTP Error")
    return problem_response(
        exc.status_code,
        title,
        str(exc.detail),
        headers=dict(exc.headers or {}),
        code=title.lower().replace(" ", "-"),
    )


async def handle_server_error(request: Request, exc: Exception) -> Response:
    return problem_response(
        500, "Internal Server Error", "the gateway failed; the error is logged", code="internal"
    )
