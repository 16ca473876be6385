"""Control over connections: disconnect a user everywhere, unsubscribe a user from a channel,
revoke a token. docs/control.md describes the API; this is how one process carries it out.

A command is sent to every gateway process over the control bus (`gateway.backends.control`);
each process looks up its own connections of that user (or holding that token) in `Sessions`
and acts on them through the `Session` interface, which the WebSocket and SSE transports
implement in their own way (a close code, or a last message and the end of the stream). Each
process answers how many connections it acted on, and the route adds the answers up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from gateway.backends.control import ControlBus, Outcome
from gateway.tokens import ChannelToken
from gateway.vocabulary import CloseCode

log = logging.getLogger("gateway.control")

REVOKED_REASON = "token revoked"
DISCONNECT = "disconnect"
UNSUBSCRIBE = "unsubscribe"
REVOKE = "revoke"


class Session(Protocol):
    """A connection that control commands can act on."""

    def disconnect(self, code: int, reason: str) -> None:
        """End the connection, telling the client `code` and `reason`."""

    def server_unsubscribe(self, channel: str, reason: str) -> bool:
        """Stop the channel's events and tell the client; False if it was not subscribed."""


class Sessions:
    """This process's connections by the subjects and token ids they hold.

    A WebSocket connection may use several tokens (one per op), so it is indexed under each
    token it used successfully; a connection without a token (an API key, dev mode) is not
    indexed and no command reaches it.

    `revoked` is the control bus's revocation list: a token revoked after it was checked but
    before its connection was tracked (the route awaited something in between) would miss the
    command, so `track` looks again.
    """

    def __init__(self, revoked: Callable[[str | None], bool]) -> None:
        self.revoked = revoked
        self._by_key: dict[tuple[str, str], set[Session]] = {}
        self._keys: dict[Session, tuple[tuple[str, str], ...]] = {}
        """A tuple each: a connection uses one or two tokens, rarely more."""

    def track(self, session: Session, token: ChannelToken | None) -> bool:
        """Index `session` under the token's subject and id (cheap when already indexed).

        False when the token was revoked meanwhile: the caller ends the session as the revoke
        command would have (`session` is indexed all the same, and forgotten as usual)."""
        if token is None:
            return True
        keys = self._keys.get(session, ())
        for key in (("sub", token.sub), ("jti", token.jti or "")):
            if key[1] and key not in keys:
                keys = (*keys, key)
                self._by_key.setdefault(key, set()).add(session)
        if keys:
            self._keys[session] = keys
        return not self.revoked(token.jti)

    def forget(self, session: Session) -> None:
        for key in self._keys.pop(session, ()):
            sessions = self._by_key.get(key)
            if sessions is not None:
                sessions.discard(session)
                if not sessions:
                    del self._by_key[key]

    def of_user(self, sub: str) -> list[Session]:
        return list(self._by_key.get(("sub", sub), ()))

    def holding(self, jti: str) -> list[Session]:
        return list(self._by_key.get(("jti", jti), ()))

    def holding_revoked(self) -> list[Session]:
        """Connections that used a token now on the revocation list (one pass over the token
        ids in use, done only when the list was reread)."""
        found: set[Session] = set()
        for (kind, value), sessions in list(self._by_key.items()):
            if kind == "jti" and self.revoked(value):
                found.update(sessions)
        return list(found)

    def __len__(self) -> int:
        return len(self._keys)


class ControlService:
    """Sends control commands to every process, and carries them out on this one's connections."""

    def __init__(self, bus: ControlBus) -> None:
        self.bus = bus
        self.sessions = Sessions(bus.is_revoked)
        bus.add_listener(self.heard)
        bus.add_reread_listener(self.sweep_revoked)

    async def disconnect_user(self, sub: str, reason: str, *, reconnect: bool) -> Outcome:
        code = CloseCode.DISCONNECTED_RECONNECT if reconnect else CloseCode.DISCONNECTED
        return await self.bus.send(
            {"op": DISCONNECT, "user": sub, "code": int(code), "reason": reason}
        )

    async def unsubscribe_user(self, sub: str, channel: str, reason: str) -> Outcome:
        return await self.bus.send(
            {"op": UNSUBSCRIBE, "user": sub, "channel": channel, "reason": reason}
        )

    async def revoke(self, jti: str, exp: float) -> Outcome:
        return await self.bus.revoke(jti, exp)

    def sweep_revoked(self) -> int:
        """After the revocation list was reread (this process was cut off from the others and
        may have missed announcements): end the connections whose token is now revoked, as the
        revoke command would have."""
        sessions = self.sessions.holding_revoked()
        for session in sessions:
            session.disconnect(CloseCode.DISCONNECTED, REVOKED_REASON)
        if sessions:
            log.info(
                "revocation list reread: %d connections with a revoked token closed", len(sessions)
            )
        return len(sessions)

    def heard(self, command: Mapping[str, Any]) -> int | None:
        """A command from any process (this one included): act on this process's connections;
        the number acted on is the answer."""
        op = command.get("op")
        if op == DISCONNECT:
            user, code, reason = command.get("user"), command.get("code"), command.get("reason")
            if not isinstance(user, str) or code not in set(CloseCode):
                return 0
            sessions = self.sessions.of_user(user)
            for session in sessions:
                session.disconnect(int(code), str(reason or ""))
            return len(sessions)
        if op == UNSUBSCRIBE:
            user, channel = command.get("user"), command.get("channel")
            if not isinstance(user, str) or not isinstance(channel, str):
                return 0
            reason = str(command.get("reason") or "")
            return sum(s.server_unsubscribe(channel, reason) for s in self.sessions.of_user(user))
        if op == REVOKE:
            jti = command.get("jti")
            if not isinstance(jti, str):
                return 0
            sessions = self.sessions.holding(jti)
            for session in sessions:
                session.disconnect(CloseCode.DISCONNECTED, REVOKED_REASON)
            return len(sessions)
        return None
