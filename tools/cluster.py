"""A real Redis Cluster for tests and scripts: 3 masters + 3 replicas on free loopback ports.

Each node is a ``redis-server --cluster-enabled yes`` in its own directory; ``redis-cli
--cluster create`` forms them. ``kill()`` SIGKILLs a node (a crash, not a shutdown) so its
replica is promoted; ``cleanup()`` stops every node and removes the directories.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from tools.net import bound_port, ephemeral_range, free_port, wait_until

NODE_TIMEOUT_MS = 1000
BUS_OFFSET = 10000  # a cluster node also listens on port + 10000 (its cluster bus)


def cluster_port() -> int:
    """A free port whose cluster-bus port (port + 10000) is a free, valid port too, and, like
    the port, outside the range outgoing connections take their source ports from."""
    low, high = ephemeral_range()
    for attempt in range(400):
        port = free_port()
        bus = port + BUS_OFFSET
        # Past half the tries, a bus port in the ephemeral range will do (a host whose range
        # leaves none outside it): a node that then loses it is moved (``_await_node``).
        if bus > 65535 or (low <= bus <= high and attempt < 200):
            continue
        if bound_port("127.0.0.1", bus) is not None:
            return port
    raise RuntimeError("no free port whose cluster-bus port (port + 10000) is free too")


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed: `apt-get install redis-server` (.ci/run does this)")
    return path


class RedisClusterServers:
    """``masters`` masters with ``replicas`` replicas each, formed into one cluster."""

    def __init__(self, masters: int = 3, replicas: int = 1, directory: Path | None = None) -> None:
        self.server = _binary("redis-server")
        self.cli = _binary("redis-cli")
        self.replicas = replicas
        self.ports: list[int] = []
        while len(self.ports) < masters * (1 + replicas):
            port = cluster_port()
            if port not in self.ports:
                self.ports.append(port)
        self.dir = directory or Path(tempfile.mkdtemp(prefix="parley-cluster-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """``REDIS_URL`` for the app: every node as a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def _start_node(self, port: int) -> None:
        node_dir = self.dir / str(port)
        node_dir.mkdir(exist_ok=True)
        args = [
            self.server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--dir", str(node_dir),
            "--daemonize", "no", "--loglevel", "warning",
        ]
        # Own session: a node outlives the script that started it when the local stack does.
        self.processes[port] = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                                start_new_session=True)

    def start(self) -> RedisClusterServers:
        try:
            return self._form()
        except BaseException:
            self.cleanup()
            raise

    def _form(self) -> RedisClusterServers:
        for port in self.ports:
            self._start_node(port)
        for index in range(len(self.ports)):
            self._await_node(index)
        subprocess.run(
            [self.cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )
        self.wait_healthy()
        return self

    def _await_node(self, index: int, attempts: int = 3) -> None:
        """Wait for the node at ``self.ports[index]`` to answer; one that exited at once lost
        its port (or bus port) to another process since it was found free: move it."""
        for _ in range(attempts):
            port = self.ports[index]
            process = self.processes[port]
            def settled(p: int = port, proc: subprocess.Popen[bytes] = process) -> bool:
                return self._answers(p) or proc.poll() is not None

            wait_until(settled, 10, f"redis-server on port {port}")
            if process.poll() is None:
                return
            del self.processes[port]
            self.ports[index] = cluster_port()
            self._start_node(self.ports[index])
        raise RuntimeError(f"redis-server would not start on a free port ({attempts} tries)")

    def _cli(self, port: int, *args: str) -> str:
        completed = subprocess.run([self.cli, "-p", str(port), *args], capture_output=True,
                                   text=True, timeout=5)
        return completed.stdout

    def _answers(self, port: int) -> bool:
        return self._cli(port, "PING").strip() == "PONG"

    def _healthy(self) -> bool:
        # Every live node agrees the cluster is ok, every master has its replicas online.
        for port in self.live_ports():
            if "cluster_state:ok" not in self._cli(port, "CLUSTER", "INFO"):
                return False
        for port in self.masters():
            if self._cli(port, "INFO", "replication").count("state=online") < self.replicas:
                return False
        return True

    def wait_healthy(self, timeout: float = 60) -> None:
        """Until the cluster serves every slot and each master has its replicas in sync."""
        wait_until(self._healthy, timeout, "the Redis Cluster to be ok", interval=0.1)

    def live_ports(self) -> list[int]:
        return [port for port, proc in self.processes.items() if proc.poll() is None]

    def masters(self) -> list[int]:
        """Ports of the live nodes that are masters right now."""
        return [port for port in self.live_ports()
                if "role:master" in self._cli(port, "INFO", "replication")]

    def master_of(self, key: str) -> int | None:
        """The port of the master serving ``key``'s slot, as the cluster sees it (None while
        that master is failing and no replica has taken over yet)."""
        return self.master_of_slot(self.slot_of(key))

    def master_of_slot(self, slot: int) -> int | None:
        """The port of the master serving ``slot`` (None while it has none)."""
        return self.slot_owners().get(slot)

    def slot_owners(self) -> dict[int, int]:
        """The port of the master serving each slot that has one, from one ``CLUSTER NODES``
        (to pick many keys by master without a redis-cli call per key)."""
        owners: dict[int, int] = {}
        for row in self._cli(self.live_ports()[0], "CLUSTER", "NODES").splitlines():
            fields = row.split()
            if "master" not in fields[2].split(",") or "fail" in fields[2]:
                continue
            port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
            for span in fields[8:]:
                low, _, high = span.partition("-")
                if low.isdigit():  # not a slot being migrated ("[slot->-node]")
                    owners.update(dict.fromkeys(range(int(low), int(high or low) + 1), port))
        return owners

    def slot_of(self, key: str) -> int:
        return int(self._cli(self.live_ports()[0], "CLUSTER", "KEYSLOT", key).strip())

    def node_id(self, port: int) -> str:
        return self._cli(port, "CLUSTER", "MYID").strip()

    def begin_migration(self, key: str, target: int) -> tuple[int, int]:
        """Start moving ``key``'s slot to the master at ``target`` as ``redis-cli --cluster
        reshard`` does (IMPORTING on the target, MIGRATING on the source); (slot, source).
        Until ``finish_migration``, keys not yet moved are served by the source, the others
        by the target after an ASK redirection."""
        slot, source = self.slot_of(key), self.master_of(key)
        if source is None or source == target:
            raise ValueError(f"{key!r} is not served by another master than {target}")
        self._must(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", self.node_id(source))
        self._must(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", self.node_id(target))
        return slot, source

    def move_keys(self, slot: int, source: int, target: int) -> int:
        """MIGRATE every key of ``slot`` from ``source`` to ``target``; how many moved."""
        keys = self._cli(source, "CLUSTER", "GETKEYSINSLOT", str(slot), "1000").split()
        if keys:
            self._must(source, "MIGRATE", "127.0.0.1", str(target), "", "0", "5000", "KEYS", *keys)
        return len(keys)

    def finish_migration(self, slot: int, target: int) -> None:
        """Give ``slot`` to ``target`` on every master (the target first, as redis-cli does):
        clients of the source get MOVED, and its sharded subscribers a ``sunsubscribe``."""
        owner = self.node_id(target)
        for port in [target, *(p for p in self.masters() if p != target)]:
            self._must(port, "CLUSTER", "SETSLOT", str(slot), "NODE", owner)

    def migrate(self, key: str, target: int) -> int:
        """Move ``key``'s slot, keys and all, to the master at ``target``; the slot."""
        slot, source = self.begin_migration(key, target)
        self.move_keys(slot, source, target)
        self.finish_migration(slot, target)
        return slot

    def _must(self, port: int, *args: str) -> None:
        answer = self._cli(port, *args).strip()
        if answer not in ("OK", "NOKEY"):
            raise RuntimeError(f"{' '.join(args[:3])} on {port}: {answer!r}")

    def kill(self, port: int) -> None:
        """SIGKILL one node: no shutdown, no last write; the cluster must fail over."""
        process = self.processes.pop(port)
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def restart(self, port: int) -> None:
        """Start a killed node again from its nodes.conf: it rejoins the cluster (as a replica
        of whichever node took its slots). Only after the failover: a node with no
        persistence that comes back as master before it would serve its slots empty."""
        self._start_node(port)
        wait_until(lambda: self._answers(port), 10, f"redis-server on port {port}")

    def serving(self) -> bool:
        """True while every live node reports every slot served (cluster_state:ok)."""
        return all("cluster_state:ok" in self._cli(port, "CLUSTER", "INFO") for port in self.live_ports())

    def cleanup(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
        shutil.rmtree(self.dir, ignore_errors=True)
