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

from gateway.errors import SettingsError
from gateway.events import namespace_of

T = TypeVar("T")


def bundled_static_dir() -> Path:
    """The dashboard and gateway.js: inside the package when installed from a wheel (pyproject
    maps the top-level static/ to `gateway.static`), else a checkout's (or editable install's)
    top-level static/."""
    package = Path(__file__).resolve().parent
    packaged = package / "static"
    return packaged if packaged.is_dir() else package.parent / "static"


PROJECT_STATIC = bundled_static_dir()


DEFAULT_HISTORY_BYTES = 4 * 1024 * 1024
"""Bytes of history a channel keeps when its namespace rule names no byte budget."""
DEFAULT_MAX_EVENT_SIZES: Mapping[str, int] = {"job": 0, "room": 64 * 1024, "*": 64 * 1024}
"""Largest stored event per namespace in bytes (0: no limit; `*`: namespaces not named). Job
channels have none: only workers write them, and a job's result must not be refused."""


@dataclass(frozen=True, slots=True)
class Retention:
    """How much of a channel's history the bus keeps: at most `size` events and `max_bytes`
    bytes of stored events (the oldest go first; the newest event is always kept), each for at
    most `ttl` seconds. The byte budget is what bounds Redis memory and the cost of a replay:
    a count alone lets a few large events make a channel's history huge."""

    size: int
    ttl: int
    max_bytes: int = DEFAULT_HISTORY_BYTES


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
    history_bytes: int = DEFAULT_HISTORY_BYTES
    retention: Mapping[str, Retention] = field(
        default_factory=lambda: {
            "job": Retention(size=10_000, ttl=86_400, max_bytes=16 * 1024 * 1024),
            "room": Retention(size=500, ttl=3_600, max_bytes=4 * 1024 * 1024),
        }
    )
    max_event_size: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_MAX_EVENT_SIZES))
    """See `DEFAULT_MAX_EVENT_SIZES`; `GATEWAY_MAX_EVENT_SIZE` overrides the namespaces it names."""
    visibility_timeout: float = 30.0
    max_attempts: int = 3
    slow_consumer_queue: int = 1000
    pubsub_probe: float = 5.0
    """Seconds of pub/sub silence before the reader pings; no answer in as long means dead."""
    sse_ping: float = 5.0
    """Seconds between SSE keep-alive comments: they keep proxies from closing an idle stream
    and let a client that watches the bytes notice a dead link (`?heartbeat=` asks for more)."""
    sse_retry_ms: int = 2000
    job_ttl: int = 86_400
    max_wait: float = 60.0
    webhook_secrets: tuple[str, ...] = ()
    """`whsec_...` secrets for webhook signatures: the first signs, all sign during rotation."""
    webhook_allow_private: bool = False
    """Permit callback URLs on loopback/private/link-local addresses (off: SSRF guard)."""
    webhook_timeout: float = 10.0
    webhook_max_attempts: int = 8
    webhook_backoff: float = 2.0
    """Base of the exponential webhook retry backoff (seconds, full jitter, capped at 1 h)."""
    idempotency_ttl: int = 86_400
    job_timeout: float = 0.0
    """Default handler timeout in seconds (0: none) for types without their own."""
    job_timeouts: Mapping[str, float] = field(default_factory=dict)
    """Per-type handler timeouts, winning over the handler's declared `timeout`."""
    cancel_grace: float = 2.0
    """Seconds a running handler gets to stop on its own after a cancel, before it is cancelled."""
    data_dir: Path = field(default_factory=lambda: Path.cwd() / "data")
    static_dir: Path = PROJECT_STATIC
    log_level: str = "info"
    api_keys: tuple[str, ...] = ()
    """Keys for server-side calls; none means open (dev) mode, announced loudly at start."""
    secrets: tuple[str, ...] = ()
    """Channel token secrets: the first signs, all verify (rotation)."""
    ephemeral_secret: str = ""
    """A generated secret shared by `serve --workers N` processes; not a configured one."""
    require_auth: bool = False
    allowed_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    """`Host` names served: exact names, `.example.com` for it and its subdomains, `*` any.
    Empty: in dev mode only names of this machine (DNS rebinding guard), else any."""
    channel_rules: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    """Per-namespace `(subscribe, publish)` rules overriding the defaults in `gateway.auth`."""
    token_ttl: int = 3600
    max_token_ttl: int = 86_400
    max_body: int = 1024 * 1024
    max_message: int = 64 * 1024
    max_subscriptions: int = 100
    max_connections_per_client: int = 256
    """Open TCP connections per peer address, and WebSocket + SSE streams per client address."""
    header_timeout: float = 10.0
    """Seconds from a connection's start (or a keep-alive request's first byte) to a complete
    request head; idle and unfinished connections are closed after it."""
    connect_rate: float = 20.0
    """New TCP connections per second per peer address (0: no limit), refused with 429 over it;
    `connect_burst` of them may come at once."""
    connect_burst: int = 100
    trusted_proxies: tuple[str, ...] = ()
    """Networks whose `X-Forwarded-For` names the client; empty trusts no one's."""
    publish_rate: float = 20.0
    publish_burst: int = 40
    submit_rate: float = 10.0
    submit_burst: int = 20
    ws_read_frames: float = 1000.0
    """WebSocket frames (control frames and fragments too) a connection may send per second."""
    ws_read_bytes: int = 2 * 1024 * 1024
    """Bytes a WebSocket connection may send per second."""

    @property
    def dev_mode(self) -> bool:
        """No API keys and no token secret configured: everything open, for local use."""
        return not self.api_keys and not self.secrets

    @property
    def runs_embedded_worker(self) -> bool:
        if self.embedded_worker is None:
            return not self.redis_url
        return self.embedded_worker

    def retention_for(self, channel: str) -> Retention:
        rule = self.retention.get(namespace_of(channel))
        return rule or Retention(self.history_size, self.history_ttl, self.history_bytes)

    def max_event_size_for(self, channel: str) -> int:
        """The largest event `channel` accepts, in bytes; 0 means no limit."""
        limits = self.max_event_size
        return limits.get(namespace_of(channel), limits.get("*", 0))

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
        read("GATEWAY_HISTORY_BYTES", "history_bytes", _bounded(int, 1, 1 << 40))
        read("GATEWAY_RETENTION", "retention", _retention)
        read("GATEWAY_MAX_EVENT_SIZE", "max_event_size", _max_event_size)
        read("GATEWAY_VISIBILITY_TIMEOUT", "visibility_timeout", _bounded(float, 0.1, 86_400))
        read("GATEWAY_MAX_ATTEMPTS", "max_attempts", _bounded(int, 1, 1000))
        read("GATEWAY_SLOW_CONSUMER_QUEUE", "slow_consumer_queue", _bounded(int, 1, 10_000_000))
        read("GATEWAY_PUBSUB_PROBE", "pubsub_probe", _bounded(float, 0.1, 3600))
        read("GATEWAY_SSE_PING", "sse_ping", _bounded(float, 0.1, 3600))
        read("GATEWAY_SSE_RETRY_MS", "sse_retry_ms", _bounded(int, 0, 3_600_000))
        read("GATEWAY_JOB_TTL", "job_ttl", _bounded(int, 1, 10 * 365 * 86_400))
        read("GATEWAY_MAX_WAIT", "max_wait", _bounded(float, 0, 3600))
        read("GATEWAY_WEBHOOK_SECRET", "webhook_secrets", _webhook_secrets)
        read("GATEWAY_WEBHOOK_ALLOW_PRIVATE", "webhook_allow_private", _flag)
        read("GATEWAY_WEBHOOK_TIMEOUT", "webhook_timeout", _bounded(float, 0.1, 300))
        read("GATEWAY_WEBHOOK_MAX_ATTEMPTS", "webhook_max_attempts", _bounded(int, 1, 100))
        read("GATEWAY_WEBHOOK_BACKOFF", "webhook_backoff", _bounded(float, 0.01, 3600))
        read("GATEWAY_IDEMPOTENCY_TTL", "idempotency_ttl", _bounded(int, 1, 366 * 86_400))
        read("GATEWAY_JOB_TIMEOUT", "job_timeout", _bounded(float, 0, 30 * 86_400))
        read("GATEWAY_JOB_TIMEOUTS", "job_timeouts", _job_timeouts)
        read("GATEWAY_CANCEL_GRACE", "cancel_grace", _bounded(float, 0, 3600))
        read("GATEWAY_DATA_DIR", "data_dir", Path)
        read("GATEWAY_STATIC_DIR", "static_dir", Path)
        read("GATEWAY_LOG_LEVEL", "log_level", _log_level)
        read("GATEWAY_API_KEYS", "api_keys", _words)
        read("GATEWAY_SECRET", "secrets", _words)
        read("GATEWAY_EPHEMERAL_SECRET", "ephemeral_secret", str)
        read("GATEWAY_REQUIRE_AUTH", "require_auth", _flag)
        read("GATEWAY_ALLOWED_ORIGINS", "allowed_origins", _words)
        read("GATEWAY_ALLOWED_HOSTS", "allowed_hosts", _words)
        read("GATEWAY_CHANNEL_POLICY", "channel_rules", _channel_rules)
        read("GATEWAY_TOKEN_TTL", "token_ttl", _bounded(int, 1, 366 * 86_400))
        read("GATEWAY_MAX_TOKEN_TTL", "max_token_ttl", _bounded(int, 1, 366 * 86_400))
        read("GATEWAY_MAX_BODY", "max_body", _bounded(int, 1, 1 << 32))
        read("GATEWAY_MAX_MESSAGE", "max_message", _bounded(int, 64, 1 << 28))
        read("GATEWAY_MAX_SUBSCRIPTIONS", "max_subscriptions", _bounded(int, 1, 1_000_000))
        read(
            "GATEWAY_MAX_CONNECTIONS_PER_CLIENT",
            "max_connections_per_client",
            _bounded(int, 0, 10_000_000),
        )
        read("GATEWAY_HEADER_TIMEOUT", "header_timeout", _bounded(float, 0.1, 3600))
        read("GATEWAY_CONNECT_RATE", "connect_rate", _bounded(float, 0, 1e9))
        read("GATEWAY_CONNECT_BURST", "connect_burst", _bounded(int, 1, 1_000_000_000))
        read("GATEWAY_TRUSTED_PROXIES", "trusted_proxies", _networks)
        read("GATEWAY_PUBLISH_RATE", "publish_rate", _bounded(float, 0, 1e9))
        read("GATEWAY_PUBLISH_BURST", "publish_burst", _bounded(int, 1, 1_000_000_000))
        read("GATEWAY_SUBMIT_RATE", "submit_rate", _bounded(float, 0, 1e9))
        read("GATEWAY_SUBMIT_BURST", "submit_burst", _bounded(int, 1, 1_000_000_000))
        read("GATEWAY_WS_READ_FRAMES", "ws_read_frames", _bounded(float, 0, 1e9))
        read("GATEWAY_WS_READ_BYTES", "ws_read_bytes", _bounded(int, 0, 1 << 40))
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "max_event_size" in values:
            values["max_event_size"] = {**DEFAULT_MAX_EVENT_SIZES, **values["max_event_size"]}
        if "retention" in values:  # rules without a byte budget take GATEWAY_HISTORY_BYTES
            budget = values.get("history_bytes", DEFAULT_HISTORY_BYTES)
            values["retention"] = {
                ns: rule if rule.max_bytes else dataclasses.replace(rule, max_bytes=budget)
                for ns, rule in values["retention"].items()
            }
        settings = cls(**values)
        settings.check_event_sizes()
        if settings.require_auth and not settings.api_keys:
            raise SettingsError(
                "--require-auth (GATEWAY_REQUIRE_AUTH) is set but GATEWAY_API_KEYS is empty: "
                "configure at least one API key"
            )
        for key in settings.api_keys:
            if len(key) < 16:
                raise SettingsError("GATEWAY_API_KEYS: each key must be at least 16 characters")
        for secret in settings.secrets:
            if len(secret) < 32:
                raise SettingsError("GATEWAY_SECRET: each secret must be at least 32 characters")
        if settings.token_ttl > settings.max_token_ttl:
            raise SettingsError(
                "GATEWAY_TOKEN_TTL is longer than GATEWAY_MAX_TOKEN_TTL: job tokens would be "
                "refused as living too long"
            )
        if "ws_read_bytes" not in values and settings.ws_read_bytes < 2 * settings.max_message:
            # The default budget grows with a larger GATEWAY_MAX_MESSAGE; a set one must fit it.
            settings = settings.replace(ws_read_bytes=2 * settings.max_message)
        if 0 < settings.ws_read_bytes < 2 * settings.max_message:
            raise SettingsError(
                "GATEWAY_WS_READ_BYTES must be 0 (no limit) or at least twice GATEWAY_MAX_MESSAGE "
                f"({2 * settings.max_message}): a whole message must fit in a second's budget"
            )
        if settings.workers > 1 and not settings.redis_url:
            raise SettingsError(
                "--workers N > 1 needs REDIS_URL: processes share events only through Redis"
            )
        return settings

    def check_event_sizes(self) -> None:
        """An event larger than its channel's byte budget could not be kept within it."""
        for namespace in {*self.retention, *self.max_event_size}:
            channel = namespace + ":_"
            limit, budget = self.max_event_size_for(channel), self.retention_for(channel).max_bytes
            if limit > budget:
                raise SettingsError(
                    f"GATEWAY_MAX_EVENT_SIZE {namespace}={limit} is over the namespace's history "
                    f"byte budget ({budget}, GATEWAY_RETENTION / GATEWAY_HISTORY_BYTES)"
                )

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
            "GATEWAY_HISTORY_BYTES": str(self.history_bytes),
            "GATEWAY_RETENTION": " ".join(
                f"{ns}={r.size}/{r.ttl}/{r.max_bytes}" for ns, r in self.retention.items()
            ),
            "GATEWAY_MAX_EVENT_SIZE": " ".join(
                f"{ns}={size}" for ns, size in self.max_event_size.items()
            ),
            "GATEWAY_VISIBILITY_TIMEOUT": str(self.visibility_timeout),
            "GATEWAY_MAX_ATTEMPTS": str(self.max_attempts),
            "GATEWAY_SLOW_CONSUMER_QUEUE": str(self.slow_consumer_queue),
            "GATEWAY_PUBSUB_PROBE": str(self.pubsub_probe),
            "GATEWAY_SSE_PING": str(self.sse_ping),
            "GATEWAY_SSE_RETRY_MS": str(self.sse_retry_ms),
            "GATEWAY_JOB_TTL": str(self.job_ttl),
            "GATEWAY_MAX_WAIT": str(self.max_wait),
            "GATEWAY_WEBHOOK_SECRET": " ".join(self.webhook_secrets),
            "GATEWAY_WEBHOOK_ALLOW_PRIVATE": "1" if self.webhook_allow_private else "0",
            "GATEWAY_WEBHOOK_TIMEOUT": str(self.webhook_timeout),
            "GATEWAY_WEBHOOK_MAX_ATTEMPTS": str(self.webhook_max_attempts),
            "GATEWAY_WEBHOOK_BACKOFF": str(self.webhook_backoff),
            "GATEWAY_IDEMPOTENCY_TTL": str(self.idempotency_ttl),
            "GATEWAY_JOB_TIMEOUT": str(self.job_timeout),
            "GATEWAY_JOB_TIMEOUTS": " ".join(f"{t}={s:g}" for t, s in self.job_timeouts.items()),
            "GATEWAY_CANCEL_GRACE": str(self.cancel_grace),
            "GATEWAY_DATA_DIR": str(self.data_dir),
            "GATEWAY_STATIC_DIR": str(self.static_dir),
            "GATEWAY_LOG_LEVEL": self.log_level,
            "GATEWAY_API_KEYS": " ".join(self.api_keys),
            "GATEWAY_SECRET": " ".join(self.secrets),
            "GATEWAY_EPHEMERAL_SECRET": self.ephemeral_secret,
            "GATEWAY_REQUIRE_AUTH": "1" if self.require_auth else "0",
            "GATEWAY_ALLOWED_ORIGINS": " ".join(self.allowed_origins),
            "GATEWAY_ALLOWED_HOSTS": " ".join(self.allowed_hosts),
            "GATEWAY_CHANNEL_POLICY": " ".join(
                f"{ns}={sub}/{pub}" for ns, (sub, pub) in self.channel_rules.items()
            ),
            "GATEWAY_TOKEN_TTL": str(self.token_ttl),
            "GATEWAY_MAX_TOKEN_TTL": str(self.max_token_ttl),
            "GATEWAY_MAX_BODY": str(self.max_body),
            "GATEWAY_MAX_MESSAGE": str(self.max_message),
            "GATEWAY_MAX_SUBSCRIPTIONS": str(self.max_subscriptions),
            "GATEWAY_MAX_CONNECTIONS_PER_CLIENT": str(self.max_connections_per_client),
            "GATEWAY_HEADER_TIMEOUT": str(self.header_timeout),
            "GATEWAY_CONNECT_RATE": str(self.connect_rate),
            "GATEWAY_CONNECT_BURST": str(self.connect_burst),
            "GATEWAY_TRUSTED_PROXIES": " ".join(self.trusted_proxies),
            "GATEWAY_PUBLISH_RATE": str(self.publish_rate),
            "GATEWAY_PUBLISH_BURST": str(self.publish_burst),
            "GATEWAY_SUBMIT_RATE": str(self.submit_rate),
            "GATEWAY_SUBMIT_BURST": str(self.submit_burst),
            "GATEWAY_WS_READ_FRAMES": str(self.ws_read_frames),
            "GATEWAY_WS_READ_BYTES": str(self.ws_read_bytes),
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
    """`memory://` means the same as no URL; which other schemes open a backend is for
    `gateway.backends.url` to say (the CLI checks with it before starting)."""
    if raw.lower().startswith("memory://"):
        return ""
    if "://" not in raw:
        raise ValueError("expected memory://, redis://host:port/db, rediss://... or unix://path")
    return raw


