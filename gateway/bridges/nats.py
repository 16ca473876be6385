"""NATS JetStream with nats-py: a durable pull consumer on a stream.

`prefetch` is both the fetch batch and the consumer's max ack pending, so the server never has
more unacked messages out than that. A message is acked after its event is published and
terminated (`term`, which JetStream reports as an advisory) when malformed.

Order across a restart: JetStream redelivers a dead consumer's unacked messages only after
`ack_wait`, after newer ones; so when the durable consumer holds unacked messages at start, it
is recreated from its ack floor (the first message not acked). The messages between are
delivered again, in order, and the dedup keys drop those already published. One bridge per
durable consumer (two would interleave).

A message's id is its `Nats-Msg-Id` header when the publisher set one, else `<stream>:<seq>`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.js import api

from gateway.bridges.config import NATSConfig
from gateway.bridges.routes import NATS
from gateway.bridges.source import Delivery, Source

log = logging.getLogger("gateway.bridge")

FETCH_WAIT = 5.0
"""Seconds one fetch waits for messages before it asks again (and checks the connection)."""


async def _quiet(exc: Exception) -> None:
    """nats-py reports each failed attempt here (printing a traceback by default); the runner
    logs the loss once when the connection or a fetch fails."""
    log.debug("nats: %s", exc)


class NATSSource(Source):
    syntax = NATS

    def __init__(self, config: NATSConfig) -> None:
        self.config = config
        self._nc: Any = None
        self._subscription: Any = None

    async def open(self) -> None:
        config = self.config
        # The runner reconnects (with backoff, re-reading the consumer's state); nats-py's own
        # reconnecting would keep fetches waiting on a connection that is gone.
        self._nc = await nats.connect(
            config.url,
            allow_reconnect=False,
            connect_timeout=5,
            max_reconnect_attempts=0,
            error_cb=_quiet,
        )
        js = self._nc.jetstream()
        if config.subjects is not None:
            try:
                await js.stream_info(config.stream)
            except nats.js.errors.NotFoundError:
                await js.add_stream(name=config.stream, subjects=config.subjects)
        consumer = api.ConsumerConfig(
            name=config.durable,
            durable_name=config.durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=config.ack_wait,
            max_ack_pending=config.prefetch,
            filter_subject=config.filter_subject,
        )
        try:
            info = await js.consumer_info(config.stream, config.durable)
        except nats.js.errors.NotFoundError:
            await js.add_consumer(config.stream, config=consumer)
        else:
            if info.num_ack_pending:
                floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
                await js.delete_consumer(config.stream, config.durable)
                consumer.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
                consumer.opt_start_seq = floor + 1
                await js.add_consumer(config.stream, config=consumer)
        self._subscription = await js.pull_subscribe_bind(
            durable=config.durable, stream=config.stream
        )

    async def deliveries(self) -> AsyncGenerator[Delivery, None]:
        stream = self.config.stream
        while True:
            try:
                messages = await self._subscription.fetch(self.config.prefetch, timeout=FETCH_WAIT)
            except (TimeoutError, nats.errors.TimeoutError):
                if self._nc.is_closed or not self._nc.is_connected:
                    raise ConnectionError("the NATS connection closed") from None
                continue
            for message in messages:
                metadata = message.metadata
                headers = message.headers or {}
                yield Delivery(
                    topic=message.subject,
                    body=message.data,
                    message_id=headers.get("Nats-Msg-Id") or f"{stream}:{metadata.sequence.stream}",
                    sent_at=metadata.timestamp.timestamp(),
                    handle=message,
                )

    async def ack(self, delivery: Delivery) -> None:
        await delivery.handle.ack()

    async def reject(self, delivery: Delivery, reason: str) -> None:
        await delivery.handle.term()

    async def close(self) -> None:
        nc, self._nc = self._nc, None
        self._subscription = None
        if nc is not None and not nc.is_closed:
            await nc.close()
