"""The control bus: commands to every gateway process, and the token ids revoked until expiry.

`POST /users/{sub}/disconnect` on one gateway must close that user's connections on all of them,
so the command goes out to every process (`send`); each hands it to its listeners
(`gateway.control`), which act on their own connections and may answer (`reply`). Revocations
are stored until the token's expiry (`revoke`) and every process keeps a copy of the list
(`revoked`), so checking a token is a dictionary lookup, never a round trip.

Two implementations keep the same contract (tests/backends/test_contract_control.py):
`MemoryControl` for one process, `RedisControl` (`redis_control.py`) for many.
"""

from __future__ import annotations

import abc
import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("gateway.control")

ControlListener = Callable[[Mapping[str, Any]], int | None]
"""Hears every command sent to the processes; returns how many connections it acted on (the
sender adds the answers up), or None to leave the command unanswered. Must not block."""
RereadListener = Callable[[Sequence["Disconnect"]], int]
"""Told that the revocation list was read again whole (after the link to the other processes
was lost, when announcements may have been missed), with the user disconnects kept meanwhile;
returns how many connections it ended. Must not block."""


@dataclass(frozen=True, slots=True)
class Disconnect:
    """A user disconnect as kept for processes that were cut off when it was sent."""

    user: str
    code: int
    reason: str
    at: float
    """When it was sent (Unix seconds, the sender's clock): connections of the user this
    process already held then are the ones it would have ended."""


PRUNE_FLOOR = 1024
"""Revocations held before expired ones are swept out (then again at twice what is left)."""
REPLY_TIMEOUT = 2.0
"""Seconds `send` waits for every process that heard a command to say what it did."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a command did across the processes that heard it."""

    processes: int
    """Gateway processes the command reached."""
    connections: int
    """Connections they acted on (closed, unsubscribed), as far as they answered."""
    complete: bool
    """Whether every process that heard it answered within `REPLY_TIMEOUT`."""


