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
def gateway(
    bus_url: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[GatewayProcess]:
    """A gateway on the bus, with its embedded worker (which must leave the tasks alone, and
    delivers webhooks); a test module's `GATEWAY_ENV` adds to its environment."""
    directory = tmp_path_factory.mktemp("gateway")
    env = gateway_env(
        REDIS_URL=bus_url,
        GATEWAY_EMBEDDED_WORKER="1",
        GATEWAY_WEBHOOK_ALLOW_PRIVATE="1",
        **getattr(request.module, "GATEWAY_ENV", {}),
    )
    process = GatewayProcess(env, directory / "gateway.log")
    try:
        process.start()
        yield process
    finally:
        process.stop()
