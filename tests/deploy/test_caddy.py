"""deploy/caddy/Caddyfile, run by Debian's caddy (HTTPS from its internal CA, HTTP/2) in front
of two gateways on one Redis.

The same as behind nginx (SSE, WebSocket, long polling, a rolling restart losing no event),
and what HTTP/2 adds: one browser holds more than six SSE streams to the site at once. Over
HTTP/1.1 the browser opens six connections per host and queues the rest, shown for contrast
against a gateway without a proxy.
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from gateway.publish import publish
from tests.deploy.proxies import start_caddy
from tests.deploy.scenarios import (
    job_over_sse_websocket_and_long_poll,
    rolling_restart_loses_no_event,
)
from tests.deploy.stack import Stack, logged
from tests.support import wait_until

STREAMS = 10
"""SSE streams one page opens through Caddy: more than HTTP/1.1's six per host."""


@dataclass
class Caddy:
    url: str
    verify: ssl.SSLContext
    """Trusts Caddy's internal certificate authority, which signed the site's certificate."""


@pytest.fixture(scope="module")
def caddy(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Caddy]:
    directory = tmp_path_factory.mktemp("caddy")
    process, port = start_caddy(directory, stack.ports)
    root = directory / "storage" / "pki" / "authorities" / "local" / "root.crt"
    yield Caddy(f"https://127.0.0.1:{port}", ssl.create_default_context(cafile=str(root)))
    process.stop()


def test_the_gateway_sees_the_client_address_not_a_claimed_one(stack: Stack, caddy: Caddy) -> None:
    marker = "address-" + uuid.uuid4().hex
    transport = httpx.HTTPTransport(local_address="127.0.0.7", verify=caddy.verify)
    with httpx.Client(base_url=caddy.url, transport=transport) as http:
        response = http.get(f"/jobs/{marker}", headers={"X-Forwarded-For": "203.0.113.9"})
    assert response.status_code == 404
    wait_until(lambda: bool(logged(stack, marker)), 10, "the request in a gateway's log")
    lines = [line for _, line in logged(stack, marker)]
    assert len(lines) == 1 and "127.0.0.7:" in lines[0] and "203.0.113.9" not in lines[0], lines


# The asyncio tests come before the browser's: Playwright's sync API runs a loop of its own in
# this thread while the (module-scoped) browser is open.


async def test_a_job_over_sse_websocket_and_long_polling(caddy: Caddy) -> None:
    await job_over_sse_websocket_and_long_poll(caddy.url, caddy.verify)


async def test_a_rolling_restart_behind_caddy_loses_no_event(stack: Stack, caddy: Caddy) -> None:
    await rolling_restart_loses_no_event(stack, caddy.url, caddy.verify)


OPEN_STREAMS = """([count, tag]) => {
  window.opened = 0;
  window.received = new Set();
  window.sources = [];
  for (let i = 0; i < count; i++) {
    const source = new EventSource(`/events?channel=room:${tag}-${i}`);
    source.onopen = () => { window.opened += 1; };
    source.onmessage = () => { window.received.add(i); };
    window.sources.push(source);
  }
}"""


def open_streams(page: Any, count: int) -> str:
    tag = "streams-" + uuid.uuid4().hex[:8]
    page.evaluate(OPEN_STREAMS, [count, tag])
    return tag


def test_one_browser_holds_more_than_six_sse_streams_over_http2(
    browser: Any, stack: Stack, caddy: Caddy
) -> None:
    context = browser.new_context(ignore_https_errors=True)
    try:
        page = context.new_page()
        page.goto(caddy.url + "/healthz")
        protocol = page.evaluate("performance.getEntriesByType('navigation')[0].nextHopProtocol")
        assert protocol == "h2"
        tag = open_streams(page, STREAMS)
        page.wait_for_function(f"window.opened === {STREAMS}", timeout=15_000)
        for index in range(STREAMS):
            publish(f"room:{tag}-{index}", "message", {"n": index}, redis_url=stack.redis.url)
        page.wait_for_function(f"window.received.size === {STREAMS}", timeout=15_000)
    finally:
        context.close()


def test_over_http11_a_browser_holds_six_streams_and_queues_the_rest(
    browser: Any, stack: Stack
) -> None:
    """The contrast, straight to a gateway over HTTP/1.1: of eight streams six open; the other
    two wait for a connection (observed for a second) and open as soon as two are closed."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(stack.gateways[0].url + "/healthz")
        open_streams(page, 8)
        page.wait_for_function("window.opened === 6", timeout=15_000)
        page.wait_for_timeout(1000)  # an observation window, not a synchronisation
        assert page.evaluate("[window.opened, window.sources.map(s => s.readyState)]") == [
            6,
            [1, 1, 1, 1, 1, 1, 0, 0],
        ]
        page.evaluate("window.sources[0].close(); window.sources[1].close()")
        page.wait_for_function("window.opened === 8", timeout=15_000)
    finally:
        context.close()
