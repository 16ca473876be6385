"""The reference in docs/ and the README's configuration table list what the code actually has:
every endpoint with its access, every problem type, every WebSocket error and close code, every
setting. A change to the code that the docs do not follow fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from starlette.routing import Route

from gateway.api.access import Rule, access_of
from gateway.api.docs import OPERATIONS
from gateway.app import create_app
from gateway.problems import PROBLEM_TYPES
from gateway.settings import Settings, declared
from gateway.vocabulary import CloseCode

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def table_rows(text: str, first_cell: str) -> list[list[str]]:
    """The cells of the Markdown table rows whose first cell matches `first_cell`."""
    rows = []
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and re.fullmatch(first_cell, cells[0]):
            rows.append(cells)
    return rows


def _declared_rules() -> dict[tuple[str, str], Rule]:
    """`(method, path) -> Rule` of every HTTP route, from the routes' own declarations."""
    declared = {}
    for route in create_app(Settings()).routes:
        if isinstance(route, Route) and route.methods:
            access = access_of(route)
            assert access is not None, f"{route.path} declares no access"
            for method in route.methods - {"HEAD"}:
                declared[(method, route.path)] = access.rule
    return declared


def test_http_api_lists_every_endpoint_with_its_access() -> None:
    """Each endpoint's access column is its route's declared rule, and the legend words each
    rule exactly as `Rule.who` does (the OpenAPI descriptions use the same words)."""
    text = (DOCS / "http-api.md").read_text()
    rows = table_rows(text, r"`(GET|POST) /[^`]*`")
    documented = {tuple(cells[0].strip("`").split(" ", 1)): cells[1] for cells in rows}
    declared = _declared_rules()
    assert documented == {key: rule.label for key, rule in declared.items()}
    assert set(OPERATIONS) == set(declared)
    labels = "|".join(re.escape(rule.label) for rule in Rule)
    legend = {cells[0]: cells[1] for cells in table_rows(text, labels) if len(cells) == 2}
    assert legend == {rule.label: rule.who for rule in set(declared.values())}


def test_http_api_lists_every_problem_type() -> None:
    rows = table_rows((DOCS / "http-api.md").read_text(), r"`[a-z_-]+`")
    documented = {cells[0].strip("`"): (cells[1], cells[2]) for cells in rows if len(cells) == 3}
    expected = {
        code: (str(problem.status) if problem.status else "any", problem.title)
        for code, problem in PROBLEM_TYPES.items()
    }
    assert documented == expected


def _ws_error_codes() -> set[str]:
    """Codes the WebSocket side can put in an `error` frame: the literals of the transport, the
    protocol and the channel service, plus the channel policy's (`Forbidden`) and token
    (`InvalidToken`) codes passed through, and the codes of the errors `protocol.v1` answers."""
    from gateway.protocol import v1

    codes: set[str] = {"forbidden", "unavailable"}
    codes |= {error.code for error in v1.ANSWERED if error.code not in {"error", "bad_request"}}
    modules = ("transports/ws.py", "protocol/v1.py", "channels.py", "auth.py", "tokens.py")
    for module in modules:
        tree = ast.parse((ROOT / "gateway" / module).read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            position = {"OpError": 0, "InvalidToken": 0, "ProtocolError": 1, "Forbidden": 1}.get(
                name
            )
            if position is None or len(node.args) <= position:
                continue
            arg = node.args[position]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                codes.add(arg.value)
    return codes


def test_websocket_page_lists_every_error_code() -> None:
    codes = _ws_error_codes()
    assert {"invalid_json", "too_many_subscriptions", "token_required", "token_expired"} <= codes
    rows = table_rows((DOCS / "websocket.md").read_text(), r"`[a-z_]+`")
    assert codes <= {cells[0].strip("`") for cells in rows}


def test_websocket_page_lists_every_close_code() -> None:
    sent = {int(code) for code in CloseCode}
    assert {1000, 1001, 1008, 1009, 4008, 4029, 4400} <= sent
    rows = table_rows((DOCS / "websocket.md").read_text(), r"`\d{4}`")
    documented = {int(cells[0].strip("`")) for cells in rows}
    assert sent <= documented


def test_readme_configuration_table_lists_every_setting() -> None:
    """Every variable the code reads is in the README's table (tests/test_settings.py checks
    the whole table against the declarations), aliases and internal ones in configuration.md."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1]
    configuration = (DOCS / "configuration.md").read_text()
    declarations = list(declared().values())
    assert {"REDIS_URL", "GATEWAY_MAX_BODY"} <= {d.env for d in declarations}
    missing = {d.env for d in declarations if not d.internal and f"`{d.env}`" not in table}
    assert missing == set(), "add a row to the README's Configuration table"
    aliases_and_internal = {d.alias for d in declarations if d.alias} | {
        d.env for d in declarations if d.internal
    }
    assert {"GATEWAY_REDIS_URL", "PORT", "GATEWAY_EPHEMERAL_SECRET"} <= aliases_and_internal
    assert all(f"`{v}`" in configuration for v in aliases_and_internal)
