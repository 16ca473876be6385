"""Hostile and malformed input: a 4xx problem or an error frame, never a 500, never a dead server.

Runs against a real gateway process (dev mode, memory backend). Hypothesis drives the WebSocket
op handling and the HTTP request models; a flood test shows that one client sending garbage at
full speed does not hold back another client's events beyond a bounded delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from gateway.errors import HandlerError
from gateway.jobs.builtin import resolve_data_path
from tests.support import GatewayProcess, gateway_env, ws_client, ws_recv, ws_send, ws_until

pytestmark = pytest.mark.serial  # measures latency under load: alone under xdist

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
OPS = st.sampled_from(["subscribe", "unsubscribe", "publish", "ping", "nope", "", "SUBSCRIBE"])
CHANNELS = st.sampled_from(["room:fuzz", "job:fuzz", "user:fuzz", "nope:x", "", "room", "a" * 300])
OP_FRAMES = st.fixed_dictionaries(
    {"op": OPS | JSON_SCALARS},
    optional={
        "channel": CHANNELS | JSON_VALUES,
        "since": st.sampled_from(["1-0", "0-0", "x", "99999999999999999999-1"]) | JSON_VALUES,
        "type": st.sampled_from(["message", "bad type!", ""]) | JSON_VALUES,
        "data": JSON_VALUES,
        "token": st.text(max_size=40) | JSON_VALUES,
        "ref": JSON_VALUES,
    },
)
SERVER_OPS = {"ack", "error", "event", "gap", "pong"}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("hostile")
    data_dir = directory / "data"
    data_dir.mkdir()
    (data_dir / "ok.csv").write_text("a,b\n1,2\n3,4\n")
    (directory / "secret.csv").write_text("secret,value\n7391.25,8462.5\n")
    process = GatewayProcess(
        gateway_env(
            GATEWAY_DATA_DIR=str(data_dir),
            GATEWAY_PUBLISH_RATE="0",
            GATEWAY_SUBMIT_RATE="0",
            GATEWAY_MAX_SUBSCRIPTIONS="10000",
        ),
        directory / "gateway.log",
    )
    process.start()
    yield process
    process.stop(5)


def assert_problem(response: httpx.Response, *codes: int) -> None:
    assert response.status_code in codes, (response.status_code, response.text[:300])
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert {"type", "title", "status", "detail"} <= set(body)


def test_bad_http_bodies_get_problems(gateway: GatewayProcess) -> None:
    url = gateway.url
    json_header = {"content-type": "application/json"}
    cases: list[tuple[str, str, bytes, dict[str, str], tuple[int, ...]]] = [
        ("POST", "/jobs", b"{not json", json_header, (400,)),
        ("POST", "/jobs", b"[1, 2]", json_header, (400,)),
        ("POST", "/jobs", b"\xff\xfe\x00garbage", json_header, (400,)),
        ("POST", "/jobs", b'{"type": 7}', json_header, (422,)),
        ("POST", "/jobs", b"{}", json_header, (422,)),
        ("POST", "/jobs", b'{"type": "sleep", "data": {"seconds": "x"}}', json_header, (422,)),
        (
            "POST",
            "/jobs",
            b'{"type": "sleep", "data": {"seconds": 1e999}}',
            json_header,
            (400, 422),
        ),
        (
            "POST",
            "/jobs",
            b'{"type": "sleep", "data": {"seconds": 1' + b"0" * 400 + b"}}",
            json_header,
            (400, 422),
        ),
        ("POST", "/jobs", b"[" * 5000 + b"]" * 5000, json_header, (400,)),
        ("POST", "/jobs", b'{"type": "sleep"}', {"content-type": "text/plain"}, (415,)),
        ("POST", "/tokens", b'{"sub": 1, "channels": {}}', json_header, (422,)),
        (
            "POST",
            "/tokens",
            b'{"sub": "a", "channels": {"room:a": "subscribe"}}',
            json_header,
            (422,),
        ),
        ("POST", "/channels/room:x/events", b'{"type": ["x"]}', json_header, (422,)),
        ("POST", "/channels/bad channel/events", b"{}", json_header, (400,)),
        ("POST", "/channels/nope:x/events", b"{}", json_header, (403,)),
        ("GET", "/channels/room:x/events?since=1-0;DROP", b"", {}, (400,)),
        ("GET", "/channels/room:x/events?limit=1e99", b"", {}, (400,)),
        ("GET", "/jobs/x?wait=nan", b"", {}, (400,)),
        ("GET", "/jobs/" + "a" * 500, b"", {}, (404,)),
        ("GET", "/events?channel=room:x&since=../../etc", b"", {}, (400,)),
        ("GET", "/events", b"", {}, (400,)),
        ("POST", "/jobs/nope/cancel", b"", {}, (404,)),
    ]
    for method, path, body, headers, codes in cases:
        response = httpx.request(method, url + path, content=body, headers=headers)
        assert_problem(response, *codes)
    assert httpx.get(url + "/healthz").status_code == 200


def test_last_event_id_injection_is_refused(gateway: GatewayProcess) -> None:
    for value in ("room:x@1-0,room:y@evil", "a" * 5000, "-1-0", "1-0\x0bX-Evil: 1", "1-0;x"):
        response = _raw_get(gateway.port, "/events?channel=room:x", {"Last-Event-ID": value})
        status = int(response.split(b" ", 2)[1])
        assert status == 400, (value[:40], response[:200])
    # A CR LF in the value splits it into a second header on the wire: the stream starts from
    # the valid part, and nothing of the injected header is reflected back.
    response = _raw_get(
        gateway.port, "/events?channel=room:x", {"Last-Event-ID": "1-0\r\nX-Evil: 1"}
    )
    head = response.split(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 200") and b"evil" not in head.lower()
    assert httpx.get(gateway.url + "/healthz").status_code == 200


def test_oversized_and_broken_requests_do_not_hurt_others(gateway: GatewayProcess) -> None:
    huge = _raw_get(gateway.port, "/healthz", {"X-Big": "a" * 200_000})
    assert huge == b"" or int(huge.split(b" ", 2)[1]) in {400, 431}
    many = _raw_get(gateway.port, "/healthz", {f"X-{n}": "v" * 20 for n in range(2000)})
    assert many == b"" or int(many.split(b" ", 2)[1]) in {400, 431}
    fine = _raw_get(gateway.port, "/healthz", {"X-Fine": "a" * 8000})
    assert fine.startswith(b"HTTP/1.1 200")
    garbage = _raw_bytes(gateway.port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 50)
    assert garbage == b"" or garbage.startswith(b"HTTP/1.1 4")
    assert httpx.get(gateway.url + "/healthz").status_code == 200


def _raw_bytes(port: int, payload: bytes) -> bytes:
    """Send raw bytes; return what comes back up to the end of the response head."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        chunks: list[bytes] = []
        try:
            sock.sendall(payload)
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks):
                    break
        except OSError:
            pass
        return b"".join(chunks)


