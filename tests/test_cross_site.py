"""Requests other sites' pages can make a browser send, against real gateway processes.

- State-changing requests must carry their body as `application/json` (a `no-cors` fetch can
  send `text/plain` or no type at all, never that) and come from an allowed `Origin`.
- The `gateway_token` cookie counts only for the gateway's own origin or a listed one, never
  through `GATEWAY_ALLOWED_ORIGINS='*'`, over HTTP and over `/ws`.
- Origins are compared by scheme, host and port.
- In dev mode only `Host` names of this machine are served (DNS rebinding), unless
  `GATEWAY_ALLOWED_HOSTS` says otherwise.
- A refused WebSocket handshake echoes `gateway.v1`, so clients read the close code and reason.

The browser side of the same attacks is in `tests/browser/test_refusals.py`.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import websockets

from tests.support import GatewayProcess, gateway_env, ws_client, ws_recv, ws_send, ws_until

API_KEY = "cross-site-api-key-0123456789"
SECRET = "c" * 40
AUTH = {"Authorization": f"Bearer {API_KEY}"}
JOB = b'{"type": "sleep", "data": {"seconds": 0}}'
SUBMISSIONS = (
    ("/jobs", JOB),
    ("/submit-job", b'{"jobType": "sleep", "jobData": {"seconds": 0}}'),
    ("/submitTask", b'{"taskName": "sleep", "parameters": {"seconds": 0}}'),
)


def _start(directory: Any, **env: str) -> GatewayProcess:
    process = GatewayProcess(gateway_env(GATEWAY_SUBMIT_RATE="0", **env), directory / "gw.log")
    process.start()
    return process


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    process = _start(tmp_path_factory.mktemp("dev"))
    yield process
    process.stop(5)


@pytest.fixture(scope="module")
def listed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """Secure, one allowed origin written with its default port (compared normalized)."""
    process = _start(
        tmp_path_factory.mktemp("listed"),
        GATEWAY_API_KEYS=API_KEY,
        GATEWAY_SECRET=SECRET,
        GATEWAY_ALLOWED_ORIGINS="https://app.example:443",
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


def job_count(gateway: GatewayProcess) -> int:
    response = httpx.get(gateway.url + "/jobs", params={"limit": 200}, headers=AUTH)
    assert response.status_code == 200, response.text
    return len(response.json()["jobs"])


def mint(gateway: GatewayProcess, sub: str, channels: dict[str, list[str]]) -> str:
    body = {"sub": sub, "channels": channels, "ttl": 300}
    response = httpx.post(gateway.url + "/tokens", json=body, headers=AUTH)
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


def assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith(code), response.text


def test_bodies_that_are_not_declared_json_are_refused(dev: GatewayProcess) -> None:
    before = job_count(dev)
    for path, body in SUBMISSIONS:
        for headers in (
            {},  # what fetch(url, {mode: 'no-cors', body: new Blob([...])}) sends
            {"content-type": "text/plain;charset=UTF-8"},
            {"content-type": "application/x-www-form-urlencoded"},
            {"content-type": "multipart/form-data; boundary=x"},
        ):
            request = httpx.Request("POST", dev.url + path, content=body, headers=headers)
            assert request.headers.get("content-type") == headers.get("content-type")
            assert_problem(httpx.Client().send(request), 415, "unsupported-media-type")
    assert job_count(dev) == before
    for path, body in SUBMISSIONS:  # the compat endpoints keep working with JSON
        for media in ("application/json", "application/json; charset=utf-8"):
            accepted = httpx.post(dev.url + path, content=body, headers={"content-type": media})
            assert accepted.status_code == 202, (path, accepted.text)
    assert job_count(dev) == before + 6
    # A POST without a body needs no type (the dashboard cancels with a bare POST).
    assert_problem(httpx.post(dev.url + "/jobs/nope/cancel"), 404, "not-found")


def test_state_changes_from_foreign_origins_are_refused(dev: GatewayProcess) -> None:
    same = f"http://127.0.0.1:{dev.port}"
    job = httpx.post(dev.url + "/jobs", content=JOB, headers={"content-type": "application/json"})
    job_id = job.json()["id"]
    before = job_count(dev)
    for origin in (
        "https://evil.example",
        "null",
        f"https://127.0.0.1:{dev.port}",  # another scheme
        f"http://127.0.0.1:{dev.port + 1}",  # another port
        f"http://localhost:{dev.port}",  # another host name
    ):
        headers = {"content-type": "application/json", "origin": origin}
        for path, body in SUBMISSIONS:
            refused = httpx.post(dev.url + path, content=body, headers=headers)
            assert_problem(refused, 403, "origin-not-allowed")
        assert_problem(
            httpx.post(f"{dev.url}/jobs/{job_id}/cancel", headers={"origin": origin}),
            403,
            "origin-not-allowed",
        )
        refused = httpx.post(
            dev.url + "/channels/room:xsite/events", content=b"{}", headers=headers
        )
        assert_problem(refused, 403, "origin-not-allowed")
    assert job_count(dev) == before
    history = httpx.get(dev.url + "/channels/room:xsite/events").json()
    assert history["events"] == []
    # The gateway's own pages (the dashboard) may.
    headers = {"content-type": "application/json", "origin": same}
    assert httpx.post(dev.url + "/jobs", content=JOB, headers=headers).status_code == 202
    # Reads from anywhere are unaffected (CORS decides whether a page may see the answer).
    assert httpx.get(dev.url + "/healthz", headers={"origin": "https://evil.example"}).is_success


def test_the_cookie_counts_only_from_trusted_origins(listed: GatewayProcess) -> None:
    token = mint(listed, "alice", {"user:alice": ["subscribe"], "room:cookie": ["publish"]})
    cookie = {"cookie": f"gateway_token={token}"}
    read = f"{listed.url}/channels/user:alice/events"
    assert httpx.get(read, headers=cookie).status_code == 200  # no Origin: not a foreign page
    listed_origin = {**cookie, "origin": "https://app.example"}
    assert httpx.get(read, headers=listed_origin).status_code == 200
    for origin in ("https://evil.example", "http://app.example", "null"):
        refused = httpx.get(read, headers={**cookie, "origin": origin})
        assert_problem(refused, 401, "token_required")
        # The token itself, sent on purpose, still works from anywhere.
        assert httpx.get(read, params={"token": token}, headers={"origin": origin}).is_success
    publish = f"{listed.url}/channels/room:cookie/events"
    json_cookie = {**cookie, "content-type": "application/json"}
    foreign = {**json_cookie, "origin": "https://evil.example"}
    assert_problem(httpx.post(publish, content=b"{}", headers=foreign), 403, "origin-not-allowed")
    ok = httpx.post(
        publish, content=b"{}", headers={**json_cookie, "origin": "https://app.example"}
    )
    assert ok.status_code == 202, ok.text
    assert httpx.post(publish, content=b"{}", headers=json_cookie).status_code == 202
    history = httpx.get(f"{listed.url}/channels/room:cookie/events", headers=AUTH).json()
    assert len(history["events"]) == 2


async def test_wildcard_origins_never_honour_the_cookie(wildcard: GatewayProcess) -> None:
    token = mint(wildcard, "alice", {"user:alice": ["subscribe"]})
    cookie = {"Cookie": f"gateway_token={token}"}
    subscribe = {"op": "subscribe", "channel": "user:alice", "ref": 1}
    async with ws_client(
        wildcard.ws_url, origin="https://evil.example", additional_headers=cookie
    ) as ws:
        await ws_send(ws, subscribe)
        refused = await ws_until(ws, lambda frame: frame.get("ref") == 1)
        assert refused[-1]["op"] == "error" and refused[-1]["code"] == "token_required"
        await ws_send(ws, {**subscribe, "token": token, "ref": 2})  # a token given on purpose
        assert (await ws_until(ws, lambda frame: frame.get("ref") == 2))[-1]["op"] == "ack"
    same = f"http://127.0.0.1:{wildcard.port}"
    async with ws_client(wildcard.ws_url, origin=same, additional_headers=cookie) as ws:
        await ws_send(ws, subscribe)
        assert (await ws_recv(ws))["op"] == "ack"
    read = f"{wildcard.url}/channels/user:alice/events"
    refused = httpx.get(read, headers={**cookie, "origin": "https://evil.example"})
    assert_problem(refused, 401, "token_required")
    assert httpx.get(read, headers={**cookie, "origin": same}).status_code == 200


async def test_websocket_origins_compare_scheme_host_and_port(listed: GatewayProcess) -> None:
    port = listed.port
    for origin in (
        f"https://127.0.0.1:{port}",
        f"http://127.0.0.1:{port + 1}",
        f"http://127.0.0.1.evil.example:{port}",
        "https://app.example:8443",
        "http://app.example",
        "null",
    ):
        async with ws_client(listed.ws_url, origin=origin) as ws:
            assert ws.subprotocol == "gateway.v1"  # echoed, so a browser reads the close
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None, origin
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
                1008,
                "origin not allowed",
            ), origin
    for origin in (f"http://127.0.0.1:{port}", f"HTTP://127.0.0.1:{port}", "https://app.example"):
        async with ws_client(listed.ws_url, origin=origin) as ws:
            await ws_send(ws, {"op": "ping", "ref": 1})
            assert (await ws_recv(ws))["op"] == "pong", origin


def raw_handshake(
    port: int, host: str, *, closes: bool = True
) -> tuple[bytes, tuple[int, str] | None]:
    """A WebSocket handshake with an arbitrary `Host` (client libraries derive it from the URL):
    the response head and, when the server `closes` at once, the close code and reason."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: gateway.v1\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        while closes and (len(rest) < 2 or len(rest) < 2 + (rest[1] & 0x7F)):
            chunk = sock.recv(4096)
            if not chunk:
                break
            rest += chunk
    if len(rest) >= 4 and rest[0] == 0x88:
        length = rest[1] & 0x7F
        code = struct.unpack("!H", rest[2:4])[0]
        return head, (code, rest[4 : 2 + length].decode())
    return head, None


