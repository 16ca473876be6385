"""PostgreSQL transactional outbox with asyncpg: rows the app inserts in its own transaction.

    INSERT INTO gateway_outbox (topic, payload) VALUES ('orders.42.status', '{"status":"paid"}');

in the same transaction as the business change: the event exists if and only if the change
committed. A trigger NOTIFYs the bridge, which also polls every `poll_interval` seconds in case
a notification was missed (LISTEN holds no backlog across reconnects). The bridge reads a batch
of `prefetch` rows in id order with FOR UPDATE, publishes each, then deletes the published rows
and moves the malformed ones to `<table>_dead` in the same transaction: a bridge that dies
mid-batch rolls back and reads the same rows again (the dedup keys, by row id, drop the
already published).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from gateway.bridges.config import PostgresConfig
from gateway.bridges.routes import AMQP
from gateway.bridges.source import Delivery, Source


def schema(table: str, notify_channel: str) -> str:
    """The outbox table, its dead-letter table and the NOTIFY trigger (names validated as SQL
    identifiers by the configuration)."""
    return f"""
CREATE TABLE IF NOT EXISTS {table} (
    id bigserial PRIMARY KEY,
    topic text NOT NULL,
    payload text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {table}_dead (
    id bigint PRIMARY KEY,
    topic text NOT NULL,
    payload text NOT NULL,
    created_at timestamptz NOT NULL,
    reason text NOT NULL,
    failed_at timestamptz NOT NULL DEFAULT now()
);
CREATE OR REPLACE FUNCTION {table}_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{notify_channel}', '');
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS {table}_notify ON {table};
CREATE TRIGGER {table}_notify AFTER INSERT ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION {table}_notify();
"""


class PostgresSource(Source):
    syntax = AMQP

    def __init__(self, config: PostgresConfig) -> None:
        self.config = config
        self._connection: Any = None
        self._woken = asyncio.Event()
        self._published: list[int] = []
        self._dead: list[tuple[int, str]] = []

    async def open(self) -> None:
        config = self.config
        self._connection = await asyncpg.connect(config.url, timeout=10)
        if config.create:
            # One bridge at a time creates the schema (CREATE ... IF NOT EXISTS races otherwise).
            async with self._connection.transaction():
                await self._connection.execute("SELECT pg_advisory_xact_lock(4242000)")
                await self._connection.execute(schema(config.table, config.notify_channel))
        await self._connection.add_listener(config.notify_channel, self._notified)

    def _notified(self, *_args: Any) -> None:
        self._woken.set()

    async def deliveries(self) -> AsyncGenerator[Delivery, None]:
        config = self.config
        connection = self._connection
        select = (
            f"SELECT id, topic, payload, created_at FROM {config.table} "
            "ORDER BY id LIMIT $1 FOR UPDATE"
        )
        while True:
            self._woken.clear()
            async with connection.transaction():
                rows = await connection.fetch(select, config.prefetch)
                self._published, self._dead = [], []
                for row in rows:
                    yield Delivery(
                        topic=row["topic"],
                        body=row["payload"].encode(),
                        message_id=str(row["id"]),
                        sent_at=row["created_at"].timestamp(),
                        handle=row["id"],
                    )
                await self._settle()
            if len(rows) < config.prefetch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._woken.wait(), config.poll_interval)

    async def _settle(self) -> None:
        """Inside the batch's transaction: published rows go, malformed rows move aside."""
        table = self.config.table
        if self._dead:
            await self._connection.executemany(
                f"INSERT INTO {table}_dead (id, topic, payload, created_at, reason) "
                f"SELECT id, topic, payload, created_at, $2 FROM {table} WHERE id = $1 "
                "ON CONFLICT (id) DO NOTHING",
                self._dead,
            )
        done = self._published + [row_id for row_id, _ in self._dead]
        if done:
            await self._connection.execute(
                f"DELETE FROM {table} WHERE id = ANY($1::bigint[])", done
            )

    async def ack(self, delivery: Delivery) -> None:
        self._published.append(delivery.handle)

    async def reject(self, delivery: Delivery, reason: str) -> None:
        self._dead.append((delivery.handle, reason))

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.terminate()
