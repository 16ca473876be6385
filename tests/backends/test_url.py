"""`open_backend` / `backend_kind`: the URL scheme picks the backend, and nothing else does."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.backends.memory import MemoryBus
from gateway.backends.redis_bus import RedisBus
from gateway.backends.redis_cluster_bus import RedisClusterBus
from gateway.backends.url import (
    MEMORY,
    REDIS,
    backend_kind,
    cluster_address,
    is_cluster_url,
    open_backend,
)
from gateway.cli import _settings
from gateway.errors import SettingsError
from gateway.events import Event
from gateway.settings import Settings
from tests.support import MISSING_REDIS, REDIS_BINARY, wait_until


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("", MEMORY),
        ("memory://", MEMORY),
        ("redis://127.0.0.1:6379/0", REDIS),
        ("REDIS://127.0.0.1:6379/0", REDIS),
        ("rediss://user:pw@cache.example:6380/1", REDIS),
        ("unix:///run/redis/redis.sock", REDIS),
        ("unix:///run/redis/redis.sock?db=2", REDIS),
    ],
)
def test_scheme_picks_the_backend(url: str, kind: str) -> None:
    assert backend_kind(url) == kind


def test_cluster_urls_name_seeds_and_credentials() -> None:
    assert backend_kind("redis+cluster://10.0.0.1:7000") == REDIS
    assert is_cluster_url("REDIS+CLUSTER://10.0.0.1:7000")
    assert not is_cluster_url("redis://10.0.0.1:7000/0")
    address = cluster_address("redis+cluster://app:s%40cret@10.0.0.1:7000,[::1]:7001")
    assert address.seeds == (("10.0.0.1", 7000), ("::1", 7001))
    assert (address.username, address.password) == ("app", "s@cret")


@pytest.mark.parametrize(
    "url", ["redis+cluster://", "redis+cluster://10.0.0.1", "redis+cluster://h:1,h:x"]
)
def test_malformed_cluster_urls_are_refused_naming_the_seed(url: str) -> None:
    with pytest.raises(SettingsError, match="host:port"):
        backend_kind(url)


async def test_cluster_urls_open_the_cluster_backend() -> None:
    """Opening connects nothing yet, so an unreachable seed is fine here."""
    backend = open_backend(Settings(redis_url="redis+cluster://127.0.0.1:1"))
    assert isinstance(backend.bus, RedisClusterBus) and backend.kind == "redis-cluster"
    await backend.close()


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:6379", "memcached://x", "127.0.0.1:6379", "://x"]
)
def test_unknown_scheme_names_the_variable(url: str) -> None:
    with pytest.raises(SettingsError, match="REDIS_URL"):
        backend_kind(url)
    if "://" in url[1:]:  # the others are refused by Settings already (next test)
        with pytest.raises(SettingsError, match="REDIS_URL"):
            open_backend(Settings(redis_url=url))


async def test_memory_urls_open_the_memory_backend() -> None:
    for url in ("", "memory://"):
        backend = open_backend(Settings(redis_url=url))
        assert isinstance(backend.bus, MemoryBus) and backend.kind == "memory"
        await backend.start()
        await backend.close()


@pytest.mark.parametrize("url", ["redis://127.0.0.1:1/0", "rediss://127.0.0.1:1/0", "unix:///x"])
async def test_redis_urls_open_the_redis_backend(url: str) -> None:
    """Opening connects nothing yet (start does), so an unreachable address is fine here."""
    backend = open_backend(Settings(redis_url=url))
    assert isinstance(backend.bus, RedisBus) and backend.kind == "redis"
    await backend.close()


def test_settings_read_memory_url_as_no_url() -> None:
    """`memory://` and an unset REDIS_URL mean the same to every setting that depends on it."""
    settings = Settings.from_env({"REDIS_URL": "memory://"})
    assert settings.redis_url == "" and settings.runs_embedded_worker
    with pytest.raises(SettingsError, match="REDIS_URL"):
        Settings.from_env({"REDIS_URL": "localhost:6379"})


def test_cli_refuses_a_url_no_backend_opens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis+cluster://10.0.0.1")
    with pytest.raises(SystemExit, match=r"configuration error: REDIS_URL.*host:port"):
        _settings(argparse.Namespace(command="worker"))


@pytest.fixture
def unix_redis() -> Iterator[Path]:
    """A redis-server listening only on a unix socket (a short path: sockets allow ~100 bytes)."""
    if REDIS_BINARY is None:
        pytest.fail(MISSING_REDIS, pytrace=False)
    directory = Path(tempfile.mkdtemp(prefix="gw-redis-", dir="/tmp"))
    socket = directory / "redis.sock"
    process = subprocess.Popen(
        [
            REDIS_BINARY,
            *("--port", "0", "--unixsocket", str(socket), "--unixsocketperm", "700"),
            *("--dir", str(directory), "--save", "", "--appendonly", "no", "--loglevel", "warning"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(socket.exists, 10, f"redis-server on {socket}")
        yield socket
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


async def test_unix_socket_url_reaches_a_real_redis(unix_redis: Path) -> None:
    backend = open_backend(Settings(redis_url=f"unix://{unix_redis}"))
    heard: list[Event] = []
    arrived = asyncio.Event()

    def listener(event: Event) -> None:
        heard.append(event)
        arrived.set()

    backend.bus.add_listener(listener)
    await backend.start()
    try:
        await backend.bus.subscribe("room:unix")  # returns once Redis confirmed it
        assert await backend.bus.ping()
        event = await backend.bus.publish("room:unix", "message", {"via": "unix"})
        assert event is not None
        history = await backend.bus.history("room:unix", None)
        assert [e.id for e in history.events] == [event.id]
        await backend.jobs.create("u1", {"id": "u1"}, created_ms=1)
        assert await backend.jobs.get("u1") == {"id": "u1"}
        await asyncio.wait_for(arrived.wait(), 5)
        assert [e.id for e in heard] == [event.id]
    finally:
        await backend.close()
