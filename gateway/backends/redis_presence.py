"""The Redis presence store.

Per channel (one hash tag, one Cluster slot): a hash of entries (`key -> "<gateway>\\n<JSON>"`),
a sorted set of their keys (all scored 0: paging by key with `ZRANGEBYLEX`, exactly `limit`
per page whatever the hash's encoding), and a hash of entries per token subject. Counts are
`HLEN`s. Joins and leaves are scripts on those three keys. Per process: its heartbeat in one
sorted set, and the set of entries it holds under a hash tag of its own.
"""

from __future__ import annotations

from typing import Any

from gateway.backends.presence import (
    Change,
    Member,
    PresencePage,
    PresenceStats,
    PresenceStore,
)
from gateway.backends.redis_connection import RedisConnection
from gateway.backends.redis_keys import (
    CLAIM_DUE_LUA,
    JOB_WATCHED_LUA,
    PRESENCE_GATEWAYS,
    PRESENCE_JOIN_LUA,
    PRESENCE_LEAVE_LUA,
    UNWATCHED_DUE,
    UNWATCHED_GRACES,
    presence_held_key,
    presence_keys,
)


class RedisPresenceStore(PresenceStore):
    def __init__(self, connection: RedisConnection) -> None:
        self._connection = connection
        redis = self._redis = connection.redis
        self._join = redis.register_script(PRESENCE_JOIN_LUA)
        self._leave = redis.register_script(PRESENCE_LEAVE_LUA)
        self._claim = redis.register_script(CLAIM_DUE_LUA)
        self._watched = redis.register_script(JOB_WATCHED_LUA)

    async def join(self, channel: str, member: Member, gateway: str) -> Change:
        call = self._connection.call
        reply: Any = await call(
            "presence join",
            self._join(keys=presence_keys(channel), args=[member.key, gateway, member.encode()]),
        )
        await call(
            "presence join",
            self._redis.sadd(presence_held_key(gateway), f"{channel}\n{member.key}"),
        )
        return Change(bool(reply[0]), int(reply[1]), member)

    async def leave(self, channel: str, key: str, gateway: str) -> Change:
        reply: Any = await self._connection.call(
            "presence leave", self._leave(keys=presence_keys(channel), args=[key, gateway])
        )
        removed = bool(reply[0])
        # Removed, or taken over by another process meanwhile: this one holds it no more.
        await self.release(gateway, [(channel, key)])
        member = Member.decode(reply[2]) if removed else None
        return Change(removed, int(reply[1]), member)

    async def members(self, channel: str, after: str | None, limit: int) -> PresencePage:
        entries, index, _users = presence_keys(channel)
        low = "-" if after is None else "(" + after
        call = self._connection.call
        keys: Any = await call(
            "presence", self._redis.zrangebylex(index, low, "+", start=0, num=limit + 1)
        )
        page = keys[:limit]
        if not page:
            return PresencePage([], None)
        values: Any = await call("presence", self._redis.hmget(entries, page))
        members = [
            Member.decode(value.partition(b"\n")[2]) for value in values if value is not None
        ]
        more = len(keys) > limit
        return PresencePage(members, page[-1].decode() if more else None)

    async def stats(self, channel: str) -> PresenceStats:
        entries, _index, users = presence_keys(channel)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hlen(entries)
        pipe.hlen(users)
        clients, people = await self._connection.call("presence stats", pipe.execute())
        return PresenceStats(int(clients), int(people))

    async def beat(self, gateway: str, deadline: float) -> bool:
        added = await self._connection.call(
            "presence heartbeat",
            self._redis.zadd(PRESENCE_GATEWAYS, {gateway: int(deadline * 1000)}),
        )
        return bool(added)

    async def claim_dead(self, now: float, lease: float, limit: int = 10) -> list[str]:
        return await self._claim_due(PRESENCE_GATEWAYS, now, lease, limit)

    async def _claim_due(self, key: str, now: float, lease: float, limit: int) -> list[str]:
        ms = int(now * 1000)
        claimed: Any = await self._connection.call(
            "claim", self._claim(keys=[key], args=[ms, limit, ms + int(lease * 1000)])
        )
        return [member.decode() for member in claimed]

    async def held(self, gateway: str, limit: int) -> list[tuple[str, str]]:
        # SRANDMEMBER, not SSCAN: it is empty only when the set is.
        batch: Any = await self._connection.call(
            "presence held", self._redis.srandmember(presence_held_key(gateway), limit)
        )
        pairs = []
        for raw in batch:
            channel, _, key = raw.decode().partition("\n")
            pairs.append((channel, key))
        return pairs

    async def release(self, gateway: str, entries: list[tuple[str, str]]) -> None:
        if entries:
            names = [f"{channel}\n{key}" for channel, key in entries]
            await self._connection.call(
                "presence release", self._redis.srem(presence_held_key(gateway), *names)
            )

    async def forget(self, gateway: str) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.zrem(PRESENCE_GATEWAYS, gateway)
        pipe.delete(presence_held_key(gateway))
        await self._connection.call("presence forget", pipe.execute())

    async def watch_job(self, job_id: str, grace: float, now: float) -> None:
        call = self._connection.call
        await call("watch job", self._redis.hset(UNWATCHED_GRACES, job_id, repr(grace)))
        clients = await call("watch job", self._redis.hlen(presence_keys(f"job:{job_id}")[0]))
        if not clients:
            due = int((now + grace) * 1000)
            await call("watch job", self._redis.zadd(UNWATCHED_DUE, {job_id: due}))

    async def job_watched(self, job_id: str, watched: bool, now: float) -> None:
        await self._connection.call(
            "job watched",
            self._watched(
                keys=[UNWATCHED_GRACES, UNWATCHED_DUE],
                args=[job_id, "1" if watched else "0", int(now * 1000)],
            ),
        )

    async def due_jobs(self, now: float, lease: float, limit: int = 50) -> list[str]:
        return await self._claim_due(UNWATCHED_DUE, now, lease, limit)

    async def unwatch_job(self, job_id: str) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hdel(UNWATCHED_GRACES, job_id)
        pipe.zrem(UNWATCHED_DUE, job_id)
        await self._connection.call("unwatch job", pipe.execute())
