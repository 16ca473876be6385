"""The webhook schedule contract: memory and a real redis-server."""

from __future__ import annotations

import asyncio

from gateway.backends.stores import WebhookSchedule


async def test_webhook_schedule_claims_due_deliveries_with_a_lease(
    webhooks: WebhookSchedule,
) -> None:
    import time

    now = time.time()
    await webhooks.schedule("due", b"payload-1", now - 1)
    await webhooks.schedule("later", b"payload-2", now + 3600)
    assert await webhooks.claim(10, lease=0.3) == [("due", b"payload-1")]
    assert await webhooks.claim(10, lease=0.3) == []  # leased to the first claimer
    await asyncio.sleep(0.4)  # the lease running out is what is under test
    assert await webhooks.claim(10, lease=30) == [("due", b"payload-1")]
    await webhooks.finish("due")
    await webhooks.schedule("later", b"payload-3", time.time() - 1)
    assert await webhooks.claim(10, lease=30) == [("later", b"payload-3")]
