"""A link that dies silently (no FIN, no RST) is noticed within 10 s in the browser.

The page comes from the gateway; its connections go through `BlackholeProxy` (another origin,
allowed by GATEWAY_ALLOWED_ORIGINS), which then stops forwarding without closing anything.
gateway.js, at its default settings, must notice within 10 s over WebSocket and over SSE and
resume through the proxy without losing or repeating an event. A native EventSource cannot see
keep-alive comments; the documented way for a page to notice is `?heartbeat=N` and a watchdog.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.blackhole import BlackholeProxy
from tests.support import GatewayProcess, free_port

pytestmark = pytest.mark.serial  # measures latency under load: alone under xdist

DETECTION_LIMIT = 10.0
WAIT_MS = 15_000
RESUME_MS = 30_000  # detection, plus a reconnect that may first try a pooled dead connection


@pytest.fixture
def proxied(
    gateway_factory: Callable[..., GatewayProcess],
) -> Iterator[tuple[GatewayProcess, BlackholeProxy]]:
    port = free_port()
    gateway = gateway_factory(port=port, GATEWAY_ALLOWED_ORIGINS=f"http://127.0.0.1:{port}")
    with BlackholeProxy(gateway.port) as proxy:
        yield gateway, proxy


def publish(gateway: GatewayProcess, channel: str, n: int) -> None:
    response = httpx.post(
        f"{gateway.url}/channels/{channel}/events", json={"data": {"n": n}}, timeout=10
    )
    assert response.status_code == 202, response.text


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_gateway_js_notices_a_silently_dead_link_within_10s(
    context: Any, proxied: tuple[GatewayProcess, BlackholeProxy], transport: str
) -> None:
    gateway, proxy = proxied
    channel = f"room:dead-link-{transport}"
    page = context.new_page()
    page.goto(gateway.url + "/healthz")
    page.evaluate(
        """async ({base, transport, channel}) => {
          const {connect} = await import('/static/gateway.js');
          const gw = connect(base, {transport});  // default heartbeat settings
          window.probe = {states: [], events: []};
          gw.on('state', (state) => window.probe.states.push(state));
          gw.subscribe(channel, (event) => window.probe.events.push(event.data.n));
        }""",
        {"base": proxy.url, "transport": transport, "channel": channel},
    )
    publish(gateway, channel, 0)
    page.wait_for_function("window.probe.events.includes(0)", timeout=WAIT_MS)
    assert page.evaluate("window.probe.states") == ["open"]

    assert proxy.blackhole() >= 1
    died = time.monotonic()
    page.wait_for_function(
        "window.probe.states.includes('reconnecting')", timeout=DETECTION_LIMIT * 1000 + 5000
    )
    detected = time.monotonic() - died
    print(f"gateway.js over {transport} noticed the dead link after {detected:.1f} s")
    assert detected < DETECTION_LIMIT

    publish(gateway, channel, 1)
    page.wait_for_function("window.probe.events.includes(1)", timeout=RESUME_MS)
    assert page.evaluate("window.probe.events") == [0, 1]


WATCHDOG = """
({url, silence}) => {
  // The README's recipe: ask for a heartbeat, and reopen (from the last id) when none comes.
  window.probe = {events: [], lost: 0};
  let lastId = null;
  let watchdog;
  const open = () => {
    const es = new EventSource(lastId ? `${url}&since=${lastId}` : url);
    const watch = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => {
        es.close();
        window.probe.lost += 1;
        open();
      }, silence);
    };
    es.onopen = watch;
    es.onmessage = (e) => {
      watch();
      const message = JSON.parse(e.data);
      if (message.id) {
        lastId = message.id;
        window.probe.events.push(message.data.n);
      }
    };
  };
  open();
}
"""


def test_native_eventsource_notices_a_dead_link_with_the_heartbeat_opt_in(
    context: Any, proxied: tuple[GatewayProcess, BlackholeProxy]
) -> None:
    gateway, proxy = proxied
    channel = "room:dead-link-eventsource"
    page = context.new_page()
    page.goto(gateway.url + "/healthz")
    url = f"{proxy.url}/events?channel={channel}&heartbeat=2"
    page.evaluate(WATCHDOG, {"url": url, "silence": 5000})  # 2 x heartbeat + 1 s
    publish(gateway, channel, 0)
    page.wait_for_function("window.probe.events.includes(0)", timeout=WAIT_MS)

    assert proxy.blackhole() >= 1
    died = time.monotonic()
    page.wait_for_function("window.probe.lost >= 1", timeout=DETECTION_LIMIT * 1000 + 5000)
    detected = time.monotonic() - died
    print(f"a native EventSource with ?heartbeat=2 noticed the dead link after {detected:.1f} s")
    assert detected < DETECTION_LIMIT

    publish(gateway, channel, 1)
    page.wait_for_function("window.probe.events.includes(1)", timeout=RESUME_MS)
    assert page.evaluate("window.probe.events") == [0, 1]
