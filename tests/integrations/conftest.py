"""One redis-server (the module's, from tests/conftest.py) and one gateway on it per module:
the queues' brokers live in database 1 of the same server, the gateway's bus in database 0."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import GatewayProcess, RedisServer, gateway_env


@pytest.fixture(scope="module")
def bus_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture(scope="module")
def broker_url(redis_server: RedisServer) -> str:
    return redis_server.url.rsplit("/", 1)[0] + "/1"


@pytest.fixture(scope="module")
def gateway(bus_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway on the bus, with its embedded worker (which must leave the tasks alone)."""
    directory = tmp_path_factory.mktemp("gateway")
    process = GatewayProcess(
        gateway_env(REDIS_URL=bus_url, GATEWAY_EMBEDDED_WORKER="1"), directory / "gateway.log"
    )
    process.start()
    yield process
    process.stop()
