"""Authentication and channel authorization against a real gateway process in secure mode.

Each rule has a refusal and an allowed case: API keys for server calls, job tokens scoped to one
job, room tokens with and without `publish`, `user:` channels by subject, expired and tampered
tokens, secret rotation, WebSocket Origin, CORS, and tokens kept out of the access log; a secret
without API keys mints no tokens, and tokens made to live too long are refused.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import websockets

from gateway.auth import ChannelPolicy
from gateway.errors import Forbidden, SettingsError
from gateway.settings import Settings
from tests.support import (
    GatewayProcess,
    collect_sse,
    gateway_env,
    ws_client,
    ws_recv,
    ws_send,
    ws_until,
)

API_KEY = "test-api-key-0123456789"
SECRET = "s" * 40
OLD_SECRET = "o" * 40
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("secure")
    process = GatewayProcess(
        gateway_env(
            GATEWAY_API_KEYS=f"{API_KEY} another-key-0123456789",
            GATEWAY_SECRET=f"{SECRET} {OLD_SECRET}",
            GATEWAY_ALLOWED_ORIGINS="https://app.example",
            GATEWAY_SSE_PING="1",
        ),
        directory / "gateway.log",
    )
    process.start()
    yield process
    process.stop(5)


def submit(url: str, **data: Any) -> dict[str, Any]:
    body = {"type": "sleep", "data": {"seconds": 0.2, "steps": 2, **data}}
    response = httpx.post(f"{url}/jobs", json=body, headers=AUTH)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def mint(url: str, sub: str, channels: dict[str, list[str]], ttl: int = 60) -> str:
    response = httpx.post(
        f"{url}/tokens", json={"sub": sub, "channels": channels, "ttl": ttl}, headers=AUTH
    )
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


def test_server_calls_need_an_api_key(secure: GatewayProcess) -> None:
    body = {"type": "sleep", "data": {"seconds": 0}}
    for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789"}):
        refused = httpx.post(f"{secure.url}/jobs", json=body, headers=headers)
        assert refused.status_code == 401
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["type"].endswith("api_key_required")
        assert refused.headers["www-authenticate"].startswith("Bearer")
    for path, payload in (
        ("/submit-job", {"jobType": "sleep", "jobData": {"seconds": 0}}),
        ("/submitTask", {"taskName": "sleep", "parameters": {"seconds": 0}}),
        ("/tokens", {"sub": "x", "channels": {"room:a": ["subscribe"]}}),
        ("/jobs/abc/cancel", {}),
        ("/channels/room:a/events", {"data": 1}),
    ):
        assert httpx.post(secure.url + path, json=payload).status_code == 401, path
    assert httpx.post(f"{secure.url}/jobs", json=body, headers=AUTH).status_code == 202
    # The second key works too (rotation), and X-API-Key is accepted as well.
    other = {"X-API-Key": "another-key-0123456789"}
    assert httpx.post(f"{secure.url}/jobs", json=body, headers=other).status_code == 202


async def test_job_token_reads_its_job_only(secure: GatewayProcess) -> None:
    job, other = submit(secure.url), submit(secure.url)
    token = job["token"]
    events = await collect_sse(f"{secure.url}/jobs/{job['id']}/events?token={token}")
    assert events[-1].event == "job.completed"
    status = httpx.get(f"{secure.url}/jobs/{job['id']}", params={"token": token})
    assert status.status_code == 200
    refused = httpx.get(f"{secure.url}/jobs/{other['id']}/events", params={"token": token})
    assert refused.status_code == 403 and refused.json()["type"].endswith("forbidden")
    assert httpx.get(f"{secure.url}/jobs/{other['id']}", params={"token": token}).status_code == 403
    assert httpx.get(f"{secure.url}/jobs/{other['id']}/events").status_code == 401
    assert httpx.head(f"{secure.url}/jobs/{other['id']}").status_code == 401
    assert httpx.get(f"{secure.url}/jobs").status_code == 401  # the listing is for the server
    assert httpx.get(f"{secure.url}/jobs", headers=AUTH).status_code == 200
    history = httpx.get(f"{secure.url}/channels/job:{other['id']}/events", params={"token": token})
    assert history.status_code == 403
    # The server, with its API key, reads anything.
    assert httpx.get(f"{secure.url}/jobs/{other['id']}", headers=AUTH).status_code == 200


async def test_job_token_in_cookie_and_over_websocket(secure: GatewayProcess) -> None:
    job = submit(secure.url)
    events = await collect_sse(
        f"{secure.url}/jobs/{job['id']}/events", headers={"Cookie": f"gateway_token={job['token']}"}
    )
    assert events[-1].event == "job.completed"
    async with ws_client(f"{secure.ws_url}?token={job['token']}") as ws:
        await ws_send(ws, {"op": "subscribe", "channel": f"job:{job['id']}", "ref": 1})
        frames = await ws_until(ws, lambda f: f.get("type") == "job.completed")
        assert frames[0]["op"] == "ack"
        await ws_send(ws, {"op": "subscribe", "channel": "job:someoneelse", "ref": 2})
        error = await ws_until(ws, lambda f: f.get("ref") == 2)
        assert error[-1]["op"] == "error" and error[-1]["code"] == "forbidden"
        await ws_send(ws, {"op": "ping", "ref": 3})
        assert (await ws_until(ws, lambda f: f.get("ref") == 3))[-1]["op"] == "pong"
    cookie = {"Cookie": f"gateway_token={job['token']}"}
    async with ws_client(secure.ws_url, additional_headers=cookie) as ws:
        await ws_send(ws, {"op": "subscribe", "channel": f"job:{job['id']}", "ref": 1})
        frames = await ws_until(ws, lambda f: f.get("type") == "job.completed")
        assert frames[0]["op"] == "ack"


async def test_room_token_without_publish_cannot_publish(secure: GatewayProcess) -> None:
    reader = mint(secure.url, "alice", {"room:auth": ["subscribe"]})
    writer = mint(secure.url, "bob", {"room:*": ["subscribe", "publish"]})
    async with ws_client(secure.ws_url) as ws:
        await ws_send(ws, {"op": "subscribe", "channel": "room:auth", "token": reader, "ref": 1})
        assert (await ws_recv(ws))["op"] == "ack"
        op = {"op": "publish", "channel": "room:auth", "data": 1, "token": reader, "ref": 2}
        await ws_send(ws, op)
        refused = await ws_until(ws, lambda f: f.get("ref") == 2)
        assert refused[-1]["op"] == "error" and refused[-1]["code"] == "forbidden"
        await ws_send(ws, {**op, "token": writer, "ref": 3, "data": 2})
        frames = await ws_until(ws, lambda f: f["op"] == "event")
        assert frames[-1]["data"] == 2
        await ws_send(ws, {"op": "subscribe", "channel": "room:other", "ref": 4})
        missing = await ws_until(ws, lambda f: f.get("ref") == 4)
        assert missing[-1]["code"] == "token_required"
    url = f"{secure.url}/channels/room:auth/events"
    bearer = {"Authorization": f"Bearer {reader}"}
    assert httpx.post(url, json={"data": 3}, headers=bearer).status_code == 403
    bearer = {"Authorization": f"Bearer {writer}"}
    assert httpx.post(url, json={"data": 4}, headers=bearer).status_code == 202
    job_channel = f"{secure.url}/channels/job:abc/events"
    assert httpx.post(job_channel, json={"data": 4}, headers=bearer).status_code == 403


async def test_user_channels_need_the_subject(secure: GatewayProcess) -> None:
    alice = mint(secure.url, "alice", {"room:x": ["subscribe"]})
    granted_but_not_alice = mint(secure.url, "mallory", {"user:alice": ["subscribe"]})
    url = f"{secure.url}/channels/user:alice/events"
    assert httpx.get(url, params={"token": alice}).status_code == 200
    assert httpx.get(url, params={"token": granted_but_not_alice}).status_code == 403
    assert (
        httpx.get(f"{secure.url}/channels/user:bob/events", params={"token": alice}).status_code
        == 403
    )


def test_unknown_namespace_and_bad_token_requests(secure: GatewayProcess) -> None:
    token = mint(secure.url, "a", {"room:*": ["subscribe"]})
    assert (
        httpx.get(f"{secure.url}/channels/nope:x/events", params={"token": token}).status_code
        == 403
    )
    bad_requests = [
        {"sub": "", "channels": {"room:a": ["subscribe"]}},
        {"sub": "a", "channels": {"room:a": ["own"]}},
        {"sub": "a", "channels": {"nope:*": ["subscribe"]}},
        {"sub": "a", "channels": {"room:a": ["subscribe"]}, "ttl": 10**9},
        {"sub": "a", "channels": []},
    ]
    for body in bad_requests:
        response = httpx.post(f"{secure.url}/tokens", json=body, headers=AUTH)
        assert response.status_code == 422, body


def test_expired_tampered_and_rotated_tokens(secure: GatewayProcess) -> None:
    job = submit(secure.url)
    url = f"{secure.url}/jobs/{job['id']}"
    claims = {"sub": "", "channels": {f"job:{job['id']}": ["subscribe"]}}
    expired = jwt.encode({**claims, "exp": int(time.time()) - 5}, SECRET, algorithm="HS256")
    refused = httpx.get(url, params={"token": expired})
    assert refused.status_code == 401 and refused.json()["type"].endswith("token_expired")
    head, body, signature = job["token"].split(".")
    tampered = f"{head}.{body}.{signature[:-4]}AAAA"
    assert httpx.get(url, params={"token": tampered}).status_code == 401
    forged = jwt.encode({**claims, "exp": int(time.time()) + 60}, "x" * 40, algorithm="HS256")
    assert httpx.get(url, params={"token": forged}).status_code == 401
    none_alg = jwt.encode({**claims, "exp": int(time.time()) + 60}, None, algorithm="none")
    assert httpx.get(url, params={"token": none_alg}).status_code == 401
    rotated = jwt.encode({**claims, "exp": int(time.time()) + 60}, OLD_SECRET, algorithm="HS256")
    assert httpx.get(url, params={"token": rotated}).status_code == 200
    assert jwt.decode(job["token"], SECRET, algorithms=["HS256"])["channels"] == {
        f"job:{job['id']}": ["subscribe"]
    }


async def test_expired_token_on_a_finished_job_stream_gets_204(secure: GatewayProcess) -> None:
    job = submit(secure.url)
    await collect_sse(f"{secure.url}/jobs/{job['id']}/events?token={job['token']}")
    claims = {"sub": "", "channels": {f"job:{job['id']}": ["subscribe"]}}
    expired = jwt.encode({**claims, "exp": int(time.time()) - 5}, SECRET, algorithm="HS256")
    response = httpx.get(f"{secure.url}/jobs/{job['id']}/events", params={"token": expired})
    assert response.status_code == 204


async def test_token_expiring_mid_stream_ends_it_clearly(secure: GatewayProcess) -> None:
    token = mint(secure.url, "carol", {"room:expiry": ["subscribe"]}, ttl=2)
    started = time.monotonic()
    async with ws_client(secure.ws_url) as ws:
        await ws_send(ws, {"op": "subscribe", "channel": "room:expiry", "token": token, "ref": 1})
        assert (await ws_recv(ws))["op"] == "ack"
        frames = await ws_until(ws, lambda f: f["op"] == "error", timeout=6)
        assert frames[-1]["code"] == "token_expired"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert time.monotonic() - started < 6
    sse_token = mint(secure.url, "carol", {"room:expiry": ["subscribe"]}, ttl=2)
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream(
            "GET", f"{secure.url}/events", params={"channel": "room:expiry", "token": sse_token}
        ) as response,
    ):
        assert response.status_code == 200
        text = ""
        async for chunk in response.aiter_text():
            text += chunk
    # One block: the long `retry:` rides with the error's JSON data (no empty message).
    assert 'retry: 3600000\ndata: {"type":"error","code":"token_expired"' in text


async def test_foreign_origin_is_refused(secure: GatewayProcess) -> None:
    job = submit(secure.url)
    for origin in ("https://evil.example", "null"):
        async with ws_client(secure.ws_url, origin=origin) as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    same = f"http://127.0.0.1:{secure.port}"
    for origin in ("https://app.example", same):
        async with ws_client(f"{secure.ws_url}?token={job['token']}", origin=origin) as ws:
            await ws_send(ws, {"op": "ping", "ref": 1})
            assert (await ws_recv(ws))["op"] == "pong"


def test_cors_allowlist_without_wildcard(secure: GatewayProcess) -> None:
    allowed = httpx.get(f"{secure.url}/healthz", headers={"Origin": "https://app.example"})
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert allowed.headers["access-control-allow-credentials"] == "true"
    foreign = httpx.get(f"{secure.url}/healthz", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in foreign.headers
    preflight = httpx.options(
        f"{secure.url}/jobs",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"


async def test_tokens_never_reach_the_access_log(secure: GatewayProcess) -> None:
    job = submit(secure.url)
    await collect_sse(f"{secure.url}/jobs/{job['id']}/events?token={job['token']}")
    httpx.get(f"{secure.url}/jobs/{job['id']}", params={"token": job["token"]})
    await asyncio.sleep(0.3)
    log = secure.output()
    assert f"/jobs/{job['id']}" in log  # the access log is on...
    assert job["token"] not in log  # ...and the token is not in it
    assert job["token"].split(".")[2] not in log


def test_dev_mode_is_open_and_loud(embedded_gateway: GatewayProcess) -> None:
    response = httpx.post(f"{embedded_gateway.url}/jobs", json={"type": "sleep", "data": {}})
    assert response.status_code == 202 and response.json()["token"]
    job_id = response.json()["id"]
    assert httpx.get(f"{embedded_gateway.url}/jobs/{job_id}").status_code == 200
    assert "DEV MODE" in embedded_gateway.output()


def test_require_auth_without_keys_stops_the_start(tmp_path: Path) -> None:
    for args, env in (
        (["--require-auth"], {}),
        ([], {"GATEWAY_REQUIRE_AUTH": "1"}),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "serve", "--port", "0", *args],
            env=gateway_env(**env),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode != 0
        assert "GATEWAY_API_KEYS" in result.stderr


def test_require_auth_with_keys_starts(gateway_factory: Callable[..., GatewayProcess]) -> None:
    gateway = gateway_factory(args=["--require-auth"], GATEWAY_API_KEYS=API_KEY)
    assert httpx.get(f"{gateway.url}/healthz").status_code == 200
    assert "no GATEWAY_SECRET configured" in gateway.output()
    job = httpx.post(
        f"{gateway.url}/jobs", json={"type": "sleep", "data": {"seconds": 0}}, headers=AUTH
    ).json()
    assert (
        httpx.get(f"{gateway.url}/jobs/{job['id']}", params={"token": job["token"]}).status_code
        == 200
    )


def test_policy_rules_and_custom_namespaces() -> None:
    settings = Settings.from_env(
        {"GATEWAY_SECRET": SECRET, "GATEWAY_CHANNEL_POLICY": "news=open/none room=token/none"}
    )
    policy = ChannelPolicy.from_settings(settings)
    assert not policy.open_mode
    policy.check_subscribe("news:today")  # open: no token needed
    with pytest.raises(Forbidden) as refused:
        policy.check_client_publish("news:today")
    assert refused.value.status == 403
    token = policy.verify(policy.signer.mint("eve", {"room:*": ["subscribe", "publish"]}, 60))
    assert token is not None
    policy.check_subscribe("room:any", token)
    with pytest.raises(Forbidden):  # the configured rule beats the token's right
        policy.check_client_publish("room:any", token)
    with pytest.raises(Forbidden) as missing:
        policy.check_subscribe("room:any")
    assert missing.value.code == "token_required" and missing.value.status == 401
    policy.check_subscribe("user:eve", token)
    with pytest.raises(Forbidden):
        policy.check_subscribe("user:adam", token)
    with pytest.raises(Forbidden):
        policy.check_subscribe("elsewhere:x", token)
    job_token = policy.verify(policy.job_token("abc", 60))
    assert job_token is not None and job_token.sub == ""
    policy.check_subscribe("job:abc", job_token)
    with pytest.raises(Forbidden):
        policy.check_subscribe("job:abd", job_token)
    dev = ChannelPolicy.from_settings(Settings())
    assert dev.open_mode
    dev.check_subscribe("job:anything")
    with pytest.raises(Forbidden):
        dev.check_client_publish("job:anything")  # `none` holds even in dev mode


def test_a_secret_without_api_keys_mints_no_tokens(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    """With only GATEWAY_SECRET, anyone may submit and publish (announced), but nobody may mint
    tokens or list jobs: either would let anyone read every channel."""
    gateway = gateway_factory(GATEWAY_SECRET=SECRET)
    body = {"sub": "mallory", "channels": {"job:*": ["subscribe"], "user:*": ["subscribe"]}}
    for headers in ({}, AUTH):
        refused = httpx.post(f"{gateway.url}/tokens", json=body, headers=headers)
        assert refused.status_code == 403, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert "GATEWAY_API_KEYS" in refused.json()["detail"]
        assert httpx.get(f"{gateway.url}/jobs", headers=headers).status_code == 403
    job = httpx.post(f"{gateway.url}/jobs", json={"type": "sleep", "data": {"seconds": 0}})
    assert job.status_code == 202
    assert httpx.get(f"{gateway.url}/jobs/{job.json()['id']}").status_code == 401
    output = gateway.output()
    assert "OPEN SERVER API" in output and "POST /tokens" in output


def test_dev_mode_still_mints_tokens(embedded_gateway: GatewayProcess) -> None:
    """Dev mode needs no tokens, so minting one grants nothing: it stays open for trying out."""
    body = {"sub": "dev", "channels": {"room:*": ["subscribe"]}}
    assert httpx.post(f"{embedded_gateway.url}/tokens", json=body).status_code == 201


def test_tokens_living_too_long_are_refused(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gateway = gateway_factory(
        GATEWAY_API_KEYS=API_KEY,
        GATEWAY_SECRET=SECRET,
        GATEWAY_MAX_TOKEN_TTL="600",
        GATEWAY_TOKEN_TTL="300",
    )
    url = f"{gateway.url}/channels/room:lifetime/events"
    now = int(time.time())
    grant = {"sub": "ext", "channels": {"room:lifetime": ["subscribe"]}}

    def status(claims: dict[str, Any]) -> httpx.Response:
        token = jwt.encode({**grant, **claims}, SECRET, algorithm="HS256")
        return httpx.get(url, params={"token": token})

    for claims in (
        {"iat": now, "exp": now + 3600},  # minted elsewhere for an hour
        {"iat": now - 3000, "exp": now + 60},  # nearly expired, but made for 51 minutes
        {"exp": now + 10 * 365 * 86400},  # no iat: ten years from now
        {"iat": now + 3600, "exp": now + 3700},  # issued in the future
    ):
        refused = status(claims)
        assert refused.status_code == 401, claims
        assert refused.json()["type"].endswith("invalid_token"), refused.text
    for claims in ({"iat": now - 100, "exp": now + 500}, {"exp": now + 600}):
        assert status(claims).status_code == 200, claims
    minted = mint(gateway.url, "own", {"room:lifetime": ["subscribe"]}, ttl=600)
    assert httpx.get(url, params={"token": minted}).status_code == 200
    job = submit(gateway.url)  # job tokens live GATEWAY_TOKEN_TTL, within the limit
    assert httpx.get(f"{gateway.url}/jobs/{job['id']}", params={"token": job["token"]}).is_success


def test_job_tokens_cannot_outlive_the_limit() -> None:
    with pytest.raises(SettingsError, match="GATEWAY_MAX_TOKEN_TTL"):
        Settings.from_env({"GATEWAY_TOKEN_TTL": "7200", "GATEWAY_MAX_TOKEN_TTL": "3600"})