class ControlBus(abc.ABC):
    """Commands to every process (this one included) and the revocation list.

    The list is kept in this process (`is_revoked`, no I/O): loaded at `start`, updated by each
    revocation as it is announced, and read again whole after the link to the other processes
    was lost (a revocation announced meanwhile is not missed for long).
    """

    kind: str
    disconnects_kept = 0.0
    """Seconds a user disconnect is kept for processes cut off when it was sent."""

    def __init__(self) -> None:
        self._listeners: tuple[ControlListener, ...] = ()
        self._reread_listeners: tuple[RereadListener, ...] = ()
        self._revoked: dict[str, float] = {}
        self._prune_at = PRUNE_FLOOR
        self._pending: dict[str, _Pending] = {}
        self._ids = itertools.count()
        self.process_id = secrets.token_hex(6)

    def add_listener(self, listener: ControlListener) -> None:
        self._listeners = (*self._listeners, listener)

    def remove_listener(self, listener: ControlListener) -> None:
        self._listeners = tuple(fn for fn in self._listeners if fn != listener)

    def add_reread_listener(self, listener: RereadListener) -> None:
        self._reread_listeners = (*self._reread_listeners, listener)

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect and load the revocation list; called once before use."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and tasks."""

    def is_revoked(self, jti: str | None, now: float | None = None) -> bool:
        """Whether a token with this id was revoked (and has not expired yet)."""
        if jti is None:
            return False
        until = self._revoked.get(jti)
        if until is None:
            return False
        if (time.time() if now is None else now) < until:
            return True
        del self._revoked[jti]
        return False

    @property
    def revoked_count(self) -> int:
        """Revocations held in this process (expired ones go as they are looked up or reloaded)."""
        return len(self._revoked)

    async def send(self, command: Mapping[str, Any]) -> Outcome:
        """Send a command to every process, and wait (at most `REPLY_TIMEOUT`) for their
        answers. `command` is a JSON object with an `op`."""
        request = f"{self.process_id}-{next(self._ids)}"
        pending = self._pending[request] = _Pending(asyncio.get_running_loop().create_future())
        try:
            reached = await self._publish({**command, "request": request})
            pending.expected = reached
            pending.check()
            try:
                await asyncio.wait_for(asyncio.shield(pending.done), REPLY_TIMEOUT)
            except TimeoutError:
                log.warning(
                    "control %s: %d of %d processes answered",
                    command.get("op"),
                    pending.answers,
                    reached,
                )
            return Outcome(reached, pending.connections, pending.answers >= reached)
        finally:
            del self._pending[request]

    async def disconnect(self, user: str, code: int, reason: str) -> Outcome:
        """Close the user's connections in every process (`code`, `reason`); kept for one token
        lifetime, so a process cut off meanwhile closes them once it is back."""
        at = time.time()
        await self._store_disconnect(Disconnect(user, code, reason, at))
        return await self.send(
            {"op": "disconnect", "user": user, "code": code, "reason": reason, "at": at}
        )

    async def revoke(self, jti: str, exp: float) -> Outcome:
        """Refuse tokens with this id until `exp` (unix seconds), in every process, and tell
        every process to close the connections that hold one."""
        self._remember(jti, exp)
        await self._store_revocation(jti, exp)
        return await self.send({"op": "revoke", "jti": jti, "exp": exp})

    def _heard(self, message: Mapping[str, Any]) -> None:
        """A message from the bus: a command for the listeners, or an answer to one of ours."""
        op = message.get("op")
        if op == "reply":
            pending = self._pending.get(str(message.get("request")))
            if pending is not None:
                pending.answer(int(message.get("connections") or 0))
            return
        if op == "revoke":
            jti, exp = message.get("jti"), message.get("exp")
            if isinstance(jti, str) and isinstance(exp, int | float):
                self._remember(jti, float(exp))
        acted = 0
        for listener in self._listeners:
            try:
                acted += listener(message) or 0
            except Exception:
                log.exception("control listener %r failed on %r", listener, op)
        request = message.get("request")
        if isinstance(request, str):
            self._answer(request, acted)

    def _remember(self, jti: str, exp: float) -> None:
        """Add a revocation; expired ones are swept out as the list grows, so it holds about
        the revocations of one token lifetime however long the process runs."""
        self._revoked[jti] = exp
        if len(self._revoked) >= self._prune_at:
            self._load(self._revoked)
            self._prune_at = max(PRUNE_FLOOR, 2 * len(self._revoked))

    def _load(self, revoked: Mapping[str, float]) -> None:
        now = time.time()
        self._revoked = {jti: exp for jti, exp in revoked.items() if exp > now}

    def _reread(self, revoked: Mapping[str, float], disconnects: Sequence[Disconnect]) -> None:
        """The whole list as stored, read after (re)connecting: replace this process's copy and
        let the listeners end connections whose token was revoked, or whose user was
        disconnected, while no announcement could reach this process."""
        self._load(revoked)
        for listener in self._reread_listeners:
            try:
                listener(disconnects)
            except Exception:
                log.exception("revocation list listener %r failed", listener)

    @abc.abstractmethod
    async def _publish(self, message: Mapping[str, Any]) -> int:
        """Deliver a message to every process; how many processes it reached."""

    @abc.abstractmethod
    def _answer(self, request: str, connections: int) -> None:
        """Tell the sender of `request` what this process did (without blocking)."""

    @abc.abstractmethod
    async def _store_revocation(self, jti: str, exp: float) -> None:
        """Keep the revocation until `exp`, where processes started later find it."""

    async def _store_disconnect(self, disconnect: Disconnect) -> None:  # noqa: B027 - optional hook
        """Keep the disconnect for processes cut off now (one process: nothing to keep)."""


class _Pending:
    """Answers still expected to one command this process sent."""

    __slots__ = ("answers", "connections", "done", "expected")

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.done = done
        self.expected: int | None = None
        self.answers = 0
        self.connections = 0

    def answer(self, connections: int) -> None:
        self.answers += 1
        self.connections += connections
        self.check()

    def check(self) -> None:
        if self.expected is not None and self.answers >= self.expected and not self.done.done():
            self.done.set_result(None)


class MemoryControl(ControlBus):
    """One process: commands go straight to the listeners, the list lives only here."""

    kind = "memory"

    async def _publish(self, message: Mapping[str, Any]) -> int:
        # Soon, not now: the sender is waiting for answers, as with Redis.
        asyncio.get_running_loop().call_soon(self._heard, dict(message))
        return 1

    def _answer(self, request: str, connections: int) -> None:
        self._heard({"op": "reply", "request": request, "connections": connections})

    async def _store_revocation(self, jti: str, exp: float) -> None:
        return None  # `revoke` has put it in the list, which is all there is in one process
