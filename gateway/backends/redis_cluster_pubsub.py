"""Sharded pub/sub on a Redis Cluster: one `SSUBSCRIBE` connection per shard that holds
subscribed channels, following the channels when their slots move.

Each channel (`gw:{<channel>}`, the same slot as its stream) is subscribed on the master that
serves its slot. A shard's reader owns one plain connection to that master: it checks that the
node is a master (`ROLE`; a restarted old master is a replica), subscribes the shard's channels
there, hands their messages on, and pings after `pubsub_probe` seconds of silence. A reader
that fails for any reason reconnects (and is started again if its task ends).

When the connection fails, when a subscribe answers `MOVED`, or when the server
unsubscribes a channel itself (its slot migrated away), the reader reads the slot map again and
moves each channel whose slot has a new owner to that owner's reader (one per shard, made on
demand). A channel subscribed again after such a loss is a re-subscription: the reader holds
back the shard's live messages until every pending re-subscription is confirmed, then reports
them (`on_resubscribed`, where the bus re-reads what was missed), then delivers what it held.

redis-py 8.1's asyncio `ClusterPubSub` also keeps one connection per node and re-homes shard
channels when its slot cache changes, but that reconciliation runs off the command client's
slot-cache refreshes, and it gives no signal that a shard's subscriptions were lost and
re-established: the signal the gateway needs to re-read history. So this module keeps its own
readers on plain connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MovedError, RedisError, ResponseError

from gateway.backends.redis_cluster_connection import RedisClusterConnection
from gateway.errors import BackendUnavailable
from gateway.metrics import METRICS

log = logging.getLogger("gateway.redis")

Shard = tuple[str, int]
REFRESH_TIMEOUT = 5.0
"""Seconds a reader waits for the slot map to be read again before it retries anyway."""
MessageListener = Callable[[bytes, bytes], None]
"""Hears (pub/sub name, payload) of every sharded message; must not block."""
ResubscribedListener = Callable[[set[bytes]], None]
"""Hears the names subscribed again after a loss (failover, migration, reconnect), called
before any live message that followed the re-subscription is delivered."""


def moved_to(error: ResponseError) -> Shard | None:
    """The master a `MOVED <slot> <host:port>` answer names, if it is one."""
    if isinstance(error, MovedError):
        return error.host, int(error.port)
    words = str(error).split()
    if len(words) == 3 and words[0] == "MOVED":
        host, _, port = words[2].rpartition(":")
        if port.isdigit():
            return host, int(port)
    return None


class ShardReader:
    """One shard's subscription connection and the channels it holds."""

    def __init__(self, owner: ShardedSubscriptions, shard: Shard) -> None:
        self.owner = owner
        self.shard = shard
        self.label = f"{shard[0]}:{shard[1]}"
        self.names: set[bytes] = set()
        self.resubscribing: set[bytes] = set()
        """Names that were live before and wait for their re-subscription's confirmation."""
        self.resubscribed: set[bytes] = set()
        self.held: list[tuple[bytes, bytes]] = []
        self.sent: deque[bytes] = deque()
        """SSUBSCRIBEs sent and not yet answered, in order (an error answer names no channel)."""
        self.pubsub: aioredis.client.PubSub | None = None
        self.client: aioredis.Redis | None = None
        self.live = asyncio.Event()
        self.reconnects = 0
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"gateway-shard-reader-{self.label}")
        self.task.add_done_callback(self._ended)

    def connected(self) -> bool:
        """Connected, its channels subscribed, and its task running."""
        return self.live.is_set() and self.task is not None and not self.task.done()

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A reader never dies silently: one that failed (past its own recovery) is logged and
        started again while it still holds channels."""
        if task.cancelled() or self.owner.closing:
            return
        failure = task.exception()
        if failure is None:
            return
        self.live.clear()
        log.error("shard %s reader failed; restarting it", self.label, exc_info=failure)
        if self.names and self.owner.readers.get(self.shard) is self:
            self.start()

    async def send_subscribe(self, name: bytes) -> None:
        pubsub = self.pubsub
        if pubsub is None:
            return  # the reader subscribes every name when it connects
        if name in self.owner.established:
            self.resubscribing.add(name)
        self.sent.append(name)
        try:
            await pubsub.execute_command("SSUBSCRIBE", name)
        except (RedisError, OSError, AttributeError):
            # AttributeError: redis-py's connection was closed under the write (the reader
            # dropped it); the reader subscribes every name of its own again when it is back.
            log.warning("ssubscribe %r on %s failed; the reader will retry", name, self.label)

    async def send_unsubscribe(self, name: bytes) -> None:
        pubsub = self.pubsub
        if pubsub is not None:
            # The reader may close the connection under this write once its last name is gone
            # (AttributeError from redis-py's closed connection): nothing is left to undo then.
            with contextlib.suppress(RedisError, OSError, AttributeError):
                await pubsub.execute_command("SUNSUBSCRIBE", name)

    async def _run(self) -> None:
        delay = 0.05
        while not self.owner.closing:
            if not self.names:
                # Forgotten in the same step as the check: a channel added from now on gets a
                # new reader rather than this ending one.
                self.owner.forget(self)
                break
            try:
                await self._connect()
                delay = 0.05
                await self._read()
            except Exception as exc:  # any failure: reconnect, never die
                # Not only RedisError/OSError: a reader that died of anything else would leave
                # its channels deaf with no sign (no reconnect, no recovery, readiness green).
                self.live.clear()
                METRICS.shard_reconnects.labels(self.label).inc()
                if isinstance(exc, RedisError | OSError):
                    log.warning("shard %s pub/sub lost (%s)", self.label, exc)
                else:
                    log.exception("shard %s reader failed; reconnecting", self.label)
                await self._drop()
                await self.owner.rehome(self)
                if not self.names:
                    continue
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 2.0)
        await self._drop()

    async def _connect(self) -> None:
        self.client = self.owner.connection.subscriber_client(*self.shard)
        pubsub = self.client.pubsub()
        self.pubsub = pubsub
        # ROLE, not PING: a node that restarted after a failover answers, but as a replica. A
        # replica accepts SSUBSCRIBE for its master's slots, and then hears the master's
        # messages only once the master counts it as its replica: subscribed there, the
        # channels go deaf with no sign. Only a master is subscribed on; otherwise the slot
        # map is read again (the `rehome` after this error) until it names the new master.
        await pubsub.execute_command("ROLE")
        answer = await pubsub.parse_response(block=False, timeout=max(self.owner.probe, 1.0))
        if answer is None:
            raise RedisConnectionError(f"no answer to ROLE from shard {self.label}")
        if not answer or answer[0] != b"master":
            raise RedisConnectionError(f"shard {self.label} is not a master now ({answer[0]!r})")
        self.sent.clear()
        for name in list(self.names):
            await self.send_subscribe(name)
        self.live.set()
        self.reconnects += 1

    async def _read(self) -> None:
        pubsub = self.pubsub
        assert pubsub is not None
        awaiting_pong = False
        while not self.owner.closing and self.names:
            try:
                message = await pubsub.parse_response(block=False, timeout=self.owner.probe)
            except ResponseError as exc:
                # An SSUBSCRIBE refused: MOVED names the master that serves its slot now.
                name = self.sent.popleft() if self.sent else None
                log.info("ssubscribe %r on %s refused (%s)", name, self.label, exc)
                if name is None or name not in self.names:
                    continue
                moved = moved_to(exc)
                if moved is not None and moved != self.shard:
                    await self.owner.move(name, self, moved)
                    self.release()
                else:
                    await asyncio.sleep(0.05)  # a slot map in flux: ask again shortly
                    await self.owner.rehome(self, lost={name})
                continue
            if message is None:
                if awaiting_pong:
                    raise RedisConnectionError(f"shard {self.label} silent: no answer to a ping")
                awaiting_pong = True
                await pubsub.execute_command("PING")
                continue
            awaiting_pong = False
            kind = message[0]
            if kind == b"smessage":
                if self.resubscribing:
                    self.held.append((message[1], message[2]))
                else:
                    self.owner.on_message(message[1], message[2])
            elif kind == b"ssubscribe":
                name = message[1]
                if self.sent and self.sent[0] == name:
                    self.sent.popleft()
                self._settled(name, resubscribed=name in self.resubscribing)
            elif kind == b"sunsubscribe" and message[1] in self.names:
                # Not asked for: the server dropped it (its slot left this node). Subscribed
                # again where the slot map says, or here (answered MOVED if it is elsewhere).
                await self.owner.rehome(self, lost={message[1]})

    def _settled(self, name: bytes, *, resubscribed: bool) -> None:
        """A subscription of `name` was answered (confirmed, or refused and re-homed)."""
        self.resubscribing.discard(name)
        if resubscribed:
            self.resubscribed.add(name)
        else:
            self.owner.confirmed(name)
        self.release()

    def release(self) -> None:
        """Once no re-subscription is pending: report the re-subscribed names, then deliver
        what was held back meanwhile."""
        if self.resubscribing:
            return
        if self.resubscribed:
            names, self.resubscribed = self.resubscribed, set()
            self.owner.on_resubscribed(names)
        held, self.held = self.held, []
        for channel, payload in held:
            self.owner.on_message(channel, payload)

    async def _drop(self) -> None:
        pubsub, self.pubsub = self.pubsub, None
        client, self.client = self.client, None
        # What was waiting for an answer on the lost connection is subscribed again (and
        # marked pending again) when the reader reconnects or the name moves elsewhere.
        self.sent.clear()
        self.resubscribing.clear()
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError, RuntimeError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
        if client is not None:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()


class ShardedSubscriptions:
    """Pub/sub names subscribed with `SSUBSCRIBE`, one reader per shard."""

    def __init__(
        self,
        connection: RedisClusterConnection,
        probe: float,
        on_message: MessageListener,
        on_resubscribed: ResubscribedListener,
    ) -> None:
        self.connection = connection
        self.probe = probe
        self.on_message = on_message
        self.on_resubscribed = on_resubscribed
        self.readers: dict[Shard, ShardReader] = {}
        self.home: dict[bytes, ShardReader] = {}
        self.established: set[bytes] = set()
        """Names confirmed at least once: a later subscription of one is a re-subscription."""
        self._confirmations: dict[bytes, asyncio.Future[None]] = {}
        self._late: set[bytes] = set()
        """Names whose `add` stopped waiting before Redis confirmed them."""
        self.closing = False

    def live(self) -> bool:
        """Every reader holding channels is connected."""
        return all(reader.connected() for reader in self.readers.values())

    def readers_live(self) -> dict[str, bool]:
        """Each shard this process holds channels on, and whether its reader is connected."""
        return {reader.label: reader.connected() for reader in self.readers.values()}

    def subscriptions_by_shard(self) -> dict[str, int]:
        return {reader.label: len(reader.names) for reader in self.readers.values()}

    async def add(self, name: bytes, timeout: float = 2.0) -> None:
        """Subscribe `name` on its slot's shard and wait (at most `timeout`) for Redis to
        confirm; a reader that is down subscribes it when it is back."""
        loop = asyncio.get_running_loop()
        confirmed = self._confirmations.get(name)
        if confirmed is None:
            confirmed = self._confirmations[name] = loop.create_future()
        if name not in self.home:
            try:
                shard = self.connection.owner_of(name)
            except RedisError:
                try:
                    await self.connection.refresh_slots()
                    shard = self.connection.owner_of(name)
                except (RedisError, OSError) as exc:
                    self._confirmations.pop(name, None)
                    raise BackendUnavailable(f"subscribe {name!r}: {exc}") from exc
            reader = self._reader(shard)
            reader.names.add(name)
            self.home[name] = reader
            self._count(reader)
            await reader.send_subscribe(name)
        try:
            await asyncio.wait_for(asyncio.shield(confirmed), timeout=timeout)
        except TimeoutError:
            # The caller reads history next, unsure of live delivery: when the confirmation
            # comes, the name counts as re-subscribed (the bus re-reads what was missed).
            self._late.add(name)

    async def remove(self, name: bytes) -> None:
        self.established.discard(name)
        self._late.discard(name)
        pending = self._confirmations.pop(name, None)
        if pending is not None and not pending.done():
            pending.cancel()
        reader = self.home.pop(name, None)
        if reader is not None:
            reader.names.discard(name)
            reader.resubscribing.discard(name)
            self._count(reader)
            await reader.send_unsubscribe(name)

    def confirmed(self, name: bytes) -> None:
        if name in self.home:
            self.established.add(name)
            if name in self._late:
                self._late.discard(name)
                self.on_resubscribed({name})
        future = self._confirmations.get(name)
        if future is not None and not future.done():
            future.set_result(None)

    def _reader(self, shard: Shard) -> ShardReader:
        reader = self.readers.get(shard)
        if reader is None or reader.task is None or reader.task.done():
            reader = self.readers[shard] = ShardReader(self, shard)
            reader.start()
        return reader

    def forget(self, reader: ShardReader) -> None:
        if self.readers.get(reader.shard) is reader:
            del self.readers[reader.shard]
            METRICS.shard_subscriptions.labels(reader.label).set(0)

    def _count(self, reader: ShardReader) -> None:
        METRICS.shard_subscriptions.labels(reader.label).set(len(reader.names))

    async def rehome(self, reader: ShardReader, lost: set[bytes] | None = None) -> None:
        """Read the slot map again and move each of `reader`'s channels whose slot another
        master serves now to that master's reader; subscribe the `lost` ones that stay (the
        server dropped them) again on `reader`."""
        try:
            # Bounded: a refresh that hangs must not hold the reader (and its channels) forever.
            await asyncio.wait_for(self.connection.refresh_slots(), REFRESH_TIMEOUT)
        except (RedisError, OSError) as exc:  # TimeoutError is an OSError
            log.warning("cluster slot map unreadable (%r); keeping %s", exc, reader.label)
        for name in list(reader.names):
            try:
                shard = self.connection.owner_of(name)
            except RedisError:
                shard = reader.shard
            if shard != reader.shard:
                await self.move(name, reader, shard)
            elif lost and name in lost:
                await reader.send_subscribe(name)
        self._count(reader)
        if reader.pubsub is not None:
            reader.release()

    async def move(self, name: bytes, source: ShardReader, shard: Shard) -> None:
        """Subscribe `name` on `shard`'s reader instead of `source` (a re-subscription when
        it was live before)."""
        source.names.discard(name)
        source.resubscribing.discard(name)
        target = self._reader(shard)
        target.names.add(name)
        self.home[name] = target
        if name in self.established:
            target.resubscribing.add(name)
        self._count(source)
        self._count(target)
        await target.send_subscribe(name)

    async def close(self) -> None:
        self.closing = True
        tasks = [reader.task for reader in self.readers.values() if reader.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                await task
        for reader in list(self.readers.values()):
            await reader._drop()
        self.readers.clear()
