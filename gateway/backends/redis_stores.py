"""The Redis stores: hashes for job records, a sorted set for their index, a Stream with a
consumer group for the queue, plain keys for idempotency, a sorted set for webhooks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

import hiredis
from redis.client import NEVER_DECODE
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.backends.bus import JobUpdate
from gateway.backends.redis_connection import RedisConnection, ScriptCall, evalsha_each
from gateway.backends.redis_keys import (
    JOB_INDEX,
    WEBHOOK_PAYLOADS,
    WEBHOOK_SCHEDULE,
    WORKER_GROUP,
    idempotency_key,
    job_key,
    publish_call,
    queue_keys,
    queue_partition,
)
from gateway.backends.stores import (
    Attempt,
    Delivery,
    IdempotencyStore,
    JobFlow,
    JobQueue,
    JobStart,
    JobStep,
    JobStore,
    ReadStarted,
    Started,
    WebhookSchedule,
)
from gateway.errors import BackendUnavailable
from gateway.events import namespace_of
from gateway.metrics import METRICS
from gateway.settings import Settings
from gateway.vocabulary import EventType


def pack_commands(commands: Sequence[Sequence[Any]]) -> bytes:
    """Commands in Redis's wire format (RESP), all in one buffer, packed by hiredis (C): the
    job flow's pipelines send thousands of arguments a second, and redis-py encodes them in
    Python, one call at a time."""
    try:
        return b"".join([hiredis.pack_command(tuple(command)) for command in commands])
    except TypeError:  # an argument hiredis does not take (bytearray, memoryview...)
        return _pack_in_python(commands)


def _pack_in_python(commands: Sequence[Sequence[Any]]) -> bytes:
    out: list[bytes] = []
    for command in commands:
        parts = [
            arg.encode()
            if type(arg) is str
            else arg
            if type(arg) is bytes
            else b"%d" % arg
            if type(arg) is int
            else str(arg).encode()
            for arg in command
        ]
        out.append(b"*%d\r\n" % len(parts))
        out.extend([b"$%d\r\n%s\r\n" % (len(part), part) for part in parts])
    return b"".join(out)


async def send_pipeline(redis: Any, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """Commands sent in one write, replies read in order (a non-transactional pipeline, one
    round trip); an error reply comes back as its exception in its place, not raised. The
    replies are raw (`HGETALL` gives a flat list). A client without a connection pool of its
    own (Redis Cluster) runs them as its ordinary pipeline, split per node."""
    pool = getattr(redis, "connection_pool", None)
    if pool is None:
        pipe = redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command, **{NEVER_DECODE: True})
        return list(await pipe.execute(raise_on_error=False))
    connection = await pool.get_connection()
    try:
        await connection.send_packed_command(pack_commands(commands), check_health=False)
        replies: list[Any] = []
        # The connection's reply parser, read under one timeout for the whole pipeline (its
        # `read_response` sets one per reply); error replies come back as exception objects.
        parser = getattr(connection, "_parser", None)
        if parser is None:
            for _ in commands:
                try:
                    replies.append(await connection.read_response(disconnect_on_error=True))
                except ResponseError as exc:
                    replies.append(exc)
            return replies
        async with asyncio.timeout(connection.socket_timeout):
            for _ in commands:
                replies.append(await parser.read_response())
        return replies
    except TimeoutError as exc:
        await connection.disconnect()
        raise RedisTimeoutError(f"pipeline of {len(commands)} commands: {exc}") from exc
    except BaseException:
        await connection.disconnect()
        raise
    finally:
        await pool.release(connection)


def _entries(reply: Any) -> list[tuple[str, str]]:
    """(entry id, job id) of each entry of an XREADGROUP reply: raw (RESP2 lists, or a RESP3
    map) or as redis-py's parser gives it (a map of fields per entry)."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else [item[1] for item in reply]
    taken: list[tuple[str, str]] = []
    for entries in streams:
        for entry_id, fields in entries:
            if not isinstance(fields, dict):
                items = iter(fields)
                fields = dict(zip(items, items, strict=True))
            taken.append((_text(entry_id), _text(fields[b"job"])))
    return taken


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


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

    async def get_many(self, job_ids: Sequence[str]) -> list[dict[str, str] | None]:
        commands = [("HGETALL", job_key(job_id)) for job_id in job_ids]
        replies = await self._replies("get jobs", commands)
        found: list[dict[str, str] | None] = []
        for raw in replies:
            if isinstance(raw, dict):  # a pipeline that parsed it (Cluster)
                raw = [item for pair in raw.items() for item in pair]
            if not raw:
                found.append(None)
                continue
            items = iter(raw)
            found.append({k.decode(): v.decode() for k, v in zip(items, items, strict=True)})
        return found

    async def statuses(self, job_ids: Sequence[str]) -> list[str | None]:
        commands = [("HGET", job_key(job_id), "status") for job_id in job_ids]
        replies = await self._replies("job statuses", commands)
        return [None if raw is None else raw.decode() for raw in replies]

    async def _replies(self, what: str, commands: Sequence[Sequence[Any]]) -> list[Any]:
        try:
            replies = await send_pipeline(self._redis, commands)
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"{what}: {exc}") from exc
        for reply in replies:
            if isinstance(reply, Exception):
                raise BackendUnavailable(f"{what}: {reply}")
        return replies

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
    """One Stream per partition, each read by the consumer group `workers`; a partition's
    delayed jobs wait in its sorted set until due. Each command or script touches one
    partition's keys only (one hash slot); work over several partitions is a pipeline."""

    def __init__(self, connection: RedisConnection, partitions: int = 1) -> None:
        self._connection = connection
        self._redis = connection.redis
        self.partitions = partitions
        self._keys = [queue_keys(partition) for partition in range(partitions)]
        self._groups_ready: set[int] = set()
        self._next_due: dict[int, float] = {}
        """Per partition, when (monotonic) its next delayed job falls due, as PROMOTE said."""
        self._acks: dict[int, list[str]] = {}
        """Per partition, the tokens `ack_soon` keeps for its next claim."""

    async def _ensure_group(self, partition: int) -> None:
        if partition in self._groups_ready:
            return
        stream = self._keys[partition][0]
        try:
            await self._redis.xgroup_create(stream, WORKER_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups_ready.add(partition)

    async def enqueue(self, job_id: str, delay: float = 0.0) -> None:
        stream, delayed = self._keys[queue_partition(job_id, self.partitions)]
        if delay > 0:
            due = int((time.time() + delay) * 1000)
            await self._connection.call("enqueue", self._redis.zadd(delayed, {job_id: due}))
        else:
            await self._connection.call("enqueue", self._redis.xadd(stream, {"job": job_id}))

    async def claim_many(
        self, consumer: str, partition: int, count: int, block: float
    ) -> list[Delivery]:
        """Send the partition's waiting acks (`ack_soon`), promote its due delayed jobs and
        read its new entries: one pipeline when not blocking (a worker's reads); PROMOTE's
        answer (when the next delayed job is due) bounds how long a blocking read waits."""
        stream, delayed = self._keys[partition]
        deadline = time.monotonic() + block
        while True:
            acks = self._acks.pop(partition, [])
            try:
                await self._ensure_group(partition)
                commands: list[tuple[Any, ...]] = []
                if acks:
                    commands.append(("XACK", stream, WORKER_GROUP, *acks))
                    commands.append(("XDEL", stream, *acks))
                promote = self._connection.promote
                now_ms = int(time.time() * 1000)
                commands.append(("EVALSHA", promote.sha, 2, delayed, stream, now_ms, 100))
                if block <= 0:
                    read = ("XREADGROUP", "GROUP", WORKER_GROUP, consumer, "COUNT", count)
                    commands.append((*read, "STREAMS", stream, ">"))
                replies = await send_pipeline(self._redis, commands)
            except (RedisError, OSError) as exc:
                self._acks.setdefault(partition, []).extend(acks)  # sent again next time
                self._groups_ready.discard(partition)
                raise BackendUnavailable(f"claim: {exc}") from exc
            next_due = replies[len(commands) - (1 if block <= 0 else 0) - 1]
            reply = replies[-1] if block <= 0 else None
            # Each reply on its own: what one command failed to do must not undo the others'
            # (entries read are this consumer's now, acks sent are done).
            failed = [a for a in replies[: len(acks) and 2] if isinstance(a, Exception)]
            if failed and not any("NOGROUP" in str(a) for a in failed):
                self._acks.setdefault(partition, []).extend(acks)  # sent again next time
            if isinstance(reply, Exception):
                self._groups_ready.discard(partition)
                if "NOGROUP" in str(reply):
                    return []  # the stream is gone, and its entries with it
                raise BackendUnavailable(f"claim: {reply}")
            if isinstance(next_due, NoScriptError) or (
                isinstance(next_due, ResponseError) and str(next_due).startswith("NOSCRIPT")
            ):
                # The read went on without it: the next claim promotes.
                await self._connection.call("load script", self._redis.script_load(promote.script))
                next_due = -1
            elif isinstance(next_due, Exception):
                if not reply:
                    raise BackendUnavailable(f"claim: {next_due}")
                next_due = -1  # the entries read are kept; the next claim promotes again
            wait = deadline - time.monotonic()
            if next_due >= 0:
                wait = min(wait, next_due / 1000 + 0.001)
                self._next_due[partition] = time.monotonic() + next_due / 1000
            else:
                self._next_due.pop(partition, None)
            if block > 0:
                try:
                    block_ms = int(wait * 1000) if wait > 0 else None
                    reply = await self._redis.xreadgroup(
                        WORKER_GROUP, consumer, {stream: ">"}, count=count, block=block_ms
                    )
                except ResponseError as exc:
                    self._groups_ready.discard(partition)
                    if "NOGROUP" in str(exc):
                        return []
                    raise BackendUnavailable(f"claim: {exc}") from exc
                except (RedisError, OSError) as exc:
                    self._groups_ready.discard(partition)
                    raise BackendUnavailable(f"claim: {exc}") from exc
            taken = [Delivery(job_id, entry_id, partition) for entry_id, job_id in _entries(reply)]
            if taken or time.monotonic() >= deadline:
                return taken

    async def wait_for_jobs(self, partition: int, timeout: float) -> None:
        """`XREAD BLOCK` from `$`: wakes on the next entry added, takes nothing. An entry
        added just before the wait began is found by the next read (within `timeout`)."""
        due = self._next_due.get(partition)
        if due is not None:
            timeout = min(timeout, due - time.monotonic() + 0.001)
        if timeout <= 0:
            return
        stream = self._keys[partition][0]
        await self._connection.call(
            "wait for jobs",
            self._redis.xread({stream: "$"}, count=1, block=max(int(timeout * 1000), 1)),
        )

    async def reclaim(self, consumer: str, min_idle: float, count: int = 50) -> list[Delivery]:
        taken: list[Delivery] = []
        for partition in range(self.partitions):
            if len(taken) >= count:
                break
            stream = self._keys[partition][0]
            try:
                await self._ensure_group(partition)
                reply: Any = await self._redis.xautoclaim(
                    stream,
                    WORKER_GROUP,
                    consumer,
                    int(min_idle * 1000),
                    "0-0",
                    count=count - len(taken),
                )
            except (RedisError, OSError) as exc:
                self._groups_ready.discard(partition)
                raise BackendUnavailable(f"reclaim: {exc}") from exc
            entries: Sequence[Any] = reply[1]
            taken.extend(
                Delivery(fields[b"job"].decode(), entry_id.decode(), partition)
                for entry_id, fields in entries
                if fields
            )
        return taken

    def _by_partition(self, deliveries: Sequence[Delivery]) -> dict[int, list[Any]]:
        tokens: dict[int, list[Any]] = {}
        for delivery in deliveries:
            tokens.setdefault(delivery.partition, []).append(delivery.token)
        return tokens

    async def touch_many(self, consumer: str, deliveries: Sequence[Delivery]) -> None:
        """One XCLAIM per partition for all its deliveries, all in one pipeline."""
        if not deliveries:
            return
        pipe = self._redis.pipeline(transaction=False)
        for partition, tokens in self._by_partition(deliveries).items():
            stream = self._keys[partition][0]
            pipe.xclaim(stream, WORKER_GROUP, consumer, 0, tokens, justid=True)
        await self._connection.call("touch", pipe.execute())

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        commands: list[tuple[Any, ...]] = []
        for partition, tokens in self._by_partition(deliveries).items():
            stream = self._keys[partition][0]
            commands.append(("XACK", stream, WORKER_GROUP, *tokens))
            commands.append(("XDEL", stream, *tokens))
        try:
            replies = await send_pipeline(self._redis, commands)
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"ack: {exc}") from exc
        for reply in replies:
            if isinstance(reply, Exception):
                raise BackendUnavailable(f"ack: {reply}")

    async def ack_soon(self, deliveries: Sequence[Delivery]) -> None:
        """Kept for the partition's next `claim_many`, which sends them in front of its read:
        the worker's batches then cost no round trip of their own to ack."""
        for delivery in deliveries:
            self._acks.setdefault(delivery.partition, []).append(delivery.token)

    async def flush_acks(self) -> None:
        waiting = [
            Delivery("", token, partition)
            for partition, tokens in self._acks.items()
            for token in tokens
        ]
        self._acks.clear()
        await self.ack_many(waiting)

    async def requeue(self, delivery: Delivery, delay: float = 0.0) -> None:
        # MULTI/EXEC on the delivery's partition: its stream and delayed set share one slot.
        stream, delayed = self._keys[delivery.partition]
        pipe = self._redis.pipeline(transaction=True)
        if delay > 0:
            pipe.zadd(delayed, {delivery.job_id: int((time.time() + delay) * 1000)})
        else:
            pipe.xadd(stream, {"job": delivery.job_id})
        pipe.xack(stream, WORKER_GROUP, delivery.token)
        pipe.xdel(stream, delivery.token)
        await self._connection.call("requeue", pipe.execute())