def _log_level(raw: str) -> str:
    lowered = raw.lower()
    if lowered not in {"critical", "error", "warning", "info", "debug", "trace"}:
        raise ValueError("expected one of critical, error, warning, info, debug, trace")
    return lowered


def _words(raw: str) -> tuple[str, ...]:
    return tuple(raw.split())


def _networks(raw: str) -> tuple[str, ...]:
    """IP addresses and CIDR networks (`10.0.0.0/8 ::1`), normalised to networks."""
    import ipaddress

    networks: list[str] = []
    for item in raw.replace(",", " ").split():
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
    return tuple(networks)


CHANNEL_RULE_WORDS = frozenset({"open", "token", "subject", "none"})


def _channel_rules(raw: str) -> dict[str, tuple[str, str]]:
    """Parse `room=token/token news=open/none` (namespace=subscribe-rule/publish-rule)."""
    rules: dict[str, tuple[str, str]] = {}
    for item in raw.replace(",", " ").split():
        namespace, eq, spec = item.partition("=")
        subscribe, slash, publish = spec.partition("/")
        if not eq or not slash or not namespace:
            raise ValueError(f"{item!r}: expected namespace=subscribe/publish, like news=open/none")
        for word in (subscribe, publish):
            if word not in CHANNEL_RULE_WORDS:
                raise ValueError(f"{item!r}: rules are {', '.join(sorted(CHANNEL_RULE_WORDS))}")
        rules[namespace] = (subscribe, publish)
    return rules


