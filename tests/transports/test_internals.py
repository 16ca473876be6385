"""The declared uvicorn/websockets/asyncio internals (`gateway.transports.internals`).

An upgrade that renames or drops one fails `test_declared_internal_is_installed` with the
attribute in the test id and the message; the checker itself is tested on throwaway classes;
and the transports' source is scanned for reaches that are not declared.
"""

from __future__ import annotations

import ast
import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.errors import UnsupportedServer
from gateway.transports import internals
from gateway.transports.internals import INTERNALS, Internal, check, digest, resolve
from gateway.transports.server import LeanQueue, _Pipeline

GATEWAY = Path(internals.__file__).resolve().parents[1]


class Throwaway:
    """Stands in for a uvicorn protocol class in the checker's own tests."""

    def __init__(self) -> None:
        self.present = 1
        self.events: list[int] = []

    def method(self) -> None:
        self.events.append(1)
        self.events.pop()


OWNER = f"{__name__}:Throwaway"


@pytest.fixture
def declared(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Internal]]:
    """Replace the table with the test's own entries (and forget cached answers)."""
    table: list[Internal] = []
    monkeypatch.setattr(internals, "INTERNALS", table)
    internals.available.cache_clear()
    yield table
    internals.available.cache_clear()


@pytest.mark.parametrize("internal", INTERNALS, ids=lambda i: f"{i.group}:{i.label}")
def test_declared_internal_is_installed(internal: Internal) -> None:
    problems = check((internal,))
    assert not problems, "\n".join(map(str, problems))


def test_serve_starts_on_the_installed_versions() -> None:
    for http in ("lean", "httptools", "h11"):
        for ws in ("lean", "websockets-sansio", "websockets", "wsproto"):
            internals.require(*internals.groups_for(http, ws))


def test_the_check_names_a_missing_class_attribute() -> None:
    problems = check(
        (Internal(OWNER, "method", "http"), Internal(OWNER, "vanished", "http")),
    )
    assert [p.internal.name for p in problems] == ["vanished"]
    assert "Throwaway has no attribute 'vanished'" in str(problems[0])
    assert "tested with uvicorn" in str(problems[0])
    assert problems[0].fatal


def test_the_check_names_a_deleted_attribute(monkeypatch: pytest.MonkeyPatch) -> None:
    """An attribute that existed, deleted as an upgrade would: the check sees it go."""
    entry = Internal(OWNER, "method", "http")
    assert check((entry,)) == []
    monkeypatch.delattr(Throwaway, "method")
    assert "no attribute 'method'" in str(check((entry,))[0])


def test_the_check_names_a_missing_instance_attribute_module_and_class() -> None:
    problems = check(
        (
            Internal(OWNER, "present", "http", "instance"),
            Internal(OWNER, "gone", "http", "instance"),
            Internal(f"{__name__}:NoSuchClass", "x", "http"),
            Internal("uvicorn.protocols.no_such_module:X", "x", "http"),
        )
    )
    assert [p.internal.label.rsplit(".", 2)[-2:] for p in problems] == [
        ["Throwaway", "gone"],
        ["NoSuchClass", "x"],
        ["X", "x"],
    ]
    assert "no longer sets self.gone" in str(problems[0])
    assert "cannot be found" in str(problems[1]) and "cannot be found" in str(problems[2])


def test_the_check_sees_a_copied_method_change_and_new_calls() -> None:
    tested = digest(Throwaway.method)
    assert check((Internal(OWNER, "method", "http", digest=tested),)) == []
    changed = check((Internal(OWNER, "method", "http", digest="000000000000"),))
    assert "changed since the tested version" in changed[0].what
    assert changed[0].review and not changed[0].fatal
    calls = Internal(OWNER, "events", "http", "instance", calls=frozenset({"append"}))
    (problem,) = check((calls,))
    assert "['pop']" in problem.what and problem.review


def test_require_refuses_naming_the_attribute(declared: list[Internal]) -> None:
    declared.append(Internal(OWNER, "vanished", "ws-lean"))
    with pytest.raises(UnsupportedServer, match=r"Throwaway\.vanished.*tested with uvicorn"):
        internals.require("ws-lean")


def test_a_fallback_is_taken_with_one_warning(
    declared: list[Internal], caplog: pytest.LogCaptureFixture
) -> None:
    declared.append(Internal(OWNER, "vanished", "ws-fast", fallback=internals.ASGI_PATH))
    with caplog.at_level(logging.WARNING, "gateway.transports"):
        internals.require("ws-fast")  # no refusal: the ASGI path is correct
        assert internals.available("ws-fast") is False
        assert internals.available("ws-fast") is False
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        f"{__name__}.Throwaway.vanished"
    ]


def test_the_replacements_provide_every_declared_call() -> None:
    replacements = {"queue": LeanQueue, "pipeline": _Pipeline, "_waiters": list}
    for internal in INTERNALS:
        if internal.calls and internal.name in replacements:
            provided = replacements[internal.name]
            assert all(hasattr(provided, call) for call in internal.calls), internal
    for internal in INTERNALS:
        if internal.calls and internal.name not in replacements:
            assert internal.calls <= set(dir(asyncio.Event)), internal  # LeanEvent


# --- what the source reaches -----------------------------------------------------------------


