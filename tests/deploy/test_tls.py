"""`gateway serve --ssl-certfile --ssl-keyfile`: HTTPS, WSS and SSE with no proxy in front."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.cli import main
from gateway.errors import SettingsError
from gateway.settings import Settings
from tests.deploy.proxies import self_signed_certificate
from tests.support import (
    ServiceProcess,
    free_port,
    gateway_env,
    sse_events,
    wait_until,
    ws_client,
    ws_send,
    ws_until,
)

STORY = ["job.queued", "job.started", "job.progress", "job.completed"]


class TlsGateway:
    def __init__(self, directory: Path) -> None:
        self.certfile, keyfile = self_signed_certificate(directory)
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.context = ssl.create_default_context(cafile=str(self.certfile))
        self.process = ServiceProcess(
            [
                "serve",
                "--port",
                str(self.port),
                "--ssl-certfile",
                str(self.certfile),
                "--ssl-keyfile",
                str(keyfile),
            ],
            gateway_env(),
            directory / "gateway.log",
        )

    def start(self) -> None:
        self.process.start()

        def ready() -> bool:
            if self.process.process is not None and self.process.process.poll() is not None:
                raise RuntimeError(f"gateway exited early:\n{self.process.output()}")
            try:
                response = httpx.get(self.url + "/readyz", timeout=0.5, verify=self.context)
            except httpx.HTTPError:
                return False
            return response.status_code == 200

        wait_until(ready, 20, "the gateway over HTTPS")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsGateway]:
    running = TlsGateway(tmp_path_factory.mktemp("tls"))
    running.start()
    yield running
    running.process.stop(5)


def test_https_serves_with_the_certificate_and_refuses_plain_http(gateway: TlsGateway) -> None:
    response = httpx.get(gateway.url + "/healthz", verify=gateway.context)
    assert response.status_code == 200 and response.url.scheme == "https"
    assert "serving on https://" in gateway.process.output()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{gateway.port}/healthz", timeout=5)


async def test_a_job_over_sse_and_wss(gateway: TlsGateway) -> None:
    job = httpx.post(
        gateway.url + "/jobs",
        json={"type": "sleep", "data": {"seconds": 0.2, "steps": 1}},
        verify=gateway.context,
    ).json()
    wss = gateway.url.replace("https://", "wss://") + "/ws"
    async with ws_client(wss, ssl=gateway.context) as ws:
        await ws_send(ws, {"op": "subscribe", "channel": job["channel"], "since": "0-0", "ref": 1})
        frames = await ws_until(ws, lambda f: f.get("type") == "job.completed")
    assert [f["type"] for f in frames if f["op"] == "event"] == STORY
    # SSE from the start of the job's history, over the same certificate.
    events: list[str | None] = []
    async with httpx.AsyncClient(verify=gateway.context, timeout=10) as client:
        async for event in sse_events(client, f"{gateway.url}/jobs/{job['id']}/events"):
            events.append(event.event)
            if event.event == "job.completed":
                break
    assert events == STORY


def test_a_certificate_without_its_key_is_a_configuration_error() -> None:
    with pytest.raises(SettingsError, match="go together"):
        Settings.from_env({"GATEWAY_SSL_CERTFILE": "/etc/gateway/cert.pem"})
    with pytest.raises(SettingsError, match="go together"):
        Settings.from_env({}, ssl_keyfile="/etc/gateway/key.pem")


@pytest.mark.parametrize("broken", ["missing", "not a certificate", "key of another"])
def test_a_certificate_that_cannot_be_loaded_stops_the_start(tmp_path: Path, broken: str) -> None:
    certfile, keyfile = self_signed_certificate(tmp_path)
    if broken == "missing":
        certfile = tmp_path / "missing.pem"
    elif broken == "not a certificate":
        certfile.write_text("not PEM")
    else:
        other = tmp_path / "other"
        other.mkdir()
        keyfile = self_signed_certificate(other)[1]
    args = ["serve", "--ssl-certfile", str(certfile), "--ssl-keyfile", str(keyfile)]
    with pytest.raises(SystemExit) as stopped:
        main(args)
    assert "cannot be loaded" in str(stopped.value.code)
