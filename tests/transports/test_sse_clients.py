"""The SSE clients people already use, as their READMEs show them, against a real gateway.

Each one parses every message's data as JSON and must see a job's whole story, the terminal
event included, and then stop: httpx-sse and sseclient-py (Python), the npm `eventsource` package
and @microsoft/fetch-event-source (Node, from tests/node). The gateway here pings every second
(GATEWAY_SSE_PING=1) and the jobs pause longer than that between events, so keep-alives fall
between events, where a comment-only block would reach these parsers as an empty message.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import GatewayProcess

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
STORY = ["job.queued", "job.started", "job.progress", "job.progress", "job.completed"]
TERMINAL = {"job.completed", "job.failed", "job.cancelled"}


def submit_slow_job(gateway: GatewayProcess) -> str:
    """A job with 1.5 s between its progress events: a keep-alive falls between them."""
    response = httpx.post(
        gateway.url + "/jobs", json={"type": "sleep", "data": {"seconds": 3, "steps": 2}}
    )
    assert response.status_code == 202, response.text
    events: str = response.json()["links"]["events"]
    return gateway.url + events


def test_httpx_sse_parses_every_event_as_json(embedded_gateway: GatewayProcess) -> None:
    from httpx_sse import connect_sse

    url = submit_slow_job(embedded_gateway)
    received: list[dict[str, Any]] = []
    with (
        httpx.Client(timeout=20) as client,
        connect_sse(client, "GET", url) as event_source,
    ):
        for sse in event_source.iter_sse():
            received.append(json.loads(sse.data))
            if received[-1]["type"] in TERMINAL:
                break
    assert [event["type"] for event in received] == STORY


def test_httpx_sse_parses_signals_as_json(embedded_gateway: GatewayProcess) -> None:
    """A trimmed-history `gap` and opt-in heartbeats are JSON messages with a `type` too."""
    from httpx_sse import connect_sse

    url = f"{embedded_gateway.url}/events?channel=room:httpx-sse-signals&since=1-0&heartbeat=1"
    received: list[dict[str, Any]] = []
    with (
        httpx.Client(timeout=10) as client,
        connect_sse(client, "GET", url) as event_source,
    ):
        for sse in event_source.iter_sse():
            received.append(json.loads(sse.data))
            if len(received) == 3:
                break
    assert received[0] == {"type": "gap", "channel": "room:httpx-sse-signals", "since": "1-0"}
    assert received[1:] == [{"type": "heartbeat"}] * 2


def test_sseclient_py_parses_every_event_and_ends_with_the_job(
    embedded_gateway: GatewayProcess,
) -> None:
    import sseclient

    url = submit_slow_job(embedded_gateway)

    def with_httpx(url: str, headers: dict[str, str]) -> Iterator[bytes]:
        """Get a streaming response for the given event feed using httpx (the README's)."""
        with httpx.stream("GET", url, headers=headers, timeout=20) as s:
            yield from s.iter_bytes()

    client = sseclient.SSEClient(with_httpx(url, {"Accept": "text/event-stream"}))
    received = [json.loads(event.data) for event in client.events()]  # ends with the stream
    assert [event["type"] for event in received] == STORY


# --- Node clients ---------------------------------------------------------------------------


def node_client(script: str, *args: str, timeout: float = 30) -> dict[str, Any]:
    """Run a client script of tests/node and return what it printed (one JSON object)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: apt-get install nodejs")
    if not (NODE_DIR / "node_modules").is_dir():
        reason = "tests/node/node_modules is absent: npm ci --prefix tests/node"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set, so the node clients must run)", pytrace=False)
        pytest.skip(reason)
    run = subprocess.run(
        [node, str(NODE_DIR / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=NODE_DIR,
    )
    assert run.returncode == 0, run.stderr
    value: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    return value


def test_npm_eventsource_textbook_usage_hears_everything_then_stops(
    embedded_gateway: GatewayProcess,
) -> None:
    """`es.onmessage`; after the terminal event its reconnect gets 204, and it closes for good."""
    result = node_client("eventsource_client.mjs", submit_slow_job(embedded_gateway))
    assert [event["type"] for event in result["messages"]] == STORY
    assert result["opens"] == 1
    assert result["closed"] is True
    assert result["errors"][-1]["code"] == 204


def test_npm_eventsource_hears_signals(embedded_gateway: GatewayProcess) -> None:
    url = f"{embedded_gateway.url}/events?channel=room:npm-es-signals&since=1-0&heartbeat=1"
    result = node_client("eventsource_client.mjs", url, "2")
    assert result["messages"] == [
        {"type": "gap", "channel": "room:npm-es-signals", "since": "1-0"},
        {"type": "heartbeat"},
    ]


@pytest.mark.parametrize("mode", ["basic", "advanced"])
def test_fetch_event_source_readme_usage(embedded_gateway: GatewayProcess, mode: str) -> None:
    """basic: resolves when the stream ends after the terminal event; advanced: the README's
    strict `content-type === 'text/event-stream'` check passes and the caller stops at the
    terminal event. One request each: no reconnect loop."""
    result = node_client("fetch_event_source_client.mjs", mode, submit_slow_job(embedded_gateway))
    assert result["timedOut"] is False, result
    assert [event["type"] for event in result["messages"]] == STORY
    assert result["fetches"] == 1, result
    assert result["errors"] == []
