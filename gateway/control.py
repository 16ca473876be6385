"""Control over connections: disconnect a user everywhere, unsubscribe a user from a channel,
revoke a token. docs/control.md describes the API; this is how one process carries it out.

A command is sent to every gateway process over the control bus (`gateway.backends.control`);
each process looks up its own connections of that user (or holding that token) in `Sessions`
and acts on them through the `Session` interface, which the WebSocket and SSE transports
implement in their own way (a close code, or a last message and the end of the stream). Each
process answers how many connections it acted on, and the route adds the answers up. A process
that was cut off from the bus catches up when it is back (`ControlService.sweep`): the
revocations and user disconnects kept meanwhile end its connections as the commands would have.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from gateway.backends.control import ControlBus, Disconnect, Outcome
from gateway.tokens import ChannelToken
from gateway.vocabulary import CloseCode

log = logging.getLogger("gateway.control")

REVOKED_REASON = "token revoked"
DISCONNECT = "disconnect"
UNSUBSCRIBE = "unsubscribe"
REVOKE = "revoke"
DISCONNECTS_REMEMBERED = 1024
"""Disconnects carried out here before those older than the kept ones are forgotten (then
again at twice what is left)."""


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
        self._by_key: dict[tuple[str, str], dict[Session, float]] = {}
        """Each session with when it was first indexed under the key (`time.time()`)."""
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
                self._by_key.setdefault(key, {})[session] = time.time()
        if keys:
            self._keys[session] = keys
        return not self.revoked(token.jti)

    def forget(self, session: Session) -> None:
        for key in self._keys.pop(session, ()):
            sessions = self._by_key.get(key)
            if sessions is not None:
                sessions.pop(session, None)
                if not sessions:
                    del self._by_key[key]

    def of_user(self, sub: str, *, held_before: float | None = None) -> list[Session]:
        """The user's connections; with `held_before`, only those that were the user's already
        at that time (Unix seconds)."""
        sessions = self._by_key.get(("sub", sub), {})
        if held_before is None:
            return list(sessions)
        return [session for session, since in sessions.items() if since < held_before]

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
        self._disconnects_done: dict[tuple[str, float], float] = {}
        """User disconnects (user, sent at) this process carried out, heard or caught up on,
        so a later reread does not apply them again (to connections opened since, when
        clocks disagree)."""
        self._prune_done_at = DISCONNECTS_REMEMBERED
        bus.add_listener(self.heard)
        bus.add_reread_listener(self.sweep)

    async def disconnect_user(self, sub: str, reason: str, *, reconnect: bool) -> Outcome:
        code = CloseCode.DISCONNECTED_RECONNECT if reconnect else CloseCode.DISCONNECTED
        return await self.bus.disconnect(sub, int(code), reason)

    async def unsubscribe_user(self, sub: str, channel: str, reason: str) -> Outcome:
        return await self.bus.send(
            {"op": UNSUBSCRIBE, "user": sub, "channel": channel, "reason": reason}
        )

    async def revoke(self, jti: str, exp: float) -> Outcome:
        return await self.bus.revoke(jti, exp)

    def sweep(self, disconnects: Sequence[Disconnect]) -> int:
        """After the revocation list was reread (this process was cut off from the others and
        may have missed commands): end the connections whose token is now revoked, and those
        of a disconnected user that were already held when the disconnect was sent, as the
        commands would have."""
        revoked = self.sessions.holding_revoked()
        for session in revoked:
            session.disconnect(CloseCode.DISCONNECTED, REVOKED_REASON)
        ended = set(revoked)
        for command in disconnects:
            if command.code not in set(CloseCode) or not self._done(command.user, command.at):
                continue
            for session in self.sessions.of_user(command.user, held_before=command.at):
                if session not in ended:
                    ended.add(session)
                    session.disconnect(command.code, command.reason)
        if ended:
            log.info(
                "control commands caught up after a reconnect: %d connections closed", len(ended)
            )
        return len(ended)

    def _done(self, user: str, at: float) -> bool:
        """Note a disconnect as carried out here; False when it already was."""
        if (user, at) in self._disconnects_done:
            return False
        self._disconnects_done[user, at] = at
        if len(self._disconnects_done) >= self._prune_done_at:
            oldest = time.time() - self.bus.disconnects_kept
            self._disconnects_done = {
                key: sent for key, sent in self._disconnects_done.items() if sent >= oldest
            }
            self._prune_done_at = max(DISCONNECTS_REMEMBERED, 2 * len(self._disconnects_done))
        return True

    def heard(self, command: Mapping[str, Any]) -> int | None:
        """A command from any process (this one included): act on this process's connections;
        the number acted on is the answer."""
        op = command.get("op")
        if op == DISCONNECT:
            user, code, reason = command.get("user"), command.get("code"), command.get("reason")
            if not isinstance(user, str) or code not in set(CloseCode):
                return 0
            at = command.get("at")
            if isinstance(at, int | float):
                self._done(user, float(at))
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
