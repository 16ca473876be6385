"""The rules of channels, in one place: who may subscribe, publish and read history, and how.

Every transport and route asks `ChannelService`: the WebSocket ops (`gateway.transports.ws`),
the HTTP channel routes and SSE streams (`gateway.api.channels`), and the access guard's
channel-publish rule (`gateway.api.guards`). It applies the namespace policy
(`gateway.auth.ChannelPolicy`), token rights (`gateway.tokens`), the publish rate-limit keys,
the event type pattern and the event size limit (enforced by the backend as `EventTooLarge`).
Channel names are checked where they arrive (`gateway.events.validate_channel`, by the protocol
and the HTTP parameters), so the methods here take valid names. It raises errors of
`gateway.errors` only; HTTP turns them into problems (`gateway.problems.problem_for`),
WebSocket into `error` frames (`gateway.protocol.v1`).
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.auth import ChannelPolicy
from gateway.backends.bundle import Backend
from gateway.backends.bus import History, Publication
from gateway.errors import EventTooLarge, Forbidden, RateLimited
from gateway.events import Event, validate_channel, validate_event_type
from gateway.limits import Limits, TokenBucket
from gateway.tokens import ChannelToken

PUBLISH_TOO_FAST = "publishing too fast; slow down"
PUBLISH_TOO_FAST_TOKEN = "too many publishes with this token; slow down"


class ChannelService:
    """Channel operations for one gateway process; cheap to make (it holds references only).

    A caller is an API key (a server: any channel of a known namespace) or else whatever
    channel token it carries (a client: the namespace's rules apply).
    """

    __slots__ = ("backend", "limits", "policy")

    def __init__(self, policy: ChannelPolicy, limits: Limits, backend: Backend) -> None:
        self.policy = policy
        self.limits = limits
        self.backend = backend

    def token(self, raw: str | None, *, api_key: str | None) -> ChannelToken | None:
        """The verified token of a client; None for a server (API key), when none was given,
        or when the gateway runs open (a stale token must not get in the way there).
        `Forbidden` for a token that does not verify."""
        if self.policy.open_mode or api_key is not None:
            return None
        return self.policy.verify(raw)

    def connection_token(self, raw: str | None, *, api_key: str | None) -> ChannelToken | None:
        """The token a connection was opened with, for what it is subscribed to on connect and
        whose it is (`gateway.control`). As `token`, except that in open mode it is verified
        too (one that does not verify is then ignored, as `token` ignores every token)."""
        if api_key is not None:
            return None
        if self.policy.open_mode:
            try:
                return self.policy.verify(raw)
            except Forbidden:
                return None
        return self.policy.verify(raw)

    def authorize_read(
        self, channel: str, *, api_key: str | None, token: ChannelToken | None
    ) -> None:
        """Subscribe, stream or read history: the namespace's subscribe rule for clients."""
        if api_key is None:
            self.policy.check_subscribe(channel, token)
        else:
            self.policy.check_namespace(channel)

    def authorize_publish(
        self,
        channel: str,
        *,
        api_key: str | None,
        token: ChannelToken | None,
        connection: TokenBucket | None = None,
    ) -> None:
        """A publish: the namespace's client-publish rule and the publish rate for clients.

        Client publishes are limited per token (`token:<raw>`) and, on a WebSocket, per
        connection (`connection`) too: one noisy client cannot flood a room.
        """
        if api_key is not None:
            self.policy.check_namespace(channel)
            return
        self.policy.check_client_publish(channel, token)
        self._take_publish(token, connection)

    def authorize_http_publish(self, channel: str, *, raw_token: str | None) -> ChannelToken:
        """`POST /channels/{channel}/events` without an API key while keys are configured:
        a channel token with `publish` is needed (verified even in open mode)."""
        token = self.policy.verify(raw_token)
        if token is None:
            raise Forbidden(
                "publishing needs an API key or a channel token with 'publish'", "token_required"
            )
        self.authorize_publish(channel, api_key=None, token=token)
        return token

    def _take_publish(self, token: ChannelToken | None, connection: TokenBucket | None) -> None:
        if connection is not None:
            wait = connection.take()
            if wait == 0 and token is not None:
                wait = self.limits.publish.take("token:" + token.raw)
            message = PUBLISH_TOO_FAST
        elif token is not None:
            wait = self.limits.publish.take("token:" + token.raw)
            message = PUBLISH_TOO_FAST_TOKEN
        else:
            return
        if wait > 0:
            raise RateLimited(message, wait)

    def connection_bucket(self) -> TokenBucket:
        """A publish bucket of its own for one connection."""
        return self.limits.publish.bucket()

    async def publish(self, channel: str, type_: object, data: object) -> Event | None:
        """Publish after authorization: `InvalidEventType`, `Forbidden` (unknown namespace),
        `EventTooLarge` (over the namespace's `GATEWAY_MAX_EVENT_SIZE`) or `BackendUnavailable`.
        """
        event_type = validate_event_type(type_)
        self.policy.check_namespace(channel)
        return await self.backend.bus.publish(channel, event_type, data)

    def publication(self, channel: object, type_: object, data: object) -> Publication:
        """An event as `publish` would take it, checked: `InvalidChannel`, `InvalidEventType`
        or `Forbidden` (unknown namespace). For the server API's batches (`publish_many`)."""
        name = validate_channel(channel)  # type: ignore[arg-type]
        event_type = validate_event_type(type_)
        self.policy.check_namespace(name)
        return Publication(name, event_type, data)

    async def publish_many(
        self, publications: Sequence[Publication]
    ) -> list[Event | EventTooLarge]:
        """Publish checked events (`publication`) in one round trip: per event, its `Event` or
        the `EventTooLarge` that kept it out; `BackendUnavailable` for the whole batch."""
        return await self.backend.bus.publish_many(publications)

    async def history(
        self,
        channel: str,
        since: str | None,
        limit: int,
        *,
        api_key: str | None,
        token: ChannelToken | None,
    ) -> History:
        """Stored events after `since` (at most `limit`), for a caller that may read them."""
        self.authorize_read(channel, api_key=api_key, token=token)
        return await self.backend.bus.history(channel, since, limit=limit)