def _raw_get(port: int, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return _raw_bytes(port, ("\r\n".join(lines) + "\r\n\r\n").encode())


def test_data_analysis_paths_stay_in_the_data_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "ok.csv").write_text("a\n1\n")
    (tmp_path / "secret.csv").write_text("s\n1\n")
    (data / "link.csv").symlink_to(tmp_path / "secret.csv")
    assert resolve_data_path(data, "ok.csv") == (data / "ok.csv").resolve()
    for name in ("../secret.csv", "/etc/passwd", "link.csv", "./../data/../secret.csv", "missing"):
        with pytest.raises(HandlerError):
            resolve_data_path(data, name)


async def test_data_analysis_traversal_over_http(gateway: GatewayProcess) -> None:
    url = gateway.url
    fine = httpx.post(url + "/jobs", json={"type": "data_analysis", "data": {"path": "ok.csv"}})
    assert fine.status_code == 202
    escape = {"type": "data_analysis", "data": {"path": "../secret.csv"}}
    job = httpx.post(url + "/jobs", json=escape).json()
    deadline = time.monotonic() + 15
    while (record := httpx.get(f"{url}/jobs/{job['id']}").json())["status"] not in {
        "failed",
        "completed",
    }:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert record["status"] == "failed"
    assert "outside the data directory" in str(record["error"])
    assert "7391" not in orjson.dumps(record).decode()  # nothing of the secret file leaks
    nul = {"type": "data_analysis", "data": {"path": "ok.csv\x00.txt"}}
    assert_problem(httpx.post(url + "/jobs", json=nul), 422)


