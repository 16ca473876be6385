"""Real brokers for the bridge tests: each a process of its Debian package's binary, on free
ports in a temporary directory (never the machine's services on their standard ports).

`Broker.missing()` names the Debian package when the binary is absent; the fixtures skip on it,
or fail when `CI` is set (CI installs them: .ci/run).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from tests.support import _port_open, free_port, wait_until


class Broker:
    package: str
    binary: str | None

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.processes: list[subprocess.Popen[bytes]] = []

    @classmethod
    def missing(cls) -> str | None:
        if cls.binary is None:
            return f"the {cls.package} binaries are not installed: apt-get install {cls.package}"
        return None

    def spawn(self, args: list[str], log: str, **kwargs: object) -> subprocess.Popen[bytes]:
        with (self.directory / log).open("ab") as out:
            process = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
            )  # type: ignore[call-overload]
        self.processes.append(process)
        return process

    def wait_for_port(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{self.package} exited early: see {self.directory}")
            return _port_open(self.port)

        wait_until(ready, timeout, f"{self.package} on port {self.port}")

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait(5)
        self.processes.clear()


def _rabbitmq_binary() -> str | None:
    # The script beneath Debian's /usr/sbin wrapper, which would switch to the rabbitmq user.
    direct = "/usr/lib/rabbitmq/bin/rabbitmq-server"
    return direct if os.path.exists(direct) else shutil.which("rabbitmq-server")


class RabbitMQ(Broker):
    package = "rabbitmq-server"
    binary = _rabbitmq_binary()

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def start(self) -> None:
        assert self.binary is not None
        home, base = self.directory / "home", self.directory / "rabbitmq"
        for path in (home, base / "mnesia", base / "log"):
            path.mkdir(parents=True, exist_ok=True)
        (base / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\nloopback_users = none\n"
        )
        (base / "enabled_plugins").write_text("[].\n")
        (base / "env.conf").write_text("")
        epmd_port = free_port()
        env = {
            **os.environ,
            "HOME": str(home),
            "RABBITMQ_CONF_ENV_FILE": str(base / "env.conf"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_NODENAME": f"gwtest{self.port}@localhost",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "ERL_EPMD_PORT": str(epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        # Our own epmd, in the foreground, so it is ours to stop (erl would start a daemon).
        epmd = shutil.which("epmd") or (glob.glob("/usr/lib/erlang/erts-*/bin/epmd") or [""])[0]
        self.spawn([epmd, "-port", str(epmd_port), "-address", "127.0.0.1"], "epmd.log", env=env)
        wait_until(lambda: _port_open(epmd_port), 10, "epmd")
        self.spawn([self.binary], "rabbitmq.log", env=env)
        self.wait_for_port(60)


class Mosquitto(Broker):
    package = "mosquitto"
    binary = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
    )

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.binary is not None
        data = self.directory / "mosquitto"
        data.mkdir(exist_ok=True)
        config = data / "mosquitto.conf"
        user = "user root\n" if os.geteuid() == 0 else ""
        config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n{user}"
            f"persistence true\npersistence_location {data}/\n"
            # Offline sessions queue this many QoS 1 messages (the default is 1000).
            "max_queued_messages 100000\nautosave_interval 1\n"
        )
        self.spawn([self.binary, "-c", str(config)], "mosquitto.log")
        self.wait_for_port()


class NATS(Broker):
    package = "nats-server"
    binary = shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if os.path.exists("/usr/sbin/nats-server") else None
    )

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.binary is not None
        store = self.directory / "jetstream"
        store.mkdir(exist_ok=True)
        args = [self.binary, "-js", "-sd", str(store), "-a", "127.0.0.1", "-p", str(self.port)]
        self.spawn(args, "nats.log")
        self.wait_for_port()


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return Path(found[-1]).parent if found else None


class PostgreSQL(Broker):
    package = "postgresql"
    binary = str(_postgres_bin()) if _postgres_bin() is not None else None

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        # postgres refuses to run as root: as root, run it as the postgres user, in a directory
        # of its own outside pytest's (whose parents only root may enter).
        self.as_user = os.geteuid() == 0
        self.data = Path(tempfile.mkdtemp(prefix="gateway-pg-")) if self.as_user else directory
        if self.as_user:
            account = pwd.getpwnam("postgres")
            os.chown(self.data, account.pw_uid, account.pw_gid)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _command(self, args: list[str]) -> list[str]:
        if not self.as_user:
            return args
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *args]

    def start(self) -> None:
        assert self.binary is not None
        cluster = self.data / "cluster"
        subprocess.run(
            self._command(
                [
                    f"{self.binary}/initdb",
                    "-D",
                    str(cluster),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]
            ),
            check=True,
            capture_output=True,
        )
        args = [
            f"{self.binary}/postgres",
            "-D",
            str(cluster),
            "-p",
            str(self.port),
            "-h",
            "127.0.0.1",
            "-k",
            str(self.data),
            "-c",
            "fsync=off",
        ]
        self.spawn(self._command(args), "postgres.log")
        self.wait_for_port()

    def stop(self) -> None:
        super().stop()
        if self.as_user:
            shutil.rmtree(self.data, ignore_errors=True)
