"""Two gateway processes and a worker on one Redis, as a proxy in deploy/ balances them."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from gateway.publish import publish
from tests.support import (
    GatewayProcess,
    RedisServer,
    WorkerProcess,
    async_wait_until,
    gateway_env,
)


@dataclass
class Stack:
    """What a proxy in front of it needs: the gateways (restartable on their ports)."""

    redis: RedisServer
    gateways: tuple[GatewayProcess, GatewayProcess]
    worker: WorkerProcess

    @property
    def ports(self) -> tuple[int, int]:
        return self.gateways[0].port, self.gateways[1].port

    def stop(self) -> None:
        for process in (*self.gateways, self.worker):
            process.stop(5)


def start_stack(redis: RedisServer, directory: Path) -> Stack:
    """Gateways that believe X-Forwarded-* from 127.0.0.1 only (where the proxy connects
    from) and log each request with the client's address; a separate worker runs the jobs."""
    env = gateway_env(
        REDIS_URL=redis.url,
        GATEWAY_TRUSTED_PROXIES="127.0.0.1",
        GATEWAY_SSE_PING="1",
        GATEWAY_LOG_LEVEL="info",
    )
    gateways = (
        GatewayProcess(env, directory / "gateway-0.log"),
        GatewayProcess(env, directory / "gateway-1.log"),
    )
    worker = WorkerProcess(gateway_env(REDIS_URL=redis.url), directory / "worker.log")
    stack = Stack(redis, gateways, worker)
    try:
        # One gateway start-up at a time (the worker's overlaps, as nothing waits for it): on a
        # loaded machine, concurrent imports made a start-up take longer than its 20 s bound.
        worker.start()
        for gateway in gateways:
            gateway.start()
    except BaseException:
        stack.stop()
        raise
    return stack


def logged(stack: Stack, marker: str) -> list[tuple[int, str]]:
    """The gateways' log lines (with the gateway's index) that contain `marker`."""
    return [
        (index, line)
        for index, gateway in enumerate(stack.gateways)
        for line in gateway.output().splitlines()
        if marker in line
    ]


@dataclass
class Publisher:
    """Numbered events on one channel, straight to Redis, from a thread, until stopped."""

    redis_url: str
    channel: str
    interval: float = 0.02
    sent: int = 0
    stopping: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def __enter__(self) -> Publisher:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stopping.wait(self.interval):
            publish(self.channel, "message", {"seq": self.sent}, redis_url=self.redis_url)
            self.sent += 1

    async def more(self, count: int) -> None:
        """Wait until `count` more events have been published."""
        mark = self.sent + count
        await async_wait_until(lambda: self.sent >= mark, 10, f"{count} more events published")

    def finish(self) -> int:
        """Stop, then publish the `end` event; returns how many numbered events were sent."""
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(10)
        publish(self.channel, "end", {"seq": self.sent}, redis_url=self.redis_url)
        return self.sent

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()


def restart(gateway: GatewayProcess) -> None:
    """A graceful stop (SIGTERM: streams get their `shutdown`), then a start on the same port."""
    gateway.stop(15)
    gateway.start()


async def long_poll_job(
    base_url: str, job_id: str, wait: float = 2.0, **client: Any
) -> list[dict[str, Any]]:
    """Follow a job with `GET /jobs/{id}?wait=` (and `since`) until it ends; every answer must
    be a 200. Returns the job resources seen. (A stopping gateway lets a long poll in flight
    finish: `wait` bounds how long a stop takes.)"""
    seen: list[dict[str, Any]] = []
    since = ""
    async with httpx.AsyncClient(base_url=base_url, timeout=30, **client) as http:
        while True:
            params = {"wait": str(wait), **({"since": since} if since else {})}
            response = await http.get(f"/jobs/{job_id}", params=params)
            assert response.status_code == 200, (response.status_code, response.text)
            job = response.json()
            seen.append(job)
            if job["status"] in ("completed", "failed", "cancelled"):
                return seen
            since = job.get("last_event_id") or since
            await asyncio.sleep(0)


def sequence_of(items: Iterator[dict[str, Any]]) -> list[int]:
    """The `seq` numbers of the `message` events among `items` (event envelopes)."""
    return [item["data"]["seq"] for item in items if item.get("type") == "message"]
