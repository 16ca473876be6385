"""Webhooks: Standard-Webhooks signing, the SSRF guard, and a persistent, retried delivery loop.

A job submitted with a `callback_url` gets the events it subscribed to (terminal ones by
default) POSTed there. The event is never sent from the request path: publishing it only
records a delivery in the backend's schedule (Redis: a sorted set of due times plus a hash of
payloads), and workers claim due deliveries with a lease. A worker that dies mid-delivery loses
nothing: the lease ends and another worker claims the delivery again; receivers dedupe on
`webhook-id`, which is the event id.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import random
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Final

import httpcore
import httpx
import orjson

from gateway.backends.bundle import Backend
from gateway.errors import BackendUnavailable, UnresolvedCallbackHost, UnsafeCallbackUrl
from gateway.events import Event, iso_time
from gateway.settings import Settings

log = logging.getLogger("gateway.webhooks")

TERMINAL_EVENTS = ("job.completed", "job.failed", "job.cancelled")
"""What a callback gets when the submitter did not say (`callback_events`); `["*"]` means all."""

BACKOFF_CAP = 3600.0
"""Longest wait between two attempts of one delivery, whatever the attempt number."""

POLL_INTERVAL = 0.2
"""How often an idle worker looks for due deliveries (one cheap Redis call)."""

RETRYABLE_4XX = frozenset({408, 409, 429})


# --- configuration of a job's callback ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Callback:
    """Where a job's events go, and which of them."""

    url: str
    events: tuple[str, ...] = TERMINAL_EVENTS

    def wants(self, event_type: str) -> bool:
        return "*" in self.events or event_type in self.events


def parse_callback_events(value: Any) -> tuple[str, ...]:
    """Validate `callback_events`: a list of job event types, or `["*"]`; None means terminal."""
    if value is None:
        return TERMINAL_EVENTS
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError("'callback_events' must be a non-empty list of event types, or ['*']")
    known = {"*", "job.queued", "job.started", "job.progress", "job.retrying", *TERMINAL_EVENTS}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"unknown callback_events {unknown}; known: {sorted(known)}")
    return tuple(dict.fromkeys(value))


# --- signing (https://www.standardwebhooks.com) ------------------------------------------------


