"""The bridge's Prometheus metrics, labelled by source, on their own registry (the bridge is
its own process; `metrics_port` serves them, and each source logs a summary line)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

REGISTRY = CollectorRegistry()

CONSUMED = Counter(
    "gateway_bridge_consumed",
    "Messages received from the broker (redeliveries too)",
    ["source"],
    registry=REGISTRY,
)
PUBLISHED = Counter(
    "gateway_bridge_published", "Events published into channels", ["source"], registry=REGISTRY
)
DUPLICATES = Counter(
    "gateway_bridge_duplicates",
    "Redelivered messages dropped: their event was already published",
    ["source"],
    registry=REGISTRY,
)
MALFORMED = Counter(
    "gateway_bridge_malformed",
    "Messages no route turns into an event (dead-lettered or dropped)",
    ["source"],
    registry=REGISTRY,
)
RECONNECTS = Counter(
    "gateway_bridge_reconnects",
    "Times a source lost its broker or Redis and reconnected",
    ["source"],
    registry=REGISTRY,
)
LAG = Gauge(
    "gateway_bridge_lag_seconds",
    "Age of the last message published, from the broker's (or app's) timestamp",
    ["source"],
    registry=REGISTRY,
)