async def test_bad_websocket_frames_get_error_frames(gateway: GatewayProcess) -> None:
    frames: list[str | bytes] = [
        "{not json",
        "[1, 2, 3]",
        '"just a string"',
        "1" + "0" * 500,
        "[" * 3000 + "]" * 3000,
        '{"op": "subscribe"}',
        '{"op": "subscribe", "channel": "bad channel"}',
        '{"op": "subscribe", "channel": "nope:x"}',
        '{"op": "subscribe", "channel": "room:a", "since": 12}',
        '{"op": "subscribe", "channel": "room:a", "since": "../../x"}',
        '{"op": "subscribe", "channel": "room:a", "token": 12}',
        '{"op": "publish", "channel": "job:x", "data": 1}',
        '{"op": "publish", "channel": "room:a", "type": {"x": 1}}',
        '{"op": "unsubscribe", "channel": "room:never"}',
        '{"op": "launch"}',
        '{"op": 12, "ref": {"x": [1]}}',
        '{"op": "ping", "ref": 1e999}',
        b"\x00\x01\x02binary",
        b"\xff\xfe not utf-8",
    ]
    async with ws_client(gateway.ws_url) as ws:
        for n, frame in enumerate(frames):
            await ws.send(frame)
            await ws_send(ws, {"op": "ping", "ref": f"probe-{n}"})
            got = await ws_until(ws, lambda f, n=n: f.get("ref") == f"probe-{n}")
            assert got[-1]["op"] == "pong"
            assert any(f["op"] == "error" for f in got[:-1]), (frame, got)
            assert all(f["op"] in SERVER_OPS for f in got)


@pytest.fixture(scope="module")
def fuzz_socket(gateway: GatewayProcess) -> Iterator[ClientConnection]:
    with connect(gateway.ws_url, subprotocols=["gateway.v1"], open_timeout=10) as ws:  # type: ignore[list-item]
        yield ws


def _probe(ws: ClientConnection, marker: str) -> list[dict[str, Any]]:
    ws.send(orjson.dumps({"op": "ping", "ref": marker}).decode())
    frames = []
    deadline = time.monotonic() + 10
    while True:
        frame = orjson.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
        frames.append(frame)
        if frame.get("op") == "pong" and frame.get("ref") == marker:
            return frames


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(op=OP_FRAMES | JSON_VALUES)
def test_any_op_gets_a_protocol_answer(fuzz_socket: ClientConnection, op: Any) -> None:
    """Whatever a client sends, the answer is protocol frames and the connection stays open."""
    fuzz_socket.send(orjson.dumps(op).decode())
    marker = os.urandom(6).hex()
    frames = _probe(fuzz_socket, marker)
    assert all(isinstance(f, dict) and f.get("op") in SERVER_OPS for f in frames)


@pytest.fixture(scope="module")
def http(gateway: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        yield client


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    path=st.sampled_from(
        ["/jobs", "/submit-job", "/submitTask", "/tokens", "/channels/room:h/events"]
    ),
    body=JSON_VALUES
    | st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(["sleep", "fail", "data_analysis"]) | JSON_VALUES,
            "data": JSON_VALUES,
            "jobType": JSON_VALUES,
            "taskName": JSON_VALUES,
            "sub": JSON_VALUES,
            "channels": JSON_VALUES,
            "ttl": JSON_VALUES,
            "callback_url": JSON_VALUES,
        },
    ),
)
def test_request_models_never_500(http: httpx.Client, path: str, body: Any) -> None:
    response = http.post(
        path, content=orjson.dumps(body), headers={"content-type": "application/json"}
    )
    assert response.status_code < 500, response.text[:300]
    if response.status_code >= 400:
        assert response.headers["content-type"] == "application/problem+json"


async def test_garbage_flood_does_not_delay_other_clients(gateway: GatewayProcess) -> None:
    """A client blasting garbage frames at full speed; another's events still arrive promptly."""
    stop = threading.Event()
    sent = 0

    def flood() -> None:
        # It never reads its error frames, so the gateway cuts it off as a slow consumer (4008)
        # every so often: it reconnects at once and carries on, as a hostile client would.
        nonlocal sent
        while not stop.is_set():
            with (
                contextlib.suppress(ConnectionClosed, OSError),
                connect(gateway.ws_url, open_timeout=10) as ws,
            ):
                while not stop.is_set():
                    ws.send("{garbage" if sent % 2 else b"\x00\xff")
                    sent += 1

    thread = threading.Thread(target=flood, daemon=True)
    delays: list[float] = []
    async with ws_client(gateway.ws_url) as listener, httpx.AsyncClient() as client:
        await ws_send(listener, {"op": "subscribe", "channel": "room:flood", "ref": 1})
        assert (await ws_recv(listener))["op"] == "ack"
        thread.start()
        await asyncio.sleep(0.3)
        for n in range(20):
            started = time.monotonic()
            response = await client.post(
                f"{gateway.url}/channels/room:flood/events", json={"data": n}
            )
            assert response.status_code == 202
            await ws_until(listener, lambda f, n=n: f.get("data") == n, timeout=5)
            delays.append(time.monotonic() - started)
            await asyncio.sleep(0.05)
        stop.set()
    thread.join(10)
    assert sent > 1000  # the flood really ran
    assert max(delays) < 1.0, delays


