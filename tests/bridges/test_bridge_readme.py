"""The README's "Bridges" example, run as written: its TOML file and its command, with only the
addresses of Redis, the broker and the metrics port replaced by this test's private ones."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiomqtt

from tests.bridges.conftest import BrokerPool
from tests.support import (
    GatewayProcess,
    RedisServer,
    async_wait_until,
    collect_sse,
    free_port,
    gateway_env,
)

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def block_after(heading: str, language: str) -> str:
    section = README.split(heading, 1)[1].split("\n## ", 1)[0]
    match = re.search(rf"```{language}\n(.*?)```", section, re.S)
    assert match, f"no {language} block under {heading!r}"
    return match.group(1)


async def test_the_readme_bridge_example_runs_as_written(
    tmp_path: Path,
    brokers: BrokerPool,
    redis_server: RedisServer,
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    mosquitto = brokers.get("mqtt")
    config = block_after("## Bridges", "toml")
    command = block_after("## Bridges", "sh").strip()
    assert command == "gateway bridge --config bridge.toml"
    redis_address = redis_server.url.removeprefix("redis://").split("/")[0]
    config = (
        config.replace("127.0.0.1:6379", redis_address)
        .replace("127.0.0.1:1883", f"127.0.0.1:{mosquitto.port}")
        .replace("metrics_port = 9108", f"metrics_port = {free_port()}")
    )
    (tmp_path / "bridge.toml").write_text(config)
    gateway = gateway_factory(REDIS_URL=redis_server.url, GATEWAY_CHANNEL_POLICY="sensor=open/none")
    env = gateway_env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # the `gateway` script
    log = (tmp_path / "bridge.log").open("wb")
    bridge = subprocess.Popen(
        ["bash", "-c", command],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        reading = asyncio.create_task(
            collect_sse(
                f"{gateway.url}/events?channel=sensor:kitchen&since=0-0",
                until=lambda e: e.event == "temperature",
            )
        )
        # Once connected, the bridge's session holds the subscription.
        output = tmp_path / "bridge.log"
        await async_wait_until(
            lambda: "connected" in output.read_text(errors="replace"), 30, "the bridge"
        )
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
            await client.publish("sensors/kitchen/temperature", b'{"celsius": 21.5}', qos=1)
        events = await reading
        assert events[-1].json()["data"] == {"celsius": 21.5}
        assert events[-1].json()["channel"] == "sensor:kitchen"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(bridge.pid, signal.SIGTERM)
        bridge.wait(10)
        log.close()
