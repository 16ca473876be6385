"""Webhooks: signatures checked by the independent `standardwebhooks` package, the SSRF guard,
and deliveries to real HTTP receivers through a gateway and worker processes sharing Redis."""

from __future__ import annotations

import base64
import ipaddress
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpcore
import httpx
import orjson
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from gateway.backends.memory import open_memory
from gateway.errors import SettingsError, UnsafeCallbackUrl
from gateway.settings import Settings
from gateway.webhooks.address import Address, check_callback_url, is_internal
from gateway.webhooks.dispatcher import WebhookDispatcher, webhook_client
from gateway.webhooks.schedule import PendingDelivery
from gateway.webhooks.signing import sign
from tests.support import (
    GatewayProcess,
    Receiver,
    WorkerProcess,
    async_wait_until,
    http_receiver,
)

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
        "http://[::127.0.0.1]/hook",
        "http://[::ffff:0:127.0.0.1]/hook",
        "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",
        "http://[64:ff9b:1::a00:1]/hook",
        "http://[2002:7f00:1::1]/hook",
        "http://127.1/hook",
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


INTERNAL = [
    "127.0.0.1",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "0.0.0.0",
    "224.0.0.1",
    "255.255.255.255",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd00:ec2::254",
    "fec0::1",
    "ff02::1",
    "ff0e::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::127.0.0.1",  # IPv4-compatible
    "::a9fe:a9fe",  # ::169.254.169.254
    "::ffff:0:127.0.0.1",  # IPv4-translated (SIIT)
    "::ffff:0:a9fe:a9fe",
    "64:ff9b::7f00:1",  # NAT64 well-known prefix, 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # ... 169.254.169.254
    "64:ff9b::a00:1",  # ... 10.0.0.1
    "64:ff9b:1::7f00:1",  # NAT64 local-use prefix, /96 layout
    "64:ff9b:1::c0a8:101",  # ... 192.168.1.1
    "64:ff9b:1:abcd::808:808",  # local-use with another prefix length: target unknown
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::",  # 6to4 of 169.254.169.254
    "2002:a00:1::",  # 6to4 of 10.0.0.1
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
]
PUBLIC = [
    "8.8.8.8",
    "93.184.215.14",
    "2606:4700::1111",
    "2a00:1450:4001:82b::200e",
    "::808:808",  # IPv4-compatible form of a public address
    "::ffff:0:808:808",
    "64:ff9b::808:808",
    "64:ff9b:1::808:808",
    "2002:808:808::1",
]


@pytest.mark.parametrize("text", INTERNAL)
def test_internal_addresses_are_classified_internal(text: str) -> None:
    assert is_internal(ipaddress.ip_address(text))


@pytest.mark.parametrize("text", PUBLIC)
def test_public_addresses_are_classified_public(text: str) -> None:
    assert not is_internal(ipaddress.ip_address(text))


def resolver(*answers: list[str]) -> tuple[Callable[[str, int], Any], list[str]]:
    """A resolver answering `answers` in turn (the last one from then on), recording its calls.

    This is the injection point the SSRF guard resolves through; it stands for a DNS server
    (a rebinding one, when the answers change).
    """
    calls: list[str] = []

    async def resolve(host: str, port: int) -> list[Address]:
        calls.append(host)
        answer = answers[min(len(calls), len(answers)) - 1]
        return [ipaddress.ip_address(a) for a in answer]

    return resolve, calls


async def test_refusals_do_not_reveal_what_a_name_resolves_to() -> None:
    resolve, _calls = resolver(["10.1.2.3"])
    with pytest.raises(UnsafeCallbackUrl) as refused:
        await check_callback_url("http://intranet.example/", allow_private=False, resolve=resolve)
    assert "intranet.example" in str(refused.value) and "10.1.2.3" not in str(refused.value)
    with pytest.raises(UnsafeCallbackUrl) as refused:
        await check_callback_url("http://localhost:9/hook", allow_private=False)
    assert "127.0.0.1" not in str(refused.value) and "::1" not in str(refused.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://xn--zz/hook",  # an invalid A-label
        "http://" + "a" * 64 + ".example/hook",  # a label over 63 characters
        "http://\u2603.example/hook",  # a snowman: not allowed by IDNA 2008
    ],
)
async def test_hosts_that_are_no_domain_names_are_refused(url: str) -> None:
    with pytest.raises(UnsafeCallbackUrl):
        await check_callback_url(url, allow_private=False)


