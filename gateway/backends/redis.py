"""Redis backend: pub/sub for live delivery, Streams for history and the job queue, hashes for jobs.

The only module that talks to Redis. Every key of a channel shares the channel's hash tag
(`gw:{room:lobby}:log`), so a Redis Cluster keeps each channel's keys on one shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.backends.base import Attempt, Backend, Delivery, History, JobUpdate, check_event_size
from gateway.errors import BackendUnavailable
from gateway.events import (
    Event,
    envelope_tail,
    namespace_of,
    parse_event_id,
    splice_envelope,
)
from gateway.metrics import METRICS
from gateway.settings import Settings
from gateway.vocabulary import JOB_TERMINAL_STATUSES

log = logging.getLogger("gateway.redis")

JOB_STREAM = "gw:{jobs}"
DELAYED_JOBS = "gw:{jobs}:delayed"
WORKER_GROUP = "workers"
JOB_INDEX = "gw:{jobs}:index"
WEBHOOK_SCHEDULE = "gw:{webhooks}:due"
WEBHOOK_PAYLOADS = "gw:{webhooks}:payloads"


REDIS_POOL_SIZE = 64
"""Connections one process opens for commands; blocking job reads hold one each."""


def stream_key(channel: str) -> str:
    return f"gw:{{{channel}}}:log"


def bus_channel(channel: str) -> str:
    return f"gw:{{{channel}}}"


def job_key(job_id: str) -> str:
    """The job record shares its channel's hash tag, so state and event change in one script."""
    return f"gw:{{job:{job_id}}}:job"


def idempotency_key(key: str) -> str:
    return f"gw:idem:{key}"


_TERMINAL_TABLE = ", ".join(
    f"[{status.value!r}] = true" for status in sorted(JOB_TERMINAL_STATUSES)
)
LUA_PRELUDE = f"local JOB_TERMINAL_STATUSES = {{{_TERMINAL_TABLE}}}\n"
"""What the scripts share with Python, defined in front of each (sorted: one script text, one
SHA, in every process)."""


def load_script(name: str) -> str:
    return LUA_PRELUDE + resources.files("gateway.backends").joinpath(name).read_text()


PUBLISH_LUA = load_script("publish.lua")
PROMOTE_LUA = load_script("promote.lua")
BEGIN_ATTEMPT_LUA = load_script("begin_attempt.lua")
CLAIM_WEBHOOKS_LUA = load_script("claim_webhooks.lua")


def publish_call(
    settings: Settings,
    channel: str,
    type_: str,
    data: Any,
    source: str | None,
    job: JobUpdate | None,
) -> tuple[list[str], list[Any], bytes]:
    """KEYS and ARGV for publish.lua, shared by the async backend and the sync publisher.

    Raises `EventTooLarge` for an event over the channel's size limit.
    """
    retention = settings.retention_for(channel)
    tail = envelope_tail(channel, type_, data, source)
    check_event_size(settings, channel, tail)
    keys = [stream_key(channel)]
    args: list[Any] = [
        bus_channel(channel),
        tail,
        retention.size,
        retention.ttl,
        retention.max_bytes,
    ]
    if job is not None:
        keys.append(job_key(job.job_id))
        args.append(job.expire)
        for name, value in job.fields.items():
            args.extend((name, value))
    return keys, args, tail


def event_from_entry(channel: str, entry_id: bytes, tail: bytes) -> Event:
    event_id = entry_id.decode()
    type_ = _type_from_tail(tail)
    return Event(splice_envelope(event_id, tail), id=event_id, channel=channel, type=type_)


def _type_from_tail(tail: bytes) -> str:
    """Read `type` from an envelope tail without decoding the whole event."""
    start = tail.index(b'"type":"') + 8
    return tail[start : tail.index(b'"', start)].decode()


