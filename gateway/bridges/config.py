"""The bridge's configuration: one TOML file (or flags), validated before anything connects.

Pydantic models with `extra="forbid"`: a misspelt key is an error naming it
(`sources[1].routes[0].chanel: unknown key`), as is a template naming a wildcard its pattern
lacks. The broker libraries are not imported here: a configuration is checked without them.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway.backends.url import REDIS, backend_kind
from gateway.bridges import routes as routing
from gateway.errors import SettingsError

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RouteConfig(Strict):
    """`match` (the broker's wildcards) → `channel` template, event `type`, `format`."""

    match: str = Field(description="topic filter in the source's own wildcard syntax")
    channel: str = Field(description="channel name template: {1}, {2}... wildcards, {topic}")
    type: str = Field("message", description="event type template")
    type_field: str | None = Field(None, description="take the type from this JSON field")
    data_field: str | None = Field(None, description="take the data from this JSON field")
    format: routing.Format = "json"


class SourceConfig(Strict):
    name: Name = Field(description="names the source in metrics, logs and dedup keys")
    prefetch: int = Field(100, ge=1, le=10_000, description="messages in flight at most")
    routes: list[RouteConfig] = Field(min_length=1)


class RabbitMQConfig(SourceConfig):
    kind: Literal["rabbitmq"]
    url: str = Field(pattern=r"^amqps?://")
    exchange: str
    exchange_type: Literal["topic", "direct", "fanout", "headers"] = "topic"
    queue: str = Field(min_length=1, description="a durable queue, declared if missing")
    bindings: list[str] = Field(["#"], min_length=1)
    dead_letter_exchange: str | None = Field(
        None, description="x-dead-letter-exchange of the queue: where rejected messages go"
    )


class MQTTConfig(SourceConfig):
    kind: Literal["mqtt"]
    url: str = Field(pattern=r"^mqtt://")
    client_id: str = Field(min_length=1, max_length=64, description="the persistent session")
    topics: list[str] = Field(min_length=1)
    session_expiry: int = Field(
        7 * 86400,
        ge=60,
        description="seconds the broker keeps the "
        "session (and queues messages) while the bridge is away",
    )


class NATSConfig(SourceConfig):
    kind: Literal["nats"]
    url: str = Field(pattern=r"^(nats|tls)://")
    stream: str
    subjects: list[str] | None = Field(
        None, description="create the stream with these subjects if it does not exist"
    )
    durable: Name
    filter_subject: str | None = None
    ack_wait: float = Field(30.0, gt=0, le=3600)


class PostgresConfig(SourceConfig):
    kind: Literal["postgres"]
    url: str = Field(pattern=r"^postgres(ql)?://")
    table: Identifier = "gateway_outbox"
    notify_channel: Identifier = "gateway_outbox"
    poll_interval: float = Field(
        5.0, gt=0, le=3600, description="seconds between polls when no NOTIFY comes (a fallback)"
    )
    create: bool = Field(True, description="create the table, trigger and dead-letter table")


AnySource = Annotated[
    RabbitMQConfig | MQTTConfig | NATSConfig | PostgresConfig, Field(discriminator="kind")
]

SYNTAX: dict[str, routing.Syntax] = {
    "rabbitmq": routing.AMQP,
    "mqtt": routing.MQTT,
    "nats": routing.NATS,
    "postgres": routing.AMQP,
}
"""Each kind's topic syntax; an outbox row's topic is matched like an AMQP routing key."""


class BridgeConfig(Strict):
    redis_url: str = Field(
        min_length=1, description="the gateways' REDIS_URL: Redis or a Redis Cluster"
    )
    metrics_port: int | None = Field(None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    dedup_ttl: int = Field(
        7 * 86400, ge=60, description="seconds a message id is remembered against redelivery"
    )
    sources: list[AnySource] = Field(min_length=1)

    @field_validator("redis_url")
    @classmethod
    def _a_redis(cls, url: str) -> str:
        """A URL `gateway serve` would read as Redis or a Redis Cluster (`backend_kind`)."""
        try:
            kind = backend_kind(url)
        except SettingsError as exc:
            raise ValueError(str(exc)) from None
        if kind != REDIS:
            raise ValueError(
                "the bridges publish into Redis: redis://, rediss://, unix:// or "
                "redis+cluster://host:port[,host:port...]"
            )
        return url


def compile_routes(source: SourceConfig, kind: str, where: str) -> routing.Routes:
    """The source's rules, compiled with its broker's syntax; `SettingsError` naming the key."""
    compiled = []
    for index, route in enumerate(source.routes):
        try:
            compiled.append(
                routing.Route(
                    route.match,
                    route.channel,
                    SYNTAX[kind],
                    type=route.type,
                    type_field=route.type_field,
                    data_field=route.data_field,
                    format=route.format,
                )
            )
        except ValueError as exc:
            raise SettingsError(f"{where}.routes[{index}]: {exc}") from None
    return routing.Routes(compiled)


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in {"rabbitmq", "mqtt", "nats", "postgres"} and text.endswith("]"):
            continue  # the union's branch, not a key the user wrote
        else:
            text += f".{part}" if text else str(part)
    return text


def validate(raw: dict[str, Any], origin: str) -> BridgeConfig:
    """A `BridgeConfig` from parsed TOML (or flags); `SettingsError` lists every bad key."""
    try:
        config = BridgeConfig.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
            lines.append(f"{_location(error['loc']) or '(top level)'}: {message}")
        raise SettingsError(f"{origin}: " + "; ".join(lines)) from None
    names = [source.name for source in config.sources]
    for index, source in enumerate(config.sources):
        if names.count(source.name) > 1:
            raise SettingsError(f"{origin}: sources[{index}].name: {source.name!r} is used twice")
        compile_routes(source, source.kind, f"{origin}: sources[{index}]")
    return config


def load(path: Path, redis_url: str = "") -> BridgeConfig:
    """The file's configuration; `redis_url` (REDIS_URL) when the file names none."""
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise SettingsError(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not TOML: {exc}") from None
    if redis_url:
        raw.setdefault("redis_url", redis_url)
    return validate(raw, str(path))