class RecordingNetwork(httpcore.AsyncNetworkBackend):
    """httpcore's real network layer, recording every connection's address. It refuses to
    connect to `offline` (a public address: the test does not leave this machine)."""

    def __init__(self, offline: str) -> None:
        self.inner = httpcore.AnyIOBackend()
        self.offline = offline
        self.connects: list[tuple[str, int]] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connects.append((host, port))
        if host == self.offline:
            raise httpcore.ConnectError(f"test network: {host} is not reachable from here")
        return await self.inner.connect_tcp(host, port, timeout, local_address, socket_options)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("no unix sockets here")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def dispatcher(allow_private: bool) -> WebhookDispatcher:
    settings = Settings(redis_url="").replace(
        webhook_allow_private=allow_private, webhook_timeout=5.0
    )
    return WebhookDispatcher(open_memory(settings), settings)


def delivery(url: str) -> PendingDelivery:
    return PendingDelivery("job1", "1-0", "job.completed", url, '{"id":"1-0"}')


async def test_delivery_connects_to_the_checked_address_not_a_second_lookup(
    receiver: Receiver,
) -> None:
    """`localhost` is 127.0.0.1 to the system resolver, where the receiver listens; the guard's
    resolver says 93.184.215.14. A client that resolved the name again to connect (what a
    rebinding DNS server exploits) would reach the receiver."""
    public = "93.184.215.14"
    resolve, calls = resolver([public])
    network = RecordingNetwork(offline=public)
    sender = dispatcher(allow_private=False)
    url = f"http://localhost:{receiver.port}/hook?secret=x"
    await check_callback_url(url, allow_private=False, resolve=resolve)  # at submission
    async with webhook_client(sender.settings, resolve=resolve, network=network) as client:
        outcome = await sender.send(client, delivery(url))
    assert network.connects == [(public, receiver.port)]
    assert outcome.status == 0 and outcome.error.startswith("network error")
    assert receiver.requests == []
    assert calls == ["localhost", "localhost"]  # once at submission, once to connect


async def test_rebinding_answer_at_connect_time_is_refused(receiver: Receiver) -> None:
    """Public when checked at submission, 127.0.0.1 when the delivery connects: the address
    the connection would use is the one checked, so it is refused, and nothing is sent."""
    resolve, calls = resolver(["93.184.215.14"], ["127.0.0.1"])
    network = RecordingNetwork(offline="93.184.215.14")
    sender = dispatcher(allow_private=False)
    url = f"http://rebind.example:{receiver.port}/hook"
    await check_callback_url(url, allow_private=False, resolve=resolve)
    async with webhook_client(sender.settings, resolve=resolve, network=network) as client:
        outcome = await sender.send(client, delivery(url))
    assert outcome.error.startswith("refused:") and outcome.retry_in is None
    assert "127.0.0.1" not in outcome.error
    assert network.connects == [] and receiver.requests == []
    assert calls == ["rebind.example", "rebind.example"]


async def test_pinned_delivery_keeps_the_name_in_the_host_header(receiver: Receiver) -> None:
    """A name only the injected resolver knows reaches the receiver: the connection went to
    the resolver's answer, and the request still names the host."""
    resolve, calls = resolver(["127.0.0.1"])
    sender = dispatcher(allow_private=True)
    url = f"http://hooks.invalid:{receiver.port}/hook"
    async with webhook_client(sender.settings, resolve=resolve) as client:
        outcome = await sender.send(client, delivery(url))
    assert outcome.delivered and outcome.status == 200
    assert calls == ["hooks.invalid"]
    ((headers, _body),) = receiver.requests
    assert headers["host"] == f"hooks.invalid:{receiver.port}"


