"""deploy/nginx/gateway.conf made runnable in a temporary directory (benchmark and tests).

The documented file is used as it is, with only its listening port and the two upstream
addresses substituted; a minimal main configuration around it keeps the pid file, logs and
temporary files in the directory. nginx then runs in the foreground:

    nginx -p DIR -e DIR/error.log -c DIR/nginx.conf -g 'daemon off;'

Standard library only, so that the tests can use it without the benchmark's dependencies.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GATEWAY_CONF = ROOT / "deploy" / "nginx" / "gateway.conf"


def nginx_binary() -> str | None:
    """Debian installs nginx in /usr/sbin, which is not on every user's PATH."""
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )


def render(template: str, substitutions: Mapping[str, str]) -> str:
    """`template` with each key replaced by its value; every key must occur in it."""
    for old, new in substitutions.items():
        if old not in template:
            raise ValueError(f"{old!r} is no longer in the deploy/ file: update its users")
        template = template.replace(old, new)
    return template


def gateway_conf(port: int, upstreams: tuple[int, int]) -> str:
    """deploy/nginx/gateway.conf listening on 127.0.0.1:`port`, over two gateway ports."""
    return render(
        GATEWAY_CONF.read_text(),
        {
            "listen 80;": f"listen 127.0.0.1:{port};",
            "127.0.0.1:8001 ": f"127.0.0.1:{upstreams[0]} ",
            "127.0.0.1:8002 ": f"127.0.0.1:{upstreams[1]} ",
        },
    )


def prepare(directory: Path, port: int, upstreams: tuple[int, int], workers: int = 1) -> list[str]:
    """Write nginx.conf (including gateway.conf) into `directory`; returns the command line."""
    binary = nginx_binary()
    if binary is None:
        raise FileNotFoundError("nginx is not installed: apt-get install nginx")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "gateway.conf").write_text(gateway_conf(port, upstreams))
    temp = "\n".join(
        f"    {kind}_temp_path {directory / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (directory / "nginx.conf").write_text(
        f"worker_processes {workers};\npid {directory / 'nginx.pid'};\n"
        f"error_log {directory / 'error.log'} warn;\n"
        "worker_rlimit_nofile 65536;\n"
        "events { worker_connections 30000; }\n"
        f"http {{\n    access_log off;\n{temp}\n"
        f"    include {directory / 'gateway.conf'};\n}}\n"
    )
    return [
        binary,
        "-p",
        str(directory),
        "-e",
        str(directory / "error.log"),
        "-c",
        str(directory / "nginx.conf"),
        "-g",
        "daemon off;",
    ]
