"""The Redis bus: Streams for history, pub/sub for live delivery, one script per publish."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from gateway.backends.bus import Bus, History, JobUpdate, NewJob, Publication
from gateway.backends.redis_autopipeline import AutoPipeline
from gateway.backends.redis_connection import RedisConnection, ScriptCall, evalsha_each
from gateway.backends.redis_keys import (
    CommandList,
    bus_channel,
    event_from_entry,
    loads_script_once,
    publish_call,
    published,
    queue_keys,
    queue_partition,
    queue_submissions,
    stream_key,
    submission_replies,
)
from gateway.errors import BackendUnavailable, EventTooLarge
from gateway.events import Event, parse_event_id
from gateway.metrics import METRICS
from gateway.settings import Settings

log = logging.getLogger("gateway.redis")


class RedisBus(Bus):
    kind = "redis"
    _auto: AutoPipeline | None = None
    """The one-server backend's auto-pipeline for publishes and submissions; None on a
    Cluster (`RedisClusterBus`), which keeps redis-py's routing pipelines."""

    def __init__(self, settings: Settings, connection: RedisConnection) -> None:
        super().__init__(settings)
        self._connection = connection
        self._redis = connection.redis
        self._auto = connection.auto
        self._pubsub_client = aioredis.Redis.from_url(
            connection.url,
            decode_responses=False,
            retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=2,
        )
        self._channels: set[str] = set()
        self._confirmations: dict[bytes, asyncio.Future[None]] = {}
        self._pubsub: aioredis.client.PubSub | None = None
        self._pubsub_lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._recovery_task: asyncio.Future[None] | None = None
        self._live = asyncio.Event()
        self._closing = False
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
        await self._pubsub_client.aclose()

    async def ping(self) -> bool:
        try:
            alive = await asyncio.wait_for(self._redis.ping(), timeout=2)
            return bool(alive) and self._live.is_set()
        except (RedisError, OSError, TimeoutError):
            return False

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
            if self._auto is not None:
                (entry_id,) = await self._publish_scripts([(keys, args)])
            else:
                entry_id = await self._connection.publish(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"publish to {channel}: {exc}") from exc
        return published(channel, type_, tail, entry_id)

    async def _publish_scripts(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """publish.lua once per (keys, args) (`evalsha_each`): auto-pipelined with the other
        requests' writes when there is an auto-pipeline (the reload rides in front as a
        preload), else one pipeline of the pool's."""
        auto = self._auto

        async def send(commands: list[tuple[Any, ...]], reload: bool) -> Sequence[Any]:
            if auto is not None:
                preload = self._connection.load_publish if reload else None
                return await auto.execute(commands, preload=preload)
            if reload:
                await self._redis.script_load(self._connection.publish_lua)
            async with self._redis.pipeline(transaction=False) as pipe:
                for command in commands:
                    pipe.execute_command(*command)
                return list(await pipe.execute(raise_on_error=False))

        return await evalsha_each(self._connection.publish.sha, calls, send, "publish")

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
                pipe.eval(self._connection.publish_lua, len(keys), *keys, *args)
                stream, _delayed = queue_keys(
                    queue_partition(job.job_id, self.settings.queue_partitions)
                )
                pipe.xadd(stream, {"job": job.job_id})
                entry_id, _queued = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"publish to {channel} and enqueue: {exc}") from exc
        return published(channel, type_, tail, entry_id)

    async def publish_many(
        self, publications: Sequence[Publication]
    ) -> list[Event | EventTooLarge]:
        """`EVALSHA` per event in one pipeline; when Redis lost the script (restarted), the
        refused ones (nothing of them was written) go again once it is loaded."""
        answers: list[Event | EventTooLarge | None] = [None] * len(publications)
        calls: list[tuple[int, list[str], list[Any], bytes]] = []
        for index, item in enumerate(publications):
            try:
                keys, args, tail = publish_call(
                    self.settings, item.channel, item.type, item.data, item.source, None
                )
            except EventTooLarge as exc:
                answers[index] = exc
                continue
            calls.append((index, keys, args, tail))
        if not calls:
            return [answer for answer in answers if answer is not None]
        try:
            replies = await self._publish_scripts([(keys, args) for _i, keys, args, _ in calls])
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"publish {len(publications)} events: {exc}") from exc
        for (index, _keys, _args, tail), reply in zip(calls, replies, strict=True):
            item = publications[index]
            event = published(item.channel, item.type, tail, reply)
            assert event is not None  # no job update: never refused
            answers[index] = event
        return [answer for answer in answers if answer is not None]

    async def submit_jobs(self, jobs: Sequence[NewJob]) -> list[Event]:
        """One pipeline (ordered, not atomic: its keys are in several Cluster slots); see
        `queue_submissions` for what it holds and why in that order."""
        if not jobs:
            return []
        if self._auto is not None:
            return await self._submit_auto(jobs)
        load = loads_script_once(self._connection.url, len(jobs))
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                tails = queue_submissions(
                    pipe,
                    self.settings,
                    jobs,
                    publish_lua=self._connection.publish_lua,
                    load_script=load,
                )
                replies = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"submit {len(jobs)} jobs: {exc}") from exc
        events = []
        for job, tail, entry_id in zip(
            jobs, tails, submission_replies(replies, len(jobs), load_script=load), strict=True
        ):
            event = published(job.event.channel, job.event.type, tail, entry_id)
            if event is None:  # a record stored a moment ago cannot be terminal
                raise BackendUnavailable(f"submit job {job.job_id}: its record vanished")
            events.append(event)
        return events

    async def _submit_auto(self, jobs: Sequence[NewJob]) -> list[Event]:
        """`submit_jobs` on the auto-pipeline: the publish script loaded once in front of the
        batch its commands go out in (so each job's `XADD` follows its `job.queued`); if Redis
        lost it in between anyway, only the refused scripts run again once it is loaded."""
        assert self._auto is not None
        recorded = CommandList()
        tails = queue_submissions(
            recorded,
            self.settings,
            jobs,
            publish_lua=self._connection.publish_lua,
            script_preloaded=True,
        )
        first = len(jobs) + 1  # the HSETs and the ZADD come first, then EVALSHA, XADD per job
        try:
            replies = await self._auto.execute(
                recorded.commands, preload=self._connection.load_publish
            )
            entry_ids = submission_replies(replies, len(jobs))
            refused = [i for i, reply in enumerate(entry_ids) if isinstance(reply, NoScriptError)]
            for index, reply in enumerate(replies):
                if isinstance(reply, Exception) and not (
                    isinstance(reply, NoScriptError) and (index - first) % 2 == 0
                ):
                    raise reply
            if refused:
                again = await self._publish_scripts(
                    [_script_call(recorded.commands[first + 2 * i]) for i in refused]
                )
                for i, entry_id in zip(refused, again, strict=True):
                    entry_ids[i] = entry_id
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"submit {len(jobs)} jobs: {exc}") from exc
        events = []
        for job, tail, entry_id in zip(jobs, tails, entry_ids, strict=True):
            event = published(job.event.channel, job.event.type, tail, entry_id)
            if event is None:  # a record stored a moment ago cannot be terminal
                raise BackendUnavailable(f"submit job {job.job_id}: its record vanished")
            events.append(event)
        return events

    async def publish_live(self, channel: str, type_: str, data: Any) -> Event:
        event = Event.live_only(channel, type_, data)
        await self._connection.call(
            "publish live", self._redis.publish(bus_channel(channel), event.envelope)
        )
        return event

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

    async def expire_history(self, channel: str, seconds: int) -> None:
        key = stream_key(channel)
        ttl = await self._connection.call("history ttl", self._redis.ttl(key))
        if ttl < 0 or ttl > seconds:
            await self._connection.call("expire history", self._redis.expire(key, seconds))

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

        Never awaits a client: each message goes to the listeners, which only queue frames.
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
            self._recovery_task = self._recovered()
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
                self._deliver(event)
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


def _script_call(command: Sequence[Any]) -> tuple[list[str], list[Any]]:
    """(keys, args) of a queued `EVALSHA sha numkeys keys... args...`."""
    numkeys = int(command[2])
    return list(command[3 : 3 + numkeys]), list(command[3 + numkeys :])
