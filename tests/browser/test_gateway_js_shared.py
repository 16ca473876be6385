"""gateway.js across tabs: one connection per browser, hand-over, back to WebSocket, wake-ups.

Several pages of one browser context are tabs of one browser. Connections are counted where
they end, at the gateway (`gateway_connections` on /metrics).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.blackhole import BlackholeProxy
from tests.browser.upgrade_gate import UpgradeGate
from tests.support import GatewayProcess, gateway_env, wait_until

WAIT_MS = 15_000
TABS = 4

OPEN = """async ({channel, options}) => {
  const {connect} = await import('/static/gateway.js');
  window.gw = connect(options);
  window.probe = {events: [], states: [], transports: [], gaps: []};
  gw.on('state', (state) => window.probe.states.push(state));
  gw.on('transport', (transport) => window.probe.transports.push(transport));
  gw.subscribe(channel, (event) => window.probe.events.push(event.data.n), {
    onGap: (gap) => window.probe.gaps.push(gap),
  });
}"""


def connections(gateway: GatewayProcess | str, transport: str = "ws") -> int:
    url = gateway if isinstance(gateway, str) else gateway.url
    text = httpx.get(f"{url}/metrics", timeout=5).text
    found = re.search(rf'^gateway_connections{{transport="{transport}"}} (\S+)$', text, re.M)
    return int(float(found.group(1))) if found else 0


def publish(base: str, channel: str, numbers: range) -> None:
    with httpx.Client(base_url=base, timeout=10) as client:
        for n in numbers:
            client.post(f"/channels/{channel}/events", json={"data": {"n": n}}).raise_for_status()


def open_tab(context: Any, base: str, channel: str, options: dict[str, Any]) -> Any:
    page = context.new_page()
    # A page of the gateway's (or the proxy's) origin that opens no connection of its own.
    page.goto(base + "/healthz")
    page.evaluate(OPEN, {"channel": channel, "options": options})
    return page


def events_of(page: Any) -> list[int]:
    result: list[int] = page.evaluate("window.probe.events")
    return result


def wait_events(page: Any, count: int) -> list[int]:
    try:
        page.wait_for_function(f"window.probe.events.length >= {count}", timeout=WAIT_MS)
    except Exception as exc:
        probe = page.evaluate("JSON.stringify([window.probe, gw.state, gw.sharing, gw.leader])")
        raise AssertionError(f"{count} events expected; the tab has {probe}") from exc
    return events_of(page)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """Rooms keep 1000 events here: a hand-over resumes from before the last ten."""
    process = GatewayProcess(
        gateway_env(GATEWAY_RETENTION="room=1000/3600"),
        tmp_path_factory.mktemp("tabs-gateway") / "gateway.log",
    )
    process.start()
    yield process
    process.stop(5)


@pytest.fixture
def tabs(context: Any) -> Any:
    """The browser context: its pages are tabs of one browser."""
    return context


@pytest.mark.parametrize("shared", ["worker", "tabs", False])
def test_tabs_of_one_browser_share_one_connection(
    tabs: Any, gateway: GatewayProcess, shared: str | bool
) -> None:
    """N tabs: one WebSocket at the gateway (N with `shared: false`); every tab gets every event
    once, and a tab that joins late still gets the channel's history."""
    channel = f"room:share-{shared}"
    wait_until(lambda: connections(gateway) == 0, 10, "no connections left from other tests")
    options = {"shared": shared}
    pages = [open_tab(tabs, gateway.url, channel, options) for _ in range(TABS - 1)]
    publish(gateway.url, channel, range(3))
    for page in pages:
        assert wait_events(page, 3) == [0, 1, 2]
    late = open_tab(tabs, gateway.url, channel, options)
    assert wait_events(late, 3) == [0, 1, 2], "history for the tab that came last"
    pages.append(late)
    publish(gateway.url, channel, range(3, 6))
    for page in pages:
        assert wait_events(page, 6) == [0, 1, 2, 3, 4, 5]
    expected = TABS if shared is False else 1
    wait_until(lambda: connections(gateway) == expected, 10, f"{expected} connections")
    sharing = {page.evaluate("gw.sharing") for page in pages}
    assert sharing == ({None} if shared is False else {shared})
    publish(gateway.url, channel, range(6, 7))
    for page in pages:
        assert wait_events(page, 7) == list(range(7)), "once each, the late tab's replay included"
    # A tab publishes through the shared connection; a refusal reaches that tab.
    ack = late.evaluate("(channel) => gw.publish(channel, 'message', {n: 7})", channel)
    assert ack["channel"] == channel and ack["id"]
    refused = late.evaluate("gw.publish('nope:x', 'message', {}).then(() => null, (e) => e.code)")
    assert refused == "forbidden"
    for page in pages:
        assert wait_events(page, 8) == list(range(8))


