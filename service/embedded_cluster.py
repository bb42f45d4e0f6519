"""A private Redis Cluster of ``redis-server`` children on loopback: for tests and benchmarks.

``LocalCluster`` starts a few ``redis-server --cluster-enabled yes`` (each a ``RedisServer``
in its own temporary folder, on a free loopback port), joins them with ``redis-cli
--cluster create`` (slots split evenly, no replicas) and waits until every node says
``cluster_state:ok``. ``add_replica`` attaches one more server as the replica of a primary,
for failover tests. Nothing is kept on disk.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import redis

from service.embedded_redis import EmbeddedRedisError, RedisServer, find_redis_server

__all__ = ["LocalCluster", "find_redis_cli"]

SLOTS = 16384
# Short enough that a dead node is noticed within seconds, long enough for a busy 2-core machine.
NODE_TIMEOUT_MS = 3000


def find_redis_cli() -> str | None:
    """``redis-cli`` beside ``redis-server`` (or on ``PATH``): ``--cluster create`` needs it."""
    server = find_redis_server()
    beside = Path(server).with_name("redis-cli") if server else None
    if beside is not None and beside.exists():
        return str(beside)
    return shutil.which("redis-cli")


def _info(client: redis.Redis, section: str) -> dict[str, Any]:
    return cast(dict[str, Any], client.info(section))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LocalCluster:
    """``primaries`` cluster-enabled servers on loopback, joined into one cluster; ``stop`` removes it all."""

    def __init__(self, primaries: int = 3) -> None:
        cli = find_redis_cli()
        if cli is None:
            raise EmbeddedRedisError("no redis-cli found: a local cluster is built with redis-cli --cluster create")
        self.cli = cli
        self.folder = Path(tempfile.mkdtemp(prefix="ottoai-cluster-"))
        self.primaries = primaries
        self.servers: list[RedisServer] = []
        self._bus_ports: dict[int, int] = {}  # node port -> its cluster bus port

    @staticmethod
    def _free_port(taken: set[int]) -> int:
        """A free loopback port not in ``taken`` (a port just closed can come back at once)."""
        port = _free_port()
        while port in taken:
            port = _free_port()
        return port

    @property
    def url(self) -> str:
        """A seed URL: the first node (a client learns the others from it)."""
        return self.servers[0].url

    def _server(self) -> RedisServer:
        taken = {server.port for server in self.servers} | set(self._bus_ports.values())
        port = self._free_port(taken)
        bus_port = self._bus_ports[port] = self._free_port(taken | {port})
        server = RedisServer(
            self.folder / str(port),
            port=port,
            args=[
                "--cluster-enabled",
                "yes",
                "--cluster-port",  # the node-to-node bus; by default port + 10000, which may not exist
                str(bus_port),
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                str(NODE_TIMEOUT_MS),
                "--save",
                "",
                "--appendonly",
                "no",
                "--repl-diskless-sync-delay",  # a replica's first sync starts at once, not after 5 s
                "0",
            ],
        )
        self.servers.append(server)
        server.start()
        return server

    def start(self, timeout_s: float = 30.0) -> LocalCluster:
        """Start the primaries, give them the slots, wait until the cluster is up."""
        for _ in range(self.primaries):
            self._server()
        addresses = [f"127.0.0.1:{server.port}" for server in self.servers]
        self._cli("--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes", timeout_s=timeout_s)
        self.wait_ok(timeout_s)
        return self

    def add_replica(self, primary: RedisServer, timeout_s: float = 30.0) -> RedisServer:
        """One more server, replicating ``primary``; returns when it is in sync."""
        replica = self._server()
        with self.client(replica) as client, self.client(primary) as source:
            primary_id = source.execute_command("CLUSTER", "MYID").decode()
            client.execute_command("CLUSTER", "MEET", "127.0.0.1", primary.port, self._bus_ports[primary.port])
            deadline = time.monotonic() + timeout_s
            while True:  # REPLICATE needs the primary known to this node first
                try:
                    client.execute_command("CLUSTER", "REPLICATE", primary_id)
                    break
                except redis.ResponseError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            while _info(client, "replication").get("master_link_status") != "up" or not self._synced(source, client):
                if time.monotonic() > deadline:
                    raise EmbeddedRedisError(f"replica {replica.port} did not sync within {timeout_s:g} s")
                time.sleep(0.05)
        self.wait_ok(timeout_s)
        return replica

    @staticmethod
    def _synced(primary: redis.Redis, replica: redis.Redis) -> bool:
        offset = _info(primary, "replication").get("master_repl_offset")
        return bool(_info(replica, "replication").get("slave_repl_offset") == offset)

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Wait until every running node reports ``cluster_state:ok`` and knows every node that runs."""
        running = [server for server in self.servers if server.running]
        deadline = time.monotonic() + timeout_s
        while not all(self._ok(server, len(running)) for server in running):
            if time.monotonic() > deadline:
                raise EmbeddedRedisError(f"the local cluster in {self.folder} was not ok within {timeout_s:g} s")
            time.sleep(0.05)

    def _ok(self, server: RedisServer, nodes: int) -> bool:
        try:
            with self.client(server) as client:
                info = client.cluster("INFO")
        except redis.RedisError:
            return False
        return bool(info.get("cluster_state") == "ok" and int(info.get("cluster_known_nodes", 0)) >= nodes)

    def owner(self, slot: int) -> RedisServer:
        """The running primary that serves ``slot``, as the first running node sees it."""
        for server, slots in self.slot_map():
            if slot in slots:
                return server
        raise LookupError(f"no node serves slot {slot}")

    def slot_map(self) -> list[tuple[RedisServer, range]]:
        """Each range of slots and its primary, as the first running node sees them."""
        seed = next(server for server in self.servers if server.running)
        with self.client(seed) as client:
            shards = client.execute_command("CLUSTER", "SLOTS")
        by_port = {server.port: server for server in self.servers}
        return [(by_port[int(port)], range(start, end + 1)) for start, end, (_, port, *_), *_ in shards]

    @staticmethod
    def client(server: RedisServer) -> redis.Redis:
        """A plain client of one node (not cluster-aware); close it (``with``)."""
        return redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=10)

    def _cli(self, *args: str, timeout_s: float) -> str:
        done = subprocess.run(
            [self.cli, *args], capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL
        )
        if done.returncode != 0:
            raise EmbeddedRedisError(f"redis-cli {' '.join(args[:2])} failed: {(done.stdout + done.stderr)[-2000:]}")
        return done.stdout

    def stop(self) -> None:
        """Stop every node and remove the folder."""
        for server in self.servers:
            server.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
