"""The app's side of each broker in the tests: declare, then publish messages with ids, through
the broker's own client library, and the `[[sources]]` table a bridge reads them with."""

from __future__ import annotations

import abc
import asyncio
import uuid
from typing import Any

Message = tuple[str, bytes, str]
"""(topic words joined by the broker's separator, body, message id)."""


class Feed(abc.ABC):
    kind: str
    separator = "."
    one = "*"

    def __init__(self, url: str) -> None:
        self.url = url
        self.tag = uuid.uuid4().hex[:8]

    def topic(self, *words: str) -> str:
        return self.separator.join(words)

    def pattern(self, *words: str) -> str:
        """A route's match: `*` words are the broker's one-word wildcard."""
        return self.separator.join(self.one if word == "*" else word for word in words)

    @abc.abstractmethod
    def source(self, name: str, patterns: list[str]) -> dict[str, Any]:
        """The source table without its routes."""

    async def prepare(self, patterns: list[str]) -> None:  # noqa: B027
        """What must exist before messages are published (a bound queue, a stream)."""

    @abc.abstractmethod
    async def send(self, messages: list[Message]) -> None: ...

    async def dead_letters(self) -> list[bytes] | None:
        """Bodies the bridge dead-lettered; None where the broker has no dead letters."""
        return None


class RabbitMQFeed(Feed):
    kind = "rabbitmq"

    def source(self, name: str, patterns: list[str]) -> dict[str, Any]:
        return {
            "kind": "rabbitmq",
            "name": name,
            "url": self.url,
            "exchange": f"events-{self.tag}",
            "queue": f"bridge-{self.tag}",
            "bindings": patterns,
            "dead_letter_exchange": f"dead-{self.tag}",
        }

    async def prepare(self, patterns: list[str]) -> None:
        import aio_pika

        connection = await aio_pika.connect(self.url)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(
                f"events-{self.tag}", aio_pika.ExchangeType.TOPIC, durable=True
            )
            dead = await channel.declare_exchange(
                f"dead-{self.tag}", aio_pika.ExchangeType.FANOUT, durable=True
            )
            dead_queue = await channel.declare_queue(f"dead-{self.tag}", durable=True)
            await dead_queue.bind(dead)
            queue = await channel.declare_queue(
                f"bridge-{self.tag}",
                durable=True,
                arguments={"x-dead-letter-exchange": f"dead-{self.tag}"},
            )
            for pattern in patterns:
                await queue.bind(exchange, routing_key=pattern)

    async def send(self, messages: list[Message]) -> None:
        import aio_pika

        connection = await aio_pika.connect(self.url)
        async with connection:
            channel = await connection.channel(publisher_confirms=False)
            exchange = await channel.get_exchange(f"events-{self.tag}")
            for topic, body, message_id in messages:
                await exchange.publish(
                    aio_pika.Message(body, message_id=message_id), routing_key=topic
                )
            await channel.close()

    async def dead_letters(self) -> list[bytes] | None:
        import aio_pika

        connection = await aio_pika.connect(self.url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(f"dead-{self.tag}", durable=True)
            bodies = []
            while (message := await queue.get(fail=False)) is not None:
                bodies.append(message.body)
                await message.ack()
            return bodies


class MQTTFeed(Feed):
    kind = "mqtt"
    separator = "/"
    one = "+"

    def source(self, name: str, patterns: list[str]) -> dict[str, Any]:
        return {
            "kind": "mqtt",
            "name": name,
            "url": self.url,
            "client_id": f"bridge-{self.tag}",
            "topics": patterns,
        }

    async def send(self, messages: list[Message]) -> None:
        import aiomqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        port = int(self.url.rsplit(":", 1)[1])
        async with aiomqtt.Client(
            "127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5, identifier=f"app-{self.tag}"
        ) as client:
            for topic, body, message_id in messages:
                properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                properties.UserProperty = [("message-id", message_id)]
                await client.publish(topic, body, qos=1, properties=properties)


class NATSFeed(Feed):
    kind = "nats"

    def source(self, name: str, patterns: list[str]) -> dict[str, Any]:
        return {
            "kind": "nats",
            "name": name,
            "url": self.url,
            "stream": f"EVENTS_{self.tag}",
            "subjects": [f"{self.tag}.>"],
            "durable": f"bridge-{self.tag}",
        }

    def topic(self, *words: str) -> str:
        return super().topic(self.tag, *words)

    def pattern(self, *words: str) -> str:
        return super().pattern(self.tag, *words)

    async def prepare(self, patterns: list[str]) -> None:
        import nats

        nc = await nats.connect(self.url)
        try:
            await nc.jetstream().add_stream(name=f"EVENTS_{self.tag}", subjects=[f"{self.tag}.>"])
        finally:
            await nc.close()

    async def send(self, messages: list[Message]) -> None:
        import nats

        nc = await nats.connect(self.url)
        try:
            js = nc.jetstream()
            for topic, body, message_id in messages:
                await js.publish(topic, body, headers={"Nats-Msg-Id": message_id})
        finally:
            await nc.close()


class PostgresFeed(Feed):
    kind = "postgres"

    def source(self, name: str, patterns: list[str]) -> dict[str, Any]:
        return {
            "kind": "postgres",
            "name": name,
            "url": self.url,
            "table": f"outbox_{self.tag}",
            "notify_channel": f"outbox_{self.tag}",
        }

    async def send(self, messages: list[Message]) -> None:
        import asyncpg

        connection = await asyncpg.connect(self.url)
        try:
            # As an app would: a few rows per transaction (the message id is the row's id).
            for start in range(0, len(messages), 20):
                async with connection.transaction():
                    await connection.executemany(
                        f"INSERT INTO outbox_{self.tag} (topic, payload) VALUES ($1, $2)",
                        [(topic, body.decode()) for topic, body, _ in messages[start : start + 20]],
                    )
        finally:
            await connection.close()

    async def dead_letters(self) -> list[bytes] | None:
        import asyncpg

        connection = await asyncpg.connect(self.url)
        try:
            rows = await connection.fetch(f"SELECT payload FROM outbox_{self.tag}_dead ORDER BY id")
            return [row["payload"].encode() for row in rows]
        finally:
            await connection.close()


FEEDS: dict[str, type[Feed]] = {
    feed.kind: feed for feed in (RabbitMQFeed, MQTTFeed, NATSFeed, PostgresFeed)
}


async def wait_for_postgres(url: str, timeout: float = 30.0) -> None:
    import asyncpg

    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            connection = await asyncpg.connect(url, timeout=2)
        except (OSError, asyncpg.PostgresError):
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)
        else:
            await connection.close()
            return
