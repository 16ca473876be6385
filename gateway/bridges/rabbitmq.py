"""RabbitMQ (AMQP 0-9-1) with aio-pika: a durable queue bound to an exchange.

Prefetch (basic.qos) bounds the unacked messages the broker sends; a message is acked after
its event is published, rejected without requeue when malformed (to the queue's
`x-dead-letter-exchange` when configured). A lost connection returns the unacked messages to
the queue at their places, so order holds across a restart (one bridge per queue).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from gateway.bridges.config import RabbitMQConfig
from gateway.bridges.routes import AMQP
from gateway.bridges.source import Delivery, Source, body_digest


class RabbitMQSource(Source):
    syntax = AMQP

    def __init__(self, config: RabbitMQConfig) -> None:
        self.config = config
        self._connection: Any = None
        self._queue: Any = None

    async def open(self) -> None:
        config = self.config
        # Not connect_robust: the runner owns reconnecting (with backoff, and the same path for
        # every broker); a robust connection would also hide a lost channel from the iterator.
        connection: AbstractConnection = await aio_pika.connect(config.url, timeout=10)
        self._connection = connection
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=config.prefetch)
        exchange = await channel.declare_exchange(
            config.exchange, aio_pika.ExchangeType(config.exchange_type), durable=True
        )
        arguments: Any = (
            {"x-dead-letter-exchange": config.dead_letter_exchange}
            if config.dead_letter_exchange is not None
            else None
        )
        self._queue = await channel.declare_queue(config.queue, durable=True, arguments=arguments)
        for key in config.bindings:
            await self._queue.bind(exchange, routing_key=key)

    async def deliveries(self) -> AsyncGenerator[Delivery, None]:
        async with self._queue.iterator() as messages:
            async for message in messages:
                yield _delivery(message)
        raise ConnectionError("the queue's consumer was cancelled")

    async def ack(self, delivery: Delivery) -> None:
        await delivery.handle.ack()

    async def reject(self, delivery: Delivery, reason: str) -> None:
        await delivery.handle.reject(requeue=False)

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()


def _delivery(message: AbstractIncomingMessage) -> Delivery:
    topic = message.routing_key or ""
    return Delivery(
        topic=topic,
        body=message.body,
        message_id=message.message_id or body_digest(topic, message.body),
        sent_at=message.timestamp.timestamp() if message.timestamp is not None else None,
        handle=message,
    )
