"""Prometheus metrics, served at `/metrics`.

Observing the fan-out must not slow it down: frames delivered are plain integers read at scrape
time, and the publish-to-write lag is sampled.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from gateway.events import Event

LAG_SAMPLE_EVERY = 16
"""Observe the publish-to-write lag once per this many written batches (all transports)."""
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.connections = Gauge(
            "gateway_connections", "Open client connections", ["transport"], registry=r
        )
        self.subscriptions = Gauge(
            "gateway_subscriptions", "Channel subscriptions of local clients", registry=r
        )
        self.events_published = Counter(
            "gateway_events_published",
            "Events published through this process",
            ["namespace"],
            registry=r,
        )
        self.delivered: dict[str, int] = {"ws": 0, "sse": 0}
        """Event frames written straight to the socket on the fan-out path, by transport: plain
        ints bumped once per frame (a prometheus Counter takes a lock per increment), read at
        scrape time."""
        self.drained: dict[str, int] = {"ws": 0, "sse": 0}
        """Event frames that waited in a connection's queue and went out through ASGI."""
        r.register(_DeliveredCollector({"direct": self.delivered, "queued": self.drained}))
        self.connections_refused = Counter(
            "gateway_connections_refused",
            "TCP connections closed on arrival (per_address: GATEWAY_MAX_CONNECTIONS_PER_CLIENT, "
            "rate: GATEWAY_CONNECT_RATE)",
            ["reason"],
            registry=r,
        )
        self.head_timeouts = Counter(
            "gateway_request_head_timeouts",
            "Connections closed for not finishing a request head in GATEWAY_HEADER_TIMEOUT",
            registry=r,
        )
        self.slow_consumers = Counter(
            "gateway_slow_consumer_disconnects",
            "Clients disconnected for falling behind",
            ["transport"],
            registry=r,
        )
        self.ws_read_budget_exceeded = Counter(
            "gateway_ws_read_budget_exceeded",
            "WebSocket connections closed (4029) for sending more frames or bytes per second "
            "than GATEWAY_WS_READ_FRAMES / GATEWAY_WS_READ_BYTES allow",
            ["limit"],
            registry=r,
        )
        for limit in ("frames", "bytes"):
            self.ws_read_budget_exceeded.labels(limit)
        self.jobs = Counter(
            "gateway_jobs",
            "Job status changes seen by this process",
            ["type", "status"],
            registry=r,
        )
        self.job_duration = Histogram(
            "gateway_job_duration_seconds",
            "Handler run time per attempt",
            ["type"],
            registry=r,
        )
        self.redis_reconnects = Counter(
            "gateway_redis_reconnects", "Reconnections of the Redis pub/sub reader", registry=r
        )
        self.shard_reconnects = Counter(
            "gateway_redis_shard_reconnects",
            "Reconnections of a Redis Cluster shard's sharded pub/sub reader",
            ["shard"],
            registry=r,
        )
        self.shard_subscriptions = Gauge(
            "gateway_redis_shard_subscriptions",
            "Channels this process holds subscribed (SSUBSCRIBE) on a Redis Cluster shard",
            ["shard"],
            registry=r,
        )
        self.shard_publish_seconds = Histogram(
            "gateway_redis_shard_publish_seconds",
            "Time of one publish script on a Redis Cluster shard (with its WAIT, if any)",
            ["shard"],
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "gateway_webhook_deliveries",
            "Webhook delivery attempts by outcome",
            ["outcome"],
            registry=r,
        )
        self.lag = Histogram(
            "gateway_publish_deliver_lag_seconds",
            "Event `time` to the write of its frame to a client (sampled once per batches)",
            ["transport"],
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "gateway_queue_depth",
            "Frames waiting in client outbound queues (sum, or max over connections)",
            ["stat"],
            registry=r,
        )
        self._batches = itertools.count()

    def observe_lag(self, transport: str, item: object) -> None:
        """Sample the lag of one written item (call once per written batch; cheap when skipped).

        For an event, its envelope's `time` (RFC 3339, milliseconds) is compared with now.
        """
        if not isinstance(item, Event) or next(self._batches) % LAG_SAMPLE_EVERY:
            return
        envelope = item.envelope
        start = envelope.find(b'"time":"')
        if start < 0:
            return
        start += 8
        try:
            stamp = datetime.fromisoformat(envelope[start : envelope.index(b'"', start)].decode())
        except ValueError:
            return
        self.lag.labels(transport).observe(max(0.0, time.time() - stamp.timestamp()))

    def watch_queues(self, queues: Callable[[], Iterable[Any]]) -> None:
        """Report the outbound queue depths of `queues()` (sized collections) at scrape time."""

        def depths() -> list[int]:
            return [len(q) for q in queues()]

        self.queue_depth.labels("sum").set_function(lambda: float(sum(depths())))
        self.queue_depth.labels("max").set_function(lambda: float(max(depths(), default=0)))


class _DeliveredCollector(Collector):
    def __init__(self, counts: dict[str, dict[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterable[CounterMetricFamily]:
        family = CounterMetricFamily(
            "gateway_frames_delivered",
            "Event frames written to clients, by transport and path (direct: written at once "
            "on the fan-out; queued: waited for a busy socket)",
            labels=["transport", "path"],
        )
        for path, counts in self._counts.items():
            for transport, count in counts.items():
                family.add_metric([transport, path], count)
        yield family


METRICS = Metrics()
