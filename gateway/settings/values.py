"""The value types of settings: how each is parsed from a variable's text and written back.

Each type is `Annotated` with a parser (applied to text only: keyword construction passes
values as they are) and a renderer (`model_dump(mode="json")`), so that `Settings.to_env` and
the README's defaults come out in the very format the parser reads.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

DEFAULT_HISTORY_BYTES = 4 * 1024 * 1024
"""Bytes of history a channel keeps when its namespace rule names no byte budget."""
DEFAULT_MAX_EVENT_SIZES: Mapping[str, int] = {"job": 0, "room": 64 * 1024, "*": 64 * 1024}
"""Largest stored event per namespace in bytes (0: no limit; `*`: namespaces not named). Job
channels have none: only workers write them, and a job's result must not be refused."""
CHANNEL_RULE_WORDS = frozenset({"open", "token", "subject", "none"})
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


@dataclass(frozen=True, slots=True)
class Retention:
    """How much of a channel's history the bus keeps: at most `size` events and `max_bytes`
    bytes of stored events (the oldest go first; the newest event is always kept), each for at
    most `ttl` seconds. The byte budget is what bounds Redis memory and the cost of a replay:
    a count alone lets a few large events make a channel's history huge."""

    size: int
    ttl: int
    max_bytes: int = DEFAULT_HISTORY_BYTES


def _text(parse: Callable[[str], Any]) -> BeforeValidator:
    """Parse text (a variable, a flag); let values of the field's own type through."""
    return BeforeValidator(lambda value: parse(value) if isinstance(value, str) else value)


def _render(render: Callable[[Any], str]) -> PlainSerializer:
    return PlainSerializer(render, return_type=str, when_used="json")


def _items(raw: str) -> list[str]:
    return raw.replace(",", " ").split()


def _namespaces(raw: str) -> tuple[str, ...]:
    items = _items(raw)
    return () if items == ["none"] else tuple(items)


def _namespace_words(value: tuple[str, ...]) -> str:
    return " ".join(value) or "none"


