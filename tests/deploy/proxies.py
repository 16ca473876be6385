"""Real reverse proxies for the deployment tests: nginx and Caddy in temporary directories.

The proxies run the configuration files in deploy/ as they are, with only addresses and ports
substituted (`bench.nginx.render` fails when a substituted text is missing, so the tests
cannot drift from the documented files). Each runs in the foreground on free ports, with its
pid file, logs and temporary files in the test's directory, and is stopped by its own process
id.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import httpx
import pytest

from bench.nginx import nginx_binary, prepare, render
from tests.support import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
CADDYFILE = ROOT / "deploy" / "caddy" / "Caddyfile"
CADDY = shutil.which("caddy")


def require_binary(path: str | None, name: str, package: str) -> str:
    """The binary, or a skip naming the Debian package (a failure when `CI` is set)."""
    if path is None:
        reason = f"{name} is not installed: apt-get install {package}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set, so the deployment tests must run)", pytrace=False)
        pytest.skip(reason)
    return path


class ProxyProcess:
    """A proxy in the foreground, its output in `log_path`."""

    def __init__(self, args: list[str], log_path: Path, env: Mapping[str, str] | None = None):
        self.args = args
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, ready_url: str, *, verify: bool = True) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env
            )

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.args[0]} exited early:\n{self.output()}")
            try:
                return httpx.get(ready_url, timeout=0.5, verify=verify).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 20, f"{self.args[0]} answering {ready_url}")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_nginx(directory: Path, upstreams: tuple[int, int]) -> tuple[ProxyProcess, int]:
    """nginx running deploy/nginx/gateway.conf (`bench.nginx`) with its files in `directory`;
    returns it and its port."""
    require_binary(nginx_binary(), "nginx", "nginx")
    port = free_port()
    process = ProxyProcess(prepare(directory, port, upstreams), directory / "nginx.out")
    process.start(f"http://127.0.0.1:{port}/readyz")
    return process, port


def caddyfile(port: int, upstreams: tuple[int, int]) -> str:
    """deploy/caddy/Caddyfile serving https://127.0.0.1:`port` over the two gateway ports."""
    return render(
        CADDYFILE.read_text(),
        {
            "gateway.example.com": f"127.0.0.1:{port}",
            "127.0.0.1:8001 ": f"127.0.0.1:{upstreams[0]} ",
            "127.0.0.1:8002": f"127.0.0.1:{upstreams[1]}",
        },
    )


SANDBOX_OPTIONS = """{{
\tadmin off
\tskip_install_trust
\tauto_https disable_redirects
\tstorage file_system {storage}
\tlocal_certs
}}

"""
"""Caddy's global options for a test: no admin endpoint, no change to the system's trust store,
its certificates in the test's directory (an IP address gets one from Caddy's internal CA)."""


def start_caddy(directory: Path, upstreams: tuple[int, int]) -> tuple[ProxyProcess, int]:
    binary = require_binary(CADDY, "caddy", "caddy")
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "Caddyfile"
    config.write_text(
        SANDBOX_OPTIONS.format(storage=directory / "storage") + caddyfile(port, upstreams)
    )
    env = {**os.environ, "HOME": str(directory), "XDG_DATA_HOME": str(directory / "data")}
    env["XDG_CONFIG_HOME"] = str(directory / "config")
    process = ProxyProcess(
        [binary, "run", "--config", str(config), "--adapter", "caddyfile"],
        directory / "caddy.out",
        env,
    )
    process.start(f"https://127.0.0.1:{port}/readyz", verify=False)
    return process, port


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, signed by its own key: (certfile, keyfile)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway test")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    certfile.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return certfile, keyfile
