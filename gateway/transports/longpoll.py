"""Long polls (`GET /jobs/{id}?wait=`) as connections the control commands reach.

A held long poll is a connection like a stream: a revoked token or a disconnected user must not
keep it open until its wait runs out, possibly seeing the job's next event. `LongPoll` is its
`gateway.control.Session`: a command ends the wait at once, and a poll whose token was revoked
(before or during the wait) is refused as a new request with that token would be: `401`,
`token_revoked`. Anything else that ends it early (a user's disconnect, an unsubscribe) answers
as a wait that ran out does: the resource as it is.
"""

from __future__ import annotations

from gateway.auth import token_revoked
from gateway.control import Sessions
from gateway.hub import Hub
from gateway.outbound import Subscriber
from gateway.tokens import ChannelToken

QUEUE = 16
"""Events a long poll holds: it only needs to know that one arrived."""


class LongPoll:
    """One held long poll on a channel, for the token that authorized it (None: an API key).

    Held on the hub: one bus subscription per channel, not a poll of the store per request."""

    __slots__ = ("hub", "sessions", "subscriber", "token")

    def __init__(self, hub: Hub, sessions: Sessions, token: ChannelToken | None) -> None:
        self.hub = hub
        self.sessions = sessions
        self.token = token
        self.subscriber = Subscriber("sse", QUEUE)

    async def wait(self, channel: str, since: str | None, timeout: float) -> None:
        """Until the channel has an event after `since`, `timeout` seconds pass or a control
        command ends the poll; `Forbidden` (`token_revoked`) when its token was revoked."""
        try:
            if self.sessions.track(self, self.token):
                await self.hub.attach(self.subscriber, channel, since)
                await self.subscriber.wait(timeout=timeout)
        finally:
            self.sessions.forget(self)
            await self.hub.detach_all(self.subscriber)
        if self.token is not None and self.sessions.revoked(self.token.jti):
            raise token_revoked()

    # --- control (gateway.control.Session) --------------------------------------------------

    def disconnect(self, code: int, reason: str) -> None:
        """End the wait now; `wait` tells a revocation from the rest."""
        self.subscriber.close()

    def server_unsubscribe(self, channel: str, reason: str) -> bool:
        """The poll waits on one channel: stop waiting on it is ending the wait."""
        if channel not in self.subscriber.channels:
            return False
        self.subscriber.close()
        return True
