"""The test suite's own servers: a private ``redis-server`` and a private PostgreSQL cluster.

Both start on first use, listen on loopback only, keep their data in a temporary folder
and stop when the session ends. ``TEST_REDIS_URL`` / ``TEST_DATABASE_URL`` name other
servers instead; the suite never reads ``REDIS_URL`` and never empties a database it did
not create (a named Redis database must be empty when the session starts).
"""

from __future__ import annotations

import asyncio
import atexit
import glob
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

from service.embedded_cluster import LocalCluster
from service.embedded_redis import HOW_TO_GET_ONE, RedisServer, die_with_parent, find_redis_server

__all__ = [
    "HOW_TO_GET_ONE",
    "LocalCluster",
    "PostgresServer",
    "RedisServer",
    "SilentServer",
    "database_url",
    "free_port",
    "missing_redis_server",
    "new_cluster",
    "new_redis_server",
    "redis_url",
    "shared_cluster",
    "stop_all",
]

REDIS_ENV = "TEST_REDIS_URL"
DATABASE_ENV = "TEST_DATABASE_URL"

_started: list[Callable[[], None]] = []
_redis_url: str | None = None
_database_url: str | None = None
_cluster: LocalCluster | None = None


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def missing_redis_server() -> str | None:
    """Why the suite cannot run (one line), or ``None`` when it has a Redis to use."""
    if os.environ.get(REDIS_ENV) or find_redis_server():
        return None
    return "the test suite starts its own Redis, but " + HOW_TO_GET_ONE.replace(", or set REDIS_URL", "")


def new_redis_server(*args: str, folder: Path | None = None, port: int | None = None) -> RedisServer:
    """A started private ``redis-server`` on a free loopback port, stopped at the end of the session at the latest.

    ``args`` are extra options (``"--appendonly", "yes"``); by default it keeps nothing on disk.
    """
    data_dir = folder or Path(tempfile.mkdtemp(prefix="ottoai-test-redis-"))
    server = RedisServer(data_dir, port=port or free_port(), args=["--save", "", "--appendonly", "no", *args])
    server.start()
    _started.append(server.stop)
    return server


def redis_url() -> str:
    """The session's Redis: ``TEST_REDIS_URL`` (whose database must be empty at first use), else a private one."""
    global _redis_url
    if _redis_url is None:
        named = os.environ.get(REDIS_ENV)
        if named:
            with redis.Redis.from_url(named) as client:
                keys = client.dbsize()
            if keys:
                raise RuntimeError(
                    f"{REDIS_ENV} names a database that holds {keys} keys; the suite empties its database between"
                    " tests, so it needs an empty one (or unset it to use a private redis-server)"
                )
            _redis_url = named
        else:
            _redis_url = new_redis_server().url
    return _redis_url


def new_cluster(primaries: int = 3) -> LocalCluster:
    """A started private Redis Cluster (``primaries`` nodes on loopback), stopped at the end of the session."""
    cluster = LocalCluster(primaries)
    _started.append(cluster.stop)
    return cluster.start()


def shared_cluster() -> LocalCluster:
    """The session's three-primary Redis Cluster, started on first use; tests that break a node start their own."""
    global _cluster
    if _cluster is None:
        _cluster = new_cluster()
    return _cluster


class PostgresServer:
    """A private PostgreSQL cluster in a temporary folder (``initdb``, then ``postgres`` as a child).

    PostgreSQL refuses to run as root; as root, the cluster belongs to the ``postgres``
    user when there is one, else ``nobody``.
    """

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.folder = Path(tempfile.mkdtemp(prefix="ottoai-test-pg-"))
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._user = _unprivileged_user() if os.geteuid() == 0 else None
        if self._user is not None:
            os.chown(self.folder, self._user.pw_uid, self._user.pw_gid)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_owner(self) -> None:
        die_with_parent()
        if self._user is not None:
            os.setgroups([])
            os.setgid(self._user.pw_gid)
            os.setuid(self._user.pw_uid)

    def start(self, timeout_s: float = 30.0) -> None:
        data = self.folder / "data"
        subprocess.run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
            preexec_fn=self._as_owner,
            capture_output=True,
            check=True,
            timeout=timeout_s,
        )
        with (self.folder / "postgres.log").open("wb") as log:
            self.process = subprocess.Popen(
                [
                    str(self.bin_dir / "postgres"),
                    "-D",
                    str(data),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.folder),
                    "-c",
                    "fsync=off",
                    "-c",
                    "logging_collector=off",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
                preexec_fn=self._as_owner,
            )
        deadline = time.monotonic() + timeout_s
        while not self._ready(data):
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited: {(self.folder / 'postgres.log').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not start within {timeout_s:g} s")
            time.sleep(0.05)

    @staticmethod
    def _ready(data: Path) -> bool:
        # The postmaster writes its status as the last line of postmaster.pid.
        try:
            lines = (data / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[7].strip() == "ready"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # "smart" shutdown; fast enough with no clients left
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def _unprivileged_user() -> pwd.struct_passwd:
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root, and there is no 'postgres' or 'nobody' user to run PostgreSQL as")


def postgres_bin_dir() -> Path | None:
    """Where ``initdb`` and ``postgres`` are: ``PATH``, Debian's folders, else the ``pgserver`` wheel."""
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if debian:
        return Path(debian[-1]).parent
    # Found without importing it: importing pgserver has side effects (warnings, folders).
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    bundled = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return bundled if (bundled / "initdb").exists() else None


def database_url() -> str:
    """The session's PostgreSQL: ``TEST_DATABASE_URL``, else a private cluster started now."""
    global _database_url
    if _database_url is None:
        named = os.environ.get(DATABASE_ENV)
        if named:
            _database_url = named
        else:
            bin_dir = postgres_bin_dir()
            if bin_dir is None:
                raise RuntimeError(
                    "the readiness tests start their own PostgreSQL, but none is installed: "
                    "apt-get install postgresql, or pip install pgserver (Python 3.11/3.12)"
                )
            server = PostgresServer(bin_dir)
            _started.append(server.stop)
            server.start()
            _database_url = server.url
    return _database_url


def stop_all() -> None:
    """Stop every server the session started (newest first)."""
    global _redis_url, _database_url, _cluster
    while _started:
        _started.pop()()
    _redis_url = _database_url = None
    _cluster = None


atexit.register(stop_all)  # a safety net: pytest_sessionfinish stops them first


class SilentServer:
    """A TCP listener on loopback that accepts connections and never answers: a hung dependency.

    ``reply`` may answer some of what arrives (each chunk read gets ``reply(chunk)`` written
    back), e.g. a connection's set-up but never the command after it. ``received`` holds
    every byte that arrived.
    """

    def __init__(self, reply: Callable[[bytes], bytes] | None = None) -> None:
        self._reply = reply
        self.received = bytearray()
        self._held: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._held.append(writer)
        while data := await reader.read(65536):
            self.received.extend(data)
            if self._reply is not None and (answer := self._reply(data)):
                writer.write(answer)

    async def start(self) -> SilentServer:
        self._server = await asyncio.start_server(self._hold, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        for writer in self._held:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
