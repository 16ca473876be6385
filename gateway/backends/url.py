"""`open_backend(settings)`: the one place that turns `REDIS_URL` into a backend.

The URL's scheme picks the implementation; `backend_kind` answers the same question without
opening anything (the sync publisher and the CLI use it to choose their path and to refuse a
bad URL before starting). `open_redis_connection` is the same choice for a process that needs
Redis commands and scripts but no whole backend (the bridges).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote

from gateway.backends.bundle import Backend
from gateway.errors import SettingsError
from gateway.settings import Settings

if TYPE_CHECKING:
    from gateway.backends.redis_connection import RedisConnection

MEMORY: Final = "memory"
REDIS: Final = "redis"

CLUSTER_SCHEME: Final = "redis+cluster"

KINDS: Final[dict[str, str]] = {
    "memory": MEMORY,
    "redis": REDIS,
    "rediss": REDIS,
    "unix": REDIS,
    CLUSTER_SCHEME: REDIS,
}
"""Backend kind by URL scheme; an empty URL is the in-process memory backend too. A Redis
Cluster (`redis+cluster://host:port[,host:port...]`) is of kind `redis`: whatever holds for
Redis (workers, `gateway.publish` writing straight into it, the integrations) holds for it."""


def is_cluster_url(url: str) -> bool:
    """Whether `url` names a Redis Cluster (`redis+cluster://`) rather than one Redis."""
    return url.partition("://")[0].lower() == CLUSTER_SCHEME


@dataclass(frozen=True, slots=True)
class ClusterAddress:
    """What a `redis+cluster://[user:password@]host:port[,host:port...]` URL says: the seed
    nodes (any nodes of the cluster; the client learns the others from them) and the
    credentials every node shares."""

    seeds: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None


def cluster_address(url: str) -> ClusterAddress:
    """The seeds and credentials of a cluster URL; `SettingsError` naming it when malformed."""
    _scheme, _sep, rest = url.partition("://")
    rest = rest.partition("?")[0].rstrip("/")
    credentials, at, hosts = rest.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = credentials.partition(":")
        username, password = (unquote(user) or None), (unquote(secret) if colon else None)
    seeds = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SettingsError(
                f"REDIS_URL: {CLUSTER_SCHEME}:// takes host:port[,host:port...]; "
                f"{item.strip()!r} is not host:port"
            )
        seeds.append((host.strip("[]"), int(port)))
    return ClusterAddress(tuple(seeds), username, password)


def backend_kind(url: str) -> str:
    """`memory` or `redis` for a `REDIS_URL`; `SettingsError` naming it for anything else."""
    if not url:
        return MEMORY
    scheme, separator, _rest = url.partition("://")
    scheme = scheme.lower()
    kind = KINDS.get(scheme) if separator else None
    if scheme == CLUSTER_SCHEME:
        cluster_address(url)  # a malformed seed list stops here, not at start-up
    if kind is None:
        raise SettingsError(
            f"REDIS_URL={url!r}: expected memory://, redis://host:port/db, rediss://..., "
            "unix://path or redis+cluster://host:port[,host:port...]"
        )
    return kind


def open_backend(settings: Settings) -> Backend:
    """The bus and stores `settings.redis_url` names; call `start()` on it before use."""
    if is_cluster_url(settings.redis_url):
        from gateway.backends.redis_cluster import open_redis_cluster

        return open_redis_cluster(settings)
    if backend_kind(settings.redis_url) == REDIS:
        from gateway.backends.redis import open_redis  # only Redis users pay for redis.asyncio

        return open_redis(settings)
    from gateway.backends.memory import open_memory

    return open_memory(settings)


def open_redis_connection(url: str) -> RedisConnection:
    """The command client (and registered scripts) a Redis `url` names: one Redis's pool, or
    a Cluster's client for `redis+cluster://`. `SettingsError` for a URL of no Redis."""
    if backend_kind(url) != REDIS:
        raise SettingsError(f"REDIS_URL={url!r}: this needs Redis or a Redis Cluster")
    if is_cluster_url(url):
        from gateway.backends.redis_cluster_connection import RedisClusterConnection

        return RedisClusterConnection(url)
    from gateway.backends.redis_connection import RedisConnection

    return RedisConnection(url)