class RedisBackend(Backend):
    kind = "redis"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        # After a Redis restart every pooled connection is stale; retry so that costs a
        # reconnect, not a failed request per connection.
        retry = Retry(ExponentialBackoff(cap=0.5, base=0.02), 3)
        # A bounded pool that makes callers wait for a free connection: a burst of a thousand
        # subscribers must queue for history reads, not open a thousand connections at once
        # (which times out and answers them `unavailable`).
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=REDIS_POOL_SIZE,
            timeout=20,
            health_check_interval=0,
            socket_timeout=10,
            socket_connect_timeout=2,
            retry=retry,
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        self._redis = aioredis.Redis(
            connection_pool=pool,
            retry=retry,
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        self._pubsub_client = aioredis.Redis.from_url(
            settings.redis_url,
            decode_responses=False,
            retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=2,
        )
        self._publish = self._redis.register_script(PUBLISH_LUA)
        self._promote = self._redis.register_script(PROMOTE_LUA)
        self._begin_attempt = self._redis.register_script(BEGIN_ATTEMPT_LUA)
        self._claim_webhooks = self._redis.register_script(CLAIM_WEBHOOKS_LUA)
        self._channels: set[str] = set()
        self._confirmations: dict[bytes, asyncio.Future[None]] = {}
        self._pubsub: aioredis.client.PubSub | None = None
        self._pubsub_lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._recovery_task: asyncio.Future[None] | None = None
        self._live = asyncio.Event()
        self._closing = False
        self._group_ready = False
        self.reconnects = 0

    async def start(self) -> None:
        self._reader = asyncio.create_task(self._read_forever(), name="gateway-redis-reader")

    async def close(self) -> None:
        self._closing = True
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                await self._reader
        await self._drop_pubsub()
        await self._redis.aclose()
        await self._pubsub_client.aclose()

    async def ping(self) -> bool:
        try:
            alive = await asyncio.wait_for(self._redis.ping(), timeout=2)
            return bool(alive) and self._live.is_set()
        except (RedisError, OSError, TimeoutError):
            return False

    # --- bus -------------------------------------------------------------------------------

    async def publish(
        self,
        channel: str,
        type_: str,
        data: Any,
        *,
        source: str | None = None,
        job: JobUpdate | None = None,
    ) -> Event | None:
        keys, args, tail = publish_call(self.settings, channel, type_, data, source, job)
        try:
            entry_id = await self._publish(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"publish to {channel}: {exc}") from exc
        return _published(channel, type_, tail, entry_id)

    async def publish_and_enqueue(
        self, channel: str, type_: str, data: Any, *, source: str | None, job: JobUpdate
    ) -> Event | None:
        """One pipeline (ordered, not atomic: the keys are in different Cluster slots)."""
        keys, args, tail = publish_call(self.settings, channel, type_, data, source, job)
        try:
            # EVAL with the source, not the Script object: in a pipeline that asks SCRIPT
            # EXISTS first (a round trip of its own), and a bare EVALSHA could meet a server
            # that lost its scripts (restarted) while the XADD after it still ran. Redis
            # caches the compiled script by its hash, so EVAL costs only the bytes.
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.eval(PUBLISH_LUA, len(keys), *keys, *args)
                pipe.xadd(JOB_STREAM, {"job": job.job_id})
                entry_id, _queued = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"publish to {channel} and enqueue: {exc}") from exc
        return _published(channel, type_, tail, entry_id)

    async def history(self, channel: str, since: str | None, limit: int = 1000) -> History:
        key = stream_key(channel)
        start = "-" if since is None else "(" + since
        if since is not None:
            parse_event_id(since)
        try:
            entries: Any = await self._redis.xrange(key, min=start, max="+", count=limit + 1)
            tail: Any = []
            if not entries and since is not None:
                tail = await self._redis.xrevrange(key, max="+", min="-", count=1)
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"history of {channel}: {exc}") from exc
        if entries:
            first_prev = entries[0][1].get(b"p", b"").decode()
            complete = first_prev == ("" if since is None else since)
        else:
            complete = since is None or (bool(tail) and tail[0][0].decode() == since)
        events = [event_from_entry(channel, eid, fields[b"e"]) for eid, fields in entries[:limit]]
        return History(events, complete, more=len(entries) > limit)

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        name = bus_channel(channel).encode()
        loop = asyncio.get_running_loop()
        confirmed = self._confirmations.get(name)
        if confirmed is None:
            confirmed = self._confirmations[name] = loop.create_future()
        async with self._pubsub_lock:
            if self._pubsub is not None:
                try:
                    await self._pubsub.subscribe(name)
                except (RedisError, OSError):
                    log.warning("subscribe %s failed; the reader will resubscribe", channel)
        # Wait for Redis to confirm, so history read next cannot miss a live event; if the bus
        # is down, the reader's recovery delivers what was missed once it is back.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(confirmed), timeout=2.0)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        name = bus_channel(channel).encode()
        pending = self._confirmations.pop(name, None)
        if pending is not None and not pending.done():
            pending.cancel()
        async with self._pubsub_lock:
            if self._pubsub is not None:
                with contextlib.suppress(RedisError, OSError):
                    await self._pubsub.unsubscribe(name)

    async def _read_forever(self) -> None:
        """Read pub/sub messages; on any failure reconnect with backoff and jitter.

        Never awaits a client: each message goes to the listener, which only queues frames.
        """
        delay = 0.05
        while not self._closing:
            try:
                await self._connect_pubsub()
                delay = 0.05
                await self._read_messages()
            except (RedisError, OSError) as exc:
                self._live.clear()
                log.warning("redis pub/sub lost (%s); reconnecting in %.2fs", exc, delay)
                await self._drop_pubsub()
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 5.0)

    async def _connect_pubsub(self) -> None:
        async with self._pubsub_lock:
            pubsub = self._pubsub_client.pubsub()
            names = [bus_channel(c) for c in self._channels]
            await pubsub.ping()
            # A server that accepts the connection but never answers (frozen, partitioned) is
            # not live: wait for the PONG before saying so.
            answer = await pubsub.parse_response(
                block=False, timeout=max(self.settings.pubsub_probe, 1.0)
            )
            if answer is None:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
                raise RedisConnectionError("no answer to PING on a new pub/sub connection")
            if names:
                await pubsub.subscribe(*names)
            self._pubsub = pubsub
        recovering = self.reconnects > 0 or self._live.is_set()
        self._live.set()
        if recovering:
            METRICS.redis_reconnects.inc()
        if recovering and self._recovery is not None:
            self._recovery_task = asyncio.ensure_future(self._recovery())
        self.reconnects += 1

    async def _read_messages(self) -> None:
        pubsub = self._pubsub
        assert pubsub is not None
        awaiting_pong = False
        while not self._closing:
            message = await pubsub.parse_response(block=False, timeout=self.settings.pubsub_probe)
            if message is None:
                if awaiting_pong:
                    raise RedisConnectionError("pub/sub connection silent: no answer to a ping")
                awaiting_pong = True
                await pubsub.ping()
                continue
            awaiting_pong = False
            kind = message[0]
            if kind == b"message":
                try:
                    event = Event.from_envelope(message[2])
                except (ValueError, KeyError):
                    log.error("dropping malformed bus message on %r", message[1])
                    continue
                self._listener(event)
            elif kind == b"subscribe":
                confirmed = self._confirmations.get(message[1])
                if confirmed is not None and not confirmed.done():
                    confirmed.set_result(None)

    async def _drop_pubsub(self) -> None:
        async with self._pubsub_lock:
            pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError, RuntimeError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    # --- jobs ------------------------------------------------------------------------------

    async def _call(self, what: str, command: Any) -> Any:
        try:
            return await command
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"{what}: {exc}") from exc

    async def create_job(self, job_id: str, fields: Mapping[str, str]) -> None:
        mapping: Any = dict(fields)
        await self._call("create job", self._redis.hset(job_key(job_id), mapping=mapping))

    async def get_job(self, job_id: str) -> dict[str, str] | None:
        raw = await self._call("get job", self._redis.hgetall(job_key(job_id)))
        if not raw:
            return None
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def update_job(self, job_id: str, fields: Mapping[str, str]) -> None:
        await self._call("update job", self._update_existing(job_key(job_id), fields))

    async def _update_existing(self, key: str, fields: Mapping[str, str]) -> None:
        if await self._redis.exists(key):
            mapping: Any = dict(fields)
            await self._redis.hset(key, mapping=mapping)

    async def begin_attempt(self, job_id: str, max_attempts: int) -> Attempt | None:
        """One script on the job record's key alone (one Cluster slot, like publish.lua)."""
        reply: Any = await self._call(
            "begin attempt",
            self._begin_attempt(keys=[job_key(job_id)], args=[max_attempts]),
        )
        if not reply:
            return None
        granted, number = reply
        return Attempt(int(number), bool(granted))

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
            await self._call("enqueue", self._redis.zadd(DELAYED_JOBS, {job_id: due}))
        else:
            await self._call("enqueue", self._redis.xadd(JOB_STREAM, {"job": job_id}))

    async def claim(self, consumer: str, block: float) -> Delivery | None:
        deadline = time.monotonic() + block
        while True:
            try:
                await self._ensure_group()
                next_due = await self._promote(
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
        await self._call(
            "touch",
            self._redis.xclaim(
                JOB_STREAM, WORKER_GROUP, consumer, 0, [delivery.token], justid=True
            ),
        )

    async def ack(self, delivery: Delivery) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.xack(JOB_STREAM, WORKER_GROUP, delivery.token)
        pipe.xdel(JOB_STREAM, delivery.token)
        await self._call("ack", pipe.execute())

    # --- job index and retention -------------------------------------------------------------

    async def index_job(self, job_id: str, created_ms: int) -> None:
        await self._call("index job", self._redis.zadd(JOB_INDEX, {job_id: created_ms}))

    async def store_job(self, job_id: str, fields: Mapping[str, str], created_ms: int) -> None:
        mapping: Any = dict(fields)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hset(job_key(job_id), mapping=mapping)
                pipe.zadd(JOB_INDEX, {job_id: created_ms})
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"store job: {exc}") from exc

    async def job_index(self, before: tuple[int, str] | None, limit: int) -> list[tuple[int, str]]:
        """Same-millisecond ties come in reverse id order, the order the cursor skips them in."""
        top: Any = "+inf" if before is None else before[0]
        pairs: list[tuple[int, str]] = []
        offset = 0
        while len(pairs) < limit:
            batch: Any = await self._call(
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

    async def unindex_jobs(self, job_ids: list[str]) -> None:
        if job_ids:
            await self._call("unindex jobs", self._redis.zrem(JOB_INDEX, *job_ids))

    async def expire_history(self, channel: str, seconds: int) -> None:
        key = stream_key(channel)
        ttl = await self._call("history ttl", self._redis.ttl(key))
        if ttl < 0 or ttl > seconds:
            await self._call("expire history", self._redis.expire(key, seconds))

    # --- idempotency keys --------------------------------------------------------------------

    async def idempotency_begin(self, key: str, value: bytes, ttl: int) -> bytes | None:
        name = idempotency_key(key)
        for _ in range(3):
            if await self._call("idempotency", self._redis.set(name, value, nx=True, ex=ttl)):
                return None
            stored: Any = await self._call("idempotency", self._redis.get(name))
            if stored is not None:
                return bytes(stored)
        raise BackendUnavailable("idempotency key kept vanishing")

    async def idempotency_finish(self, key: str, value: bytes, ttl: int) -> None:
        await self._call("idempotency", self._redis.set(idempotency_key(key), value, ex=ttl))

    async def idempotency_abandon(self, key: str) -> None:
        await self._call("idempotency", self._redis.delete(idempotency_key(key)))

    # --- webhook delivery schedule -----------------------------------------------------------

    async def schedule_webhook(self, delivery_id: str, payload: bytes, due: float) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(WEBHOOK_PAYLOADS, delivery_id, payload)
        pipe.zadd(WEBHOOK_SCHEDULE, {delivery_id: int(due * 1000)})
        await self._call("schedule webhook", pipe.execute())

    async def claim_webhooks(self, limit: int, lease: float) -> list[tuple[str, bytes]]:
        now = int(time.time() * 1000)
        flat: Any = await self._call(
            "claim webhooks",
            self._claim_webhooks(
                keys=[WEBHOOK_SCHEDULE, WEBHOOK_PAYLOADS],
                args=[now, limit, now + int(lease * 1000)],
            ),
        )
        return [(flat[i].decode(), bytes(flat[i + 1])) for i in range(0, len(flat), 2)]

    async def finish_webhook(self, delivery_id: str) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.zrem(WEBHOOK_SCHEDULE, delivery_id)
        pipe.hdel(WEBHOOK_PAYLOADS, delivery_id)
        await self._call("finish webhook", pipe.execute())


def _published(channel: str, type_: str, tail: bytes, entry_id: bytes | None) -> Event | None:
    """The event the publish script's answer stands for (None: refused, the job had ended)."""
    if entry_id is None:
        return None
    event_id = entry_id.decode()
    METRICS.events_published.labels(namespace_of(channel)).inc()
    return Event(splice_envelope(event_id, tail), id=event_id, channel=channel, type=type_)
