"""Run the sources of one bridge process: consume, map, publish once, ack; reconnect on loss.

Each source is one task that handles its deliveries one after another, so its events enter the
channels in the broker's order; sources do not wait for each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import random
import time
from typing import Any

from gateway.bridges import metrics
from gateway.bridges.config import BridgeConfig, SourceConfig, compile_routes
from gateway.bridges.routes import Routes
from gateway.bridges.sink import RedisSink
from gateway.bridges.source import Delivery, Source
from gateway.errors import EventTooLarge, MalformedMessage
from gateway.settings import Settings

log = logging.getLogger("gateway.bridge")

IMPLEMENTATIONS = {
    "rabbitmq": "gateway.bridges.rabbitmq:RabbitMQSource",
    "mqtt": "gateway.bridges.mqtt:MQTTSource",
    "nats": "gateway.bridges.nats:NATSSource",
    "postgres": "gateway.bridges.postgres:PostgresSource",
}
"""Imported only for the kinds a configuration uses: each needs its own library."""

OPEN_TIMEOUT = 30.0
"""Seconds to connect and declare: a broker that accepts and never answers counts as lost."""
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 10.0


def make_source(config: Any) -> Source:
    module, _, name = IMPLEMENTATIONS[config.kind].partition(":")
    cls = getattr(importlib.import_module(module), name)
    source: Source = cls(config)
    return source


class SourceRunner:
    """One source: open, deliver, close, back off, again, until cancelled."""

    def __init__(self, config: SourceConfig, source: Source, routes: Routes, sink: RedisSink):
        self.name = config.name
        self.source = source
        self.routes = routes
        self.sink = sink
        self._labels = {
            name: counter.labels(self.name)
            for name, counter in (
                ("consumed", metrics.CONSUMED),
                ("published", metrics.PUBLISHED),
                ("duplicates", metrics.DUPLICATES),
                ("malformed", metrics.MALFORMED),
                ("reconnects", metrics.RECONNECTS),
            )
        }
        self._lag = metrics.LAG.labels(self.name)

    async def run(self) -> None:
        delay = BACKOFF_FIRST
        while True:
            deliveries = None
            try:
                await asyncio.wait_for(self.source.open(), OPEN_TIMEOUT)
                log.info("source %s: connected", self.name)
                deliveries = self.source.deliveries()
                async for delivery in deliveries:
                    await self.handle(delivery)
                    delay = BACKOFF_FIRST
                log.warning("source %s: the broker ended the stream", self.name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a broker library raises its own errors; all mean "lost"
                log.warning("source %s: %s: %s", self.name, type(exc).__name__, exc)
            finally:
                # Close the iteration first (a batch's transaction, a consumer), then the
                # connection; what fails while closing a lost connection is no news.
                if deliveries is not None:
                    with contextlib.suppress(Exception):
                        await deliveries.aclose()
                with contextlib.suppress(Exception):
                    await self.source.close()
            self._labels["reconnects"].inc()
            wait = delay * (0.5 + random.random())
            log.info("source %s: reconnecting in %.2fs", self.name, wait)
            await asyncio.sleep(wait)
            delay = min(delay * 2, BACKOFF_MAX)

    async def handle(self, delivery: Delivery) -> None:
        """Publish (once) then ack; a message that can be no event is rejected, not retried.
        Redis down raises `BackendUnavailable`: the message stays unacked in the broker."""
        self._labels["consumed"].inc()
        try:
            mapped = self.routes.map(delivery.topic, delivery.body)
            outcome = await self.sink.publish(self.name, delivery.message_id, mapped)
        except (MalformedMessage, EventTooLarge) as exc:
            self._labels["malformed"].inc()
            log.warning(
                "source %s: malformed message %r on %r rejected: %s",
                self.name,
                delivery.message_id,
                delivery.topic,
                exc,
            )
            await self.source.reject(delivery, str(exc))
            return
        if outcome.duplicate:
            self._labels["duplicates"].inc()
        else:
            self._labels["published"].inc()
        if delivery.sent_at is not None:
            self._lag.set(max(0.0, time.time() - delivery.sent_at))
        await self.source.ack(delivery)


async def run_bridge(config: BridgeConfig, settings: Settings) -> None:
    """Every source of the configuration, until cancelled."""
    sink = RedisSink(settings.replace(redis_url=config.redis_url), config.dedup_ttl)
    runners = [
        SourceRunner(
            source_config,
            make_source(source_config),
            compile_routes(source_config, source_config.kind, source_config.name),
            sink,
        )
        for source_config in config.sources
    ]
    if config.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(config.metrics_port, config.metrics_host, registry=metrics.REGISTRY)
        log.info("bridge metrics on http://%s:%d/metrics", config.metrics_host, config.metrics_port)
    try:
        async with asyncio.TaskGroup() as group:
            for runner in runners:
                group.create_task(runner.run(), name=f"bridge-{runner.name}")
    finally:
        await sink.close()
