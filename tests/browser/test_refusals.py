"""What other sites' pages can do to a gateway through a real browser (Chromium), and what a
page sees when the gateway refuses it.

The foreign page is served by a small HTTP server on another port of 127.0.0.1: another
origin, but the same site, so the browser sends the victim's `gateway_token` cookie along with
its requests (`SameSite=Lax` does not stop same-site requests). A DNS-rebinding page is
`http://rebind.test:<gateway port>/`, which Chromium resolves to 127.0.0.1
(`--host-resolver-rules`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, _unavailable
from tests.support import GatewayProcess, gateway_env

API_KEY = "browser-refusals-key-0123456789"
SECRET = "b" * 40
AUTH = {"Authorization": f"Bearer {API_KEY}"}
REBOUND_NAME = "rebind.test"

NO_CORS_POSTS = """
async ({base, posts}) => {
  for (const [path, body] of posts) {
    // What a foreign page can send without the browser asking the gateway first: no preflight,
    // a Blob body (so no Content-Type at all), and the victim's cookies.
    await fetch(base + path, {
      method: 'POST', mode: 'no-cors', credentials: 'include', body: new Blob([body]),
    });
  }
}
"""

JSON_POST = """
async ({url, body}) => {
  const response = await fetch(url, {
    method: 'POST', headers: {'Content-Type': 'application/json'}, body,
  });
  return response.status;
}
"""

WS_CLOSE = """
async (url) => await new Promise((resolve) => {
  const ws = new WebSocket(url, 'gateway.v1');
  ws.onclose = (event) => resolve({code: event.code, reason: event.reason});
  setTimeout(() => resolve({code: 'timeout'}), 10000);
})
"""

WS_SECOND_CLOSE = """
async (url) => await new Promise((resolve) => {
  const first = new WebSocket(url, 'gateway.v1');
  first.onopen = () => {
    const second = new WebSocket(url, 'gateway.v1');
    second.onclose = (event) => {
      first.close();
      resolve({code: event.code, reason: event.reason});
    };
  };
  first.onclose = (event) => resolve({first: event.code, reason: event.reason});
  setTimeout(() => resolve({code: 'timeout'}), 10000);
})
"""

WS_FIRST_REPLY = """
async ({url, op}) => await new Promise((resolve) => {
  const ws = new WebSocket(url, 'gateway.v1');
  ws.onopen = () => ws.send(JSON.stringify(op));
  ws.onmessage = (event) => { resolve(JSON.parse(event.data)); ws.close(); };
  ws.onclose = (event) => resolve({closed: event.code, reason: event.reason});
  setTimeout(() => resolve({timeout: true}), 10000);
})
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """The session's Chromium, plus a host rule that makes `rebind.test` resolve to loopback."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed: pip install -e '.[dev]'")
    if CHROMIUM is None:
        _unavailable("chromium is not installed: apt-get install chromium")
    args = [*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {REBOUND_NAME} 127.0.0.1"]
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        yield instance
        instance.close()


class _BlankPage(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><title>another site</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def foreign_origin() -> Iterator[str]:
    """An origin of its own (another port on 127.0.0.1) serving a blank page."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BlankPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


def _start(directory: Path, **env: str) -> GatewayProcess:
    process = GatewayProcess(gateway_env(GATEWAY_SUBMIT_RATE="0", **env), directory / "gw.log")
    process.start()
    return process


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    process = _start(tmp_path_factory.mktemp("dev"))
    yield process
    process.stop(5)


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    process = _start(
        tmp_path_factory.mktemp("secure"), GATEWAY_API_KEYS=API_KEY, GATEWAY_SECRET=SECRET
    )
    yield process
    process.stop(5)


@pytest.fixture(scope="module")
def wildcard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    process = _start(
        tmp_path_factory.mktemp("wildcard"),
        GATEWAY_API_KEYS=API_KEY,
        GATEWAY_SECRET=SECRET,
        GATEWAY_ALLOWED_ORIGINS="*",
    )
    yield process
    process.stop(5)


def jobs(gateway: GatewayProcess) -> list[str]:
    response = httpx.get(gateway.url + "/jobs", params={"limit": 200}, headers=AUTH)
    assert response.status_code == 200, response.text
    return [job["id"] for job in response.json()["jobs"]]


def history(gateway: GatewayProcess, channel: str) -> list[Any]:
    response = httpx.get(f"{gateway.url}/channels/{channel}/events", headers=AUTH)
    assert response.status_code == 200, response.text
    events: list[Any] = response.json()["events"]
    return events


