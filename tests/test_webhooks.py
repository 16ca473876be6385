"""Webhooks: signatures checked by the independent `standardwebhooks` package, the SSRF guard,
and deliveries to real HTTP receivers through a gateway and worker processes sharing Redis."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from gateway.settings import Settings, SettingsError
from gateway.webhooks import UnsafeCallbackUrl, check_callback_url, sign
from tests.support import GatewayProcess, WorkerProcess, async_wait_until, free_port

NEW_SECRET = "whsec_" + base64.b64encode(b"n" * 32).decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"o" * 32).decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"x" * 32).decode()


# --- signing and the SSRF guard ------------------------------------------------------------------


def test_signature_verifies_with_standardwebhooks() -> None:
    body = b'{"id":"1-0","type":"job.completed"}'
    stamp = int(time.time())
    headers = {"webhook-id": "1-0", "webhook-timestamp": str(stamp)}
    headers["webhook-signature"] = sign([NEW_SECRET], "1-0", stamp, body)
    assert Webhook(NEW_SECRET).verify(body, headers) == orjson.loads(body)
    with pytest.raises(WebhookVerificationError):
        Webhook(OTHER_SECRET).verify(body, headers)


def test_rotation_signs_with_every_secret() -> None:
    body = b'{"id":"2-0"}'
    stamp = int(time.time())
    signature = sign([NEW_SECRET, OLD_SECRET], "2-0", stamp, body)
    assert len(signature.split(" ")) == 2
    headers = {"webhook-id": "2-0", "webhook-timestamp": str(stamp), "webhook-signature": signature}
    for secret in (NEW_SECRET, OLD_SECRET):
        assert Webhook(secret).verify(body, headers) == {"id": "2-0"}


def test_secret_setting_is_validated() -> None:
    settings = Settings.from_env({"GATEWAY_WEBHOOK_SECRET": f"{NEW_SECRET} {OLD_SECRET}"})
    assert settings.webhook_secrets == (NEW_SECRET, OLD_SECRET)
    with pytest.raises(SettingsError, match="GATEWAY_WEBHOOK_SECRET"):
        Settings.from_env({"GATEWAY_WEBHOOK_SECRET": "not-a-secret"})


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[fd00:ec2::254]/hook",
        "http://100.64.0.1/hook",
        "http://0.0.0.0/hook",
        "ftp://example.com/hook",
        "file:///etc/passwd",
        "http:///no-host",
    ],
)
async def test_ssrf_guard_refuses_internal_and_non_http_urls(url: str) -> None:
    with pytest.raises(UnsafeCallbackUrl):
        await check_callback_url(url, allow_private=False)


async def test_ssrf_guard_allows_public_addresses_and_configured_private() -> None:
    await check_callback_url("https://93.184.215.14/hook", allow_private=False)
    await check_callback_url("http://127.0.0.1:9/hook", allow_private=True)
    with pytest.raises(UnsafeCallbackUrl):
        await check_callback_url("gopher://127.0.0.1/", allow_private=True)


# --- a real receiver -----------------------------------------------------------------------------


@dataclass
class Receiver:
    """An HTTP server answering from a script of statuses (then 200), recording every request."""

    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def answer(self) -> tuple[int, dict[str, str]]:
        with self.lock:
            return self.script.pop(0) if self.script else (200, {})


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(port=free_port())

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            with state.lock:
                state.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
            status, headers = state.answer()
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", state.port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def hook_env(redis_url: str, **extra: str) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "GATEWAY_WEBHOOK_ALLOW_PRIVATE": "1",
        "GATEWAY_WEBHOOK_SECRET": f"{NEW_SECRET} {OLD_SECRET}",
        "GATEWAY_WEBHOOK_BACKOFF": "0.1",
        "GATEWAY_SUBMIT_RATE": "0",
        **extra,
    }


def submit(url: str, callback: str, **extra: Any) -> str:
    body = {"type": "sleep", "data": {"seconds": 0.05, "steps": 1}, "callback_url": callback}
    response = httpx.post(url + "/jobs", json={**body, **extra})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def webhook_of(url: str, job_id: str) -> dict[str, Any]:
    state: dict[str, Any] = httpx.get(f"{url}/jobs/{job_id}").json()["webhook"]
    return state


def verified(receiver: Receiver, secret: str) -> list[dict[str, Any]]:
    """Every received body, verified with `secret` alone (as a receiver mid-rotation would)."""
    return [Webhook(secret).verify(body, headers) for headers, body in receiver.requests]


async def test_fails_twice_then_delivered_once_with_three_attempts(
    redis_url: str,
    receiver: Receiver,
    gateway_factory: Callable[..., GatewayProcess],
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    receiver.script = [(500, {}), (503, {"Retry-After": "0"})]
    gateway = gateway_factory(**hook_env(redis_url))
    worker_factory(**hook_env(redis_url))
    job_id = submit(gateway.url, receiver.url)
    await async_wait_until(lambda: webhook_of(gateway.url, job_id)["delivered"], 20, "delivery")
    state = webhook_of(gateway.url, job_id)
    assert state["attempts"] == 3 and state["last_status"] == 200
    assert state["next_attempt_at"] is None
    assert len(receiver.requests) == 3
    ids = {headers["webhook-id"] for headers, _body in receiver.requests}
    (event_id,) = ids  # the same event each time: receivers dedupe on webhook-id
    for secret in (NEW_SECRET, OLD_SECRET):  # during rotation, either secret verifies
        events = verified(receiver, secret)
        assert [e["type"] for e in events] == ["job.completed"] * 3
        assert all(e["id"] == event_id for e in events)
    with pytest.raises(WebhookVerificationError):
        verified(receiver, OTHER_SECRET)
    assert events[0]["data"]["job_id"] == job_id and events[0]["channel"] == f"job:{job_id}"


async def test_410_stops_deliveries_for_the_job(
    redis_url: str,
    receiver: Receiver,
    gateway_factory: Callable[..., GatewayProcess],
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    receiver.script = [(410, {})]
    gateway = gateway_factory(**hook_env(redis_url))
    worker_factory(**hook_env(redis_url))
    job_id = submit(gateway.url, receiver.url, callback_events=["*"])
    await async_wait_until(
        lambda: httpx.get(f"{gateway.url}/jobs/{job_id}").json()["status"] == "completed", 20, "job"
    )
    await async_wait_until(
        lambda: webhook_of(gateway.url, job_id)["next_attempt_at"] is None, 10, "schedule drained"
    )
    state = webhook_of(gateway.url, job_id)
    assert state["last_status"] == 410 and not state["delivered"] and state["attempts"] == 1
    assert len(receiver.requests) == 1  # job.queued got 410; started..completed never sent


async def test_other_4xx_is_final(
    redis_url: str,
    receiver: Receiver,
    gateway_factory: Callable[..., GatewayProcess],
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    receiver.script = [(400, {})]
    gateway = gateway_factory(**hook_env(redis_url))
    worker_factory(**hook_env(redis_url))
    job_id = submit(gateway.url, receiver.url)
    await async_wait_until(
        lambda: webhook_of(gateway.url, job_id)["last_status"] == 400, 20, "attempt"
    )
    state = webhook_of(gateway.url, job_id)
    assert state["attempts"] == 1 and not state["delivered"] and state["next_attempt_at"] is None


async def test_worker_restart_between_attempts_loses_no_delivery(
    redis_url: str,
    receiver: Receiver,
    gateway_factory: Callable[..., GatewayProcess],
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    receiver.script = [(429, {"Retry-After": "2"})]
    gateway = gateway_factory(**hook_env(redis_url))
    first = worker_factory(**hook_env(redis_url))
    job_id = submit(gateway.url, receiver.url)
    await async_wait_until(lambda: len(receiver.requests) == 1, 20, "first attempt")
    await async_wait_until(
        lambda: webhook_of(gateway.url, job_id)["next_attempt_at"] is not None, 5, "reschedule"
    )
    assert first.stop(10) == 0
    assert len(receiver.requests) == 1  # the retry was not due yet when the worker went away
    worker_factory(**hook_env(redis_url))
    await async_wait_until(lambda: webhook_of(gateway.url, job_id)["delivered"], 20, "delivery")
    assert len(receiver.requests) == 2
    assert webhook_of(gateway.url, job_id)["attempts"] == 2


def test_private_callback_refused_at_submission_unless_allowed(
    redis_url: str, gateway_factory: Callable[..., GatewayProcess]
) -> None:
    gateway = gateway_factory(REDIS_URL=redis_url)
    for url in ("http://127.0.0.1:9/hook", "http://169.254.169.254/", "ftp://example.com/"):
        response = httpx.post(
            gateway.url + "/jobs", json={"type": "sleep", "data": {}, "callback_url": url}
        )
        assert response.status_code == 422, (url, response.text)
        assert "callback_url refused" in response.json()["detail"]
    bad_events = httpx.post(
        gateway.url + "/jobs",
        json={"type": "sleep", "callback_url": "https://93.184.215.14/", "callback_events": "x"},
    )
    assert bad_events.status_code == 422
