"""Delivering scheduled webhooks: claim due deliveries, POST them, retry with backoff.

Workers claim due deliveries with a lease. A worker that dies mid-delivery loses nothing: the
lease ends and another worker claims the delivery again; receivers dedupe on `webhook-id`,
which is the event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import httpcore
import httpx
import orjson

from gateway.backends.bundle import Backend
from gateway.errors import BackendUnavailable, UnsafeCallbackUrl
from gateway.events import iso_time
from gateway.settings import Settings
from gateway.webhooks.address import PinnedNetwork, Resolver, parse_callback_url, system_resolve
from gateway.webhooks.schedule import PendingDelivery
from gateway.webhooks.signing import signed_headers

log = logging.getLogger("gateway.webhooks")

BACKOFF_CAP = 3600.0
"""Longest wait between two attempts of one delivery, whatever the attempt number."""

POLL_INTERVAL = 0.2
"""How often an idle worker looks for due deliveries (one cheap Redis call)."""

RETRYABLE_4XX = frozenset({408, 409, 429})


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
        self._last_of_job: dict[str, asyncio.Task[None]] = {}
        """The newest delivery task of each job with one in flight: a job's deliveries go one
        after another, in the order they were due, so a receiver sees its events in order and
        a 410 stops the ones behind it (they would otherwise race it)."""

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
                    for delivery_id, raw in claimed:
                        job_id = delivery_id.partition("/")[0]
                        before = self._last_of_job.get(job_id)
                        task = asyncio.create_task(self._deliver(client, raw, after=before))
                        self._inflight.add(task)
                        self._last_of_job[job_id] = task
                        task.add_done_callback(self._delivered)
                    if not claimed:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stopping.wait(), POLL_INTERVAL)
            finally:
                for task in list(self._inflight):
                    task.cancel()
                await asyncio.gather(*self._inflight, return_exceptions=True)

    def _delivered(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        for job_id, last in list(self._last_of_job.items()):
            if last is task:
                del self._last_of_job[job_id]
                break

    async def _deliver(
        self, client: httpx.AsyncClient, raw: bytes, *, after: asyncio.Task[None] | None = None
    ) -> None:
        if after is not None:
            # Its outcome is its own (logged there); only its end matters here.
            await asyncio.wait([after])
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
