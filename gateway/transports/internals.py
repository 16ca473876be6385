"""Every undocumented name of uvicorn, websockets and asyncio that the gateway's transports
reach, declared in one table (`INTERNALS`) and checked once when `gateway serve` starts.

The fan-out fast path (`wire.py`) and the lean, guarded protocols (`server.py`,
`legacy_ws.py`) subclass uvicorn's protocol classes and read or replace attributes that are not
uvicorn's public API (`close_sent`, `cycle.flow.write_paused`, `asyncio.Event._waiters`, ...).
uvicorn is pinned to the tested range in pyproject.toml, but an install can still drift; this
table makes the drift loud instead of a wrong byte or an `AttributeError` on a live connection:

- an internal a gateway protocol cannot work without (`fallback` empty) missing: `gateway
  serve` refuses to start with `UnsupportedServer`, naming the attribute and the tested range;
- one with a safe fallback (the ASGI path, or the stock object instead of the lean one) missing:
  one warning, and the slower or larger but correct path is taken;
- a uvicorn method the gateway copies and edits (`digest`) changed: the test suite fails on it.

At start only what costs nothing is checked (modules, classes, class-level attributes); the
instance attributes uvicorn sets, the digests and the calls made on replaced objects are read
from uvicorn's source, which takes ~0.2 s, so `tests/transports/test_internals.py` checks them
(the whole table, against what is installed) and scans the transports' source for private
names reached outside it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import logging
import re
import textwrap
import warnings
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Final, Literal

from gateway.errors import UnsupportedServer

log = logging.getLogger("gateway.transports")

Group = Literal["ws-fast", "sse-fast", "http", "http-lean", "ws-lean", "ws-legacy", "asyncio"]

SANSIO: Final = "uvicorn.protocols.websockets.websockets_sansio_impl:WebSocketsSansIOProtocol"
LEGACY: Final = "uvicorn.protocols.websockets.websockets_impl:WebSocketProtocol"
HTTPTOOLS: Final = "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol"
CYCLE: Final = "uvicorn.protocols.http.httptools_impl:RequestResponseCycle"
FLOW: Final = "uvicorn.protocols.http.flow_control:FlowControl"
WS_CONN: Final = "websockets.server:ServerProtocol"
EVENT: Final = "asyncio.locks:Event"

EVENT_CALLS: Final = frozenset({"set", "clear", "wait", "is_set"})
"""What the gateway's `LeanEvent` is used for: all of `asyncio.Event`."""
ASGI_PATH: Final = "every frame takes the ASGI path (correct, slower fan-out)"
STOCK_OBJECT: Final = "uvicorn's own object is kept (correct, more memory per connection)"


@dataclass(frozen=True, slots=True)
class Internal:
    """One name reached on `owner` ("module:Class"): a class attribute (`on="class"`: methods,
    checked with `hasattr`), or an instance attribute (`on="instance"`: set in a method, checked
    in the source of the owner's classes, as no instance exists before a connection does)."""

    owner: str
    name: str
    group: Group
    on: Literal["class", "instance"] = "class"
    fallback: str = ""
    """What is lost without it; empty when the gateway protocol cannot work without it."""
    digest: str = ""
    """For a method the gateway copies and edits: sha256 (12 hex) of the tested source."""
    calls: frozenset[str] = frozenset()
    """For an attribute the gateway replaces with its own object: every method the owner's
    source may call on it (`self.<name>.<method>`), as the replacement provides only these."""

    @property
    def label(self) -> str:
        return f"{self.owner.replace(':', '.')}.{self.name}"


def _names(
    owner: str, names: str, group: Group, on: Literal["class", "instance"] = "class", **kw: Any
) -> tuple[Internal, ...]:
    return tuple(Internal(owner, name, group, on, **kw) for name in names.split())


