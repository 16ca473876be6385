"""Secrets never reach a log line: the redaction filter on its own, and the whole output of a
real gateway and a real worker at debug level while tokens and a callback secret go by."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable, Iterator

import httpx
import pytest
from uvicorn.logging import AccessFormatter

from gateway.logs import REDACTED, RedactSecrets, redact
from tests.support import (
    GatewayProcess,
    Receiver,
    WorkerProcess,
    async_wait_until,
    collect_sse,
    http_receiver,
    ws_client,
    ws_send,
    ws_until,
)

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZGEifQ.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"


LEAKS = [
    ('127.0.0.1:5 - "WebSocket /ws?token=abc123" [accepted]', "abc123"),
    ("GET /events?channel=room:a&token=abc123 HTTP/1.1", "abc123"),
    ('HTTP Request: POST http://h:1/hook?secret=s3cr3t "HTTP/1.1 200 OK"', "s3cr3t"),
    (f'< TEXT \'{{"op":"subscribe","token":"{JWT}"}}\' [90 bytes]', JWT),
    ('{"op":"subscribe","token":"not-a-jwt-123"}', "not-a-jwt-123"),
    ("< Authorization: Bearer key-0123456789", "key-0123456789"),
    ("< Cookie: gateway_token=abc123; theme=dark", "abc123"),
    ("< X-API-Key: key-0123456789", "key-0123456789"),
    ("(b'authorization', b'Bearer key-0123456789')", "key-0123456789"),
    ("{'query_string': b'token=abc123', 'path': '/ws'}", "abc123"),
    (f"token expired: {JWT}", JWT.split(".")[2]),
    # websockets' dump of a long frame, cut in the middle of the token
    ('< TEXT \'{"op":"subscribe","channel"...s66BA61MJI8xM","ref":1}\' [277 bytes]', "s66BA6"),
]


@pytest.mark.parametrize(("line", "secret"), LEAKS)
def test_redact_removes_the_secret(line: str, secret: str) -> None:
    scrubbed = redact(line)
    assert secret not in scrubbed and REDACTED in scrubbed
    assert redact(scrubbed) == scrubbed


@pytest.mark.parametrize(
    "line",
    [
        '127.0.0.1:5 - "GET /jobs/3f2c9a/events HTTP/1.1" 200',
        "webhook 3f2c9a/1-0 attempt 2 -> 503, again in 0.21s",
        "gateway ready: backend=redis embedded_worker=False",
        "DEV MODE: no GATEWAY_API_KEYS and no GATEWAY_SECRET are configured.",
        "refused WebSocket from origin 'https://evil.example'",
        "is this a question? yes",
        "cannot claim webhook deliveries (Error 111 connecting to 127.0.0.1:6379.)",
    ],
)
def test_redact_leaves_ordinary_lines_alone(line: str) -> None:
    assert redact(line) == line


def record(name: str, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(name, logging.INFO, __file__, 1, msg, args, None)


@pytest.mark.parametrize(("line", "secret"), LEAKS)
def test_filter_removes_the_secret_from_message_or_argument(line: str, secret: str) -> None:
    """The filter's cheap pre-check must not wave any of these through."""
    for entry in (record("x", line), record("x", "%s", line), record("x", "%s", line.encode())):
        assert RedactSecrets().filter(entry)
        assert secret not in entry.getMessage()


def test_filter_keeps_the_access_log_shape() -> None:
    """uvicorn's access formatter unpacks the five arguments: they stay five."""
    entry = record(
        "uvicorn.access", '%s - "%s %s HTTP/%s" %d', "1.2.3.4:5", "GET", "/x?token=t0k", "1.1", 200
    )
    assert RedactSecrets().filter(entry)
    assert isinstance(entry.args, tuple) and len(entry.args) == 5
    formatted = AccessFormatter('%(client_addr)s "%(request_line)s" %(status_code)s').format(entry)
    assert "t0k" not in formatted and "/x?<redacted>" in formatted and "200" in formatted


def test_filter_scrubs_objects_messages_and_tracebacks() -> None:
    url = httpx.URL("http://h:1/hook?secret=s3cr3t")
    entry = record("httpx", "HTTP Request: %s %s %r", "POST", url, url)
    RedactSecrets().filter(entry)
    assert "s3cr3t" not in entry.getMessage()
    inline = record("gateway.x", f"calling {url}")
    RedactSecrets().filter(inline)
    assert "s3cr3t" not in inline.getMessage()
    try:
        raise RuntimeError(f"failed to reach {url}")
    except RuntimeError:
        failed = logging.LogRecord(
            "gateway.x", logging.ERROR, __file__, 1, "boom", (), sys.exc_info()
        )
    RedactSecrets().filter(failed)
    text = logging.Formatter().format(failed)
    assert "RuntimeError" in text and "s3cr3t" not in text