def mint(gateway: GatewayProcess, sub: str, channels: dict[str, list[str]]) -> str:
    body = {"sub": sub, "channels": channels, "ttl": 300}
    response = httpx.post(gateway.url + "/tokens", json=body, headers=AUTH)
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


def test_a_foreign_page_creates_no_job_on_a_dev_gateway(
    context: Any, dev: GatewayProcess, foreign_origin: str
) -> None:
    before = jobs(dev)
    page = context.new_page()
    page.goto(foreign_origin + "/")
    posts = [
        ["/jobs", '{"type": "sleep", "data": {"seconds": 0}}'],
        ["/submit-job", '{"jobType": "sleep", "jobData": {"seconds": 0}}'],
        ["/submitTask", '{"taskName": "sleep", "parameters": {"seconds": 0}}'],
    ]
    page.evaluate(NO_CORS_POSTS, {"base": dev.url, "posts": posts})
    assert jobs(dev) == before
    # The same request from the gateway's own page (the dashboard's way) does create one.
    page.goto(dev.url + "/")
    status = page.evaluate(JSON_POST, {"url": "/jobs", "body": posts[0][1]})
    assert status == 202
    assert len(jobs(dev)) == len(before) + 1


def test_a_foreign_page_cannot_publish_with_the_victims_cookie(
    context: Any, secure: GatewayProcess, foreign_origin: str
) -> None:
    token = mint(secure, "victim", {"room:csrf": ["subscribe", "publish"]})
    context.add_cookies([{"name": "gateway_token", "value": token, "url": secure.url + "/"}])
    page = context.new_page()
    page.goto(foreign_origin + "/")
    posts = [["/channels/room:csrf/events", '{"type": "message", "data": {"text": "forged"}}']]
    page.evaluate(NO_CORS_POSTS, {"base": secure.url, "posts": posts})
    assert history(secure, "room:csrf") == []
    # From the gateway's own origin the cookie is honoured: the refusal above was the origin's.
    page.goto(secure.url + "/")
    status = page.evaluate(JSON_POST, {"url": posts[0][0], "body": '{"data": "mine"}'})
    assert status == 202
    assert [event["data"] for event in history(secure, "room:csrf")] == ["mine"]


def test_allowing_any_origin_does_not_lend_pages_the_cookie(
    context: Any, wildcard: GatewayProcess, foreign_origin: str
) -> None:
    token = mint(wildcard, "alice", {"user:alice": ["subscribe"]})
    context.add_cookies([{"name": "gateway_token", "value": token, "url": wildcard.url + "/"}])
    ws_url = f"ws://127.0.0.1:{wildcard.port}/ws"
    op = {"op": "subscribe", "channel": "user:alice", "ref": 1}
    page = context.new_page()
    page.goto(foreign_origin + "/")
    reply = page.evaluate(WS_FIRST_REPLY, {"url": ws_url, "op": op})
    assert reply.get("op") == "error" and reply.get("code") == "token_required", reply
    page.goto(wildcard.url + "/")  # the gateway's own page: its cookie counts
    reply = page.evaluate(WS_FIRST_REPLY, {"url": ws_url, "op": op})
    assert reply.get("op") == "ack", reply


def test_a_refused_websocket_tells_the_page_why(
    context: Any,
    dev: GatewayProcess,
    foreign_origin: str,
    tmp_path: Path,
) -> None:
    page = context.new_page()
    page.goto(foreign_origin + "/")
    closed = page.evaluate(WS_CLOSE, f"ws://127.0.0.1:{dev.port}/ws")
    assert closed == {"code": 1008, "reason": "origin not allowed"}
    limited = _start(
        tmp_path,
        GATEWAY_MAX_CONNECTIONS_PER_CLIENT="1",
        GATEWAY_ALLOWED_ORIGINS=foreign_origin,
    )
    try:
        closed = page.evaluate(WS_SECOND_CLOSE, f"ws://127.0.0.1:{limited.port}/ws")
        assert closed == {"code": 1013, "reason": "too many connections from this address"}
    finally:
        limited.stop(5)


def test_a_rebound_name_does_not_reach_a_dev_gateway(context: Any, dev: GatewayProcess) -> None:
    before = jobs(dev)
    page = context.new_page()
    rebound = f"http://{REBOUND_NAME}:{dev.port}"
    response = page.goto(rebound + "/")
    assert response is not None and response.status == 400
    body = '{"type": "sleep", "data": {"seconds": 0}}'
    assert page.evaluate(JSON_POST, {"url": "/jobs", "body": body}) == 400
    closed = page.evaluate(WS_CLOSE, f"ws://{REBOUND_NAME}:{dev.port}/ws")
    assert closed == {"code": 1008, "reason": "host not allowed"}
    assert jobs(dev) == before
