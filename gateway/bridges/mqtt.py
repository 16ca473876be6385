"""MQTT 5 with aiomqtt: topic filters at QoS 1 in a persistent session.

The session (clean start off, a session expiry) makes the broker keep the subscriptions and
queue QoS 1 messages while the bridge is away. PUBACK is sent only after the event is published
(paho's manual ack), so an unacked message is sent again, marked DUP, when the bridge
reconnects; Receive Maximum (= prefetch) bounds the unacked messages the broker sends.
MQTT has no dead-letter queue: a malformed message is acked (dropped) after it is reported.

A message's id is its `message-id` user property when the publisher set one, else a digest of
topic and payload (MQTT has no id that survives a redelivery: packet ids are reused).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.bridges.config import MQTTConfig
from gateway.bridges.routes import MQTT
from gateway.bridges.source import Delivery, Source, body_digest

ID_PROPERTY = "message-id"


class MQTTSource(Source):
    syntax = MQTT

    def __init__(self, config: MQTTConfig) -> None:
        self.config = config
        self._client: aiomqtt.Client | None = None

    async def open(self) -> None:
        config = self.config
        url = urlsplit(config.url)
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = config.session_expiry
        properties.ReceiveMaximum = min(config.prefetch, 65535)
        client = aiomqtt.Client(
            url.hostname or "127.0.0.1",
            url.port or 1883,
            username=url.username,
            password=url.password,
            identifier=config.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=properties,
            timeout=10,
        )
        # aiomqtt has no manual ack of its own; paho's client beneath it does (paho >= 2.0).
        _paho(client).manual_ack_set(True)
        self._client = client
        await client.__aenter__()
        await client.subscribe([(topic, 1) for topic in config.topics])

    async def deliveries(self) -> AsyncGenerator[Delivery, None]:
        assert self._client is not None
        async for message in self._client.messages:
            payload = message.payload
            body = payload if isinstance(payload, bytes) else str(payload).encode()
            topic = message.topic.value
            yield Delivery(
                topic=topic,
                body=body,
                message_id=_message_id(message.properties) or body_digest(topic, body),
                sent_at=None,
                handle=message.mid,
            )
        raise ConnectionError("the MQTT connection closed")

    async def ack(self, delivery: Delivery) -> None:
        assert self._client is not None
        _paho(self._client).ack(delivery.handle, 1)

    async def reject(self, delivery: Delivery, reason: str) -> None:
        await self.ack(delivery)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.__aexit__(None, None, None)


def _paho(client: aiomqtt.Client) -> Any:
    return client._client


def _message_id(properties: Properties | None) -> str | None:
    for name, value in getattr(properties, "UserProperty", None) or ():
        if name == ID_PROPERTY:
            return str(value)
    return None
