"""gateway.js and the frames of the wire contract (CONTRACT.md) that other branches send.

Until the gateway sends them itself, Playwright's WebSocket route stands between page and gateway
and adds them: a `subscribed` frame (`server: true`) together with a real subscription the route
makes on the page's behalf (so the events are the gateway's own), `unsubscribed`, presence
events, and the close codes 4001 / 4002. Pages hold their own WebSocket here (`shared: false`, or
`'tabs'`, where it lives in the leader tab): the route does not reach a SharedWorker's.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.support import GatewayProcess, wait_until

WAIT_MS = 15_000

OPEN = """async ({options, channels}) => {
  const {connect} = await import('/static/gateway.js');
  window.gw = connect({backoffInitial: 50, backoffMax: 200, ...options});
  window.probe = {events: [], states: [], subscribed: [], unsubscribed: [], ended: [], own: []};
  gw.on('state', (state, info) => window.probe.states.push([state, info.code, info.reason]));
  gw.on('event', (event) => window.probe.events.push([event.channel, event.type, event.data]));
  gw.on('subscribed', (info) => window.probe.subscribed.push(info));
  gw.on('unsubscribed', (info) => window.probe.unsubscribed.push(info));
  for (const channel of channels) {
    gw.subscribe(channel, (event) => window.probe.own.push(event.data), {
      onUnsubscribed: (info) => window.probe.ended.push(info),
    });
  }
}"""


class ContractRoute:
    """Every WebSocket of the context, passed through; `server_channel` is subscribed on the
    page's behalf and announced with `subscribed` (server: true), like a token's `channels`."""

    def __init__(self, server_channel: str | None = None) -> None:
        self.server_channel = server_channel
        self.routes: list[Any] = []
        self.since: str | None = None  # where the route's own subscription starts (live only)
        self.subscribed_for_page = False
        self.swallow = False  # drop events on their way to the page (a link losing them)
        self.swallowed: list[str] = []

    def __call__(self, ws: Any) -> None:
        server = ws.connect_to_server()
        self.routes.append(ws)
        announced = False

        def to_server(message: str | bytes) -> None:
            nonlocal announced
            if not announced and self.server_channel is not None:
                announced = True
                frame = {"op": "subscribed", "channel": self.server_channel, "server": True}
                ws.send(json.dumps(frame))
                # On later connections the client's own `subscribe` with `since` (which it must
                # send) is what makes the gateway stream the channel again.
                if not self.subscribed_for_page:
                    self.subscribed_for_page = True
                    op = {"op": "subscribe", "channel": self.server_channel, "ref": "server"}
                    if self.since:
                        op["since"] = self.since
                    server.send(json.dumps(op))
            server.send(message)

        def to_page(message: str | bytes) -> None:
            if isinstance(message, str) and '"ref":"server"' in message.replace(" ", ""):
                return  # the answer to the route's own subscribe is not the page's
            if self.swallow and isinstance(message, str) and '"op":"event"' in message:
                self.swallowed.append(message)
                return
            ws.send(message)

        ws.on_message(to_server)
        server.on_message(to_page)


def publish(gateway: GatewayProcess, channel: str, data: Any, type_: str = "message") -> str:
    response = httpx.post(
        f"{gateway.url}/channels/{channel}/events", json={"type": type_, "data": data}, timeout=10
    )
    response.raise_for_status()
    event_id: str = response.json()["id"]
    return event_id


def open_tab(
    context: Any, gateway: GatewayProcess, options: dict[str, Any], channels: list[str]
) -> Any:
    page = context.new_page()
    page.goto(gateway.url + "/healthz")
    page.evaluate(OPEN, {"options": options, "channels": channels})
    page.wait_for_function("gw.state === 'open'", timeout=WAIT_MS)
    return page


def data_on(page: Any, channel: str) -> list[Any]:
    return [data for (ch, _, data) in page.evaluate("window.probe.events") if ch == channel]


@pytest.mark.parametrize("shared", [False, "tabs"])
def test_close_4002_reconnects_and_4001_ends_every_tab(
    context: Any, gateway: GatewayProcess, shared: str | bool
) -> None:
    route = ContractRoute()
    context.route_web_socket("**/ws", route)
    channel = f"room:close-{shared}"
    pages = [open_tab(context, gateway, {"shared": shared}, [channel])]
    if shared:
        pages.append(open_tab(context, gateway, {"shared": shared}, [channel]))
    publish(gateway, channel, 0)
    for page in pages:
        page.wait_for_function("window.probe.own.length === 1", timeout=WAIT_MS)
    assert len(route.routes) == 1, "one connection for the tabs"

    route.routes[-1].close(code=4002, reason="token renewed")
    pages[0].wait_for_function(
        "gw.state === 'open' && window.probe.states.some(([s]) => s === 'reconnecting')",
        timeout=WAIT_MS,
    )
    assert len(route.routes) == 2
    publish(gateway, channel, 1)
    for page in pages:
        page.wait_for_function("window.probe.own.length === 2", timeout=WAIT_MS)
        assert page.evaluate("window.probe.own") == [0, 1]

    route.routes[-1].close(code=4001, reason="signed out")
    for page in pages:
        page.wait_for_function("gw.state === 'closed'", timeout=WAIT_MS)
        assert page.evaluate("[gw.closeCode, gw.closeReason]") == [4001, "signed out"]
        assert page.evaluate("window.probe.states.at(-1)") == ["closed", 4001, "signed out"]
        error = page.evaluate(
            "gw.publish('room:x', 'message', {}).then(() => null, (error) => error.code)"
        )
        assert error == "closed"
    # Nothing left that could reconnect: no timer, no socket (the leader's own, in tabs mode).
    if not shared:
        assert pages[0].evaluate("gw._timers.size === 0 && gw._ws === null")
    assert len(route.routes) == 2


@pytest.mark.parametrize("shared", [False, "tabs"])
def test_server_side_subscription_is_resumed_like_the_clients_own(
    context: Any, gateway: GatewayProcess, shared: str | bool
) -> None:
    """`subscribed` (server: true): its events reach `on('event')`, and after a reconnect the
    client asks for them again from its last id: none lost, none twice."""
    channel = f"room:srv-{shared}"
    first = publish(gateway, channel, "old")  # before the connection: not for it
    route = ContractRoute(server_channel=channel)
    route.since = first
    context.route_web_socket("**/ws", route)
    pages = [open_tab(context, gateway, {"shared": shared}, [])]
    if shared:
        pages.append(open_tab(context, gateway, {"shared": shared}, []))
    for page in pages:
        page.wait_for_function("window.probe.subscribed.length === 1", timeout=WAIT_MS)
        assert page.evaluate("window.probe.subscribed") == [{"channel": channel, "server": True}]
    ids = [publish(gateway, channel, n) for n in range(3)]
    for page in pages:
        page.wait_for_function("window.probe.events.length === 3", timeout=WAIT_MS)
        assert data_on(page, channel) == [0, 1, 2]

    # Lost on the way (as on a dying link): 3 and 4 come only if the client resumes the channel
    # from its own last id after the reconnect.
    assert ids
    route.swallow = True
    publish(gateway, channel, 3)
    publish(gateway, channel, 4)
    # The route runs while Playwright is called: poll through the page.
    wait_until(
        lambda: pages[0].wait_for_timeout(20) or len(route.swallowed) == 2, 10, "3 and 4 lost"
    )
    route.swallow = False
    route.routes[-1].close(code=4002, reason="reconnect")
    publish(gateway, channel, 5)
    for page in pages:
        page.wait_for_function("window.probe.events.length >= 6", timeout=WAIT_MS)
        assert data_on(page, channel) == [0, 1, 2, 3, 4, 5]


def test_unsubscribed_ends_a_subscription_and_presence_events_pass_through(
    context: Any, gateway: GatewayProcess
) -> None:
    route = ContractRoute()
    context.route_web_socket("**/ws", route)
    kicked, other = "room:kicked", "room:other"
    page = open_tab(context, gateway, {"shared": False}, [kicked, other])
    publish(gateway, kicked, 0)
    page.wait_for_function("window.probe.own.length === 1", timeout=WAIT_MS)

    ws = route.routes[-1]
    ws.send(json.dumps({"op": "unsubscribed", "channel": kicked, "reason": "kicked out"}))
    page.wait_for_function("window.probe.unsubscribed.length === 1", timeout=WAIT_MS)
    assert page.evaluate("window.probe.ended") == [{"channel": kicked, "reason": "kicked out"}]
    # The gateway still sends `kicked` here (the route only said otherwise): dropped, while a
    # later event on the other channel arrives.
    publish(gateway, kicked, 1)
    publish(gateway, other, "after")
    page.wait_for_function("window.probe.own.includes('after')", timeout=WAIT_MS)
    assert page.evaluate("window.probe.own") == [0, "after"]

    # Presence events have no position: delivered each time, never taken for a resume point.
    entry = {"client": "c1", "user": "ada", "info": None}
    for type_ in ("presence.join", "presence.leave", "presence.join"):
        ws.send(json.dumps({"op": "event", "channel": other, "type": type_, "data": entry}))
    publish(gateway, other, "next")
    page.wait_for_function("window.probe.own.includes('next')", timeout=WAIT_MS)
    assert page.evaluate("window.probe.own") == [0, "after", entry, entry, entry, "next"]
