"""Shared fixtures: a private redis-server per test module, gateway and worker processes."""

from __future__ import annotations

import fcntl
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from gateway.backends.bundle import Backend
from gateway.backends.bus import Bus
from gateway.backends.stores import IdempotencyStore, JobQueue, JobStore, WebhookSchedule
from gateway.backends.url import open_backend
from gateway.settings import Settings
from tests.redis_cluster import redis_cluster, redis_cluster_url
from tests.support import (
    MISSING_REDIS,
    REDIS_BINARY,
    GatewayProcess,
    RedisServer,
    WorkerProcess,
    gateway_env,
)


@pytest.fixture(autouse=True)
def _serial_tests_run_alone(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Under pytest-xdist, a test marked `serial` runs while no other test does.

    Every test holds one lock file: `serial` ones exclusively, the rest shared. The tests that
    measure latency or CPU under a flood need the machine's cores to themselves; everything
    else may run beside another test. Without xdist (one process) there is nothing to lock.
    """
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    # Each xdist worker's base temp dir is `<run>/popen-gwN`: the parent is shared by the run.
    lock_path = tmp_path_factory.getbasetemp().parent / "serial-tests.lock"
    exclusive = request.node.get_closest_marker("serial") is not None
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


__all__ = ["redis_cluster", "redis_cluster_url"]  # fixtures every test module may ask for


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if REDIS_BINARY is None:
        pytest.fail(MISSING_REDIS, pytrace=False)
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    redis_server.flush()
    return redis_server.url


def make_settings(redis_url: str = "", **changes: object) -> Settings:
    return Settings(redis_url=redis_url).replace(**changes)


BACKEND_URL_FIXTURES = {"memory": None, "redis": "redis_url", "cluster": "redis_cluster_url"}
"""Each implementation the contract suites hold, and the fixture giving its `REDIS_URL`."""


@pytest.fixture(params=list(BACKEND_URL_FIXTURES))
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """The same contract, held against every implementation (opened as the gateway does): the
    memory backend, one Redis, and a Redis Cluster of 3 masters and 3 replicas."""
    fixture = BACKEND_URL_FIXTURES[request.param]
    url = request.getfixturevalue(fixture) if fixture else ""
    instance = open_backend(make_settings(url))
    await instance.start()
    yield instance
    await instance.close()


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """Start `gateway serve` processes: `gateway_factory(REDIS_URL=..., GATEWAY_X=...)`."""
    started: list[GatewayProcess] = []

    def start(
        *, port: int | None = None, args: list[str] | None = None, **env: str
    ) -> GatewayProcess:
        process = GatewayProcess(
            gateway_env(**env),
            tmp_path / f"gateway-{len(started)}.log",
            port=port,
            extra_args=args,
        )
        started.append(process)
        process.start()
        return process

    yield start
    for process in started:
        process.stop(5)


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(*, args: list[str] | None = None, **env: str) -> WorkerProcess:
        process = WorkerProcess(gateway_env(**env), tmp_path / f"worker-{len(started)}.log", args)
        started.append(process)
        process.start()
        return process

    yield start
    for process in started:
        process.stop(5)


@pytest.fixture(scope="module")
def embedded_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One `gateway serve` on the memory backend with its embedded worker, per test module."""
    directory = tmp_path_factory.mktemp("gateway")
    process = GatewayProcess(gateway_env(GATEWAY_SSE_PING="1"), directory / "gateway.log")
    process.start()
    yield process
    process.stop(5)


# One interface each, from the same opened backend: the contract suites ask only for the part
# they hold to its promises.


@pytest.fixture
def bus(backend: Backend) -> Bus:
    return backend.bus


@pytest.fixture
def jobs(backend: Backend) -> JobStore:
    return backend.jobs


@pytest.fixture
def queue(backend: Backend) -> JobQueue:
    return backend.queue


@pytest.fixture
def idempotency(backend: Backend) -> IdempotencyStore:
    return backend.idempotency


@pytest.fixture
def webhooks(backend: Backend) -> WebhookSchedule:
    return backend.webhooks