def test_dev_mode_serves_only_names_of_this_machine(dev: GatewayProcess) -> None:
    port = dev.port
    for host in ("evil.example", f"evil.example:{port}", "localhost.evil.example", "10.0.0.8"):
        refused = httpx.get(dev.url + "/healthz", headers={"host": host})
        assert_problem(refused, 400, "host-not-allowed")
        head, close = raw_handshake(port, host)
        assert head.startswith(b"HTTP/1.1 101"), head
        assert b"sec-websocket-protocol: gateway.v1" in head.lower()
        assert close == (1008, "host not allowed")
    for host in (
        f"localhost:{port}",
        f"127.0.0.1:{port}",
        f"[::1]:{port}",
        "app.localhost",
        "127.0.0.2",
    ):
        assert httpx.get(dev.url + "/healthz", headers={"host": host}).status_code == 200, host
    head, close = raw_handshake(port, f"localhost:{port}", closes=False)
    assert head.startswith(b"HTTP/1.1 101") and close is None


def test_configured_hosts_replace_the_default(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gateway = gateway_factory(GATEWAY_ALLOWED_HOSTS="127.0.0.1 gw.example *.corp.example")
    for host in ("gw.example", "corp.example", "a.corp.example:8080", "127.0.0.1"):
        assert httpx.get(gateway.url + "/healthz", headers={"host": host}).status_code == 200
    for host in ("localhost", "evil.example", "corp.example.evil"):
        refused = httpx.get(gateway.url + "/healthz", headers={"host": host})
        assert_problem(refused, 400, "host-not-allowed")


def test_secure_mode_serves_any_host(listed: GatewayProcess) -> None:
    response = httpx.get(listed.url + "/healthz", headers={"host": "gateway.example"})
    assert response.status_code == 200
