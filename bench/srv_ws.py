"""Peer: the raw `websockets` floor (no framework).

One redis.asyncio pub/sub subscription on the benchmark channel; each message is handed to
`websockets.broadcast()` as the same pre-encoded text frame for every connection.
Environment: PORT, REDIS_URL, CHANNEL.
"""

from __future__ import annotations

import asyncio
import os

import redis.asyncio as aioredis
import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve

PORT = int(os.environ.get("PORT", "8001"))
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
CHANNEL = os.environ.get("CHANNEL", "ch")
CONNS: set[ServerConnection] = set()


async def handler(ws: ServerConnection) -> None:
    CONNS.add(ws)
    try:
        await ws.wait_closed()
    finally:
        CONNS.discard(ws)


async def reader() -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(CHANNEL)
    async for message in pubsub.listen():
        if message["type"] == "message":
            broadcast(CONNS, message["data"], text=True)


async def main() -> None:
    task = asyncio.create_task(reader())
    async with serve(
        handler, "127.0.0.1", PORT, compression=None, backlog=4096, max_size=2**16
    ) as server:
        print("listening", PORT, flush=True)
        await server.serve_forever()
    task.cancel()


if __name__ == "__main__":
    uvloop.run(main())
