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
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from gateway.backends.base import Backend, BackendUnavailable
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


class UnsafeCallbackUrl(ValueError):
    """A callback URL the gateway refuses to call: not http(s), or aimed at internal addresses."""


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


def _forbidden(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Anything not globally routable: loopback, private, link-local (cloud metadata), CGNAT..."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not address.is_global or address.is_multicast


async def check_callback_url(url: str, *, allow_private: bool) -> None:
    """Refuse URLs that are not http(s) or that resolve to a non-public address.

    Checked at submission and again before every attempt, since DNS may change in between.
    """
    if len(url) > 2048:
        raise UnsafeCallbackUrl("the callback URL is longer than 2048 characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeCallbackUrl(f"the callback URL is malformed: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeCallbackUrl("only http:// and https:// callback URLs are allowed")
    host = parts.hostname
    if not host:
        raise UnsafeCallbackUrl("the callback URL has no host")
    if allow_private:
        return
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        addresses = await _resolve(host, port or (443 if parts.scheme == "https" else 80))
    for address in addresses:
        if _forbidden(address):
            raise UnsafeCallbackUrl(
                f"the callback host {host!r} resolves to {address}, a loopback, private, "
                "link-local or otherwise internal address"
            )


async def _resolve(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout=5
        )
    except (OSError, TimeoutError) as exc:
        raise UnsafeCallbackUrl(f"the callback host {host!r} does not resolve: {exc}") from None
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


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
    await backend.schedule_webhook(pending.id, pending.encode(), time.time())
    await backend.update_job(
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

    def __init__(self, backend: Backend, settings: Settings, *, concurrency: int = 16) -> None:
        self.backend = backend
        self.settings = settings
        self.concurrency = concurrency
        self._inflight: set[asyncio.Task[None]] = set()

    async def run(self, stopping: asyncio.Event) -> None:
        lease = self.settings.webhook_timeout + 5.0
        async with httpx.AsyncClient(
            timeout=self.settings.webhook_timeout, follow_redirects=False, trust_env=False
        ) as client:
            try:
                while not stopping.is_set():
                    free = self.concurrency - len(self._inflight)
                    claimed: list[tuple[str, bytes]] = []
                    if free > 0:
                        try:
                            claimed = await self.backend.claim_webhooks(free, lease)
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
        job = await self.backend.get_job(pending.job_id)
        if job is not None and job.get("webhook_gone") == "1":
            await self.backend.finish_webhook(pending.id)
            await self.backend.update_job(pending.job_id, {"webhook_next_attempt_at": ""})
            return
        pending.attempt += 1
        outcome = await self._send(client, pending)
        if outcome.retry_in is not None and pending.attempt >= self.settings.webhook_max_attempts:
            outcome = Outcome(outcome.status, error=f"{outcome.error}; gave up")
        next_at = ""
        if outcome.retry_in is not None:
            due = time.time() + outcome.retry_in
            await self.backend.schedule_webhook(pending.id, pending.encode(), due)
            next_at = iso_time(int(due * 1000))
        else:
            await self.backend.finish_webhook(pending.id)
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
        await self.backend.update_job(pending.job_id, fields)
        log.info(
            "webhook %s attempt %d -> %s%s",
            pending.id,
            pending.attempt,
            outcome.status or outcome.error,
            f", again in {outcome.retry_in:.2f}s" if outcome.retry_in is not None else "",
        )

    async def _send(self, client: httpx.AsyncClient, pending: PendingDelivery) -> Outcome:
        try:
            await check_callback_url(pending.url, allow_private=self.settings.webhook_allow_private)
        except UnsafeCallbackUrl as exc:
            return Outcome(0, error=f"refused: {exc}")
        body = pending.body.encode()
        headers = signed_headers(self.settings, pending.event_id, body)
        try:
            response = await client.post(pending.url, content=body, headers=headers)
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
