"""Several "hosts" on one machine: network namespaces joined by veth pairs and bridges (as root).

A `Network` has two bridges in the root namespace:

- the *cluster* net (`10.A.B.0/24`): Redis nodes, gateways and workers talk over it; the root
  namespace holds `10.A.B.1` on it, so the test itself can reach every node;
- the *front* net (`10.A.B+1.0/24`): gateways listen there for clients, which run in the root
  namespace (`10.A.B+1.1`).

Each `Host` is a namespace (`ip netns add`) with one veth pair per net it joins. `Host.cut()`
takes its cluster link down (the root side of the pair): packets to and from the host are dropped
without a reset, as with a pulled cable, while its front link (and so its clients) stays up.
Links get `tc qdisc netem delay 1ms` each way when the kernel has netem (`Network.latency`
says whether it did); without it the hosts are still separate network stacks.

Names start with `gwt<pid><n>` (a run's processes own their names); a `Network` deletes what it
made on `close()`, and the first one in a process sweeps the namespaces and links of runs whose
process is gone. `netns_unavailable()` gives the reason the harness cannot run here, or None.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.redis_cluster import REDIS_CLI, REDIS_SERVER, ClusterNode, LocalRedisCluster
from tests.support import ServiceProcess, wait_until

IP = shutil.which("ip")
TC = shutil.which("tc")
ALLOCATION_LOCK = Path(tempfile.gettempdir()) / "gwt-netns.lock"
_NAME = re.compile(r"^gwt(\d+)[a-z]")
_numbers = itertools.count()
_swept = False


def _ip(*args: str, namespace: str | None = None, check: bool = True) -> str:
    assert IP is not None
    command = [IP, "netns", "exec", namespace, IP, *args] if namespace else [IP, *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=20)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")
    return done.stdout


@functools.cache
def netns_unavailable() -> str | None:
    """Why network namespaces cannot be made here (None when they can)."""
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (run the suite as root, as CI does)"
    if IP is None:
        return "`ip` (iproute2) is not on PATH: `apt-get install iproute2`"
    if REDIS_SERVER is None or REDIS_CLI is None:
        return "redis-server and redis-cli are needed on PATH"
    probe = f"gwt{os.getpid()}z"
    try:
        _ip("netns", "add", probe)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns add` fails here: {exc}"
    _ip("netns", "del", probe, check=False)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> list[str]:
    """Delete `gwt*` namespaces and links left by runs whose process has died; return them."""
    removed: list[str] = []
    for line in _ip("netns", "list", check=False).splitlines():
        name = line.split()[0] if line.strip() else ""
        match = _NAME.match(name)
        if match and not _alive(int(match.group(1))):
            for pid in _ip("netns", "pids", name, check=False).split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            _ip("netns", "del", name, check=False)
            removed.append(name)
    for line in _ip("-o", "link", "show", check=False).splitlines():
        parts = line.split(":")
        name = parts[1].strip().split("@")[0] if len(parts) > 1 else ""
        match = _NAME.match(name)
        if match and not _alive(int(match.group(1))):
            _ip("link", "del", name, check=False)
            removed.append(name)
    return removed


def _used_subnets() -> set[tuple[int, int]]:
    used: set[tuple[int, int]] = set()
    for address in re.findall(r"inet (\d+\.\d+\.\d+)\.\d+/", _ip("-o", "-4", "addr", "show")):
        first, second, third = (int(part) for part in address.split("."))
        if first == 10:
            used.add((second, third))
    return used


def _netem(device: str, namespace: str | None = None) -> bool:
    if TC is None:
        return False
    command = [TC, "qdisc", "replace", "dev", device, "root", "netem", "delay", "1ms"]
    if namespace is not None:
        assert IP is not None
        command = [IP, "netns", "exec", namespace, *command]
    return subprocess.run(command, capture_output=True, timeout=20).returncode == 0


@dataclass
class Host:
    """One network namespace: `address` on the cluster net, `front` on the front net (or None)."""

    network: Network
    name: str
    address: str
    front: str | None
    cluster_link: str  # the root-namespace end of its cluster veth pair
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def command(self, args: Sequence[str]) -> list[str]:
        assert IP is not None
        return [IP, "netns", "exec", self.name, *args]

    def popen(
        self, args: Sequence[str], env: Mapping[str, str], log_path: Path
    ) -> subprocess.Popen[bytes]:
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                self.command(args), env=dict(env), stdout=log, stderr=subprocess.STDOUT
            )
        self.processes.append(process)
        return process

    def cut(self) -> None:
        """Partition the host from the cluster net (its front link stays up)."""
        _ip("link", "set", self.cluster_link, "down")

    def heal(self) -> None:
        _ip("link", "set", self.cluster_link, "up")


class Network:
    """Two bridges (cluster, front) and the hosts on them; `close()` undoes all of it."""

    def __init__(self) -> None:
        global _swept
        reason = netns_unavailable()
        if reason is not None:
            raise RuntimeError(reason)
        self.prefix = f"gwt{os.getpid()}{'abcdefghijklmnopqrstuvwxy'[next(_numbers) % 25]}"
        self.hosts: list[Host] = []
        self.links: list[str] = []
        self.latency = False
        with ALLOCATION_LOCK.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not _swept:
                sweep_stale()
                _swept = True
            used = _used_subnets()
            second, third = next(
                (a, b)
                for a in range(200, 250)
                for b in range(0, 254, 2)
                if (a, b) not in used and (a, b + 1) not in used
            )
            self.cluster_net = f"10.{second}.{third}"
            self.front_net = f"10.{second}.{third + 1}"
            try:
                for bridge, net in (("c", self.cluster_net), ("f", self.front_net)):
                    name = f"{self.prefix}{bridge}"
                    _ip("link", "add", name, "type", "bridge")
                    self.links.append(name)
                    _ip("addr", "add", f"{net}.1/24", "dev", name)
                    _ip("link", "set", name, "up")
            except BaseException:
                self.close()
                raise

    def add_host(self, *, front: bool = False) -> Host:
        index = len(self.hosts) + 2
        name = f"{self.prefix}h{index}"
        _ip("netns", "add", name)
        host = Host(self, name, f"{self.cluster_net}.{index}", None, f"{self.prefix}c{index}")
        self.hosts.append(host)
        _ip("link", "set", "lo", "up", namespace=name)
        nets = [("c", host.address, "eth0")]
        if front:
            host.front = f"{self.front_net}.{index}"
            nets.append(("f", host.front, "eth1"))
        for kind, address, inside in nets:
            outside, peer = f"{self.prefix}{kind}{index}", f"{self.prefix}{kind}{index}p"
            _ip("link", "add", outside, "type", "veth", "peer", "name", peer)
            self.links.append(outside)
            _ip("link", "set", peer, "netns", name)
            _ip("link", "set", peer, "name", inside, namespace=name)
            _ip("addr", "add", f"{address}/24", "dev", inside, namespace=name)
            _ip("link", "set", inside, "up", namespace=name)
            _ip("link", "set", outside, "master", f"{self.prefix}{kind}")
            _ip("link", "set", outside, "up")
            # 1 ms each way on the host's side: any two hosts are ~2 ms apart, a round trip ~4.
            self.latency = _netem(inside, name)
        return host

    def close(self) -> None:
        for host in self.hosts:
            for process in host.processes:
                if process.poll() is None:
                    process.kill()
            for process in host.processes:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(10)
            for pid in _ip("netns", "pids", host.name, check=False).split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            _ip("netns", "del", host.name, check=False)
        for link in self.links:
            _ip("link", "del", link, check=False)
        self.hosts.clear()
        self.links.clear()


@contextlib.contextmanager
def network() -> Iterator[Network]:
    made = Network()
    try:
        yield made
    finally:
        made.close()


# --- Redis Cluster across hosts ---------------------------------------------------------------


class HostedClusterNode(ClusterNode):
    """A `tests.redis_cluster.ClusterNode` run inside its own host, announcing its address."""

    def __init__(self, host: Host, directory: Path, index: int) -> None:
        super().__init__(directory)
        self.netns_host = host
        self.host = host.address
        # Alone in its namespace, so fixed ports: never its own bus port (two free_port() calls
        # may return the same number), and distinct per node (nodes are found by port).
        self.port, self.bus_port = 7000 + index, 17000 + index

    def start(self) -> None:
        assert REDIS_SERVER is not None
        args = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", self.host,
            "--cluster-enabled", "yes",
            "--cluster-port", str(self.bus_port),
            "--cluster-announce-ip", self.host,
            "--cluster-config-file", str(self.directory / "nodes.conf"),
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--cluster-replica-validity-factor", "0",
            "--protected-mode", "no",
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        self.process = self.netns_host.popen(args, os.environ, self.directory / "stdout.log")
        wait_until(self.answers, 15, f"cluster node {self.address}")

    def answers(self) -> bool:
        try:
            return bool(self.command("PING"))
        except Exception:
            return False


class NetnsCluster(LocalRedisCluster):
    """`LocalRedisCluster` (3 masters + 3 replicas, AOF) with each node on a host of its own."""

    def __init__(self, network: Network, directory: Path) -> None:
        super().__init__(directory)
        self.nodes = [
            HostedClusterNode(network.add_host(), directory, index)
            for index in range(len(self.nodes))
        ]


# --- gateways and workers on hosts -------------------------------------------------------------


class HostedProcess(ServiceProcess):
    """`python -m gateway <args>` run inside a host's namespace."""

    def __init__(self, host: Host, args: list[str], env: Mapping[str, str], log_path: Path) -> None:
        super().__init__(args, env, log_path)
        self.host = host

    def start(self) -> None:
        self.process = self.host.popen(
            [sys.executable, "-m", "gateway", *self.args], self.env, self.log_path
        )


class HostedGateway(HostedProcess):
    PORT = 8000

    def __init__(self, host: Host, env: Mapping[str, str], log_path: Path) -> None:
        assert host.front is not None, "a gateway host needs a front link for its clients"
        super().__init__(
            host, ["serve", "--host", "0.0.0.0", "--port", str(self.PORT)], env, log_path
        )

    @property
    def url(self) -> str:
        return f"http://{self.host.front}:{self.PORT}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host.front}:{self.PORT}/ws"

    def ready_status(self) -> int:
        try:
            return httpx.get(self.url + "/readyz", timeout=10).status_code
        except httpx.HTTPError:
            return 0

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait for `/readyz` 200 (raising with its log if the process exits first)."""

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"gateway exited early:\n{self.output()}")
            return self.ready_status() == 200

        wait_until(ready, timeout, f"gateway on {self.url}")


def hosted_worker(host: Host, env: Mapping[str, str], log_path: Path) -> HostedProcess:
    worker = HostedProcess(host, ["worker"], env, log_path)
    worker.start()
    return worker
