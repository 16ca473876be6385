"""Prometheus metrics, served at `/metrics`.

Counters are bumped per batch of frames, not per frame per subscriber, so observing the fan-out
does not slow it down.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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
        self.frames_delivered = Counter(
            "gateway_frames_delivered",
            "Event frames written to clients",
            ["transport"],
            registry=r,
        )
        self.slow_consumers = Counter(
            "gateway_slow_consumer_disconnects",
            "Clients disconnected for falling behind",
            ["transport"],
            registry=r,
        )
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
        self.webhook_deliveries = Counter(
            "gateway_webhook_deliveries",
            "Webhook delivery attempts by outcome",
            ["outcome"],
            registry=r,
        )


METRICS = Metrics()
