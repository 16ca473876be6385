"""`gateway bridge --config bridge.toml`, or flags for one source: the same validated model.

    gateway bridge --source amqp://guest:guest@localhost/ --exchange orders \\
        --route 'orders.*=order:{1}'

The source's kind comes from its URL scheme; each `--route PATTERN=CHANNEL` is a binding (AMQP),
a topic filter (MQTT) or, for NATS and PostgreSQL, a rule only.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from gateway.bridges.config import BridgeConfig, load, validate
from gateway.errors import SettingsError

KIND_OF_SCHEME = {
    "amqp": "rabbitmq",
    "amqps": "rabbitmq",
    "mqtt": "mqtt",
    "nats": "nats",
    "tls": "nats",
    "postgres": "postgres",
    "postgresql": "postgres",
}


def add_bridge_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="a TOML file (see docs/bridges.md)")
    parser.add_argument(
        "--redis-url", default=None, help="Redis the gateways read (default: REDIS_URL)"
    )
    parser.add_argument("--metrics-port", type=int, default=None, help="serve /metrics here")
    simple = parser.add_argument_group("one source without a file")
    simple.add_argument("--source", help="amqp://, mqtt://, nats:// or postgresql:// URL")
    simple.add_argument("--name", default="bridge", help="the source's name (metrics, dedup)")
    simple.add_argument(
        "--route",
        action="append",
        default=[],
        metavar="PATTERN=CHANNEL",
        help="topic pattern with the broker's wildcards = channel template ({1}, {topic})",
    )
    simple.add_argument("--type", default="message", help="event type template")
    simple.add_argument("--format", choices=["json", "text"], default="json")
    simple.add_argument("--exchange", help="AMQP: the exchange to bind")
    simple.add_argument("--queue", help="AMQP: the durable queue (default gateway-bridge-NAME)")
    simple.add_argument("--stream", help="NATS: the JetStream stream")
    simple.add_argument(
        "--durable", help="NATS: the durable consumer (default gateway-bridge-NAME)"
    )


def config_from_args(args: argparse.Namespace) -> BridgeConfig:
    redis_url = args.redis_url or os.environ.get("REDIS_URL", "")
    if args.config is not None:
        if args.source is not None:
            raise SettingsError("give --config or --source, not both")
        config = load(args.config, redis_url)
        changes: dict[str, Any] = {}
        if args.redis_url:
            changes["redis_url"] = args.redis_url
        if args.metrics_port is not None:
            changes["metrics_port"] = args.metrics_port
        return config.model_copy(update=changes) if changes else config
    if args.source is None:
        raise SettingsError("give --config FILE, or --source URL with --route PATTERN=CHANNEL")
    return validate(
        {"redis_url": redis_url, "metrics_port": args.metrics_port, "sources": [_source(args)]},
        "flags",
    )


def _source(args: argparse.Namespace) -> dict[str, Any]:
    scheme = args.source.partition("://")[0].lower()
    kind = KIND_OF_SCHEME.get(scheme)
    if kind is None:
        raise SettingsError(f"--source: no bridge for {scheme}:// (amqp, mqtt, nats, postgresql)")
    routes = []
    for rule in args.route:
        pattern, sep, channel = rule.partition("=")
        if not sep:
            raise SettingsError(f"--route {rule!r}: expected PATTERN=CHANNEL")
        routes.append(
            {"match": pattern, "channel": channel, "type": args.type, "format": args.format}
        )
    patterns = [route["match"] for route in routes]
    source: dict[str, Any] = {"kind": kind, "name": args.name, "url": args.source, "routes": routes}
    own = f"gateway-bridge-{args.name}"
    if kind == "rabbitmq":
        source |= {"exchange": args.exchange, "queue": args.queue or own, "bindings": patterns}
    elif kind == "mqtt":
        source |= {"client_id": own, "topics": patterns}
    elif kind == "nats":
        source |= {"stream": args.stream, "durable": args.durable or own}
    return {key: value for key, value in source.items() if value is not None}