# --- event ids and channel names at their edges, against Redis ---------------------------------

BAD_SINCE = [
    "1-0\n",  # `$` in a pattern matched before a trailing newline
    "18446744073709551616-0",  # 2**64: Redis refuses it (it answered 503 "bus unavailable")
    "0-18446744073709551616",
    "99999999999999999999-1",
    "18446744073709551615-18446744073709551615",  # the largest id: nothing comes after it
    "\u0661-\u0660",  # Arabic-Indic digits: `\d` took them, int() too, Redis does not
]
BAD_CHANNELS = ["room:x\n", "room:\n", "room:x\n\n"]


@pytest.fixture(scope="module")
def redis_gateway(
    tmp_path_factory: pytest.TempPathFactory, redis_server: Any
) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("hostile-redis")
    process = GatewayProcess(
        gateway_env(REDIS_URL=redis_server.url, GATEWAY_PUBLISH_RATE="0"),
        directory / "gateway.log",
    )
    process.start()
    yield process
    process.stop(5)


def test_since_edges_are_400_not_503(redis_gateway: GatewayProcess) -> None:
    url = redis_gateway.url
    job = httpx.post(url + "/jobs", json={"type": "sleep", "data": {"seconds": 0}}).json()
    published = httpx.post(url + "/channels/room:edge/events", json={"data": 1})
    assert published.status_code == 202
    for since in BAD_SINCE:
        params = {"since": since}
        for path in ("/channels/room:edge/events", f"/jobs/{job['id']}"):
            assert_problem(httpx.get(url + path, params=params), 400)
        for path in ("/events?channel=room:edge", f"/jobs/{job['id']}/events"):
            assert_problem(httpx.get(url + path, params=params, timeout=5), 400)
    # The largest id that is not the very last is fine: an empty, complete-or-gap answer.
    fine = httpx.get(url + "/channels/room:edge/events", params={"since": "18446744073709551615-0"})
    assert fine.status_code == 200, fine.text
    assert httpx.get(url + "/readyz").status_code == 200


def test_channel_names_with_a_trailing_newline_are_refused(redis_gateway: GatewayProcess) -> None:
    url = redis_gateway.url
    for channel in BAD_CHANNELS:
        quoted = channel.replace("\n", "%0A")
        assert_problem(httpx.get(f"{url}/channels/{quoted}/events"), 400)
        assert_problem(httpx.post(f"{url}/channels/{quoted}/events", json={"data": 1}), 400)
        assert_problem(httpx.get(url + "/events", params={"channel": channel}, timeout=5), 400)


async def test_websocket_since_and_channel_edges_get_error_frames(
    redis_gateway: GatewayProcess,
) -> None:
    async with ws_client(redis_gateway.ws_url) as ws:
        for n, since in enumerate(BAD_SINCE):
            op = {"op": "subscribe", "channel": "room:edge", "since": since, "ref": n}
            await ws_send(ws, op)
            frame = (await ws_until(ws, lambda f, n=n: f.get("ref") == n))[-1]
            assert frame["op"] == "error" and frame["code"] == "invalid_since", frame
        for n, channel in enumerate(BAD_CHANNELS, start=100):
            await ws_send(ws, {"op": "subscribe", "channel": channel, "ref": n})
            frame = (await ws_until(ws, lambda f, n=n: f.get("ref") == n))[-1]
            assert frame["op"] == "error" and frame["code"] == "invalid_channel", frame
            op = {"op": "publish", "channel": channel, "type": "message", "data": 1, "ref": -n}
            await ws_send(ws, op)
            frame = (await ws_until(ws, lambda f, n=n: f.get("ref") == -n))[-1]
            assert frame["op"] == "error" and frame["code"] == "invalid_channel", frame
        await ws_send(ws, {"op": "publish", "channel": "room:edge", "type": "a.b\n", "ref": "t"})
        frame = (await ws_until(ws, lambda f: f.get("ref") == "t"))[-1]
        assert frame["op"] == "error", frame
