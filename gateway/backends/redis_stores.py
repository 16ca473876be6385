"""The Redis stores: hashes for job records, a sorted set for their index, a Stream with a
consumer group for the queue, plain keys for idempotency, a sorted set for webhooks."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from redis.exceptions import RedisError, ResponseError

from gateway.backends.redis_connection import RedisConnection
from gateway.backends.redis_keys import (
    DELAYED_JOBS,
    JOB_INDEX,
    JOB_STREAM,
    WEBHOOK_PAYLOADS,
    WEBHOOK_SCHEDULE,
    WORKER_GROUP,
    idempotency_key,
    job_key,
)
from gateway.backends.stores import (
    Attempt,
    Delivery,
    IdempotencyStore,
    JobQueue,
    JobStore,
    WebhookSchedule,
)
from gateway.errors import BackendUnavailable


class RedisJobStore(JobStore):
    def __init__(self, connection: RedisConnection) -> None:
        self._connection = connection
        self._redis = connection.redis

    async def create(
        self, job_id: str, fields: Mapping[str, str], created_ms: int | None = None
    ) -> None:
        mapping: Any = dict(fields)
        if created_ms is None:
            await self._connection.call(
                "create job", self._redis.hset(job_key(job_id), mapping=mapping)
            )
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hset(job_key(job_id), mapping=mapping)
                pipe.zadd(JOB_INDEX, {job_id: created_ms})
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"store job: {exc}") from exc

    async def get(self, job_id: str) -> dict[str, str] | None:
        raw = await self._connection.call("get job", self._redis.hgetall(job_key(job_id)))
        if not raw:
            return None
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def update(self, job_id: str, fields: Mapping[str, str]) -> None:
        await self._connection.call("update job", self._update_existing(job_key(job_id), fields))

    async def _update_existing(self, key: str, fields: Mapping[str, str]) -> None:
        if await self._redis.exists(key):
            mapping: Any = dict(fields)
            await self._redis.hset(key, mapping=mapping)

    async def begin_attempt(self, job_id: str, max_attempts: int) -> Attempt | None:
        """One script on the job record's key alone (one Cluster slot, like publish.lua)."""
        reply: Any = await self._connection.call(
            "begin attempt",
            self._connection.begin_attempt(keys=[job_key(job_id)], args=[max_attempts]),
        )
        if not reply:
            return None
        granted, number = reply
        return Attempt(int(number), bool(granted))

    async def index(self, job_id: str, created_ms: int) -> None:
        await self._connection.call("index job", self._redis.zadd(JOB_INDEX, {job_id: created_ms}))

    async def job_index(self, before: tuple[int, str] | None, limit: int) -> list[tuple[int, str]]:
        """Same-millisecond ties come in reverse id order, the order the cursor skips them in."""
        top: Any = "+inf" if before is None else before[0]
        pairs: list[tuple[int, str]] = []
        offset = 0
        while len(pairs) < limit:
            batch: Any = await self._connection.call(
                "list jobs",
                self._redis.zrevrangebyscore(
                    JOB_INDEX, top, "-inf", start=offset, num=limit + 50, withscores=True
                ),
            )
            for member, score in batch:
                pair = (int(score), member.decode())
                if before is None or pair < before:
                    pairs.append(pair)
            if len(batch) < limit + 50:
                break
            offset += len(batch)
        return pairs[:limit]

    async def unindex(self, job_ids: list[str]) -> None:
        if job_ids:
            await self._connection.call("unindex jobs", self._redis.zrem(JOB_INDEX, *job_ids))