def parse_flag(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


def parse_redis_url(raw: str) -> str:
    """`memory://` means the same as no URL; which other schemes open a backend is for
    `gateway.backends.url` to say (the CLI checks with it before starting)."""
    if raw.lower().startswith("memory://"):
        return ""
    if raw and "://" not in raw:
        raise ValueError("expected memory://, redis://host:port/db, rediss://... or unix://path")
    return raw


def parse_log_level(raw: str) -> str:
    lowered = raw.lower()
    if lowered not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
    return lowered


def parse_networks(raw: str) -> tuple[str, ...]:
    """IP addresses and CIDR networks (`10.0.0.0/8 ::1`), normalised to networks."""
    networks: list[str] = []
    for item in _items(raw):
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
    return tuple(networks)


def parse_channel_rules(raw: str) -> dict[str, tuple[str, str]]:
    """Parse `room=token/token news=open/none` (namespace=subscribe-rule/publish-rule)."""
    rules: dict[str, tuple[str, str]] = {}
    for item in _items(raw):
        namespace, eq, spec = item.partition("=")
        subscribe, slash, publish = spec.partition("/")
        if not eq or not slash or not namespace:
            raise ValueError(f"{item!r}: expected namespace=subscribe/publish, like news=open/none")
        for word in (subscribe, publish):
            if word not in CHANNEL_RULE_WORDS:
                raise ValueError(f"{item!r}: rules are {', '.join(sorted(CHANNEL_RULE_WORDS))}")
        rules[namespace] = (subscribe, publish)
    return rules


def parse_retention(raw: str) -> dict[str, Retention]:
    """Parse `job=10000/86400 room=500/3600/4194304` (namespace=size/ttl-seconds[/bytes]).

    A rule without bytes gets 0 here, replaced by GATEWAY_HISTORY_BYTES in `from_env`.
    """
    rules: dict[str, Retention] = {}
    for item in _items(raw):
        namespace, eq, spec = item.partition("=")
        parts = spec.split("/")
        if not eq or not namespace or len(parts) not in (2, 3):
            raise ValueError(
                f"{item!r}: expected namespace=size/ttl[/bytes], like room=500/3600/4194304"
            )
        numbers = [int(part) for part in parts]
        if any(number < 1 for number in numbers):
            raise ValueError(f"{item!r}: size, ttl and bytes must be positive")
        size, ttl, max_bytes = (*numbers, 0) if len(numbers) == 2 else numbers
        rules[namespace] = Retention(size, ttl, max_bytes)
    return rules


def parse_max_event_size(raw: str) -> dict[str, int]:
    """Parse `room=65536 job=0 *=16384` (namespace=bytes; 0: no limit; `*`: the others)."""
    limits: dict[str, int] = {}
    for item in _items(raw):
        namespace, eq, size = item.partition("=")
        if not eq or not namespace:
            raise ValueError(f"{item!r}: expected namespace=bytes, like room=65536")
        limits[namespace] = int(size)
        if not 0 <= limits[namespace] <= 1 << 32:
            raise ValueError(f"{item!r}: bytes must be between 0 (no limit) and 2^32")
    return limits


@dataclass(frozen=True, slots=True)
class ReplicaWait:
    """A publish counts once `replicas` replicas acknowledged it (Redis `WAIT`), waiting at
    most `timeout_ms` milliseconds."""

    replicas: int
    timeout_ms: int


def parse_replica_wait(raw: str) -> dict[str, ReplicaWait]:
    """Parse `job=1/500 orders=2/1000` (namespace=replicas/timeout-ms)."""
    rules: dict[str, ReplicaWait] = {}
    for item in _items(raw):
        namespace, eq, spec = item.partition("=")
        replicas, slash, timeout = spec.partition("/")
        if not eq or not namespace or not slash or not replicas.isdigit() or not timeout.isdigit():
            raise ValueError(f"{item!r}: expected namespace=replicas/timeout_ms, like job=1/500")
        rule = ReplicaWait(int(replicas), int(timeout))
        if not 1 <= rule.replicas <= 16 or not 1 <= rule.timeout_ms <= 60_000:
            raise ValueError(f"{item!r}: replicas 1..16, timeout 1..60000 ms")
        rules[namespace] = rule
    return rules


def parse_webhook_secrets(raw: str) -> tuple[str, ...]:
    """`whsec_<base64>` secrets, space-separated (Standard Webhooks' format)."""
    secrets = tuple(raw.split())
    for secret in secrets:
        if not secret.startswith("whsec_"):
            raise ValueError("each secret must look like whsec_<base64>")
        try:
            key = base64.b64decode(secret[6:], validate=True)
        except binascii.Error:
            raise ValueError("the part after whsec_ must be base64") from None
        if len(key) < 24:
            raise ValueError("each secret must hold at least 24 bytes")
    return secrets


def parse_job_timeouts(raw: str) -> dict[str, float]:
    """Parse `sleep=30 data_analysis=120` (job type=seconds)."""
    timeouts: dict[str, float] = {}
    for item in _items(raw):
        name, eq, seconds = item.partition("=")
        if not eq or not name:
            raise ValueError(f"{item!r}: expected type=seconds, like sleep=30")
        value = float(seconds)
        if not 0 < value <= 30 * 86_400:
            raise ValueError(f"{item!r}: seconds must be positive")
        timeouts[name] = value
    return timeouts


def _pairs(render: Callable[[Any], str]) -> Callable[[Mapping[str, Any]], str]:
    return lambda mapping: " ".join(f"{key}={render(value)}" for key, value in mapping.items())


def _words(values: tuple[str, ...]) -> str:
    return " ".join(values)


Flag = Annotated[bool, _text(parse_flag), _render(lambda on: "1" if on else "0")]
RedisUrl = Annotated[str, _text(parse_redis_url)]
LogLevel = Annotated[str, _text(parse_log_level)]
Words = Annotated[tuple[str, ...], _text(str.split), _render(_words)]
"""Space-separated words (keys, secrets, origins, host names)."""
Namespaces = Annotated[tuple[str, ...], _text(_namespaces), _render(_namespace_words)]
"""Channel namespaces, separated by spaces or commas; `none` for none (an empty variable is
unset: the default applies)."""
Modules = Annotated[tuple[str, ...], _text(_items), _render(_words)]
"""Python module names, separated by spaces or commas."""
Networks = Annotated[tuple[str, ...], _text(parse_networks), _render(_words)]
WebhookSecrets = Annotated[tuple[str, ...], _text(parse_webhook_secrets), _render(_words)]
ChannelRules = Annotated[
    Mapping[str, tuple[str, str]],
    _text(parse_channel_rules),
    _render(_pairs(lambda rule: f"{rule[0]}/{rule[1]}")),
]
RetentionRules = Annotated[
    Mapping[str, Retention],
    _text(parse_retention),
    _render(_pairs(lambda r: f"{r.size}/{r.ttl}/{r.max_bytes}")),
]
ReplicaWaitRules = Annotated[
    Mapping[str, ReplicaWait],
    _text(parse_replica_wait),
    _render(_pairs(lambda rule: f"{rule.replicas}/{rule.timeout_ms}")),
]
EventSizes = Annotated[Mapping[str, int], _text(parse_max_event_size), _render(_pairs(str))]
JobTimeouts = Annotated[
    Mapping[str, float], _text(parse_job_timeouts), _render(_pairs(lambda s: f"{s:g}"))
]
