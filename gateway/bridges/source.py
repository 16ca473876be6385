"""The interface every broker implements: deliveries in order, ack after publish, reject.

A source never acks on its own: the runner acks a delivery only once its event is in the bus
(or it was a duplicate of one that is), so a bridge that dies at any point leaves the broker
holding every message it did not finish, to redeliver. In-flight deliveries are bounded by the
broker's own flow control (prefetch, receive maximum, max ack pending, a batch of rows), never
by a queue in the bridge that grows.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from gateway.bridges.routes import Syntax


@dataclass(slots=True)
class Delivery:
    """One message as the broker handed it over."""

    topic: str
    """Routing key, MQTT topic, NATS subject or outbox topic: what the routes match."""
    body: bytes
    message_id: str
    """Stable across redeliveries: what the dedup key is made of."""
    sent_at: float | None
    """When the broker (or the app) stamped the message, epoch seconds: for the lag metric."""
    handle: Any = None
    """The source's own token for ack/reject."""


def body_digest(topic: str, body: bytes) -> str:
    """The id of a message that carries none: equal topic and body count as the same message."""
    return "sha256:" + hashlib.sha256(topic.encode() + b"\0" + body).hexdigest()


class Source(abc.ABC):
    """One broker connection of a bridge. The runner calls `open`, iterates `deliveries`, acks
    or rejects each, and calls `close` whenever the iteration ends or fails, then reopens."""

    syntax: Syntax
    """How this broker spells topics and wildcards (the routes are compiled with it)."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect; declare what the configuration asks for (queue, stream, table...)."""

    @abc.abstractmethod
    def deliveries(self) -> AsyncGenerator[Delivery, None]:
        """The messages, in the broker's order, until the connection is lost (then raise)."""

    @abc.abstractmethod
    async def ack(self, delivery: Delivery) -> None:
        """The message's event is in the bus: the broker may forget it."""

    @abc.abstractmethod
    async def reject(self, delivery: Delivery, reason: str) -> None:
        """The message can never become an event: dead-letter it where the broker can,
        else drop it (the runner has logged and counted it)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Disconnect; unacked deliveries go back to the broker. Safe to call twice."""