def _retention(raw: str) -> dict[str, Retention]:
    """Parse `job=10000/86400 room=500/3600/4194304` (namespace=size/ttl-seconds[/bytes]).

    A rule without bytes gets 0 here, replaced by GATEWAY_HISTORY_BYTES in `from_env`.
    """
    rules: dict[str, Retention] = {}
    for item in raw.replace(",", " ").split():
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


def _max_event_size(raw: str) -> dict[str, int]:
    """Parse `room=65536 job=0 *=16384` (namespace=bytes; 0: no limit; `*`: the others)."""
    limits: dict[str, int] = {}
    for item in raw.replace(",", " ").split():
        namespace, eq, size = item.partition("=")
        if not eq or not namespace:
            raise ValueError(f"{item!r}: expected namespace=bytes, like room=65536")
        limits[namespace] = int(size)
        if not 0 <= limits[namespace] <= 1 << 32:
            raise ValueError(f"{item!r}: bytes must be between 0 (no limit) and 2^32")
    return limits


def _webhook_secrets(raw: str) -> tuple[str, ...]:
    """`whsec_<base64>` secrets, space-separated (Standard Webhooks' format)."""
    import base64
    import binascii

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


def _job_timeouts(raw: str) -> dict[str, float]:
    """Parse `sleep=30 data_analysis=120` (job type=seconds)."""
    timeouts: dict[str, float] = {}
    for item in raw.replace(",", " ").split():
        name, eq, seconds = item.partition("=")
        if not eq or not name:
            raise ValueError(f"{item!r}: expected type=seconds, like sleep=30")
        value = float(seconds)
        if not 0 < value <= 30 * 86_400:
            raise ValueError(f"{item!r}: seconds must be positive")
        timeouts[name] = value
    return timeouts
