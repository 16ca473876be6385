"""`open_backend(settings)`: the one place that turns `REDIS_URL` into a backend.

The URL's scheme picks the implementation; `backend_kind` answers the same question without
opening anything (the sync publisher and the CLI use it to choose their path and to refuse a
bad URL before starting).
"""

from __future__ import annotations

from typing import Final

from gateway.backends.bundle import Backend
from gateway.errors import SettingsError
from gateway.settings import Settings

MEMORY: Final = "memory"
REDIS: Final = "redis"

KINDS: Final[dict[str, str]] = {
    "memory": MEMORY,
    "redis": REDIS,
    "rediss": REDIS,
    "unix": REDIS,
}
"""Backend kind by URL scheme; an empty URL is the in-process memory backend too."""

RESERVED: Final = frozenset({"redis+cluster"})
"""Schemes with a place kept for them (a Cluster bus and stores), not implemented yet."""


def backend_kind(url: str) -> str:
    """`memory` or `redis` for a `REDIS_URL`; `SettingsError` naming it for anything else."""
    if not url:
        return MEMORY
    scheme, separator, _rest = url.partition("://")
    scheme = scheme.lower()
    if scheme in RESERVED:
        raise SettingsError(f"REDIS_URL={url!r}: {scheme}:// is not supported yet")
    kind = KINDS.get(scheme) if separator else None
    if kind is None:
        raise SettingsError(
            f"REDIS_URL={url!r}: expected memory://, redis://host:port/db, rediss://... "
            "or unix://path"
        )
    return kind


def open_backend(settings: Settings) -> Backend:
    """The bus and stores `settings.redis_url` names; call `start()` on it before use."""
    if backend_kind(settings.redis_url) == REDIS:
        from gateway.backends.redis import open_redis  # only Redis users pay for redis.asyncio

        return open_redis(settings)
    from gateway.backends.memory import open_memory

    return open_memory(settings)