@pytest.mark.parametrize("shared", ["worker", "tabs"])
def test_closing_a_tab_loses_no_other_tabs_events(
    tabs: Any, gateway: GatewayProcess, shared: str
) -> None:
    """Close the tab that holds the connection (the leader; in worker mode the first tab):
    another takes over and resumes from the last id, every tab gets every event once."""
    channel = f"room:handover-{shared}"
    wait_until(lambda: connections(gateway) == 0, 10, "no connections left from other tests")
    pages = [open_tab(tabs, gateway.url, channel, {"shared": shared}) for _ in range(3)]
    publish(gateway.url, channel, range(3))
    for page in pages:
        assert wait_events(page, 3) == [0, 1, 2]
    if shared == "tabs":
        leaders = [page for page in pages if page.evaluate("gw.leader")]
        assert len(leaders) == 1
        first = leaders[0]
    else:
        first = pages[0]
    # Events published while the connection changes hands are not lost.
    sent: list[int] = []

    def keep_publishing() -> None:
        with httpx.Client(base_url=gateway.url, timeout=10) as client:
            for n in range(3, 43):
                client.post(f"/channels/{channel}/events", json={"data": {"n": n}})
                sent.append(n)

    publisher = threading.Thread(target=keep_publishing)
    publisher.start()
    try:
        wait_until(lambda: len(sent) >= 5, 10, "publishing under way")
        first.close()
    finally:
        publisher.join(30)
    rest = [page for page in pages if page is not first]
    if shared == "tabs":
        # The lock passes on once the closed tab is gone, which page.close() does not wait for.
        wait_until(
            lambda: sum(page.evaluate("gw.leader") for page in rest) == 1, 15, "one new leader"
        )
        for page in rest:
            page.wait_for_function("gw.state === 'open'", timeout=WAIT_MS)
    assert len(sent) == 40
    last = 43
    publish(gateway.url, channel, range(last, last + 2))
    for page in rest:
        assert wait_events(page, last + 2) == list(range(last + 2)), "each event once, in order"
        assert page.evaluate("window.probe.gaps") == []
    wait_until(lambda: connections(gateway) == 1, 10, "one connection after the hand-over")


@pytest.fixture
def gate(gateway: GatewayProcess) -> Iterator[UpgradeGate]:
    with UpgradeGate(gateway.port) as proxy:
        yield proxy


def test_back_to_websocket_once_it_gets_through_again(
    tabs: Any, gateway: GatewayProcess, gate: UpgradeGate
) -> None:
    """WebSocket refused by a proxy: SSE; once upgrades pass again, back to WebSocket, with no
    event lost or repeated (shared through the SharedWorker, behind the same proxy)."""
    channel = "room:back-to-ws"
    wait_until(lambda: connections(gateway) == 0, 10, "no connections left from other tests")
    gate.blocked.set()
    options = {"backoffInitial": 50, "backoffMax": 200, "wsProbe": 300, "wsProbeMax": 600}
    page = open_tab(tabs, gate.url, channel, options)
    page.wait_for_function("gw.transport === 'sse' && gw.state === 'open'", timeout=WAIT_MS)
    publish(gateway.url, channel, range(3))
    assert wait_events(page, 3) == [0, 1, 2]
    assert connections(gateway, "ws") == 0
    gate.blocked.clear()
    page.wait_for_function("gw.transport === 'websocket' && gw.state === 'open'", timeout=WAIT_MS)
    publish(gateway.url, channel, range(3, 6))
    assert wait_events(page, 6) == [0, 1, 2, 3, 4, 5]
    wait_until(
        lambda: (connections(gateway, "ws"), connections(gateway, "sse")) == (1, 0),
        10,
        "the SSE stream closed, one WebSocket",
    )
    assert page.evaluate("window.probe.transports") == ["sse", "websocket"]


@pytest.fixture
def blackhole(gateway: GatewayProcess) -> Iterator[BlackholeProxy]:
    with BlackholeProxy(gateway.port) as proxy:
        yield proxy


def resume_seconds(page: Any, gateway: GatewayProcess, channel: str, n: int) -> float:
    """Publish event `n` and time how long until the page has it."""
    started = time.monotonic()
    publish(gateway.url, channel, range(n, n + 1))
    page.wait_for_function(f"window.probe.events.includes({n})", timeout=60_000)
    return time.monotonic() - started


# Heartbeats of a minute stand for timers that slept with the machine: only the wake-up can
# notice the dead link in time.
ASLEEP = {"heartbeat": 60_000, "heartbeatTimeout": 60_000}


@pytest.mark.parametrize("shared", ["worker", False])
def test_back_online_reconnects_at_once(
    tabs: Any, gateway: GatewayProcess, blackhole: BlackholeProxy, shared: str | bool
) -> None:
    """The link died silently while offline; `online` resumes at once, not a heartbeat later."""
    channel = f"room:online-{shared}"
    page = open_tab(tabs, blackhole.url, channel, {**ASLEEP, "shared": shared})
    page.wait_for_function("gw.state === 'open'", timeout=WAIT_MS)
    publish(gateway.url, channel, range(1))
    assert wait_events(page, 1) == [0]
    tabs.set_offline(True)
    assert blackhole.blackhole() >= 1
    publish(gateway.url, channel, range(1, 3))  # missed while the link was dead
    tabs.set_offline(False)
    assert resume_seconds(page, gateway, channel, 3) < 10
    assert events_of(page) == [0, 1, 2, 3]


def test_shown_again_checks_the_connection_at_once(
    tabs: Any, gateway: GatewayProcess, blackhole: BlackholeProxy
) -> None:
    """A page shown again after being hidden asks for a pong and resumes when none comes."""
    channel = "room:visible"
    page = open_tab(tabs, blackhole.url, channel, {**ASLEEP, "shared": False})
    page.wait_for_function("gw.state === 'open'", timeout=WAIT_MS)
    publish(gateway.url, channel, range(1))
    assert wait_events(page, 1) == [0]
    set_visibility = """(state) => {
      Object.defineProperty(document, 'visibilityState', {value: state, configurable: true});
      document.dispatchEvent(new Event('visibilitychange'));
    }"""
    page.evaluate(set_visibility, "hidden")
    assert blackhole.blackhole() >= 1
    publish(gateway.url, channel, range(1, 3))
    page.evaluate(set_visibility, "visible")
    assert resume_seconds(page, gateway, channel, 3) < 10
    assert events_of(page) == [0, 1, 2, 3]
    assert "reconnecting" in page.evaluate("window.probe.states")
