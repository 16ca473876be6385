"""Settings: read once at start from `GATEWAY_*` variables (and `REDIS_URL`), then frozen.

A bad value raises `SettingsError` naming the variable, so a typo stops the start with a clear
message instead of surfacing later as odd behaviour.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from gateway.events import namespace_of

T = TypeVar("T")
PROJECT_STATIC = Path(__file__).resolve().parent.parent / "static"


class SettingsError(ValueError):
    """A configuration value that cannot be used; the message names the variable."""


@dataclass(frozen=True, slots=True)
class Retention:
    """How much of a channel's history the bus keeps: at most `size` events for `ttl` seconds."""

    size: int
    ttl: int


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    redis_url: str = ""
    embedded_worker: bool | None = None
    """Run job handlers inside the gateway process; `None` means yes only on the memory backend."""
    concurrency: int = 4
    handlers: tuple[str, ...] = ()
    history_size: int = 1000
    history_ttl: int = 86_400
    retention: Mapping[str, Retention] = field(
        default_factory=lambda: {
            "job": Retention(size=10_000, ttl=86_400),
            "room": Retention(size=500, ttl=3_600),
        }
    )
    visibility_timeout: float = 30.0
    max_attempts: int = 3
    slow_consumer_queue: int = 1000
    pubsub_probe: float = 5.0
    """Seconds of pub/sub silence before the reader pings; no answer in as long means dead."""
    sse_ping: float = 15.0
    sse_retry_ms: int = 2000
    job_ttl: int = 86_400
    max_wait: float = 60.0
    data_dir: Path = field(default_factory=lambda: Path.cwd() / "data")
    static_dir: Path = PROJECT_STATIC
    log_level: str = "info"

    @property
    def backend_kind(self) -> str:
        return "redis" if self.redis_url else "memory"

    @property
    def runs_embedded_worker(self) -> bool:
        if self.embedded_worker is None:
            return not self.redis_url
        return self.embedded_worker

    def retention_for(self, channel: str) -> Retention:
        rule = self.retention.get(namespace_of(channel))
        return rule or Retention(size=self.history_size, ttl=self.history_ttl)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from the environment, then apply explicit (CLI) overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}

        def read(name: str, key: str, parse: Callable[[str], Any]) -> None:
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                return
            try:
                values[key] = parse(raw.strip())
            except (ValueError, TypeError) as exc:
                raise SettingsError(f"{name}={raw!r}: {exc}") from None

        read("REDIS_URL", "redis_url", _redis_url)
        read("GATEWAY_REDIS_URL", "redis_url", _redis_url)
        read("GATEWAY_HOST", "host", str)
        read("GATEWAY_PORT", "port", _bounded(int, 0, 65535))
        read("PORT", "port", _bounded(int, 0, 65535))
        read("GATEWAY_WORKERS", "workers", _bounded(int, 1, 64))
        read("GATEWAY_EMBEDDED_WORKER", "embedded_worker", _flag)
        read("GATEWAY_CONCURRENCY", "concurrency", _bounded(int, 1, 1000))
        read("GATEWAY_HANDLERS", "handlers", lambda s: tuple(s.replace(",", " ").split()))
        read("GATEWAY_HISTORY_SIZE", "history_size", _bounded(int, 1, 10_000_000))
        read("GATEWAY_HISTORY_TTL", "history_ttl", _bounded(int, 1, 10 * 365 * 86_400))
        read("GATEWAY_RETENTION", "retention", _retention)
        read("GATEWAY_VISIBILITY_TIMEOUT", "visibility_timeout", _bounded(float, 0.1, 86_400))
        read("GATEWAY_MAX_ATTEMPTS", "max_attempts", _bounded(int, 1, 1000))
        read("GATEWAY_SLOW_CONSUMER_QUEUE", "slow_consumer_queue", _bounded(int, 1, 10_000_000))
        read("GATEWAY_PUBSUB_PROBE", "pubsub_probe", _bounded(float, 0.1, 3600))
        read("GATEWAY_SSE_PING", "sse_ping", _bounded(float, 0.1, 3600))
        read("GATEWAY_SSE_RETRY_MS", "sse_retry_ms", _bounded(int, 0, 3_600_000))
        read("GATEWAY_JOB_TTL", "job_ttl", _bounded(int, 1, 10 * 365 * 86_400))
        read("GATEWAY_MAX_WAIT", "max_wait", _bounded(float, 0, 3600))
        read("GATEWAY_DATA_DIR", "data_dir", Path)
        read("GATEWAY_STATIC_DIR", "static_dir", Path)
        read("GATEWAY_LOG_LEVEL", "log_level", _log_level)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        if settings.workers > 1 and not settings.redis_url:
            raise SettingsError(
                "--workers N > 1 needs REDIS_URL: processes share events only through Redis"
            )
        return settings

    def to_env(self) -> dict[str, str]:
        """The environment that rebuilds these settings in a child process (uvicorn workers)."""
        env = {
            "REDIS_URL": self.redis_url,
            "GATEWAY_HOST": self.host,
            "GATEWAY_PORT": str(self.port),
            "GATEWAY_CONCURRENCY": str(self.concurrency),
            "GATEWAY_HANDLERS": " ".join(self.handlers),
            "GATEWAY_HISTORY_SIZE": str(self.history_size),
            "GATEWAY_HISTORY_TTL": str(self.history_ttl),
            "GATEWAY_RETENTION": " ".join(
                f"{ns}={r.size}/{r.ttl}" for ns, r in self.retention.items()
            ),
            "GATEWAY_VISIBILITY_TIMEOUT": str(self.visibility_timeout),
            "GATEWAY_MAX_ATTEMPTS": str(self.max_attempts),
            "GATEWAY_SLOW_CONSUMER_QUEUE": str(self.slow_consumer_queue),
            "GATEWAY_PUBSUB_PROBE": str(self.pubsub_probe),
            "GATEWAY_SSE_PING": str(self.sse_ping),
            "GATEWAY_SSE_RETRY_MS": str(self.sse_retry_ms),
            "GATEWAY_JOB_TTL": str(self.job_ttl),
            "GATEWAY_MAX_WAIT": str(self.max_wait),
            "GATEWAY_DATA_DIR": str(self.data_dir),
            "GATEWAY_STATIC_DIR": str(self.static_dir),
            "GATEWAY_LOG_LEVEL": self.log_level,
        }
        if self.embedded_worker is not None:
            env["GATEWAY_EMBEDDED_WORKER"] = "1" if self.embedded_worker else "0"
        return env