_ATTEMPT_END = b'"attempt":0}}'
"""How `job.started`'s tail ends when built for attempt 0 (the number is the script's)."""


class RedisJobFlow(JobFlow):
    """Batches of job transitions as pipelines of scripts, each on one job's slot: start_job.lua
    (record read + attempt count + `job.started`) and publish.lua (any other state change)."""

    def __init__(self, settings: Settings, connection: RedisConnection) -> None:
        self._settings = settings
        self._connection = connection
        self._redis = connection.redis
        self._published = METRICS.events_published.labels(namespace_of("job:"))

    def _event_id(self, entry_id: bytes | None) -> str | None:
        """The id of an event the script published (None: refused, the job had ended);
        counted in `gateway_events_published` (the `job` namespace's child looked up once)."""
        if entry_id is None:
            return None
        self._published.inc()
        return entry_id.decode()

    async def _scripts(self, script: AsyncScript, calls: Sequence[ScriptCall]) -> list[Any]:
        """`script` once per (keys, args) in one pipeline of EVALSHA (`evalsha_each`)."""

        async def send(commands: list[tuple[Any, ...]], reload: bool) -> list[Any]:
            if reload:
                await self._redis.script_load(script.script)
            return await send_pipeline(self._redis, commands)

        try:
            return await evalsha_each(script.sha, calls, send, "job transition")
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"job transition: {exc}") from exc

    def _call(self, step: JobStep, source_data: Mapping[str, Any]) -> tuple[list[str], list[Any]]:
        channel = f"job:{step.job_id}"
        keys, args, _tail = publish_call(
            self._settings,
            channel,
            step.event_type,
            source_data,
            f"/jobs/{step.job_id}",
            JobUpdate(step.job_id, step.fields, expire=step.expire),
        )
        if step.expire:
            # publish.lua sets the history's TTL to ARGV[4]: at most the job's own lifetime,
            # which is what `expire_history` after the publish would leave.
            args[3] = min(int(args[3]), step.expire)
        return keys, args

    def _start_call(
        self, job_id: str, limits: Sequence[Any], fields: Mapping[str, str], expected: int
    ) -> tuple[list[str], list[Any]]:
        """start_job.lua's KEYS and ARGV: `job.started`'s tail goes without its attempt
        number, which the script appends (the count it finds, or `expected`)."""
        step = JobStep(job_id, EventType.STARTED, {}, fields)
        keys, args = self._call(step, {"job_id": job_id, "attempt": 0})
        tail: bytes = args[1]
        if not tail.endswith(_ATTEMPT_END):
            raise AssertionError("job.started's data must end with its attempt number")
        args[1] = tail[: -len(b"0}}")]
        return keys, [expected, len(limits) // 2, *limits, *args]

    def _started(self, reply: list[Any]) -> Started:
        code, number = int(reply[0]), int(reply[1])
        if code == 2:
            return Started(None, conflict=True)
        if code == 0:
            return Started(Attempt(number, granted=False))
        return Started(Attempt(number, granted=True), self._event_id(reply[2]))

    async def start_many(self, starts: Sequence[JobStart]) -> list[Started]:
        calls = [
            self._start_call(
                start.job_id, ("", start.max_attempts), start.fields, start.expected_attempt
            )
            for start in starts
        ]
        replies = await self._scripts(self._connection.start_job, calls)
        return [self._started(reply) if reply else Started(None) for reply in replies]

    async def read_and_start_many(
        self, job_ids: Sequence[str], limits: Mapping[str, int], fields: Mapping[str, str]
    ) -> list[ReadStarted]:
        """start_job.lua reads the record (HGETALL) in the step that starts the job."""
        pairs = [item for pair in limits.items() for item in pair]
        calls = [self._start_call(job_id, pairs, fields, 0) for job_id in job_ids]
        replies = await self._scripts(self._connection.start_job, calls)
        results: list[ReadStarted] = []
        for reply in replies:
            if not reply:
                results.append(ReadStarted(None, Started(None)))
                continue
            items = iter(reply[3])
            record = {k.decode(): v.decode() for k, v in zip(items, items, strict=True)}
            started = None if int(reply[0]) == 3 else self._started(reply)
            results.append(ReadStarted(record, started))
        return results

    async def finish_many(self, steps: Sequence[JobStep]) -> list[str | None]:
        calls = [self._call(step, {"job_id": step.job_id, **step.data}) for step in steps]
        replies = await self._scripts(self._connection.publish, calls)
        return [self._event_id(reply) for reply in replies]


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
