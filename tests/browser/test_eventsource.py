"""The browser's own EventSource, used the textbook way, on the gateway's streams (Chromium)."""

from __future__ import annotations

from typing import Any

from tests.support import GatewayProcess

WAIT_MS = 15_000
STORY = ["job.queued", "job.started", "job.progress", "job.progress", "job.completed"]

TEXTBOOK = """
async () => {
  const response = await fetch('/jobs', {
    method: 'POST',
    headers: {'content-type': 'application/json'},
    body: JSON.stringify({type: 'sleep', data: {seconds: 1, steps: 2}}),
  });
  const job = await response.json();
  window.probe = {messages: [], opens: 0, closed: false};
  const es = new EventSource(job.links.events);
  es.onopen = () => { window.probe.opens += 1; };
  es.onmessage = (e) => window.probe.messages.push(JSON.parse(e.data));
  es.onerror = () => { window.probe.closed = es.readyState === EventSource.CLOSED; };
  return job.links.events;
}
"""


def test_textbook_eventsource_hears_every_event_then_stops_for_good(
    context: Any, gateway: GatewayProcess
) -> None:
    """`es.onmessage = e => JSON.parse(e.data)` gets the whole story; when the stream ends after
    the terminal event, EventSource reconnects once with Last-Event-ID, gets 204 and closes."""
    page = context.new_page()
    streams: list[tuple[str, int]] = []
    page.on(
        "response",
        lambda response: (
            streams.append((response.url, response.status)) if "/events" in response.url else None
        ),
    )
    page.goto(gateway.url + "/healthz")
    events_path = page.evaluate(TEXTBOOK)
    page.wait_for_function("window.probe.closed", timeout=WAIT_MS)
    messages = page.evaluate("window.probe.messages")
    assert [message["type"] for message in messages] == STORY
    assert all(message["id"] for message in messages)
    assert page.evaluate("window.probe.opens") == 1
    assert streams == [(gateway.url + events_path, 200), (gateway.url + events_path, 204)]


def test_signals_reach_onmessage_as_json(context: Any, gateway: GatewayProcess) -> None:
    """A `gap` (history trimmed) and the opt-in heartbeat are messages with a `type`."""
    page = context.new_page()
    page.goto(gateway.url + "/healthz")
    page.evaluate(
        """() => {
          window.received = [];
          const es = new EventSource('/events?channel=room:es-signals&since=1-0&heartbeat=1');
          es.onmessage = (e) => {
            window.received.push(JSON.parse(e.data));
            if (window.received.length === 2) es.close();
          };
        }"""
    )
    page.wait_for_function("window.received.length === 2", timeout=WAIT_MS)
    assert page.evaluate("window.received") == [
        {"type": "gap", "channel": "room:es-signals", "since": "1-0"},
        {"type": "heartbeat"},
    ]


def test_named_events_are_an_opt_in_for_add_event_listener(
    context: Any, gateway: GatewayProcess
) -> None:
    page = context.new_page()
    page.goto(gateway.url + "/healthz")
    page.evaluate(
        """async () => {
          const response = await fetch('/jobs', {
            method: 'POST',
            headers: {'content-type': 'application/json'},
            body: JSON.stringify({type: 'sleep', data: {seconds: 0, steps: 1}}),
          });
          const job = await response.json();
          window.probe = {named: [], unnamed: 0};
          const es = new EventSource(job.links.events + '?events=named');
          es.onmessage = () => { window.probe.unnamed += 1; };
          for (const type of ['job.queued', 'job.started', 'job.progress', 'job.completed']) {
            es.addEventListener(type, (e) => {
              window.probe.named.push(JSON.parse(e.data).type);
              if (type === 'job.completed') es.close();
            });
          }
        }"""
    )
    page.wait_for_function("window.probe.named.includes('job.completed')", timeout=WAIT_MS)
    probe = page.evaluate("window.probe")
    assert probe["named"] == ["job.queued", "job.started", "job.progress", "job.completed"]
    assert probe["unnamed"] == 0