def decode_secret(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


def sign(secrets: Iterable[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,<sig>` per secret, space-separated (rotation)."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    signatures = []
    for secret in secrets:
        digest = hmac.new(decode_secret(secret), content, hashlib.sha256).digest()
        signatures.append("v1," + base64.b64encode(digest).decode())
    return " ".join(signatures)


def signed_headers(settings: Settings, msg_id: str, body: bytes) -> dict[str, str]:
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": "gateway-webhooks/1",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
    }
    if settings.webhook_secrets:
        headers["webhook-signature"] = sign(settings.webhook_secrets, msg_id, timestamp, body)
    return headers


# --- SSRF guard --------------------------------------------------------------------------------

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[Address]]]
"""Turns a host name and port into addresses (the system resolver unless a test injects one)."""

_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL: Final = ipaddress.ip_network("64:ff9b:1::/48")
_IPV4_COMPATIBLE: Final = ipaddress.ip_network("::/96")
_IPV4_TRANSLATED: Final = ipaddress.ip_network("::ffff:0:0:0/96")


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form carries, which is where a packet to it really goes.

    Python calls most of these forms global whatever they embed (`::127.0.0.1`,
    `64:ff9b::7f00:1`, `2002:7f00:1::`...), so they are judged by the address inside.
    Raises `ValueError` for an address in the local-use NAT64 prefix whose embedding is not
    the /96 one: its translator's prefix length is local knowledge, so the target is unknown.
    """
    if address.ipv4_mapped is not None:  # ::ffff:a.b.c.d
        return address.ipv4_mapped
    if address.sixtofour is not None:  # 2002:aabb:ccdd::/48, 6to4
        return address.sixtofour
    last32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _NAT64 or address in _IPV4_TRANSLATED or address in _IPV4_COMPATIBLE:
        return last32  # 64:ff9b::a.b.c.d, ::ffff:0:a.b.c.d, ::a.b.c.d
    if address in _NAT64_LOCAL:
        if (int(address) >> 32) & ((1 << 48) - 1):
            raise ValueError("a local-use NAT64 address with an unknown prefix length")
        return last32  # 64:ff9b:1::a.b.c.d
    return None


def is_internal(address: Address) -> bool:
    """Anything not globally routable: loopback, private, link-local (cloud metadata), CGNAT,
    multicast..., and IPv6 forms that embed such an IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address):
        try:
            inner = embedded_ipv4(address)
        except ValueError:
            return True
        if inner is not None and is_internal(inner):
            return True
        if address.is_site_local:
            return True
    return not address.is_global or address.is_multicast


@dataclass(frozen=True, slots=True)
class CallbackTarget:
    """A callback URL taken apart the way httpx will use it (one parser, no differential)."""

    url: httpx.URL
    host: str
    """ASCII (IDNA-encoded) host, without brackets for IPv6: what the connection resolves."""
    port: int


def parse_callback_url(url: str) -> CallbackTarget:
    """Refuse what is not an http(s) URL with a host; no DNS involved."""
    if len(url) > 2048:
        raise UnsafeCallbackUrl("the callback URL is longer than 2048 characters")
    try:
        parsed = httpx.URL(url)
        host = parsed.raw_host.decode("ascii")
    except (httpx.InvalidURL, UnicodeError, ValueError):
        raise UnsafeCallbackUrl(
            "the callback URL is malformed (or its host is not a valid domain name)"
        ) from None
    if parsed.scheme not in ("http", "https"):
        raise UnsafeCallbackUrl("only http:// and https:// callback URLs are allowed")
    if not host:
        raise UnsafeCallbackUrl("the callback URL has no host")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return CallbackTarget(parsed, host, port)


async def system_resolve(host: str, port: int) -> list[Address]:
    """The system resolver (getaddrinfo), bounded to 5 s."""
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout=5)
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


def _literal_address(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return None


async def checked_addresses(
    host: str, port: int, *, allow_private: bool, resolve: Resolver = system_resolve
) -> list[Address]:
    """Resolve `host` once and return its addresses, all of them public unless `allow_private`.

    The refusal never says what the name resolved to: that would make the gateway a probe of
    internal DNS.
    """
    literal = _literal_address(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            addresses = await resolve(host, port)
        except (OSError, TimeoutError, UnicodeError, ValueError):
            addresses = []
        if not addresses:
            raise UnresolvedCallbackHost(f"the callback host {host!r} does not resolve")
    if not allow_private and any(is_internal(address) for address in addresses):
        if literal is not None:
            raise UnsafeCallbackUrl(
                "the callback address is a loopback, private, link-local or otherwise "
                "internal address"
            )
        raise UnsafeCallbackUrl(
            f"the callback host {host!r} resolves to a loopback, private, link-local or "
            "otherwise internal address"
        )
    return addresses


async def check_callback_url(
    url: str, *, allow_private: bool, resolve: Resolver = system_resolve
) -> None:
    """Refuse URLs that are not http(s) or whose host resolves to a non-public address.

    Checked at submission, for an early 422. Deliveries do not rely on it: they check again
    when they connect, and connect to the very address that was checked (`PinnedNetwork`).
    """
    target = parse_callback_url(url)
    if not allow_private:
        await checked_addresses(target.host, target.port, allow_private=False, resolve=resolve)


class PinnedNetwork(httpcore.AsyncNetworkBackend):
    """httpcore's network layer for webhook connections: resolve once, check, connect to what
    was checked.

    A guard that resolves a name and then lets the HTTP client resolve it again loses to a
    rebinding DNS server (public answer for the check, 127.0.0.1 for the connection). Here the
    one resolution is the one that is both checked and connected to. The URL keeps its host
    name, so the Host header, TLS SNI and certificate verification all use the name.
    """

    def __init__(
        self,
        *,
        allow_private: bool,
        resolve: Resolver = system_resolve,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.allow_private = allow_private
        self.resolve = resolve
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await checked_addresses(
                host, port, allow_private=self.allow_private, resolve=self.resolve
            )
        except UnresolvedCallbackHost as exc:
            raise httpcore.ConnectError(str(exc)) from None
        failure: Exception | None = None
        for address in dict.fromkeys(addresses):
            try:
                return await self.inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("webhooks are never sent over unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def webhook_client(
    settings: Settings,
    *,
    resolve: Resolver = system_resolve,
    network: httpcore.AsyncNetworkBackend | None = None,
    verify: ssl.SSLContext | bool = True,
) -> httpx.AsyncClient:
    """The client deliveries go through: no redirects, no proxies from the environment, and
    connections only to checked addresses."""
    transport = httpx.AsyncHTTPTransport(trust_env=False)
    # httpx takes no network backend; its pool (`_pool`, stable since httpx 0.18) is replaced by
    # one that connects through `PinnedNetwork`, keeping httpx's request/response handling.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
        max_connections=100,
        max_keepalive_connections=20,
        keepalive_expiry=5.0,
        network_backend=PinnedNetwork(
            allow_private=settings.webhook_allow_private, resolve=resolve, inner=network
        ),
    )
    return httpx.AsyncClient(
        transport=transport,
        timeout=settings.webhook_timeout,
        follow_redirects=False,
        trust_env=False,
    )


# --- the schedule ------------------------------------------------------------------------------


@dataclass(slots=True)
class PendingDelivery:
    """One event on its way to one callback URL, as stored in the backend's schedule."""

    job_id: str
    event_id: str
    event_type: str
    url: str
    body: str
    attempt: int = 0

    @property
    def id(self) -> str:
        return f"{self.job_id}/{self.event_id}"

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes) -> PendingDelivery:
        return cls(**orjson.loads(raw))


async def schedule_event(backend: Backend, job_id: str, callback: Callback, event: Event) -> None:
    """Record that `event` must reach the job's callback; a worker delivers it."""
    if not callback.wants(event.type):
        return
    pending = PendingDelivery(job_id, event.id, event.type, callback.url, event.envelope.decode())
    await backend.webhooks.schedule(pending.id, pending.encode(), time.time())
    await backend.jobs.update(
        job_id, {"webhook_delivered": "0", "webhook_next_attempt_at": iso_time(now_ms())}
    )


def now_ms() -> int:
    return int(time.time() * 1000)


def backoff(attempt: int, base: float, rand: float) -> float:
    """Exponential with jitter: half fixed (so retries do spread out), half random."""
    step = min(BACKOFF_CAP, base * 2.0 ** max(attempt - 1, 0))
    return step * (0.5 + rand / 2)


def retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    with contextlib.suppress(ValueError):
        return max(float(raw), 0.0)
    with contextlib.suppress(TypeError, ValueError, IndexError):
        return max(parsedate_to_datetime(raw).timestamp() - time.time(), 0.0)
    return None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt came to: `status` is the HTTP status, 0 when there was no response."""

    status: int
    delivered: bool = False
    retry_in: float | None = None
    gone: bool = False
    error: str = ""


def classify(response: httpx.Response, attempt: int, settings: Settings) -> Outcome:
    status = response.status_code
    if 200 <= status < 300:
        return Outcome(status, delivered=True)
    if status == 410:
        return Outcome(status, gone=True, error="the receiver answered 410 Gone")
    if status >= 500 or status in RETRYABLE_4XX:
        hint = retry_after(response) if status in (429, 503) else None
        delay = hint if hint is not None else backoff(attempt, settings.webhook_backoff, rand())
        return Outcome(status, retry_in=min(delay, BACKOFF_CAP), error=f"HTTP {status}")
    return Outcome(status, error=f"HTTP {status} (not retried)")


def rand() -> float:
    return random.random()


class WebhookDispatcher:
    """The delivery loop a worker runs next to its job slots."""

    def __init__(
        self,
        backend: Backend,
        settings: Settings,
        *,
        concurrency: int = 16,
        resolve: Resolver = system_resolve,
    ) -> None:
        self.backend = backend
        self.settings = settings
        self.concurrency = concurrency
        self.resolve = resolve
        self._inflight: set[asyncio.Task[None]] = set()

    async def run(self, stopping: asyncio.Event) -> None:
        lease = self.settings.webhook_timeout + 5.0
        async with webhook_client(self.settings, resolve=self.resolve) as client:
            try:
                while not stopping.is_set():
                    free = self.concurrency - len(self._inflight)
                    claimed: list[tuple[str, bytes]] = []
                    if free > 0:
                        try:
                            claimed = await self.backend.webhooks.claim(free, lease)
                        except BackendUnavailable as exc:
                            log.warning("cannot claim webhook deliveries (%s)", exc)
                    for _delivery_id, raw in claimed:
                        task = asyncio.create_task(self._deliver(client, raw))
                        self._inflight.add(task)
                        task.add_done_callback(self._inflight.discard)
                    if not claimed:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stopping.wait(), POLL_INTERVAL)
            finally:
                for task in list(self._inflight):
                    task.cancel()
                await asyncio.gather(*self._inflight, return_exceptions=True)

    async def _deliver(self, client: httpx.AsyncClient, raw: bytes) -> None:
        try:
            pending = PendingDelivery.decode(raw)
        except (orjson.JSONDecodeError, TypeError):
            log.error("dropping a malformed webhook delivery record")
            return
        try:
            await self._attempt(client, pending)
        except BackendUnavailable as exc:
            log.warning("webhook %s: backend unavailable (%s); retried later", pending.id, exc)
        except Exception:
            log.exception("webhook %s: delivery error", pending.id)

    async def _attempt(self, client: httpx.AsyncClient, pending: PendingDelivery) -> None:
        job = await self.backend.jobs.get(pending.job_id)
        if job is not None and job.get("webhook_gone") == "1":
            await self.backend.webhooks.finish(pending.id)
            await self.backend.jobs.update(pending.job_id, {"webhook_next_attempt_at": ""})
            return
        pending.attempt += 1
        outcome = await self.send(client, pending)
        if outcome.retry_in is not None and pending.attempt >= self.settings.webhook_max_attempts:
            outcome = Outcome(outcome.status, error=f"{outcome.error}; gave up")
        next_at = ""
        if outcome.retry_in is not None:
            due = time.time() + outcome.retry_in
            await self.backend.webhooks.schedule(pending.id, pending.encode(), due)
            next_at = iso_time(int(due * 1000))
        else:
            await self.backend.webhooks.finish(pending.id)
        attempts = int((job or {}).get("webhook_attempts", "0") or 0) + 1
        fields = {
            "webhook_attempts": str(attempts),
            "webhook_last_status": str(outcome.status),
            "webhook_next_attempt_at": next_at,
            "webhook_delivered": "1" if outcome.delivered else "0",
            "webhook_last_error": outcome.error,
        }
        if outcome.gone:
            fields["webhook_gone"] = "1"
        await self.backend.jobs.update(pending.job_id, fields)
        log.info(
            "webhook %s attempt %d -> %s%s",
            pending.id,
            pending.attempt,
            outcome.status or outcome.error,
            f", again in {outcome.retry_in:.2f}s" if outcome.retry_in is not None else "",
        )

    async def send(self, client: httpx.AsyncClient, pending: PendingDelivery) -> Outcome:
        """One attempt through `client` (a `webhook_client`), which refuses internal addresses
        as it connects."""
        body = pending.body.encode()
        headers = signed_headers(self.settings, pending.event_id, body)
        try:
            target = parse_callback_url(pending.url)
            response = await client.post(target.url, content=body, headers=headers)
        except UnsafeCallbackUrl as exc:
            return Outcome(0, error=f"refused: {exc}")
        except httpx.HTTPError as exc:
            delay = backoff(pending.attempt, self.settings.webhook_backoff, rand())
            kind = "timeout" if isinstance(exc, httpx.TimeoutException) else "network error"
            return Outcome(0, retry_in=delay, error=f"{kind}: {exc!s}"[:500])
        return classify(response, pending.attempt, self.settings)


def webhook_state(fields: dict[str, str]) -> dict[str, Any]:
    """The `webhook` member of a job resource, from the job record's `webhook_*` fields."""
    last = fields.get("webhook_last_status", "")
    return {
        "attempts": int(fields.get("webhook_attempts", "0") or 0),
        "last_status": int(last) if last not in ("", "0") else None,
        "next_attempt_at": fields.get("webhook_next_attempt_at") or None,
        "delivered": fields.get("webhook_delivered") == "1",
        "last_error": fields.get("webhook_last_error") or None,
    }
