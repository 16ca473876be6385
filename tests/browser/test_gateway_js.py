"""gateway.js as a library, driven from a page: errors, gaps, heartbeat, both transports."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support import GatewayProcess

WAIT_MS = 15_000

LIBRARY_CHECKS = """
async ({transport, since}) => {
  let step = 'start';
  const deadline = new Promise((_, reject) => {
    setTimeout(() => reject(new Error(`timed out at ${step}`)), 10000);
  });
  return Promise.race([deadline, (async () => {
  const {connect} = await import('/static/gateway.js');
  const gw = connect({transport});
  const result = {transport: null, events: []};
  step = 'publish refused';
  try {
    await gw.publish('nope:x', 'message', {});
  } catch (error) {
    result.publishError = error.code;
  }
  step = 'subscribe refused';
  result.subscribeError = await new Promise((resolve) => {
    gw.subscribe('nope:x', () => {}, {onError: (error) => resolve(error.code)});
  });
  step = 'gap';
  result.gap = await new Promise((resolve) => {
    gw.subscribe('room:trimmed', (event) => result.events.push(event.data.n),
                 {since, onGap: resolve});
  });
  const seen = (n) => new Promise((resolve) => {
    const poll = () => (result.events.includes(n) ? resolve() : setTimeout(poll, 20));
    poll();
  });
  step = 'history';
  await seen(49);
  result.ack = await gw.publish('room:trimmed', 'message', {n: 50});
  step = 'live';
  await seen(50);
  result.transport = gw.transport;
  gw.close();
  result.state = gw.state;
  return result;
  })()]);
}
"""


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_errors_and_trimmed_history_reach_the_caller(
    context: Any, gateway: GatewayProcess, transport: str
) -> None:
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        ids = [
            client.post("/channels/room:trimmed/events", json={"data": {"n": n}}).json()["id"]
            for n in range(50)
        ]
    page = context.new_page()
    page.goto(gateway.url + "/")
    result = page.evaluate(LIBRARY_CHECKS, {"transport": transport, "since": ids[0]})
    assert result["transport"] == transport
    assert result["publishError"] == "forbidden"
    assert result["subscribeError"] == "forbidden"
    assert result["gap"] == {"channel": "room:trimmed", "since": ids[0]}
    assert result["events"] == list(range(40, 51)), "retained history, then live, each once"
    assert result["ack"]["id"] > ids[-1]
    assert result["state"] == "closed"


def test_a_silent_connection_is_detected_by_the_heartbeat(
    context: Any, gateway: GatewayProcess
) -> None:
    """A proxy that keeps the socket open but stops delivering pongs: reconnect, lose nothing."""
    swallowed: list[str] = []

    def half_dead(ws: Any) -> None:
        server = ws.connect_to_server()
        pings = 0

        def to_server(message: str | bytes) -> None:
            nonlocal pings
            if isinstance(message, str) and '"op":"ping"' in message.replace(" ", ""):
                pings += 1
                if pings > 1:  # the first ping opens the connection; later ones vanish
                    swallowed.append(message)
                    return
            server.send(message)

        ws.on_message(to_server)

    context.route_web_socket("**/ws", half_dead)
    page = context.new_page()
    page.goto(gateway.url + "/")
    page.evaluate(
        """async () => {
          const {connect} = await import('/static/gateway.js');
          // Its own WebSocket: Playwright's stand-in does not reach a SharedWorker's.
          const gw = connect({heartbeat: 300, heartbeatTimeout: 300, shared: false});
          window.probe = {states: [], events: []};
          gw.on('state', (state) => window.probe.states.push(state));
          gw.subscribe('room:heartbeat', (event) => window.probe.events.push(event.data.n));
        }"""
    )
    page.wait_for_function(
        "window.probe.states.includes('reconnecting')"
        " && window.probe.states[window.probe.states.length - 1] === 'open'",
        timeout=WAIT_MS,
    )
    assert swallowed
    for n in range(3):
        httpx.post(
            f"{gateway.url}/channels/room:heartbeat/events", json={"data": {"n": n}}, timeout=10
        )
    page.wait_for_function("window.probe.events.length >= 3", timeout=WAIT_MS)
    assert page.evaluate("window.probe.events") == [0, 1, 2]


def test_a_slow_consumer_close_resumes_without_loss_or_repeats(
    context: Any, gateway: GatewayProcess
) -> None:
    """Close code 4008 (the gateway cut a slow consumer off): resume at once from the last id."""
    channel = "room:slow-" + str(id(context))
    connections: list[str] = []
    cut: list[str] = []

    def cut_after_first_event(ws: Any) -> None:
        server = ws.connect_to_server()
        connections.append(ws.url)

        def to_page(message: str | bytes) -> None:
            ws.send(message)
            text = message if isinstance(message, str) else ""
            if not cut and '"op":"event"' in text and f'"channel":"{channel}"' in text:
                cut.append(text)
                ws.close(code=4008, reason="slow consumer: resume with since")

        server.on_message(to_page)

    context.route_web_socket("**/ws", cut_after_first_event)
    with httpx.Client(base_url=gateway.url, timeout=10) as client:

        def send(n: int) -> None:
            client.post(f"/channels/{channel}/events", json={"data": {"n": n}})

        for n in range(3):
            send(n)
        page = context.new_page()
        page.goto(gateway.url + "/")
        page.evaluate(
            """async (channel) => {
              const {connect} = await import('/static/gateway.js');
              const gw = connect({transport: 'websocket', shared: false});
              window.probe = {states: [], events: []};
              gw.on('state', (state) => window.probe.states.push(state));
              gw.subscribe(channel, (event) => window.probe.events.push(event.data.n));
            }""",
            channel,
        )
        page.wait_for_function("window.probe.states.includes('reconnecting')", timeout=WAIT_MS)
        for n in range(3, 6):
            send(n)
        page.wait_for_function("window.probe.events.length >= 6", timeout=WAIT_MS)
    assert page.evaluate("window.probe.events") == [0, 1, 2, 3, 4, 5]
    assert page.evaluate("window.probe.states")[-1] == "open"
    # The cut one and the resumed one (the dashboard's own is in its SharedWorker, not seen here).
    assert cut and len(connections) >= 2