INTERNALS: Final[tuple[Internal, ...]] = (
    # wire.py, WebSocketWire: the raw `send` is a bound method of the protocol; frames are
    # written to its transport unless it closed, is paused, or negotiated an extension.
    *_names(SANSIO, "send", "ws-fast", fallback=ASGI_PATH),
    *_names(
        SANSIO,
        "close_sent writable transport conn",
        "ws-fast",
        "instance",
        fallback=ASGI_PATH,
    ),
    *_names(WS_CONN, "extensions", "ws-fast", "instance", fallback=ASGI_PATH),
    # wire.py, ChunkedWire: the raw `send` is a bound method of the request cycle.
    *_names(CYCLE, "send", "sse-fast", fallback=ASGI_PATH),
    *_names(
        CYCLE,
        "disconnected response_complete chunked_encoding flow transport message_event",
        "sse-fast",
        "instance",
        fallback=ASGI_PATH,
    ),
    *_names(FLOW, "write_paused", "sse-fast", "instance", fallback=ASGI_PATH),
    # server.py, GuardedHttpToolsProtocol (--http lean | httptools)
    *_names(
        HTTPTOOLS,
        "connection_made connection_lost on_message_begin on_headers_complete "
        "handle_websocket_upgrade send_400_response _unset_keepalive_if_required "
        "_should_upgrade _unsupported_upgrade_warning",
        "http",
    ),
    Internal(HTTPTOOLS, "data_received", "http", digest="02c2572f1df5"),  # copied as `_parse`
    *_names(HTTPTOOLS, "client loop cycle transport parser logger", "http", "instance"),
    *_names(CYCLE, "response_complete", "http", "instance"),
    # server.py, LeanHttpToolsProtocol (--http lean): list-backed replacements
    Internal(
        HTTPTOOLS,
        "pipeline",
        "http-lean",
        "instance",
        fallback=STOCK_OBJECT,
        calls=frozenset({"appendleft", "pop"}),
    ),
    *_names(HTTPTOOLS, "flow", "http-lean", "instance", fallback=STOCK_OBJECT),
    Internal(
        FLOW,
        "_is_writable_event",
        "http-lean",
        "instance",
        fallback=STOCK_OBJECT,
        calls=EVENT_CALLS,
    ),
    Internal(
        CYCLE,
        "message_event",
        "http-lean",
        "instance",
        fallback=STOCK_OBJECT,
        calls=EVENT_CALLS,
    ),
    # server.py, LeanWebSocketProtocol (--ws lean, the default)
    *_names(
        SANSIO,
        "handle_connect handle_cont handle_text handle_bytes handle_ping handle_pong "
        "handle_close handle_parser_exception send connection_lost",
        "ws-lean",
    ),
    Internal(SANSIO, "data_received", "ws-lean", digest="0d468d6299c9"),  # copied, budgeted
    Internal(SANSIO, "handle_events", "ws-lean", digest="af7f9cc40c90"),  # copied: `_dispatch`
    Internal(SANSIO, "send_receive_event_to_app", "ws-lean", digest="935390da9a9c"),  # copied
    Internal(
        SANSIO,
        "queue",
        "ws-lean",
        "instance",
        calls=frozenset({"put_nowait", "get", "empty", "qsize"}),
    ),
    Internal(SANSIO, "writable", "ws-lean", "instance", calls=EVENT_CALLS),
    *_names(
        SANSIO,
        "app loop conn transport client frames curr_msg_data_type close_sent read_paused "
        "close_timer handshake_complete request response",
        "ws-lean",
        "instance",
    ),
    *_names(WS_CONN, "receive_data events_received data_to_send fail state", "ws-lean"),
    *_names(WS_CONN, "parser_exc", "ws-lean", "instance"),
    # legacy_ws.py, BudgetedLegacyWebSocketProtocol (--ws websockets)
    *_names(LEGACY, "read_frame fail_connection", "ws-legacy"),
    *_names(LEGACY, "app loop client", "ws-legacy", "instance"),
    # server.py, LeanEvent: an asyncio.Event whose waiters are a list, not a 64-slot deque
    Internal(
        EVENT,
        "_waiters",
        "asyncio",
        "instance",
        fallback=STOCK_OBJECT,
        calls=frozenset({"append", "remove"}),
    ),
)
"""The one place that names them; `check` reads nothing else."""

PACKAGES: Final = ("uvicorn", "websockets")
"""Distributions whose tested range (the gateway's own pins) error messages quote."""


@dataclass(frozen=True, slots=True)
class Problem:
    internal: Internal
    what: str

    @property
    def review(self) -> bool:
        """A copied method that changed, or a replaced object used in a new way: worth a
        warning (and a failing test), not a refusal to start."""
        return self.what.startswith(("changed since", "is now called"))

    @property
    def fatal(self) -> bool:
        return not self.internal.fallback and not self.review

    def __str__(self) -> str:
        lost = f"; {self.internal.fallback}" if self.internal.fallback else ""
        return f"{self.internal.label}: {self.what}{lost} ({tested_versions()})"


@functools.cache
def tested_versions() -> str:
    """'tested with uvicorn>=0.54,<0.55 ...; installed uvicorn 0.54.0 ...', from the gateway's
    own package metadata (the pins in pyproject.toml) and what is installed."""
    pins: dict[str, str] = {}
    try:
        for req in metadata.requires("gateway") or []:
            name = re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0]
            if name in PACKAGES:
                pins[name] = req.split(";")[0].replace("[standard]", "")
    except metadata.PackageNotFoundError:  # pragma: no cover - a source tree, not installed
        pass
    installed = []
    for name in PACKAGES:
        try:
            installed.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:  # pragma: no cover
            installed.append(f"{name} not installed")
    tested = ", ".join(pins.get(name, name) for name in PACKAGES)
    return f"tested with {tested}; installed {', '.join(installed)}"