class RedisJobQueue(JobQueue):
    """A Stream read by one consumer group; delayed jobs wait in a sorted set until due."""

    def __init__(self, connection: RedisConnection) -> None:
        self._connection = connection
        self._redis = connection.redis
        self._group_ready = False

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self._redis.xgroup_create(JOB_STREAM, WORKER_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def enqueue(self, job_id: str, delay: float = 0.0) -> None:
        if delay > 0:
            due = int((time.time() + delay) * 1000)
            await self._connection.call("enqueue", self._redis.zadd(DELAYED_JOBS, {job_id: due}))
        else:
            await self._connection.call("enqueue", self._redis.xadd(JOB_STREAM, {"job": job_id}))

    async def claim(self, consumer: str, block: float) -> Delivery | None:
        deadline = time.monotonic() + block
        while True:
            try:
                await self._ensure_group()
                next_due = await self._connection.promote(
                    keys=[DELAYED_JOBS, JOB_STREAM], args=[int(time.time() * 1000), 100]
                )
                wait = max(deadline - time.monotonic(), 0.001)
                if next_due >= 0:
                    wait = min(wait, next_due / 1000 + 0.001)
                reply: Any = await self._redis.xreadgroup(
                    WORKER_GROUP, consumer, {JOB_STREAM: ">"}, count=1, block=int(wait * 1000) or 1
                )
            except ResponseError as exc:
                self._group_ready = False
                if "NOGROUP" in str(exc):
                    return None
                raise BackendUnavailable(f"claim: {exc}") from exc
            except (RedisError, OSError) as exc:
                self._group_ready = False
                raise BackendUnavailable(f"claim: {exc}") from exc
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    return Delivery(fields[b"job"].decode(), entry_id.decode())
            if time.monotonic() >= deadline:
                return None

    async def reclaim(self, consumer: str, min_idle: float, count: int = 50) -> list[Delivery]:
        try:
            await self._ensure_group()
            reply: Any = await self._redis.xautoclaim(
                JOB_STREAM, WORKER_GROUP, consumer, int(min_idle * 1000), "0-0", count=count
            )
        except (RedisError, OSError) as exc:
            self._group_ready = False
            raise BackendUnavailable(f"reclaim: {exc}") from exc
        entries: Sequence[Any] = reply[1]
        return [
            Delivery(fields[b"job"].decode(), entry_id.decode())
            for entry_id, fields in entries
            if fields
        ]

    async def touch(self, consumer: str, delivery: Delivery) -> None:
        await self._connection.call(
            "touch",
            self._redis.xclaim(
                JOB_STREAM, WORKER_GROUP, consumer, 0, [delivery.token], justid=True
            ),
        )

    async def ack(self, delivery: Delivery) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.xack(JOB_STREAM, WORKER_GROUP, delivery.token)
        pipe.xdel(JOB_STREAM, delivery.token)
        await self._connection.call("ack", pipe.execute())

    async def requeue(self, delivery: Delivery, delay: float = 0.0) -> None:
        # MULTI/EXEC: the stream and the delayed set share the `{jobs}` slot.
        pipe = self._redis.pipeline(transaction=True)
        if delay > 0:
            pipe.zadd(DELAYED_JOBS, {delivery.job_id: int((time.time() + delay) * 1000)})
        else:
            pipe.xadd(JOB_STREAM, {"job": delivery.job_id})
        pipe.xack(JOB_STREAM, WORKER_GROUP, delivery.token)
        pipe.xdel(JOB_STREAM, delivery.token)
        await self._connection.call("requeue", pipe.execute())


class RedisIdempotencyStore(IdempotencyStore):
    def __init__(self, connection: RedisConnection) -> None:
        self._connection = connection
        self._redis = connection.redis

    async def begin(self, key: str, value: bytes, ttl: int) -> bytes | None:
        name = idempotency_key(key)
        call = self._connection.call
        for _ in range(3):
            if await call("idempotency", self._redis.set(name, value, nx=True, ex=ttl)):
                return None
            stored: Any = await call("idempotency", self._redis.get(name))
            if stored is not None:
                return bytes(stored)
        raise BackendUnavailable("idempotency key kept vanishing")

    async def finish(self, key: str, value: bytes, ttl: int) -> None:
        await self._connection.call(
            "idempotency", self._redis.set(idempotency_key(key), value, ex=ttl)
        )

    async def abandon(self, key: str) -> None:
        await self._connection.call("idempotency", self._redis.delete(idempotency_key(key)))


class RedisWebhookSchedule(WebhookSchedule):
    """A sorted set of due times plus a hash of payloads; claiming is one script."""

    def __init__(self, connection: RedisConnection) -> None:
        self._connection = connection
        self._redis = connection.redis

    async def schedule(self, delivery_id: str, payload: bytes, due: float) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(WEBHOOK_PAYLOADS, delivery_id, payload)
        pipe.zadd(WEBHOOK_SCHEDULE, {delivery_id: int(due * 1000)})
        await self._connection.call("schedule webhook", pipe.execute())

    async def claim(self, limit: int, lease: float) -> list[tuple[str, bytes]]:
        now = int(time.time() * 1000)
        flat: Any = await self._connection.call(
            "claim webhooks",
            self._connection.claim_webhooks(
                keys=[WEBHOOK_SCHEDULE, WEBHOOK_PAYLOADS],
                args=[now, limit, now + int(lease * 1000)],
            ),
        )
        return [(flat[i].decode(), bytes(flat[i + 1])) for i in range(0, len(flat), 2)]

    async def finish(self, delivery_id: str) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.zrem(WEBHOOK_SCHEDULE, delivery_id)
        pipe.hdel(WEBHOOK_PAYLOADS, delivery_id)
        await self._connection.call("finish webhook", pipe.execute())
