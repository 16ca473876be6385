"""Auto-pipelining (group commit) of the server's hot-path writes to one Redis server.

Concurrent requests each publishing an event or submitting a job would otherwise each check a
connection out of the pool, pack, write, read and parse under redis-py's retry wrapper and a
timeout of their own: that plumbing was half the CPU of a `POST /jobs`. Here each caller only
packs its commands (hiredis, C) and queues them; the commands queued in one event-loop
iteration go out as one write on a dedicated connection and their replies are read back in
order, each caller getting its own slice (as ioredis' `enableAutoPipelining` does). While one
batch is in flight the next one gathers, so the busier the server the larger the batches.

Error replies come back in their place as exception objects (a `NOSCRIPT` for one caller's
script does not fail the others); a lost connection fails every caller of the batch in flight
with a `redis.exceptions.ConnectionError` (the backends answer it `BackendUnavailable`, 503):
nothing is sent twice, since whether the server ran it is unknown. A connection the server has
closed since the last batch (a restarted Redis) is noticed before writing and reopened.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import hiredis
from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NOT_ENOUGH_DATA
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


class AutoPipeline:
    """Commands of concurrent callers written together on one connection of `pool`'s kind.

    `pool`: a redis-py async connection pool, used only for its connection class and
    settings (URL, TLS, password, database, timeouts); the connection is this object's own.
    """

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._connection: Any = None
        self._payloads: list[bytes] = []
        self._waiters: list[tuple[int, asyncio.Future[list[Any]]]] = []
        self._preloads: dict[bytes, None] = {}
        self._flusher: asyncio.Task[None] | None = None
        self.round_trips = 0
        """Batches written (one write, its replies read): for tests and the curious."""
        self.commands = 0
        """Commands sent, the preloads included."""

    async def execute(
        self, commands: Sequence[Sequence[Any]], *, preload: bytes | None = None
    ) -> list[Any]:
        """Send `commands` in order with whatever else is queued in this loop iteration and
        return their replies (raw: bytes, ints, lists; an error reply as its exception).

        `preload`: one packed command (a `SCRIPT LOAD`) sent once in front of the batch that
        carries these commands, however many callers in it ask for the same; its reply is not
        returned. It makes an `EVALSHA` among `commands` safe to follow with commands that
        must not run without it (a job's `XADD` after its `job.queued`).
        """
        packed = b"".join([hiredis.pack_command(tuple(command)) for command in commands])
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._payloads.append(packed)
        self._waiters.append((len(commands), future))
        if preload is not None:
            self._preloads[preload] = None
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="gateway-redis-autopipeline")
        return await future

    async def _flush(self) -> None:
        """Write what is queued, read its replies, hand them out; again while more queued."""
        waiters: list[tuple[int, asyncio.Future[list[Any]]]] = []
        try:
            while self._waiters:
                payloads, waiters, preloads = self._payloads, self._waiters, self._preloads
                self._payloads, self._waiters, self._preloads = [], [], {}
                count = sum(n for n, _future in waiters)
                try:
                    replies = await self._round_trip(
                        b"".join([*preloads, *payloads]), len(preloads) + count
                    )
                except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                    for _n, future in waiters:
                        if not future.done():
                            future.set_exception(RedisConnectionError(str(exc)))
                    continue
                at = len(preloads)
                for n, future in waiters:
                    if not future.done():  # its caller may have given up (cancelled)
                        future.set_result(replies[at : at + n])
                    at += n
                waiters = []
        except BaseException as exc:
            # Cancelled (the loop is closing) or a bug: nobody may wait forever.
            for _n, future in [*waiters, *self._waiters]:
                if not future.done():
                    future.set_exception(RedisConnectionError(f"auto-pipeline stopped: {exc!r}"))
            self._payloads, self._waiters, self._preloads = [], [], {}
            raise
        finally:
            self._flusher = None

    async def _round_trip(self, payload: bytes, count: int) -> list[Any]:
        connection = self._connection
        if connection is None or _closed(connection):
            connection = await self._connect()
        try:
            connection._writer.write(payload)
            await connection._writer.drain()
            async with asyncio.timeout(connection.socket_timeout):
                replies = await self._read_replies(connection, count)
        except TimeoutError as exc:
            await self._drop()
            raise RedisTimeoutError(f"no reply from Redis to {count} commands") from exc
        except BaseException:
            await self._drop()
            raise
        self.round_trips += 1
        self.commands += count
        return replies

    async def _read_replies(self, connection: Any, count: int) -> list[Any]:
        """`count` replies parsed by the connection's hiredis reader, read straight from its
        stream (redis-py's `read_response` per reply checks for push messages and
        disconnection each time: a third of reading a pipeline's replies)."""
        parser = connection._parser
        reader = getattr(parser, "_reader", None)
        if not isinstance(reader, hiredis.Reader):  # not the hiredis parser: its own way
            return [await parser.read_response() for _ in range(count)]
        stream = connection._reader
        replies: list[Any] = []
        while len(replies) < count:
            reply = reader.gets()
            if reply is _NOT_ENOUGH_DATA:
                data = await stream.read(65536)
                if not data:
                    raise RedisConnectionError("Redis closed the connection")
                reader.feed(data)
            elif isinstance(reply, RedisConnectionError):
                raise reply
            else:
                replies.append(reply)
        return replies

    async def _connect(self) -> Any:
        await self._drop()
        connection = self._pool.connection_class(**self._pool.connection_kwargs)
        await connection.connect()
        self._connection = connection
        return connection

    async def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.disconnect()

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(BaseException):
                await self._flusher
        await self._drop()


def _closed(connection: Any) -> bool:
    """Whether the server closed `connection` since its last use (EOF or a reset seen by the
    event loop): it is reopened before writing rather than failing the next batch."""
    reader = connection._reader
    return reader is None or reader.at_eof() or reader.exception() is not None
