"""The bridge's publish script: a message id publishes once; the entry is stored like any
other publish (the gateway's history reads it, with its chain of previous ids)."""

from __future__ import annotations

import redis

from gateway.backends.redis_keys import bridged_key, stream_key
from gateway.backends.url import open_backend
from gateway.bridges.routes import Mapped
from gateway.bridges.sink import RedisSink
from gateway.settings import Settings


async def test_a_message_id_publishes_once_and_its_key_expires(redis_url: str) -> None:
    settings = Settings(redis_url=redis_url)
    sink = RedisSink(settings, dedup_ttl=120)
    backend = open_backend(settings)
    try:
        first = await sink.publish("src", "m-1", Mapped("order:1", "paid", {"n": 1}))
        again = await sink.publish("src", "m-1", Mapped("order:1", "paid", {"n": 1}))
        other_source = await sink.publish("other", "m-1", Mapped("order:1", "paid", {"n": 2}))
        assert not first.duplicate and again.duplicate and not other_source.duplicate
        assert again.event_id == first.event_id
        history = await backend.bus.history("order:1", None)
        assert [e.id for e in history.events] == [first.event_id, other_source.event_id]
        assert history.complete
        assert [e.type for e in history.events] == ["paid", "paid"]
        # The next normal publish continues the chain the bridged events are part of.
        later = await backend.bus.publish("order:1", "note", None)
        assert later is not None
        after = await backend.bus.history("order:1", other_source.event_id)
        assert after.complete and [e.id for e in after.events] == [later.id]
        client = redis.Redis.from_url(redis_url)
        ttl = client.ttl(bridged_key("order:1", "src", "m-1"))
        assert 0 < ttl <= 120
        assert client.xlen(stream_key("order:1")) == 3
        client.close()
    finally:
        await sink.close()
        await backend.close()


async def test_a_long_message_id_is_hashed_into_a_short_key(redis_url: str) -> None:
    sink = RedisSink(Settings(redis_url=redis_url), dedup_ttl=60)
    try:
        long_id = "x" * 5000
        first = await sink.publish("src", long_id, Mapped("order:2", "t", None))
        assert (await sink.publish("src", long_id, Mapped("order:2", "t", None))).duplicate
        client = redis.Redis.from_url(redis_url)
        keys = [k for k in client.keys("gw:{order:2}:bridged:*")]
        client.close()
        assert len(keys) == 1 and len(keys[0]) < 120 and not first.duplicate
    finally:
        await sink.close()
