"""The idempotency store contract: memory and a real redis-server."""

from __future__ import annotations

import asyncio

from gateway.backends.stores import IdempotencyStore


async def test_idempotency_key_claim_finish_abandon(idempotency: IdempotencyStore) -> None:
    assert await idempotency.begin("k1", b"claim", 60) is None
    assert await idempotency.begin("k1", b"other", 60) == b"claim"
    await idempotency.finish("k1", b"done", 60)
    assert await idempotency.begin("k1", b"again", 60) == b"done"
    await idempotency.abandon("k1")
    assert await idempotency.begin("k1", b"fresh", 60) is None


async def test_idempotency_key_expires(idempotency: IdempotencyStore) -> None:
    assert await idempotency.begin("short", b"claim", 1) is None
    await asyncio.sleep(1.1)  # the TTL itself is what is under test
    assert await idempotency.begin("short", b"second", 1) is None


async def test_only_one_concurrent_claim_wins(idempotency: IdempotencyStore) -> None:
    results = await asyncio.gather(
        *(idempotency.begin("race", f"c{i}".encode(), 60) for i in range(20))
    )
    assert sum(result is None for result in results) == 1
