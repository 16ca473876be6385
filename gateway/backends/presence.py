"""The presence store: who is subscribed to a channel, on every gateway process, and which
processes are alive to vouch for them.

Two implementations keep the same contract (tests/backends/test_contract_presence.py runs
against both): `MemoryPresenceStore` for one process, `RedisPresenceStore` for many.

Every entry is held by one gateway process (its `gateway` id). A process renews its heartbeat
(`beat`) with a deadline; once a deadline passes, any other process may claim the dead one
(`claim_dead`, a lease, so a claimer that dies too is replaced) and remove its entries one by
one (`leave` with the dead process's id). `join` and `leave` are atomic per channel and say
whether they changed anything, so each join, leave, occupied and vacated is reported by exactly
one process, however many race.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class Member:
    """One client present on a channel: the contract's entry, `{client, user, info}`."""

    client: str
    user: str | None
    info: Any = None

    @property
    def key(self) -> str:
        """Unique per channel: a client id is the client's choice, so it is scoped by its user
        (another user choosing the same id gets an entry of its own)."""
        return f"{self.user or ''}\x1f{self.client}"

    def entry(self) -> dict[str, Any]:
        return {"client": self.client, "user": self.user, "info": self.info}

    def encode(self) -> bytes:
        return orjson.dumps(self.entry())

    @classmethod
    def decode(cls, raw: bytes) -> Member:
        value = orjson.loads(raw)
        return cls(value["client"], value.get("user"), value.get("info"))


@dataclass(frozen=True, slots=True)
class Change:
    """What a `join` or `leave` did: `changed` (the entry was added / removed, by this call and
    no other), the clients present after it, and the member it was about."""

    changed: bool
    count: int
    member: Member | None = None


@dataclass(frozen=True, slots=True)
class PresencePage:
    """Members in key order after a cursor; `next` is the cursor of the page after, or None."""

    members: list[Member]
    next: str | None


@dataclass(frozen=True, slots=True)
class PresenceStats:
    clients: int
    users: int
    """Distinct token subjects (clients without a token are counted in `clients` only)."""


class PresenceStore(abc.ABC):
    """Per-channel entries, per-process heartbeats, and jobs waiting to be found unwatched."""

    # --- entries --------------------------------------------------------------------------

    @abc.abstractmethod
    async def join(self, channel: str, member: Member, gateway: str) -> Change:
        """Add (or take over) the member's entry for `gateway`; `changed` when it is new."""

    @abc.abstractmethod
    async def leave(self, channel: str, key: str, gateway: str) -> Change:
        """Remove the entry `key` if `gateway` still holds it (a client that moved to another
        process meanwhile stays); `changed` and the removed `member` when it went. Either way
        `gateway` no longer holds it (`held` forgets it)."""

    @abc.abstractmethod
    async def members(self, channel: str, after: str | None, limit: int) -> PresencePage:
        """Up to `limit` members with keys after `after` (a `next` cursor), in key order."""

    @abc.abstractmethod
    async def stats(self, channel: str) -> PresenceStats:
        """Counts only, in O(1): for rooms too big to list."""

    # --- processes --------------------------------------------------------------------------

    @abc.abstractmethod
    async def beat(self, gateway: str, deadline: float) -> bool:
        """`gateway` is alive until unix time `deadline`; True when it was not registered
        (first beat, or the store lost its state: the caller joins its entries again)."""

    @abc.abstractmethod
    async def claim_dead(self, now: float, lease: float, limit: int = 10) -> list[str]:
        """Processes whose deadline passed, each given to one caller for `lease` seconds."""

    @abc.abstractmethod
    async def held(self, gateway: str, limit: int) -> list[tuple[str, str]]:
        """Up to `limit` `(channel, key)` entries `gateway` holds (to remove after its death)."""

    @abc.abstractmethod
    async def release(self, gateway: str, entries: list[tuple[str, str]]) -> None:
        """Forget that `gateway` holds these entries (removed, or taken over)."""

    @abc.abstractmethod
    async def forget(self, gateway: str) -> None:
        """A dead process's entries are all gone: drop its heartbeat and its list."""

    # --- unwatched jobs ---------------------------------------------------------------------

    @abc.abstractmethod
    async def watch_job(self, job_id: str, grace: float, now: float) -> None:
        """The job opted in to `cancel_when_unwatched: grace`: due at `now + grace` unless its
        channel has a subscriber (then when the last one leaves, plus `grace`)."""

    @abc.abstractmethod
    async def job_watched(self, job_id: str, watched: bool, now: float) -> None:
        """Its channel was occupied (not due) or vacated (due in its grace from `now`)."""

    @abc.abstractmethod
    async def due_jobs(self, now: float, lease: float, limit: int = 50) -> list[str]:
        """Opted-in jobs unwatched past their grace, each given to one caller for `lease` s."""

    @abc.abstractmethod
    async def unwatch_job(self, job_id: str) -> None:
        """Stop watching a job (cancelled, or ended)."""
