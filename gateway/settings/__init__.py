"""Settings: read once at start from `GATEWAY_*` variables (and `REDIS_URL`), then frozen.

Each setting is declared once, below, with `setting(...)`: its variable, type, default, bounds
and help. The environment reader, the `gateway serve`/`worker` flags (`gateway.settings.flags`),
`to_env` and the README's Configuration table (`configuration_table`) all derive from that.
A bad value raises `SettingsError` naming the variable, so a typo stops the start with a clear
message instead of surfacing later as odd behaviour.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.errors import InvalidChannel, SettingsError
from gateway.events import namespace_of, validate_channel
from gateway.settings.declaration import Declaration, declarations, setting
from gateway.settings.environment import Environment, reading, settings_error
from gateway.settings.values import (
    CHANNEL_RULE_WORDS,
    DEFAULT_HISTORY_BYTES,
    DEFAULT_MAX_EVENT_SIZES,
    ChannelRules,
    EventSizes,
    Flag,
    JobTimeouts,
    LogLevel,
    Modules,
    Namespaces,
    Networks,
    RedisUrl,
    ReplicaWait,
    ReplicaWaitRules,
    Retention,
    RetentionRules,
    WebhookSecrets,
    Words,
)

__all__ = [
    "CHANNEL_RULE_WORDS",
    "DEFAULT_HISTORY_BYTES",
    "DEFAULT_MAX_EVENT_SIZES",
    "PROJECT_STATIC",
    "Declaration",
    "ReplicaWait",
    "Retention",
    "Settings",
    "bundled_static_dir",
    "configuration_table",
    "declared",
]


def bundled_static_dir() -> Path:
    """The dashboard and gateway.js: inside the package when installed from a wheel (pyproject
    maps the top-level static/ to `gateway.static`), else a checkout's (or editable install's)
    top-level static/."""
    package = Path(__file__).resolve().parent.parent
    packaged = package / "static"
    return packaged if packaged.is_dir() else package.parent / "static"


PROJECT_STATIC = bundled_static_dir()
DAY = 86_400
YEARS_10 = 10 * 365 * DAY
MIB = 1024 * 1024


class Settings(BaseSettings):
    """The gateway's configuration. `Settings(...)` is a plain value (no environment read);
    `Settings.from_env()` reads the environment and checks the settings against each other."""

    model_config = SettingsConfigDict(
        frozen=True, validate_by_name=True, validate_by_alias=True, extra="forbid"
    )

    redis_url: RedisUrl = setting(
        "",
        env="REDIS_URL",
        alias="GATEWAY_REDIS_URL",
        shown="empty",
        help=(
            "the backend: `redis://`, `rediss://` or `unix://` for Redis; "
            "empty or `memory://` for one process in memory"
        ),
    )
    host: str = setting(
        "127.0.0.1", env="GATEWAY_HOST", flag=("serve",), help="where `gateway serve` listens"
    )
    port: int = setting(
        8000,
        env="GATEWAY_PORT",
        alias="PORT",
        ge=0,
        le=65535,
        flag=("serve",),
        help="port `gateway serve` listens on",
    )
    workers: int = setting(
        1,
        env="GATEWAY_WORKERS",
        ge=1,
        le=64,
        flag=("serve",),
        help="gateway processes (needs Redis for more than one)",
    )
    ssl_certfile: Path | None = setting(
        None,
        env="GATEWAY_SSL_CERTFILE",
        flag=("serve",),
        shown="none (plain HTTP)",
        help="PEM certificate chain: `gateway serve` speaks HTTPS/WSS itself (with "
        "`GATEWAY_SSL_KEYFILE`); behind a TLS-terminating proxy leave it unset",
    )
    ssl_keyfile: Path | None = setting(
        None,
        env="GATEWAY_SSL_KEYFILE",
        flag=("serve",),
        shown="none",
        help="PEM private key of `GATEWAY_SSL_CERTFILE`",
    )
    embedded_worker: Flag | None = setting(
        None,
        env="GATEWAY_EMBEDDED_WORKER",
        flag=("serve",),
        shown="on without Redis",
        help="run job handlers inside `gateway serve`",
    )
    concurrency: int = setting(
        4,
        env="GATEWAY_CONCURRENCY",
        ge=1,
        le=1000,
        flag=("worker",),
        help="jobs a worker runs at once",
    )
    handlers: Modules = setting(
        (),
        env="GATEWAY_HANDLERS",
        flag=("serve", "worker"),
        help="modules with `@handler` functions to load (spaces or commas between them)",
    )
    history_size: int = setting(
        1000,
        env="GATEWAY_HISTORY_SIZE",
        ge=1,
        le=10_000_000,
        help="events of history kept per channel where no namespace rule applies",
    )
    history_ttl: int = setting(
        DAY,
        env="GATEWAY_HISTORY_TTL",
        ge=1,
        le=YEARS_10,
        help="seconds history is kept per channel where no namespace rule applies",
    )
    history_bytes: int = setting(
        DEFAULT_HISTORY_BYTES,
        env="GATEWAY_HISTORY_BYTES",
        ge=1,
        le=1 << 40,
        help="bytes of history kept per channel where no namespace rule sets them",
    )
    retention: RetentionRules = setting(
        env="GATEWAY_RETENTION",
        default_factory=lambda: {
            "job": Retention(size=10_000, ttl=DAY, max_bytes=16 * MIB),
            "room": Retention(size=500, ttl=3_600, max_bytes=4 * MIB),
        },
        help="per-namespace history: `namespace=size/ttl[/bytes]` (events, seconds, bytes of "
        "stored events; oldest trimmed first, the newest always kept; without bytes, "
        "`GATEWAY_HISTORY_BYTES`)",
    )
    max_event_size: EventSizes = setting(
        env="GATEWAY_MAX_EVENT_SIZE",
        default_factory=lambda: dict(DEFAULT_MAX_EVENT_SIZES),
        help="largest event per namespace, in bytes of its JSON envelope (`0`: no limit; `*`: "
        "namespaces not named; names override only themselves); at most the namespace's "
        "history bytes. Over it: `413` / `event_too_large`",
    )
    replica_wait: ReplicaWaitRules = setting(
        env="GATEWAY_REPLICA_WAIT",
        default_factory=dict,
        help="per-namespace durability on a Redis Cluster: `namespace=replicas/timeout_ms`; a "
        "publish counts once that many replicas acknowledged it (`WAIT`), else it is answered "
        "`503` (the event may still be delivered); namespaces not named do not wait",
    )
    visibility_timeout: float = setting(
        30.0,
        env="GATEWAY_VISIBILITY_TIMEOUT",
        ge=0.1,
        le=DAY,
        help="seconds before a job whose worker went silent is re-claimed",
    )
    max_attempts: int = setting(
        3, env="GATEWAY_MAX_ATTEMPTS", ge=1, le=1000, help="deliveries before a job fails"
    )
    queue_partitions: int = setting(
        1,
        env="GATEWAY_QUEUE_PARTITIONS",
        ge=1,
        le=256,
        help="streams the job queue is spread over (each its own hash slot, so a Redis "
        "Cluster spreads jobs over its shards); every gateway and worker must use the same",
    )
    slow_consumer_queue: int = setting(
        1000,
        env="GATEWAY_SLOW_CONSUMER_QUEUE",
        ge=1,
        le=10_000_000,
        help="frames a connection may have pending before it is disconnected",
    )
    job_ttl: int = setting(
        DAY,
        env="GATEWAY_JOB_TTL",
        ge=1,
        le=YEARS_10,
        help="seconds a finished job (record and event history) is kept; `GET /jobs` stops "
        "listing it then",
    )
    job_timeout: float = setting(
        0.0,
        env="GATEWAY_JOB_TIMEOUT",
        ge=0,
        le=30 * DAY,
        shown="0 (none)",
        help="default handler timeout in seconds for types without their own",
    )
    job_timeouts: JobTimeouts = setting(
        env="GATEWAY_JOB_TIMEOUTS",
        default_factory=dict,
        help="per-type handler timeouts, `sleep=30 data_analysis=120`; win over "
        "`@handler(timeout=)`",
    )
    cancel_grace: float = setting(
        2.0,
        env="GATEWAY_CANCEL_GRACE",
        ge=0,
        le=3600,
        help="seconds a running handler has to stop after `ctx.cancelled` is set, before it is "
        "cancelled",
    )
    idempotency_ttl: int = setting(
        DAY,
        env="GATEWAY_IDEMPOTENCY_TTL",
        ge=1,
        le=366 * DAY,
        help="seconds an `Idempotency-Key` (and its stored response) is remembered",
    )
    webhook_secrets: WebhookSecrets = setting(
        (),
        env="GATEWAY_WEBHOOK_SECRET",
        help="`whsec_...` secrets, space-separated: the first is the current one, all sign "
        "during rotation",
    )
    webhook_allow_private: Flag = setting(
        False,
        env="GATEWAY_WEBHOOK_ALLOW_PRIVATE",
        help="`1` permits callback URLs on loopback/private/link-local addresses (SSRF guard off)",
    )
    webhook_timeout: float = setting(
        10.0,
        env="GATEWAY_WEBHOOK_TIMEOUT",
        ge=0.1,
        le=300,
        help="seconds one webhook attempt may take",
    )
    webhook_max_attempts: int = setting(
        8,
        env="GATEWAY_WEBHOOK_MAX_ATTEMPTS",
        ge=1,
        le=100,
        help="attempts per webhook delivery before giving up",
    )
    webhook_backoff: float = setting(
        2.0,
        env="GATEWAY_WEBHOOK_BACKOFF",
        ge=0.01,
        le=3600,
        help="base of the webhook retry backoff (seconds; doubles per attempt, jittered, capped "
        "at 1 h)",
    )
    pubsub_probe: float = setting(
        5.0,
        env="GATEWAY_PUBSUB_PROBE",
        ge=0.1,
        le=3600,
        help="seconds of pub/sub silence before a liveness ping; no answer in as long means dead",
    )
    sse_ping: float = setting(
        5.0,
        env="GATEWAY_SSE_PING",
        ge=0.1,
        le=3600,
        help="seconds between SSE keep-alive comments, which keep proxies from closing an idle "
        "stream (`?heartbeat=` asks a stream for heartbeat messages instead)",
    )
    sse_retry_ms: int = setting(
        2000,
        env="GATEWAY_SSE_RETRY_MS",
        ge=0,
        le=3_600_000,
        help="the SSE `retry:` hint (ms)",
    )
    max_wait: float = setting(
        60.0,
        env="GATEWAY_MAX_WAIT",
        ge=0,
        le=3600,
        help="longest long poll (`GET /jobs/{id}?wait=`), in seconds",
    )
    data_dir: Path = setting(
        env="GATEWAY_DATA_DIR",
        default_factory=lambda: Path.cwd() / "data",
        shown="`./data`",
        help="where `data_analysis` may read files",
    )
    static_dir: Path = setting(
        PROJECT_STATIC,
        env="GATEWAY_STATIC_DIR",
        shown="the packaged dashboard",
        help="directory served at `/` (`index.html`) and `/static/` instead of the bundled "
        "dashboard and `gateway.js`",
    )
    log_level: LogLevel = setting(
        "info",
        env="GATEWAY_LOG_LEVEL",
        help="`critical`, `error`, `warning`, `info`, `debug` or `trace`",
    )
    api_keys: Words = setting(
        (),
        env="GATEWAY_API_KEYS",
        shown="empty (open)",
        help="server API keys (≥ 16 chars), space-separated (several for rotation); none means "
        "open (dev) mode, announced loudly at start; see [Security](#security)",
    )
    secrets: Words = setting(
        (),
        env="GATEWAY_SECRET",
        shown="random per process",
        help="channel token secrets (≥ 32 chars), space-separated: the first signs, all verify",
    )
    ephemeral_secret: str = setting(
        "",
        env="GATEWAY_EPHEMERAL_SECRET",
        internal=True,
        help="a generated secret shared by `serve --workers N` processes; not a configured one",
    )
    require_auth: Flag = setting(
        False,
        env="GATEWAY_REQUIRE_AUTH",
        flag=("serve",),
        help="refuse to start without `GATEWAY_API_KEYS` (no open dev mode)",
    )
    allowed_origins: Words = setting(
        (),
        env="GATEWAY_ALLOWED_ORIGINS",
        shown="empty (same origin)",
        help="origins allowed for WebSocket, CORS and state-changing requests, space-separated "
        "(scheme, host and port compared); `*` allows any, without credentials (the token "
        "cookie never counts through it)",
    )
    allowed_hosts: Words = setting(
        (),
        env="GATEWAY_ALLOWED_HOSTS",
        shown="empty: in dev mode this machine's names, else any",
        help="`Host` names served, space-separated: `gw.example`, `.example.com` or "
        "`*.example.com` (it and its subdomains), `*` any; others get 400 / WS close 1008 "
        "(DNS rebinding guard)",
    )
    channel_rules: ChannelRules = setting(
        env="GATEWAY_CHANNEL_POLICY",
        default_factory=dict,
        shown="`job=token/none room=token/token user=subject/token system=token/none`",
        help="per-namespace `namespace=subscribe/publish` rules: `open`, `token`, `subject`, "
        "`none`; override the defaults in `gateway.auth`",
    )
    token_ttl: int = setting(
        3600,
        env="GATEWAY_TOKEN_TTL",
        ge=1,
        le=366 * DAY,
        help="seconds a job token / a `POST /tokens` token lives by default; at most "
        "`GATEWAY_MAX_TOKEN_TTL`",
    )
    max_token_ttl: int = setting(
        DAY,
        env="GATEWAY_MAX_TOKEN_TTL",
        ge=1,
        le=366 * DAY,
        help="the longest lifetime of any token accepted (`POST /tokens` `ttl`, and `exp - iat` "
        "of tokens minted elsewhere)",
    )
    max_body: int = setting(
        MIB, env="GATEWAY_MAX_BODY", ge=1, le=1 << 32, help="request body bytes (413 beyond)"
    )
    max_message: int = setting(
        64 * 1024,
        env="GATEWAY_MAX_MESSAGE",
        ge=64,
        le=1 << 28,
        help="WebSocket message bytes (close 1009 beyond)",
    )
    max_subscriptions: int = setting(
        100,
        env="GATEWAY_MAX_SUBSCRIPTIONS",
        ge=1,
        le=1_000_000,
        help="channels per WebSocket connection",
    )
    personal_channel: str = setting(
        "",
        env="GATEWAY_PERSONAL_CHANNEL",
        shown="empty (none)",
        help="a channel every connection with a token is subscribed to on connect, `{sub}` "
        "standing for the token's subject, e.g. `user:{sub}` (docs/control.md); empty: none",
    )
    server_subscription_hold: float = setting(
        2.0,
        env="GATEWAY_SERVER_SUBSCRIPTION_HOLD",
        ge=0,
        le=30,
        help="seconds a WebSocket's server-side subscription waits for the client to resume it "
        "with `subscribe` + `since` before replaying from the start (docs/control.md)",
    )
    max_connections_per_client: int = setting(
        256,
        env="GATEWAY_MAX_CONNECTIONS_PER_CLIENT",
        ge=0,
        le=10_000_000,
        help="open WebSocket + SSE streams per client address, forwarded address behind a "
        "trusted proxy (WS close 1013 / SSE 429); open TCP connections per peer address (IPv6: "
        "per /64) are limited to this plus 16, refused at once with 429 beyond (trusted proxies "
        "exempt); 0 = no limit",
    )
    header_timeout: float = setting(
        10.0,
        env="GATEWAY_HEADER_TIMEOUT",
        ge=0.1,
        le=3600,
        help="seconds for a request head to be complete, from the connection's start (idle "
        "connections included) or from the first byte after a keep-alive response; closed "
        "after it (408 if part of a head came). Idle keep-alive between requests: 5 s (uvicorn)",
    )
    connect_rate: float = setting(
        20.0,
        env="GATEWAY_CONNECT_RATE",
        ge=0,
        le=1e9,
        help="new TCP connections per second per peer address (IPv6: per /64), token bucket; "
        "over it refused at once with 429 (`Retry-After: 1`, "
        '`gateway_connections_refused_total{reason="rate"}`; trusted proxies exempt); '
        "0 = no limit",
    )
    connect_burst: int = setting(
        100,
        env="GATEWAY_CONNECT_BURST",
        ge=1,
        le=1_000_000_000,
        help="new TCP connections a peer address may open at once (the bucket's size)",
    )
    trusted_proxies: Networks = setting(
        (),
        env="GATEWAY_TRUSTED_PROXIES",
        shown="empty (none)",
        help="addresses or CIDR networks, space/comma-separated, whose `X-Forwarded-For` / "
        "`X-Forwarded-Proto` are believed; nobody else's are",
    )
    publish_rate: float = setting(
        20.0,
        env="GATEWAY_PUBLISH_RATE",
        ge=0,
        le=1e9,
        help="client publishes per second per connection and per token (token bucket); "
        "0 = no limit",
    )
    publish_burst: int = setting(
        40,
        env="GATEWAY_PUBLISH_BURST",
        ge=1,
        le=1_000_000_000,
        help="client publishes allowed at once (the bucket's size)",
    )
    submit_rate: float = setting(
        10.0,
        env="GATEWAY_SUBMIT_RATE",
        ge=0,
        le=1e9,
        help="job submissions per second per API key (per address when open); 0 = no limit",
    )
    submit_burst: int = setting(
        20,
        env="GATEWAY_SUBMIT_BURST",
        ge=1,
        le=1_000_000_000,
        help="job submissions allowed at once (the bucket's size)",
    )
    ws_read_frames: float = setting(
        1000.0,
        env="GATEWAY_WS_READ_FRAMES",
        ge=0,
        le=1e9,
        help="WebSocket frames (control frames and fragments included) a connection may send "
        "per second, a second's worth at once; more closes it with `4029`; 0 = no limit",
    )
    ws_read_bytes: int = setting(
        2 * MIB,
        env="GATEWAY_WS_READ_BYTES",
        ge=0,
        le=1 << 40,
        shown="2097152, or twice `GATEWAY_MAX_MESSAGE` if more",
        help="WebSocket bytes a connection may send per second (when set, 0 or at least twice "
        "`GATEWAY_MAX_MESSAGE`); more closes it with `4029`; 0 = no limit",
    )

    # --- presence (docs/presence.md) ---------------------------------------------------------
    presence: Namespaces = setting(
        ("room",),
        env="GATEWAY_PRESENCE",
        help="namespaces whose subscribers are listed and counted across every gateway "
        "(`GET /channels/{ch}/presence`, WebSocket op `presence`); empty: none",
    )
    presence_events: Namespaces = setting(
        ("room",),
        env="GATEWAY_PRESENCE_EVENTS",
        help="namespaces whose channels get live-only `presence.join` / `presence.leave` events",
    )
    presence_events_max: int = setting(
        200,
        env="GATEWAY_PRESENCE_EVENTS_MAX",
        ge=0,
        le=10_000_000,
        help="join/leave events only while a channel has at most this many clients: N clients "
        "joining a room cost N² deliveries; bigger rooms read `presence_stats` instead; "
        "0 = no limit",
    )
    occupancy: Namespaces = setting(
        ("job",),
        env="GATEWAY_OCCUPANCY",
        help="namespaces whose subscribers are counted but not listed: what "
        "`GATEWAY_OCCUPANCY_EVENTS` and jobs' `cancel_when_unwatched` need",
    )
    occupancy_events: Namespaces = setting(
        (),
        env="GATEWAY_OCCUPANCY_EVENTS",
        shown="none",
        help="namespaces whose first subscriber / last one leaving is announced as "
        "`channel.occupied` / `channel.vacated` on `system:occupancy` (and to "
        "`GATEWAY_OCCUPANCY_WEBHOOK`)",
    )
    occupancy_webhook: str = setting(
        "",
        env="GATEWAY_OCCUPANCY_WEBHOOK",
        shown="empty (none)",
        help="URL that receives the `system:occupancy` events as signed webhooks (like job "
        "webhooks; delivered by a worker)",
    )
    presence_timeout: float = setting(
        30.0,
        env="GATEWAY_PRESENCE_TIMEOUT",
        ge=0.5,
        le=3600,
        help="seconds within which the entries of a gateway that died (no heartbeat) are "
        "removed, with their leave events",
    )
    presence_grace: float = setting(
        5.0,
        env="GATEWAY_PRESENCE_GRACE",
        ge=0,
        le=3600,
        help="seconds a disconnected client stays present: reconnecting with the same "
        "`?client=` id within it makes no leave and no join",
    )
    presence_info_bytes: int = setting(
        1024,
        env="GATEWAY_PRESENCE_INFO_BYTES",
        ge=0,
        le=65536,
        help="largest token `info` claim shown in presence (bytes of JSON); a larger one, or "
        "one that is not an object, shows as null",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keywords win over the environment, which is read only inside `from_env`."""
        return init_settings, Environment(settings_cls)

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

    def presence_for(self, channel: str) -> tuple[bool, bool, bool]:
        """Whether the channel's presence is listed, gets join/leave events, announces
        occupancy; any of them (or `GATEWAY_OCCUPANCY`) means its subscribers are tracked."""
        namespace = namespace_of(channel)
        return (
            namespace in self.presence,
            namespace in self.presence_events,
            namespace in self.occupancy_events,
        )

    def tracks(self, channel: str) -> bool:
        namespace = namespace_of(channel)
        return (
            namespace in self.presence
            or namespace in self.presence_events
            or namespace in self.occupancy
            or namespace in self.occupancy_events
        )

    def replica_wait_for(self, channel: str) -> ReplicaWait | None:
        """How many replica acknowledgements a publish to `channel` waits for, if any."""
        return self.replica_wait.get(namespace_of(channel))

    def max_event_size_for(self, channel: str) -> int:
        """The largest event `channel` accepts, in bytes; 0 means no limit."""
        limits = self.max_event_size
        return limits.get(namespace_of(channel), limits.get("*", 0))

    def replace(self, **changes: Any) -> Settings:
        """A copy with `changes` (attribute names), not validated: like `dataclasses.replace`."""
        return self.model_copy(update=changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from the environment, then apply explicit (CLI) overrides (`None`
        means not given), and check them against each other."""
        given = {name: value for name, value in overrides.items() if value is not None}
        try:
            with reading(os.environ if environ is None else environ):
                settings = cls(**given)
        except ValidationError as error:
            raise settings_error(error, declared()) from None
        return settings._completed()._checked()

    def _completed(self) -> Settings:
        """Fill in what depends on other settings: event size rules over the defaults, rules
        without a byte budget taking `GATEWAY_HISTORY_BYTES`, and the WebSocket read budget
        growing with a larger `GATEWAY_MAX_MESSAGE` unless set."""
        changes: dict[str, Any] = {}
        if "max_event_size" in self.model_fields_set:
            changes["max_event_size"] = {**DEFAULT_MAX_EVENT_SIZES, **self.max_event_size}
        if "retention" in self.model_fields_set:
            changes["retention"] = {
                ns: rule if rule.max_bytes else Retention(rule.size, rule.ttl, self.history_bytes)
                for ns, rule in self.retention.items()
            }
        if "ws_read_bytes" not in self.model_fields_set:
            changes["ws_read_bytes"] = max(self.ws_read_bytes, 2 * self.max_message)
        return self.replace(**changes) if changes else self

    def _checked(self) -> Settings:
        self.check_event_sizes()
        if self.require_auth and not self.api_keys:
            raise SettingsError(
                "--require-auth (GATEWAY_REQUIRE_AUTH) is set but GATEWAY_API_KEYS is empty: "
                "configure at least one API key"
            )
        for key in self.api_keys:
            if len(key) < 16:
                raise SettingsError("GATEWAY_API_KEYS: each key must be at least 16 characters")
        for secret in self.secrets:
            if len(secret) < 32:
                raise SettingsError("GATEWAY_SECRET: each secret must be at least 32 characters")
        if self.token_ttl > self.max_token_ttl:
            raise SettingsError(
                "GATEWAY_TOKEN_TTL is longer than GATEWAY_MAX_TOKEN_TTL: job tokens would be "
                "refused as living too long"
            )
        if 0 < self.ws_read_bytes < 2 * self.max_message:
            raise SettingsError(
                "GATEWAY_WS_READ_BYTES must be 0 (no limit) or at least twice GATEWAY_MAX_MESSAGE "
                f"({2 * self.max_message}): a whole message must fit in a second's budget"
            )
        if self.personal_channel:
            self._check_personal_channel()
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise SettingsError(
                "--ssl-certfile and --ssl-keyfile (GATEWAY_SSL_CERTFILE, GATEWAY_SSL_KEYFILE) "
                "go together: give both for HTTPS, or neither"
            )
        if self.workers > 1 and not self.redis_url:
            raise SettingsError(
                "--workers N > 1 needs REDIS_URL: processes share events only through Redis"
            )
        return self

    def _check_personal_channel(self) -> None:
        template = self.personal_channel
        try:
            validate_channel(template.replace("{sub}", "x"))
        except InvalidChannel as exc:
            raise SettingsError(f"GATEWAY_PERSONAL_CHANNEL={template!r}: {exc}") from None
        if "{sub}" not in template:
            raise SettingsError(
                f"GATEWAY_PERSONAL_CHANNEL={template!r} must contain {{sub}} (the token's subject)"
            )

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
        env: dict[str, str] = {}
        dumped = self.model_dump(mode="json")
        for declaration in declared().values():
            value = dumped[declaration.name]
            if value is None:  # not configured: the child decides the same way
                continue
            env[declaration.env] = value if isinstance(value, str) else str(value)
        return env


_DECLARED: dict[str, Declaration] = {}


def declared() -> dict[str, Declaration]:
    """Every setting's declaration by attribute name, in declaration order."""
    if not _DECLARED:
        _DECLARED.update((d.name, d) for d in declarations(Settings))
    return _DECLARED


def configuration_table() -> str:
    """The README's Configuration table, from the declarations."""
    from gateway.settings.reference import configuration_table as table

    return table(Settings(), declared().values())
