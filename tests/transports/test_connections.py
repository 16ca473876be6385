"""Connections that never become requests, per-address counts of TCP connections, and whose
`X-Forwarded-For` is believed. Real `gateway serve` processes, raw sockets from 127.0.0.x.

The source address of a test connection is picked by binding the client socket to 127.0.0.1,
127.0.0.2, ... (all of 127/8 is loopback on Linux), so one test can be several clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import websockets

from gateway.errors import SettingsError
from gateway.limits import ConnectionGate, TrustedProxies, peer_key, tcp_limit
from gateway.settings import Settings
from tests.support import GatewayProcess, wait_until, ws_client, ws_recv, ws_send
from tests.transports.raw_connections import (
    PARTIAL_HEAD,
    connect,
    is_open,
    open_connections,
    received,
)

Factory = Callable[..., GatewayProcess]
FLOOD = 450


def status_from(source: str, url: str, **kwargs: Any) -> int | None:
    """A GET from `source`; its status, or None when the connection was refused or reset."""
    transport = httpx.HTTPTransport(local_address=source)
    try:
        with httpx.Client(transport=transport, timeout=5) as client:
            return client.get(url, **kwargs).status_code
    except httpx.TransportError:
        return None


def post_from(source: str, url: str, **kwargs: Any) -> int:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=5) as client:
        return client.post(url, **kwargs).status_code


def counter_value(gateway: GatewayProcess, sample: str) -> float:
    """A sample from `/metrics` (asked from 127.0.0.9, which no test fills up)."""
    transport = httpx.HTTPTransport(local_address="127.0.0.9")
    with httpx.Client(transport=transport, timeout=5) as client:
        text = client.get(gateway.url + "/metrics").text
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


@contextlib.contextmanager
def held(sockets: list[socket.socket]) -> Iterator[list[socket.socket]]:
    try:
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def refused(sock: socket.socket) -> bool:
    """The gateway answered 429 at once and closed (what a client over the limit sees)."""
    answer = received(sock, timeout=5)
    return answer.startswith(b"HTTP/1.1 429 ") and b"application/problem+json" in answer


# --- request heads -----------------------------------------------------------------------------


def test_idle_and_unfinished_heads_close_within_the_header_timeout(
    gateway_factory: Factory,
) -> None:
    timeout = 1.0
    gateway = gateway_factory(
        GATEWAY_HEADER_TIMEOUT=str(timeout),
        GATEWAY_MAX_CONNECTIONS_PER_CLIENT="0",
        GATEWAY_CONNECT_RATE="0",  # 450 connections at once from one address
    )
    started = time.monotonic()
    idle = connect(gateway.port)
    partial = connect(gateway.port, payload=PARTIAL_HEAD)
    with held([idle, partial, *open_connections(gateway.port, FLOOD - 2)]) as sockets:
        # A normal client is served meanwhile.
        assert httpx.get(gateway.url + "/healthz", timeout=5).status_code == 200
        answer = received(partial, timeout=timeout + 5)
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b"application/problem+json" in answer and b"request-timeout" in answer
        assert received(idle, timeout=timeout + 5) == b""  # nothing begun, nothing to answer
        wait_until(
            lambda: not any(is_open(s) for s in sockets), timeout + 5, "every connection closed"
        )
        took = time.monotonic() - started
    assert took < timeout + 5
    assert counter_value(gateway, "gateway_request_head_timeouts_total") >= FLOOD


@pytest.mark.parametrize("then", [PARTIAL_HEAD, b"\r\n"], ids=["partial-head", "crlf"])
def test_a_keep_alive_connection_must_finish_its_next_head_too(
    gateway_factory: Factory, then: bytes
) -> None:
    """uvicorn's keep-alive timer stops at the first byte after a response, even one that
    begins no request (a CRLF); the next head is then due within the header timeout."""
    gateway = gateway_factory(GATEWAY_HEADER_TIMEOUT="1")
    with held(
        [connect(gateway.port, payload=b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")]
    ) as [sock]:
        sock.setblocking(True)
        sock.settimeout(5)
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 ")
        sock.sendall(then)
        answer += received(sock, timeout=4)  # before uvicorn's keep-alive timeout (5 s) anyway
    rest = answer.partition(b"\r\n")[2]
    if then == PARTIAL_HEAD:
        assert b"HTTP/1.1 408 " in rest
    else:
        assert b"HTTP/1.1 " not in rest  # closed without an answer: no request had begun


def test_an_endless_request_head_is_cut_off(gateway_factory: Factory) -> None:
    gateway = gateway_factory(GATEWAY_HEADER_TIMEOUT="30")
    line = b"X-Filler: " + b"a" * 1000 + b"\r\n"
    with held([connect(gateway.port, payload=PARTIAL_HEAD + b"x\r\n" + line * 70)]) as [sock]:
        # Long before the header timeout. (If the gateway closes while part of the head is
        # still unread, the kernel resets the connection and the 431 may be lost with it.)
        answer = received(sock, timeout=10)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert status_from("127.0.0.1", gateway.url + "/healthz") == 200


def test_file_descriptors_hold_under_a_flood_from_one_address(gateway_factory: Factory) -> None:
    """450 connections from one address against a gateway allowed 250 open files: the ones over
    the per-address limit are closed at once, so other clients still get in."""
    gateway = gateway_factory(
        GATEWAY_MAX_CONNECTIONS_PER_CLIENT="100",
        GATEWAY_HEADER_TIMEOUT="60",
        GATEWAY_CONNECT_RATE="0",  # the open count is under test here, not the rate
    )
    assert gateway.process is not None
    hard = resource.prlimit(gateway.process.pid, resource.RLIMIT_NOFILE)[1]
    resource.prlimit(gateway.process.pid, resource.RLIMIT_NOFILE, (250, hard))
    allowed = tcp_limit(100)
    with held(open_connections(gateway.port, FLOOD)) as sockets:
        wait_until(lambda: sum(map(is_open, sockets)) == allowed, 10, "those over the limit closed")
        assert status_from("127.0.0.2", gateway.url + "/healthz") == 200
        assert sum(map(is_open, sockets)) == allowed
    refusals = 'gateway_connections_refused_total{reason="per_address"}'
    assert counter_value(gateway, refusals) == FLOOD - allowed


# --- per-address count of TCP connections ------------------------------------------------------


def test_every_tcp_connection_counts_against_the_per_address_limit(
    gateway_factory: Factory,
) -> None:
    gateway = gateway_factory(GATEWAY_MAX_CONNECTIONS_PER_CLIENT="3", GATEWAY_HEADER_TIMEOUT="60")
    healthz = gateway.url + "/healthz"
    with held([connect(gateway.port) for _ in range(tcp_limit(3))]) as idle:
        assert refused(connect(gateway.port))
        # A client that sends its request at once gets the 429 or, when its request arrived
        # before the close, a reset.
        assert status_from("127.0.0.1", healthz) in {429, None}
        assert status_from("127.0.0.2", healthz) == 200  # another address
        idle.pop().close()
        wait_until(lambda: status_from("127.0.0.1", healthz) == 200, 5, "the slot released")
    assert counter_value(gateway, 'gateway_connections_refused_total{reason="per_address"}') >= 2


async def test_a_websocket_keeps_its_count_across_the_upgrade(gateway_factory: Factory) -> None:
    gateway = gateway_factory(GATEWAY_MAX_CONNECTIONS_PER_CLIENT="2", GATEWAY_HEADER_TIMEOUT="60")
    healthz = gateway.url + "/healthz"
    async with ws_client(gateway.ws_url) as ws:
        await ws_send(ws, {"op": "ping"})
        assert (await ws_recv(ws))["op"] == "pong"
        with held([connect(gateway.port) for _ in range(tcp_limit(2) - 1)]):
            assert refused(connect(gateway.port))  # the WebSocket still counts
    # ...and is released when it closes, every time.
    for _ in range(5):
        async with ws_client(gateway.ws_url) as ws:
            await ws_send(ws, {"op": "ping"})
            assert (await ws_recv(ws))["op"] == "pong"

    async def both_free() -> bool:
        return await asyncio.to_thread(status_from, "127.0.0.1", healthz) == 200

    deadline = time.monotonic() + 5
    while not await both_free():
        assert time.monotonic() < deadline, "the WebSocket's slots were never released"
        await asyncio.sleep(0.05)
    async with ws_client(gateway.ws_url), ws_client(gateway.ws_url):
        with held([connect(gateway.port) for _ in range(tcp_limit(2) - 2)]):
            assert await asyncio.to_thread(refused, connect(gateway.port))


# --- X-Forwarded-For ----------------------------------------------------------------------------

SUBMIT = {"type": "sleep", "data": {"seconds": 0}}
SLOW_SUBMITS = {"GATEWAY_SUBMIT_RATE": "0.001", "GATEWAY_SUBMIT_BURST": "2"}


def submissions(gateway: GatewayProcess, source: str, forwarded: list[str]) -> list[int]:
    return [
        post_from(source, gateway.url + "/jobs", json=SUBMIT, headers={"X-Forwarded-For": ip})
        for ip in forwarded
    ]


def test_forwarded_for_from_an_untrusted_peer_is_ignored(gateway_factory: Factory) -> None:
    gateway = gateway_factory(GATEWAY_MAX_CONNECTIONS_PER_CLIENT="2", **SLOW_SUBMITS)
    # Three "different clients" by their header, one by their address: one bucket.
    codes = submissions(gateway, "127.0.0.1", ["198.51.100.1", "198.51.100.2", "198.51.100.3"])
    assert codes == [202, 202, 429]
    with held([connect(gateway.port) for _ in range(tcp_limit(2))]):
        forged = {"X-Forwarded-For": "198.51.100.4"}
        assert status_from("127.0.0.1", gateway.url + "/healthz", headers=forged) in {429, None}


async def test_forwarded_for_from_a_trusted_proxy_is_honoured(gateway_factory: Factory) -> None:
    gateway = gateway_factory(
        GATEWAY_TRUSTED_PROXIES="127.0.0.1",
        GATEWAY_MAX_CONNECTIONS_PER_CLIENT="2",
        GATEWAY_HEADER_TIMEOUT="60",
        **SLOW_SUBMITS,
    )
    url = gateway.url
    # Each forwarded client has its own submission bucket; a repeated one runs out.
    many = ["198.51.100.1", "198.51.100.2", "198.51.100.3", "198.51.100.4"]
    assert submissions(gateway, "127.0.0.1", many) == [202] * 4
    assert submissions(gateway, "127.0.0.1", ["198.51.100.9"] * 3) == [202, 202, 429]
    # The proxy's own TCP connections are not counted (it carries many clients)...
    with held([connect(gateway.port) for _ in range(3)]):
        assert status_from("127.0.0.1", url + "/healthz") == 200
    # ...but an untrusted peer's are, whatever it forwards, and its header is ignored.
    assert submissions(gateway, "127.0.0.2", many[:3]) == [202, 202, 429]
    with held([connect(gateway.port, "127.0.0.2") for _ in range(tcp_limit(2))]):
        assert refused(connect(gateway.port, "127.0.0.2"))
    # Streams are counted per forwarded client behind the proxy.
    client_a = {"additional_headers": {"X-Forwarded-For": "203.0.113.7"}}
    client_b = {"additional_headers": {"X-Forwarded-For": "203.0.113.8"}}
    async with ws_client(gateway.ws_url, **client_a), ws_client(gateway.ws_url, **client_a):
        async with ws_client(gateway.ws_url, **client_a) as third:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(third.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        sse = await asyncio.to_thread(
            httpx.get,
            url + "/events",
            params={"channel": "room:xff"},
            headers={"X-Forwarded-For": "203.0.113.7"},
        )
        assert sse.status_code == 429 and "retry-after" in sse.headers
        async with ws_client(gateway.ws_url, **client_b) as other:
            await ws_send(other, {"op": "ping"})
            assert (await ws_recv(other))["op"] == "pong"


# --- settings and pure parts -----------------------------------------------------------------


def test_trusted_proxies_and_header_timeout_settings() -> None:
    settings = Settings.from_env(
        {"GATEWAY_TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8 ::1", "GATEWAY_HEADER_TIMEOUT": "2.5"}
    )
    assert settings.trusted_proxies == ("127.0.0.1/32", "10.0.0.0/8", "::1/128")
    assert settings.header_timeout == 2.5
    assert Settings.from_env(settings.to_env()).trusted_proxies == settings.trusted_proxies
    assert Settings().trusted_proxies == ()  # nobody's X-Forwarded-For by default
    for name, value in (
        ("GATEWAY_TRUSTED_PROXIES", "proxy.internal"),
        ("GATEWAY_TRUSTED_PROXIES", "*"),
        ("GATEWAY_HEADER_TIMEOUT", "0"),
    ):
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({name: value})


def test_what_a_connection_is_counted_under() -> None:
    trusted = TrustedProxies(["10.0.0.0/8", "::1/128"])
    assert "10.1.2.3" in trusted and "::1" in trusted
    assert "11.0.0.1" not in trusted and "not-an-ip" not in trusted
    assert peer_key("203.0.113.5") == "203.0.113.5"
    one_line = "2001:db8:1:2::/64"
    assert peer_key("2001:db8:1:2:3:4:5:6") == peer_key("2001:db8:1:2:ffff::1") == one_line
    assert peer_key("::ffff:203.0.113.5") == "203.0.113.5"  # IPv4 on a dual-stack socket
    gate = ConnectionGate.from_settings(
        Settings(max_connections_per_client=2, trusted_proxies=("10.0.0.0/8",))
    )
    assert gate.key_for("10.0.0.1") is None and gate.key_for("192.0.2.1") == "192.0.2.1"
    unlimited = ConnectionGate.from_settings(Settings(max_connections_per_client=0))
    assert unlimited.key_for("192.0.2.1") is None