async def test_a_host_that_does_not_resolve_at_delivery_is_retried() -> None:
    """A DNS failure is transient, like a refused connection: retried, not a final refusal."""

    async def resolve(host: str, port: int) -> list[Address]:
        raise OSError("Temporary failure in name resolution")

    sender = dispatcher(allow_private=False)
    async with webhook_client(sender.settings, resolve=resolve) as client:
        outcome = await sender.send(client, delivery("http://gone.example/hook"))
    assert outcome.retry_in is not None and outcome.error.startswith("network error")
    assert "does not resolve" in outcome.error


def _certificates(directory: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A throwaway CA and a server certificate for `name` (not for 127.0.0.1): the server's
    TLS context and a client context that trusts only that CA."""
    import datetime

    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    (directory / "cert.pem").write_bytes(cert.public_bytes(pem))
    (directory / "key.pem").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    client = ssl.create_default_context(cafile=str(directory / "ca.pem"))
    return server, client


async def test_pinned_tls_verifies_the_certificate_against_the_name(tmp_path: Path) -> None:
    """Connecting to the checked IP must not weaken TLS: SNI and the certificate check use the
    host name (a certificate for `hooks.example` passes, another name on the same IP fails)."""
    server_tls, client_tls = _certificates(tmp_path, "hooks.example")
    resolve, _calls = resolver(["127.0.0.1"])
    sender = dispatcher(allow_private=True)
    with http_receiver(server_tls) as receiver:
        async with webhook_client(sender.settings, resolve=resolve, verify=client_tls) as client:
            good = await sender.send(client, delivery(f"https://hooks.example:{receiver.port}/"))
            wrong = await sender.send(client, delivery(f"https://other.example:{receiver.port}/"))
        assert good.delivered, good
        assert not wrong.delivered and "network error" in wrong.error
        assert len(receiver.requests) == 1
        assert receiver.requests[0][0]["host"] == f"hooks.example:{receiver.port}"


# --- a real receiver -----------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with http_receiver() as state:
        yield state


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
    for url in (
        "http://127.0.0.1:9/hook",
        "http://169.254.169.254/",
        "ftp://example.com/",
        "http://localhost:9/hook",
        "http://[64:ff9b::7f00:1]/hook",
        "http://xn--zz/hook",  # fails IDNA: a 422, not a 500
        "http://" + "a" * 64 + ".example/hook",
    ):
        response = httpx.post(
            gateway.url + "/jobs", json={"type": "sleep", "data": {}, "callback_url": url}
        )
        assert response.status_code == 422, (url, response.text)
        detail = response.json()["detail"]
        assert "callback_url refused" in detail
        assert "127.0.0.1" not in detail or "127.0.0.1" in url  # what localhost resolves to
    bad_events = httpx.post(
        gateway.url + "/jobs",
        json={"type": "sleep", "callback_url": "https://93.184.215.14/", "callback_events": "x"},
    )
    assert bad_events.status_code == 422


def test_callback_url_is_shown_to_api_keys_not_to_job_tokens(
    gateway_factory: Callable[..., GatewayProcess], receiver: Receiver
) -> None:
    """The callback URL may carry the receiver's secret; the browser reading its job with the
    job token has no business with it."""
    api_key = "hooks-api-key-0123456789"
    gateway = gateway_factory(
        GATEWAY_API_KEYS=api_key,
        GATEWAY_SECRET="h" * 40,
        GATEWAY_WEBHOOK_ALLOW_PRIVATE="1",
    )
    server = {"Authorization": f"Bearer {api_key}"}
    callback = receiver.url + "?secret=receiver-secret"
    submitted = httpx.post(
        gateway.url + "/jobs",
        json={"type": "sleep", "data": {"seconds": 0}, "callback_url": callback},
        headers=server,
    )
    assert submitted.status_code == 202 and submitted.json()["callback_url"] == callback
    job_id, token = submitted.json()["id"], submitted.json()["token"]
    as_browser = httpx.get(f"{gateway.url}/jobs/{job_id}", params={"token": token})
    assert as_browser.status_code == 200
    assert "callback_url" not in as_browser.json() and "receiver-secret" not in as_browser.text
    assert "webhook" in as_browser.json()  # the delivery state stays visible
    as_server = httpx.get(f"{gateway.url}/jobs/{job_id}", headers=server)
    assert as_server.json()["callback_url"] == callback
