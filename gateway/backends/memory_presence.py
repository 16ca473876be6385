"""In-process presence store: the same promises as the Redis one, for one process (and for the
contract tests, which play several "processes" on one store). Nothing awaits inside a step,
so each step is atomic."""

from __future__ import annotations

import bisect

from gateway.backends.presence import (
    Change,
    Member,
    PresencePage,
    PresenceStats,
    PresenceStore,
)


class _Channel:
    __slots__ = ("entries", "keys", "users")

    def __init__(self) -> None:
        self.entries: dict[str, tuple[str, Member]] = {}
        self.keys: list[str] = []
        """Sorted, for paging in key order."""
        self.users: dict[str, int] = {}


class MemoryPresenceStore(PresenceStore):
    def __init__(self) -> None:
        self._channels: dict[str, _Channel] = {}
        self._deadlines: dict[str, float] = {}
        self._held: dict[str, set[tuple[str, str]]] = {}
        self._graces: dict[str, float] = {}
        self._due: dict[str, float] = {}

    async def join(self, channel: str, member: Member, gateway: str) -> Change:
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = _Channel()
        key = member.key
        new = key not in state.entries
        state.entries[key] = (gateway, member)
        if new:
            bisect.insort(state.keys, key)
            if member.user:
                state.users[member.user] = state.users.get(member.user, 0) + 1
        self._held.setdefault(gateway, set()).add((channel, key))
        return Change(new, len(state.entries), member)

    async def leave(self, channel: str, key: str, gateway: str) -> Change:
        self._held.get(gateway, set()).discard((channel, key))
        state = self._channels.get(channel)
        if state is None:
            return Change(False, 0)
        held = state.entries.get(key)
        if held is None or held[0] != gateway:
            return Change(False, len(state.entries))
        del state.entries[key]
        del state.keys[bisect.bisect_left(state.keys, key)]
        member = held[1]
        if member.user:
            left = state.users[member.user] - 1
            if left > 0:
                state.users[member.user] = left
            else:
                del state.users[member.user]
        count = len(state.entries)
        if not count:
            del self._channels[channel]
        return Change(True, count, member)

    async def members(self, channel: str, after: str | None, limit: int) -> PresencePage:
        state = self._channels.get(channel)
        if state is None:
            return PresencePage([], None)
        start = 0 if after is None else bisect.bisect_right(state.keys, after)
        keys = state.keys[start : start + limit]
        more = start + limit < len(state.keys)
        members = [state.entries[key][1] for key in keys]
        return PresencePage(members, keys[-1] if more and keys else None)

    async def stats(self, channel: str) -> PresenceStats:
        state = self._channels.get(channel)
        if state is None:
            return PresenceStats(0, 0)
        return PresenceStats(len(state.entries), len(state.users))

    async def beat(self, gateway: str, deadline: float) -> bool:
        new = gateway not in self._deadlines
        self._deadlines[gateway] = deadline
        return new

    async def claim_dead(self, now: float, lease: float, limit: int = 10) -> list[str]:
        dead = sorted(g for g, deadline in self._deadlines.items() if deadline <= now)[:limit]
        for gateway in dead:
            self._deadlines[gateway] = now + lease
        return dead

    async def held(self, gateway: str, limit: int) -> list[tuple[str, str]]:
        return sorted(self._held.get(gateway, ()))[:limit]

    async def release(self, gateway: str, entries: list[tuple[str, str]]) -> None:
        held = self._held.get(gateway)
        if held is not None:
            held.difference_update(entries)

    async def forget(self, gateway: str) -> None:
        self._deadlines.pop(gateway, None)
        self._held.pop(gateway, None)

    async def watch_job(self, job_id: str, grace: float, now: float) -> None:
        self._graces[job_id] = grace
        state = self._channels.get(f"job:{job_id}")
        if state is None or not state.entries:
            self._due[job_id] = now + grace

    async def job_watched(self, job_id: str, watched: bool, now: float) -> None:
        grace = self._graces.get(job_id)
        if grace is None:
            return
        if watched:
            self._due.pop(job_id, None)
        else:
            self._due[job_id] = now + grace

    async def due_jobs(self, now: float, lease: float, limit: int = 50) -> list[str]:
        due = sorted((at, job_id) for job_id, at in self._due.items() if at <= now)[:limit]
        for _at, job_id in due:
            self._due[job_id] = now + lease
        return [job_id for _at, job_id in due]

    async def unwatch_job(self, job_id: str) -> None:
        self._graces.pop(job_id, None)
        self._due.pop(job_id, None)
