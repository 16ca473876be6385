"""`Client`: the async client for services that consume (and publish) the gateway's events."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any

from gateway.client.connection import HEARTBEAT, Connection, ConnectionStatus
from gateway.client.http import REQUEST_TIMEOUT, HttpApi
from gateway.client.items import Event, Item
from gateway.client.jobs import Job
from gateway.client.subscription import BUFFER, Subscription
from gateway.events import parse_event_id


class Client:
    """One gateway, one set of credentials, one WebSocket for every subscription.

    ::

        async with Client("http://gateway:8000", api_key=KEY) as gw:
            async for item in gw.subscribe("room:lobby", since=last_seen):
                match item:
                    case Event():
                        last_seen = item.id
                    case Gap():
                        ...  # events after item.since are lost: resynchronise

    `api_key` is a server API key (submitting jobs, publishing anywhere, reading any known
    namespace); `token` a channel token (what a browser would hold; its `channels` claim makes
    server-side subscriptions, see `server_subscriptions`). Assign `client.token` to use a new
    token from the next connection on (after close `4002`, say).

    The WebSocket opens with the first subscription (a client that only publishes and submits
    holds none) and is kept open, reconnected and resumed, until the client is closed.
    `on_status` is called with a `ConnectionStatus` whenever the connection's state changes.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        api_key: str | None = None,
        heartbeat: float = HEARTBEAT,
        buffer: int = BUFFER,
        timeout: float = REQUEST_TIMEOUT,
        on_status: Callable[[ConnectionStatus], None] | None = None,
    ) -> None:
        if heartbeat <= 0 or buffer < 1:
            raise ValueError("heartbeat must be positive and buffer at least 1")
        self.url = url.rstrip("/")
        self.token = token
        self.api_key = api_key
        self._heartbeat = heartbeat
        self._buffer = buffer
        self._timeout = timeout
        self._on_status = on_status
        self._http: HttpApi | None = None
        self._connection: Connection | None = None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the WebSocket and the HTTP connections; every subscription's iteration ends."""
        if self._connection is not None:
            await self._connection.close()
        if self._http is not None:
            await self._http.aclose()

    @property
    def status(self) -> ConnectionStatus:
        """The WebSocket's state (`connecting` until the first subscription opens it)."""
        return self._ws.status

    @property
    def connections(self) -> int:
        """How many times the WebSocket was opened (1 plus the reconnects so far)."""
        return self._connection.connections if self._connection is not None else 0

    # --- consuming -----------------------------------------------------------------------------

    def subscribe(
        self, channel: str, since: str | None = None, *, token: str | None = None
    ) -> Subscription:
        """The channel's events after `since` (all its retained history when None), then live.

        Iterate the result (`async for item in ...`) for `Event`s and `Gap`s, in order, each
        event once, across reconnects; `await sub.subscribed()` waits for the gateway's
        acknowledgement. `token` is a channel token for this channel only (the client's
        credentials otherwise). A refused subscription raises `RequestForbidden` or
        `RequestInvalid` from the iteration; close 4001/1008 raises `Disconnected`.
        A channel is subscribed once per client (`RequestInvalid` for a second time).
        """
        if since is not None:
            parse_event_id(since)  # InvalidEventId (a ValueError) now, not from the gateway
        return self._ws.subscribe(channel, since, token)

    def server_subscriptions(self) -> AsyncIterator[Subscription]:
        """The subscriptions the gateway makes on its own (the token's `channels` claim),
        each as it is announced: iterate each like one of `subscribe`'s (`server` is True).
        They resume across reconnects the same way. Opens the WebSocket if it is not open."""
        return self._ws.server_subscriptions()

    async def follow(self, job: Job | str, *, since: str | None = None) -> AsyncIterator[Item]:
        """A job's events, its whole history first (or after `since`), ending with the event
        that ends the job (`job.completed`, `job.failed` or `job.cancelled`).

        Ends at once when the job had already ended at `since`. `NotFound` for a job id the
        gateway does not know. `job` may be the `Job` that `submit` returned, whose token the
        subscription then uses.
        """
        handle = job if isinstance(job, Job) else None
        if handle is None or since is not None:
            record = await self.job(job.id if isinstance(job, Job) else job)
            if since is not None and record.ended and _at_or_after(since, record.last_event_id):
                return
            handle = handle or record
        subscription = self.subscribe(handle.channel, since, token=handle.token)
        async with subscription:
            async for item in subscription:
                yield item
                if isinstance(item, Event) and item.ends_job:
                    return

    # --- producing -----------------------------------------------------------------------------

    async def publish(
        self, channel: str, type: str = "message", data: Any = None, *, token: str | None = None
    ) -> str:
        """Publish an event; returns its id. Over HTTP, so it does not wait on a reconnect.

        `RequestForbidden` (credentials), `RequestInvalid` (channel, type, size),
        `RequestRateLimited`, `GatewayUnavailable` (no answer or 5xx: it may or may not have
        been published).
        """
        return await self._api.publish(channel, type, data, token)

    async def submit(
        self,
        type: str,
        data: Any = None,
        *,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Submit a job (`POST /jobs`); `follow` the returned `Job` for its events.

        With `idempotency_key`, submitting again (after a `GatewayUnavailable`, say) returns the
        same job instead of a second one. `RequestInvalid` (unknown type, invalid data),
        `RequestForbidden`, `Conflict` (the same key still in flight), `GatewayUnavailable`.
        """
        return await self._api.submit(
            type, data, callback_url=callback_url, idempotency_key=idempotency_key
        )

    async def job(self, job_id: str) -> Job:
        """The job's record now (`GET /jobs/{id}`); `NotFound` when unknown or expired."""
        return await self._api.job(job_id)

    # --- parts ---------------------------------------------------------------------------------

    @property
    def _api(self) -> HttpApi:
        if self._http is None:
            self._http = HttpApi(
                self.url, api_key=self.api_key, token=self.token, timeout=self._timeout
            )
        return self._http

    @property
    def _ws(self) -> Connection:
        if self._connection is None:
            self._connection = Connection(
                self.url,
                api_key=self.api_key,
                token=lambda: self.token,
                heartbeat=self._heartbeat,
                buffer=self._buffer,
                on_status=self._on_status,
            )
        return self._connection


def _at_or_after(since: str, last: str | None) -> bool:
    return last is None or parse_event_id(since) >= parse_event_id(last)