def _uvicorn_modules() -> list[Path]:
    """Every gateway module that imports uvicorn: where its internals can be reached."""
    found = []
    for path in sorted(GATEWAY.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("uvicorn"):
                found.append(path)
                break
            if isinstance(node, ast.Import) and any(
                a.name.startswith("uvicorn") for a in node.names
            ):
                found.append(path)
                break
    return found


UVICORN_OBJECTS = {"protocol", "cycle", "flow", "conn"}
"""Local names the transports give uvicorn's objects (and websockets' connection)."""


def _own_names(tree: ast.Module) -> set[str]:
    """Names the module defines itself: functions, `__slots__`, class attributes."""
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            own.add(node.name)
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets
        ):
            own.update(ast.literal_eval(node.value))
    return own


def _base_of(node: ast.ClassDef, module: dict[str, object]) -> type | None:
    """The first class in the MRO of the class's bases from outside the gateway (uvicorn's
    protocol, `asyncio.Event`), if any."""
    for base in node.bases:
        if isinstance(base, ast.Name):
            cls = module.get(base.id)
            if isinstance(cls, type):
                for klass in cls.__mro__:
                    if klass is not object and not klass.__module__.startswith("gateway"):
                        return klass
    return None


def _accesses(tree: ast.AST) -> Iterator[tuple[ast.expr, str]]:
    """(object, name) for every `object.name` and `getattr(object, "name", ...)`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            yield node.value, node.attr
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            yield node.args[0], node.args[1].value


def _on_uvicorn_object(value: ast.expr) -> bool:
    """`protocol.x`, `cycle.flow.x`, `self._owner.x`, `self.conn.x`, ...: the object is one
    the transports name as uvicorn's (or websockets' connection)."""
    chain: list[str] = []
    while isinstance(value, ast.Attribute):
        chain.append(value.attr)
        value = value.value
    if not isinstance(value, ast.Name):
        return False
    if value.id in UVICORN_OBJECTS:
        return True
    return value.id == "self" and bool(chain) and chain[-1] in UVICORN_OBJECTS | {"_owner"}


def _reaches(path: Path) -> set[str]:
    """Attribute names the module reaches on uvicorn objects, by these heuristics:

    - any `._private` name it does not define itself (its own `def`s and `__slots__`);
    - `super().name` and `self.name` in a class with a base from outside the gateway (a
      uvicorn protocol, `asyncio.Event`), unless that base neither has nor sets `name`;
    - any name reached through `protocol`, `cycle`, `flow`, `conn`, `self._owner`,
      `self.cycle`, `self.flow` or `self.conn` (`cycle.flow.write_paused` too);
    - `getattr`/`hasattr`/`setattr` with a literal name count as `.name`.

    Best effort, and blind to: a uvicorn object held under another name, `getattr` with a
    computed name, and a reach through a value returned by a call. It also compares names,
    not (owner, name) pairs: a declared name counts for every owner.
    """
    import importlib

    tree = ast.parse(path.read_text())
    dotted = "gateway." + ".".join(path.relative_to(GATEWAY).with_suffix("").parts)
    module = vars(importlib.import_module(dotted))
    own = _own_names(tree)
    reached: set[str] = set()
    for value, name in _accesses(tree):
        if name.startswith("__"):
            continue
        if name.startswith("_") and name not in own:
            reached.add(name)
        if _on_uvicorn_object(value):
            reached.add(name)
    for cls_node in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        base = _base_of(cls_node, module)
        if base is None:
            continue
        owner = f"{base.__module__}:{base.__qualname__}"
        for value, name in _accesses(cls_node):
            if name.startswith("__"):
                continue
            is_super = isinstance(value, ast.Call) and getattr(value.func, "id", "") == "super"
            is_self = isinstance(value, ast.Name) and value.id == "self"
            if is_super or (
                is_self
                and (
                    hasattr(base, name)
                    or not internals.problems_of(Internal(owner, name, "http", "instance"), base)
                )
            ):
                reached.add(name)
    return reached


def test_the_scan_finds_the_uvicorn_modules() -> None:
    names = {p.name for p in _uvicorn_modules()}
    assert {"wire.py", "server.py", "legacy_ws.py"} <= names


@pytest.mark.parametrize("path", _uvicorn_modules(), ids=lambda p: p.name)
def test_no_internal_is_reached_outside_the_table(path: Path) -> None:
    declared = {i.name for i in INTERNALS}
    undeclared = sorted(_reaches(path) - declared - _PUBLIC)
    assert not undeclared, (
        f"{path.name} reaches {undeclared} on uvicorn/asyncio objects: declare them in "
        "gateway/transports/internals.py (INTERNALS)"
    )


_PUBLIC = {
    # asyncio.Protocol / asyncio.Event API (documented), reached through uvicorn's subclasses
    "is_set",
    "set",
    "clear",
    "wait",
    "data_received",
    "connection_made",
    "connection_lost",
    # uvicorn.Config / uvicorn.run (cli.py): public
    "run",
}


def test_every_declared_owner_resolves() -> None:
    for owner in sorted({i.owner for i in INTERNALS}):
        assert resolve(owner) is not None, owner


def test_the_table_has_no_stale_entries() -> None:
    """Every declared name is still reached (or is a copied method, checked by digest)."""
    reached: set[str] = set()
    for path in _uvicorn_modules():
        reached |= _reaches(path)
    stale = {i.label for i in INTERNALS if i.name not in reached and not i.digest}
    assert not stale, f"declared but no longer reached: {sorted(stale)}"
