"""Session-scoped brokers, started lazily (only for the kinds a run's tests ask for), and one
gateway on a private Redis per module."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.bridges.brokers import NATS, Broker, Mosquitto, PostgreSQL, RabbitMQ
from tests.bridges.feeds import wait_for_postgres
from tests.support import GatewayProcess, RedisServer, gateway_env

BROKERS: dict[str, type[Broker]] = {
    "rabbitmq": RabbitMQ,
    "mqtt": Mosquitto,
    "nats": NATS,
    "postgres": PostgreSQL,
}


class BrokerPool:
    """Each kind's broker, started on first use and stopped at the end of the session."""

    def __init__(self, directory: Callable[[str], Path]) -> None:
        self._directory = directory
        self._started: dict[str, Broker] = {}

    def get(self, kind: str) -> Broker:
        if kind not in self._started:
            cls = BROKERS[kind]
            missing = cls.missing()
            if missing is not None:
                if os.environ.get("CI"):
                    pytest.fail(missing, pytrace=False)
                pytest.skip(missing)
            broker = cls(self._directory(kind))
            self._started[kind] = broker
            broker.start()
            if kind == "postgres":
                asyncio.run(wait_for_postgres(broker.url))  # type: ignore[attr-defined]
        return self._started[kind]

    def stop(self) -> None:
        for broker in self._started.values():
            broker.stop()


@pytest.fixture(scope="session")
def brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerPool]:
    pool = BrokerPool(tmp_path_factory.mktemp)
    yield pool
    pool.stop()


@pytest.fixture(scope="module")
def bridge_gateway(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("gateway")
    process = GatewayProcess(
        gateway_env(
            REDIS_URL=redis_server.url,
            GATEWAY_SSE_PING="1",
            GATEWAY_CHANNEL_POLICY="order=open/none note=open/none",
        ),
        directory / "gateway.log",
    )
    process.start()
    yield process
    process.stop(5)