def _bounded(kind: Callable[[str], T], low: float, high: float) -> Callable[[str], T]:
    def parse(raw: str) -> T:
        value = kind(raw)
        if not low <= value <= high:  # type: ignore[operator]
            raise ValueError(f"must be between {low:g} and {high:g}")
        return value

    return parse


def _flag(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


def _redis_url(raw: str) -> str:
    if not raw.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("expected redis://host:port/db, rediss://... or unix://path")
    return raw


def _log_level(raw: str) -> str:
    lowered = raw.lower()
    if lowered not in {"critical", "error", "warning", "info", "debug", "trace"}:
        raise ValueError("expected one of critical, error, warning, info, debug, trace")
    return lowered


def _retention(raw: str) -> dict[str, Retention]:
    """Parse `job=10000/86400 room=500/3600` (namespace=size/ttl-seconds)."""
    rules: dict[str, Retention] = {}
    for item in raw.replace(",", " ").split():
        namespace, eq, spec = item.partition("=")
        size, slash, ttl = spec.partition("/")
        if not eq or not slash or not namespace:
            raise ValueError(f"{item!r}: expected namespace=size/ttl, like room=500/3600")
        rules[namespace] = Retention(size=int(size), ttl=int(ttl))
        if rules[namespace].size < 1 or rules[namespace].ttl < 1:
            raise ValueError(f"{item!r}: size and ttl must be positive")
    return rules
