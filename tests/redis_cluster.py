"""A local Redis Cluster for tests: 3 masters and 3 replicas, AOF on, free ports, one temp dir.

    cluster = LocalRedisCluster(tmp_path)
    cluster.start()            # six redis-server processes, `redis-cli --cluster create`
    cluster.url                # redis+cluster://127.0.0.1:P1,127.0.0.1:P2 (the seeds)
    node = cluster.master_of_slot(slot_of("gw:{room:a}:log"))
    node.kill()                # SIGKILL; cluster.wait_promoted(node) waits for its replica
    node.start()               # it rejoins (as a replica of the promoted one)
    cluster.wait_healthy()     # every node up, state ok, every slot covered everywhere

Nothing here is a mock: each node is a real `redis-server --cluster-enabled yes`. The pytest
fixtures `redis_cluster` (one cluster per test session and xdist worker) and
`redis_cluster_url` (the cluster emptied, its seed URL) skip the test, naming the packages to
install, when the binaries are absent. Import them into a test module or conftest
(`from tests.redis_cluster import redis_cluster, redis_cluster_url`).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import ChildProcess, free_port, wait_until

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
MISSING_CLUSTER = (
    "a local Redis Cluster needs redis-server and redis-cli (Redis 7 or newer) on PATH: "
    "`apt-get install redis-server redis-tools` (Debian/Ubuntu) or `brew install redis`"
)
SLOTS = 16384

NODE_TIMEOUT_MS = 1000
"""`cluster-node-timeout`: how long a master may be silent before its replica is promoted.
Short, so failover tests take a couple of seconds."""


def slot_of(key: str | bytes) -> int:
    """The hash slot of a key (CRC16 of its hash tag), as the cluster computes it."""
    from redis.crc import key_slot

    return int(key_slot(key.encode() if isinstance(key, str) else key))


class ClusterNode(ChildProcess):
    """One `redis-server --cluster-enabled yes`, which tests may stop, kill and restart on the
    same ports (it keeps its node id and AOF in its own directory)."""

    def __init__(self, directory: Path, *, node_timeout_ms: int = NODE_TIMEOUT_MS) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError(MISSING_CLUSTER)
        self.root = directory
        self._new_ports()
        self.node_timeout_ms = node_timeout_ms
        self.host = "127.0.0.1"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __repr__(self) -> str:
        return f"ClusterNode({self.address})"

    def start(self) -> None:
        self.spawn_on_free_ports(self._start, self._new_ports)

    def _new_ports(self) -> None:
        """A client port and a cluster bus port, never the same (two free_port() calls may
        return one number), and a directory of the client port's name."""
        self.port = free_port()
        self.bus_port = free_port()
        while self.bus_port == self.port:
            self.bus_port = free_port()
        self.directory = self.root / str(self.port)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _start(self) -> None:
        assert REDIS_SERVER is not None
        args = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--cluster-enabled",
            "yes",
            "--cluster-port",
            str(self.bus_port),
            "--cluster-config-file",
            str(self.directory / "nodes.conf"),
            "--cluster-node-timeout",
            str(self.node_timeout_ms),
            # A replica may be promoted however long its link was down (tests kill and restart
            # nodes in quick succession; the default factor would refuse the failover).
            "--cluster-replica-validity-factor",
            "0",
            "--dir",
            str(self.directory),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ]
        self.spawn(args, self.port, "cluster node")

    def pause(self) -> None:
        """SIGSTOP: the node keeps its connections and answers nothing (a replica paused so
        falls behind its master)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def node_id(self) -> str:
        raw = self.command("CLUSTER", "MYID")
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def client(self, **options: Any) -> Any:
        """A plain (non-cluster) client of this node alone."""
        import redis

        return redis.Redis(
            host=self.host, port=self.port, socket_connect_timeout=1, socket_timeout=5, **options
        )

    def command(self, *args: Any) -> Any:
        client = self.client()
        try:
            return client.execute_command(*args)
        finally:
            client.close()

    def info(self) -> dict[str, str]:
        """`CLUSTER INFO` as a dict (strings)."""
        raw = self.command("CLUSTER", "INFO")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
        return {name: value.strip() for name, value in pairs}

    def role(self) -> str:
        """`master` or `slave`."""
        reply = self.command("ROLE")
        role = reply[0]
        return role.decode() if isinstance(role, bytes) else str(role)


class LocalRedisCluster:
    """Six nodes (3 masters + 3 replicas by default) made into one cluster."""

    def __init__(
        self,
        directory: Path,
        *,
        masters: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = NODE_TIMEOUT_MS,
    ) -> None:
        if REDIS_SERVER is None or REDIS_CLI is None:
            raise RuntimeError(MISSING_CLUSTER)
        self.directory = directory
        self.replicas = replicas
        self.nodes = [
            ClusterNode(directory, node_timeout_ms=node_timeout_ms)
            for _ in range(masters * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        """The gateway's `REDIS_URL`: two seeds (any node would do; two survive one failure)."""
        return "redis+cluster://" + ",".join(node.address for node in self.nodes[:2])

    def start(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            node.start()
        assert REDIS_CLI is not None
        created = subprocess.run(
            [
                REDIS_CLI,
                "--cluster",
                "create",
                *(node.address for node in self.nodes),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            capture_output=True,
            timeout=60,
        )
        if created.returncode != 0:
            self.stop()
            raise RuntimeError(
                "redis-cli --cluster create failed: "
                + created.stdout.decode(errors="replace")[-2000:]
                + created.stderr.decode(errors="replace")[-2000:]
            )
        self.wait_healthy(timeout)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def node(self, port: int) -> ClusterNode:
        for node in self.nodes:
            if node.port == port:
                return node
        raise KeyError(port)

    def _healthy(self) -> bool:
        try:
            if not all(node.running for node in self.nodes):
                return False
            for node in self.nodes:
                info = node.info()
                if info.get("cluster_state") != "ok":
                    return False
                if info.get("cluster_slots_ok") != str(SLOTS):
                    return False
                if info.get("cluster_known_nodes") != str(len(self.nodes)):
                    return False
            masters = self.masters()
            if len(masters) * (1 + self.replicas) != len(self.nodes):
                return False
            # Every replica has finished its first sync with its master.
            for node in self.nodes:
                if node in masters:
                    continue
                replication = node.client().info("replication")
                if replication.get("master_link_status") != "up":
                    return False
            return True
        except Exception:
            return False

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Every node running, `cluster_state:ok` and all 16384 slots served, seen from every
        node; as many masters as the cluster was made with, each replica in sync."""
        wait_until(self._healthy, timeout, "the Redis Cluster to be healthy")

    def slot_owners(self) -> dict[int, ClusterNode]:
        """Slot -> the master serving it, as the first reachable node sees it."""
        for node in self.nodes:
            if not node.running:
                continue
            try:
                ranges = node.command("CLUSTER", "SLOTS")
            except Exception:
                continue
            owners: dict[int, ClusterNode] = {}
            for start, end, master, *_replicas in ranges:
                owner = self.node(int(master[1]))
                for slot in range(int(start), int(end) + 1):
                    owners[slot] = owner
            return owners
        raise RuntimeError("no cluster node answers CLUSTER SLOTS")

    def master_of_slot(self, slot: int) -> ClusterNode:
        return self.slot_owners()[slot]

    def master_of_key(self, key: str) -> ClusterNode:
        return self.master_of_slot(slot_of(key))

    def masters(self) -> list[ClusterNode]:
        return sorted(set(self.slot_owners().values()), key=lambda node: node.port)

    def replicas_of(self, master: ClusterNode) -> list[ClusterNode]:
        """The nodes replicating `master`, as `master` itself reports them."""
        reply = master.client().info("replication")
        ports = [
            int(value["port"])
            for name, value in reply.items()
            if name.startswith("slave") and isinstance(value, dict)
        ]
        return [self.node(port) for port in ports]

    def kill_master(self, master: ClusterNode, timeout: float = 20.0) -> ClusterNode:
        """SIGKILL `master` and wait until a replica serves its slots (seen by a survivor);
        return the promoted node. Restart the dead one with `master.start()` (it rejoins as a
        replica) and `wait_healthy()` before the next test."""
        owned = [slot for slot, owner in self.slot_owners().items() if owner is master]
        if not owned:
            raise ValueError(f"{master} serves no slots")
        master.kill()
        return self.wait_slot_moved(owned[0], master, timeout)

    def wait_slot_moved(
        self, slot: int, away_from: ClusterNode, timeout: float = 20.0
    ) -> ClusterNode:
        """Wait until a running master other than `away_from` serves `slot`; return it."""

        def moved() -> bool:
            try:
                owner = self.slot_owners().get(slot)
                return owner is not None and owner is not away_from and owner.role() == "master"
            except Exception:
                return False

        wait_until(moved, timeout, f"slot {slot} to leave {away_from}")
        return self.master_of_slot(slot)

    def cut_replication(self, master: ClusterNode, replica: ClusterNode) -> None:
        """Stop `replica` from receiving `master`'s writes while both keep serving: the replica
        is given a wrong `masterauth` and its link is closed, so it cannot sync again. Writes
        acknowledged by `master` from now on are lost if it dies (the replica is promoted
        without them): the failover loss `GATEWAY_REPLICA_WAIT` guards against. Undo with
        `mend_replication(replica)`."""
        replica.command("CONFIG", "SET", "masterauth", "not-the-password")
        master.command("CLIENT", "KILL", "TYPE", "replica")

        def down() -> bool:
            return replica.client().info("replication").get("master_link_status") == "down"

        wait_until(down, 10, f"{replica}'s replication link to be down")

    def mend_replication(self, replica: ClusterNode) -> None:
        replica.command("CONFIG", "SET", "masterauth", "")

    def move_slot(self, slot: int, target: ClusterNode, batch: int = 100) -> None:
        """Migrate `slot` (and its keys) to the master `target`, live, as `redis-cli --cluster
        reshard` does: IMPORTING / MIGRATING, `MIGRATE` the keys, then `SETSLOT NODE` on every
        master."""
        source = self.master_of_slot(slot)
        if source is target:
            return
        source_id, target_id = source.node_id(), target.node_id()
        target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while True:
            keys = source.command("CLUSTER", "GETKEYSINSLOT", slot, batch)
            if not keys:
                break
            source.command(
                "MIGRATE", target.host, target.port, "", 0, 5000, "REPLACE", "KEYS", *keys
            )
        for master in (target, source, *self.masters()):
            master.command("CLUSTER", "SETSLOT", slot, "NODE", target_id)

        def everyone_agrees() -> bool:
            for node in self.nodes:
                if not node.running:
                    continue
                try:
                    ranges = node.command("CLUSTER", "SLOTS")
                except Exception:
                    return False
                for start, end, master, *_replicas in ranges:
                    if int(start) <= slot <= int(end) and int(master[1]) != target.port:
                        return False
            return True

        wait_until(everyone_agrees, 10, f"every node to see slot {slot} on {target}")

    def flush(self) -> None:
        """Empty every master (replicas follow) and drop cached scripts."""
        for master in self.masters():
            client = master.client()
            try:
                client.flushall()
                client.script_flush()
            finally:
                client.close()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    """One cluster per test session (per xdist worker); tests that kill nodes leave it healthy
    again (`restart` the node, then `wait_healthy`)."""
    if REDIS_SERVER is None or REDIS_CLI is None:
        pytest.skip(MISSING_CLUSTER)
    cluster = LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: LocalRedisCluster) -> str:
    """The session's cluster, healthy and empty: its seed URL."""
    redis_cluster.wait_healthy()
    redis_cluster.flush()
    return redis_cluster.url