def resolve(owner: str) -> Any:
    """The class (or module) `owner` names; ImportError or AttributeError if it is gone."""
    module_name, _, class_name = owner.partition(":")
    with warnings.catch_warnings():  # uvicorn's legacy websockets module warns on import
        warnings.simplefilter("ignore")
        target: Any = importlib.import_module(module_name)
    for part in filter(None, class_name.split(".")):
        target = getattr(target, part)
    return target


@functools.cache
def _source(cls: type) -> str:
    """The source of `cls` and of its bases from outside the gateway (attributes may be set by
    any of them); empty if a class has no source file (then instance checks cannot pass)."""
    texts = []
    for klass in inspect.getmro(cls):
        if klass is object or klass.__module__.startswith("gateway"):
            continue
        try:
            texts.append(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
    return "\n".join(texts)


def digest(function: Any) -> str:
    """sha256 (12 hex) of a function's dedented source: changes when uvicorn edits it."""
    text = textwrap.dedent(inspect.getsource(function))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def problems_of(internal: Internal, owner: Any, *, deep: bool = True) -> list[str]:
    """What is wrong with one declared internal on `owner` (a class); empty if nothing.

    `deep=False` checks only what costs nothing (the class, its class-level attributes): the
    rest reads uvicorn's source (instance attributes, digests, calls), ~0.2 s at every start,
    and is the test suite's to check (`tests/transports/test_internals.py`), for the pinned
    range; the start-up check catches a class or method that is gone."""
    name = internal.name
    found: list[str] = []
    if internal.on == "class":
        if not hasattr(owner, name):
            return [f"{owner.__name__} has no attribute {name!r}"]
    elif not deep:
        return []
    else:
        source = _source(owner) if isinstance(owner, type) else ""
        assigned = re.compile(rf"\bself\.{re.escape(name)}\s*(?::[^=\n]+)?=(?!=)")
        if not assigned.search(source):
            return [f"{getattr(owner, '__name__', owner)} no longer sets self.{name}"]
    if not deep:
        return found
    if internal.digest:
        try:
            now = digest(getattr(owner, name))
        except (OSError, TypeError):
            now = "unknown (no source)"
        if now != internal.digest:
            found.append(
                f"changed since the tested version (source sha256 {now}, tested "
                f"{internal.digest}): review the gateway's copy of it"
            )
    if internal.calls:
        source = _source(owner) if isinstance(owner, type) else ""
        used = set(re.findall(rf"\bself\.{re.escape(name)}\.(\w+)\(", source))
        extra = used - internal.calls
        if extra:
            found.append(
                f"is now called with {sorted(extra)}, which the gateway's replacement lacks"
            )
    return found


def check(internals: tuple[Internal, ...] = INTERNALS, *, deep: bool = True) -> list[Problem]:
    """Every problem with the declared internals, against what is installed (`deep`: see
    `problems_of`)."""
    out: list[Problem] = []
    for internal in internals:
        try:
            owner = resolve(internal.owner)
        except (ImportError, AttributeError) as exc:
            out.append(Problem(internal, f"cannot be found ({exc})"))
            continue
        out.extend(Problem(internal, what) for what in problems_of(internal, owner, deep=deep))
    return out


@functools.cache
def available(group: Group) -> bool:
    """Whether a group with a safe fallback can be used; if not, says so once, in a warning
    (cached: the first connection checks, the others read the answer)."""
    found = check(tuple(i for i in INTERNALS if i.group == group), deep=False)
    for problem in found:
        log.warning("%s", problem)
    return all(p.review for p in found)


def groups_for(http: str, ws: str) -> tuple[Group, ...]:
    """The groups `gateway serve --http HTTP --ws WS` uses."""
    groups: list[Group] = ["asyncio"]
    if http in ("lean", "httptools"):
        groups += ["http", "sse-fast"]
    if http == "lean":
        groups.append("http-lean")
    if ws == "lean":
        groups += ["ws-lean", "ws-fast"]
    elif ws == "websockets-sansio":
        groups.append("ws-fast")
    elif ws == "websockets":
        groups.append("ws-legacy")
    return tuple(groups)


def require(*groups: Group) -> None:
    """Check the groups once at start: raise `UnsupportedServer` naming every internal a
    protocol cannot work without; warn (once) about the rest, and settle `available` for the
    connections to come."""
    found = check(tuple(i for i in INTERNALS if i.group in groups), deep=False)
    fatal = [p for p in found if p.fatal]
    if fatal:
        lines = "\n  ".join(map(str, fatal))
        raise UnsupportedServer(
            f"the installed uvicorn/websockets lack what the gateway's protocols use:\n  {lines}\n"
            "install the tested versions, or run `gateway serve --http h11 --ws websockets-sansio`"
        )
    for group in groups:
        available(group)
