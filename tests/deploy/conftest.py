"""One Redis, two gateways and a worker for all the proxy tests of this folder (package
scope: the nginx and Caddy modules take turns in front of the same processes)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.browser.conftest import browser  # noqa: F401  (the Caddy module's browser)
from tests.deploy.stack import Stack, start_stack
from tests.support import MISSING_REDIS, REDIS_BINARY, RedisServer


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if REDIS_BINARY is None:
        pytest.fail(MISSING_REDIS, pytrace=False)
    directory = tmp_path_factory.mktemp("deploy-stack")
    redis = RedisServer(directory)
    redis.start()
    try:
        running = start_stack(redis, directory)
        yield running
        running.stop()
    finally:
        redis.stop()