def test_every_handler_of_a_configured_process_redacts() -> None:
    """`configure_logging` as the CLI runs it, in a process of its own: root, uvicorn and
    httpx lines, on stdout and stderr, all scrubbed."""
    code = """
import logging, httpx
from gateway.logs import configure_logging
configure_logging("debug")
url = httpx.URL("http://h:1/hook?secret=s3cr3t")
logging.getLogger("httpx").info("HTTP Request: %s %s", "POST", url)
logging.getLogger("uvicorn.error").info('%s - "WebSocket %s" [accepted]', "c", "/ws?token=t0k")
access = ('%s - "%s %s HTTP/%s" %d', "c", "GET", "/e?token=t0k", "1.1", 200)
logging.getLogger("uvicorn.access").info(*access)
logging.getLogger("gateway.worker").warning("callback %s failed", "http://h/?secret=s3cr3t")
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    output = done.stdout + done.stderr
    assert output.count("<redacted>") == 4, output
    assert "s3cr3t" not in output and "t0k" not in output


# --- a real gateway and worker -------------------------------------------------------------------

API_KEY = "logs-api-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
CALLBACK_SECRET = "callback-secret-5f1d0c3a9b"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with http_receiver() as state:
        yield state


async def test_no_token_or_callback_secret_in_any_process_output(
    redis_url: str,
    receiver: Receiver,
    gateway_factory: Callable[..., GatewayProcess],
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    env = {
        "REDIS_URL": redis_url,
        "GATEWAY_LOG_LEVEL": "debug",
        "GATEWAY_API_KEYS": API_KEY,
        "GATEWAY_SECRET": "l" * 40,
        "GATEWAY_WEBHOOK_ALLOW_PRIVATE": "1",
        "GATEWAY_WEBHOOK_BACKOFF": "0.1",
        "GATEWAY_SUBMIT_RATE": "0",
    }
    gateway = gateway_factory(**env)
    worker = worker_factory(**env)
    receiver.script = [(500, {})]  # the failed first attempt and its retry are logged too
    submitted = httpx.post(
        gateway.url + "/jobs",
        json={
            "type": "sleep",
            "data": {"seconds": 0.3, "steps": 3},
            "callback_url": f"{receiver.url}?secret={CALLBACK_SECRET}",
        },
        headers=AUTH,
    )
    assert submitted.status_code == 202, submitted.text
    job_id, token = submitted.json()["id"], submitted.json()["token"]
    channel = f"job:{job_id}"

    async with ws_client(f"{gateway.ws_url}?token={token}") as ws:
        await ws_send(ws, {"op": "subscribe", "channel": channel, "token": token, "ref": 1})
        await ws_until(ws, lambda f: f.get("type") == "job.completed", timeout=20)
    events = await collect_sse(
        f"{gateway.url}/events?channel={channel}&token={token}",
        until=lambda e: e.event == "job.completed",
    )
    assert events[-1].event == "job.completed"
    cookie = {"Cookie": f"gateway_token={token}"}
    assert httpx.get(f"{gateway.url}/jobs/{job_id}", headers=cookie).status_code == 200

    def delivered() -> bool:
        state = httpx.get(f"{gateway.url}/jobs/{job_id}", headers=AUTH).json()["webhook"]
        return bool(state["delivered"])

    await async_wait_until(delivered, 30, "the webhook delivery")
    assert len(receiver.requests) == 2 and all(
        path.endswith(f"?secret={CALLBACK_SECRET}") for path in receiver.paths
    )
    gateway.stop(10)
    worker.stop(10)
    gateway_log, worker_log = gateway.output(), worker.output()
    # The lines that used to carry the secrets are there, at debug level, scrubbed...
    assert '"WebSocket /ws?<redacted>" [accepted]' in gateway_log
    assert "/events?<redacted>" in gateway_log
    assert "< GET /ws?<redacted> HTTP/1.1" in gateway_log  # websockets' debug handshake dump
    assert "< TEXT <redacted> [" in gateway_log  # and its dump of the subscribe op
    assert "HTTP Request: POST" in worker_log and "/hook?<redacted>" in worker_log
    # ...and no secret is anywhere in either process's stdout and stderr.
    output = gateway_log + worker_log
    signature = token.split(".")[2]
    for secret in (token, signature, signature[-8:], CALLBACK_SECRET, API_KEY):
        assert secret not in output, secret
