"""`GET /problems` and `GET /problems/{code}`: what each problem `type` URI explains.

Public pages, made from `gateway.problems.PROBLEM_TYPES`, so the `type` of every problem the
gateway answers with resolves on the gateway itself, in words a person can act on.
"""

from __future__ import annotations

import html
import re
from typing import Final

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from gateway.api.access import PUBLIC, GuardedRoute
from gateway.problems import PROBLEM_TYPES, ProblemType, not_found, problem_type_uri

_CODE_SPAN: Final = re.compile(r"`([^`]+)`")
_PAGE: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:42rem;margin:2rem auto;padding:0 1rem}}
code{{background:#f3f3f3;padding:0 .2em}}dt{{margin-top:1em}}</style>
</head>
<body>
{body}
</body>
</html>
"""


def _prose(text: str) -> str:
    """Escape, then render `code` spans: the explanations are written in Markdown style."""
    return _CODE_SPAN.sub(r"<code>\1</code>", html.escape(text, quote=False))


def _status(problem: ProblemType) -> str:
    return str(problem.status) if problem.status is not None else "various"


async def problem_index(request: Request) -> Response:
    items = "\n".join(
        f'<dt><a href="{problem_type_uri(code)}"><code>{code}</code></a> '
        f"({_status(problem)} {html.escape(problem.title)})</dt>"
        f"<dd>{_prose(problem.explanation)}</dd>"
        for code, problem in PROBLEM_TYPES.items()
    )
    body = (
        "<h1>Problem types</h1>\n<p>Every HTTP error from the gateway is an "
        "<code>application/problem+json</code> body (RFC 9457) whose <code>type</code> is one "
        f"of these pages.</p>\n<dl>\n{items}\n</dl>"
    )
    return HTMLResponse(_PAGE.format(title="gateway problem types", body=body))


async def problem_page(request: Request) -> Response:
    code = request.path_params["code"]
    problem = PROBLEM_TYPES.get(code)
    if problem is None:
        raise not_found(f"no problem type {code[:64]!r}; /problems lists them")
    body = (
        f"<h1>{html.escape(problem.title)} <small>(<code>{code}</code>, HTTP "
        f"{_status(problem)})</small></h1>\n<p>{_prose(problem.explanation)}</p>\n"
        "<p>The problem body's <code>detail</code> says what happened in this case. "
        '<a href="/problems">All problem types</a>.</p>'
    )
    return HTMLResponse(_PAGE.format(title=f"{code}: {problem.title}", body=body))


routes = [
    GuardedRoute("/problems", problem_index, methods=["GET"], access=PUBLIC),
    GuardedRoute("/problems/{code}", problem_page, methods=["GET"], access=PUBLIC),
]
