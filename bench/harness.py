"""What the HTTP benchmarks share: the load generator, server processes, CPU time, the machine.

The load generator is ``wrk`` when it is installed (one thread, ``CONNECTIONS`` keep-alive
connections), else ``bench.http_load``, the Python fallback. Both read the same *targets
file*, one request a line, ``PATH<TAB>API-KEY`` (the key may be empty), and rotate over it,
each connection from its own offset; the method and body are the same for every request.

``python -m bench.harness bare PORT PATH LOOP`` runs the bare comparison point: an aiohttp
application with one JSON handler at ``PATH`` (and, for a POST there, one that reads and
parses the JSON body and answers 202), no middleware, no access log, on the event loop
``LOOP`` (``asyncio`` or ``uvloop``).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "CONNECTIONS",
    "RESULTS",
    "ROOT",
    "append_results",
    "cpu_model",
    "cpu_seconds",
    "cpu_times",
    "event_loop_of",
    "free_port",
    "free_ports",
    "load",
    "load_generator",
    "machine",
    "now_utc",
    "private_redis",
    "redis_version",
    "stop",
    "wait_for_port",
]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
CONNECTIONS = 50

WRK_SCRIPT = """
-- args: targets file (PATH<TAB>KEY a line), method, body ("" for none)
local targets = {}
local i = 0
local method, body
init = function(args)
  for line in io.lines(args[1]) do
    local path, key = line:match("^([^\\t]+)\\t?(.*)$")
    targets[#targets + 1] = { path, key }
  end
  method = args[2]
  if args[3] ~= "" then body = args[3] end
  i = math.random(#targets)
end
request = function()
  i = i % #targets + 1
  local target = targets[i]
  local headers = {}
  if target[2] ~= "" then headers["X-API-Key"] = target[2] end
  if body then headers["Content-Type"] = "application/json" end
  return wrk.format(method, target[1], headers, body)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "seconds": %f, "p50_us": %d, "p99_us": %d, "non_2xx": %d, "socket_errors": %d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(99), e.status,
    e.connect + e.read + e.write + e.timeout))
end
"""


def load_generator() -> str:
    """Which generator ``load`` runs here, for the results."""
    if shutil.which("wrk"):
        return f"wrk (1 thread, {CONNECTIONS} connections)"
    return f"bench.http_load, the Python fallback (wrk is not installed; {CONNECTIONS} connections)"


def load(port: int, targets: Path, seconds: float, method: str = "GET", body: str = "") -> dict[str, float]:
    """Load ``127.0.0.1:port`` for ``seconds``; requests, seconds, p50_us, p99_us, non_2xx, socket_errors."""
    if shutil.which("wrk"):
        script = targets.with_name("bench.lua")
        script.write_text(WRK_SCRIPT)
        command = [
            "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "-s", str(script), f"http://127.0.0.1:{port}",
            "--", str(targets), method, body,
        ]  # fmt: skip
    else:
        command = [
            sys.executable, "-m", "bench.http_load", "127.0.0.1", str(port), str(targets), str(seconds),
            str(CONNECTIONS), method, body,
        ]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    line = next(line for line in reversed(output.splitlines()) if line.startswith("{"))
    result: dict[str, float] = json.loads(line)
    return result


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (bound together, so never the same one twice)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    """Return once ``process`` accepts connections on ``port``; raise if it exits or takes too long."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bench server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("bench server did not start")


def stop(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def private_redis(folder: Path, *, tcp: bool = False) -> Iterator[str]:
    """A throw-away ``redis-server`` (no persistence) keeping its files in ``folder``; yields its URL.

    It listens on a unix socket in ``folder``, or with ``tcp`` on a free loopback port.
    """
    from service.embedded_redis import RedisServer

    args = ["--save", "", "--appendonly", "no"]
    if tcp:
        server = RedisServer(folder, port=free_port(), args=args)
    else:
        server = RedisServer(folder, unix_socket=folder / "redis.sock", args=args)
    with server:
        yield server.url


def redis_version(url: str) -> str:
    from redis import Redis

    client = Redis.from_url(url)
    try:
        info: dict[str, Any] = client.info("server")  # type: ignore[assignment]
        return str(info["redis_version"])
    finally:
        client.close()


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of process ``pid`` (all its threads) so far; Linux ``/proc``, 0 elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0, 0.0
    fields = stat.rpartition(")")[2].split()  # after "pid (comm)"; comm may hold spaces
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick  # utime, stime


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    return sum(cpu_times(pid))


def event_loop_of(pid: int) -> str:
    """``uvloop`` when process ``pid`` has uvloop's extension loaded, else ``asyncio`` (Linux ``/proc``)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return "asyncio"
    return "uvloop" if "/uvloop/" in maps else "asyncio"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine(redis_version: str) -> str:
    """CPU, cores, Python, Redis and the load average now (call it before the run)."""
    load_average = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, Redis {redis_version}"
        f" (load average before the run: {load_average})"
    )


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def append_results(section: str) -> None:
    """Append ``section`` (starting with its ``## `` title) to ``bench/RESULTS.md``."""
    with RESULTS.open("a", encoding="utf-8") as results:
        if results.tell() == 0:
            results.write("# Benchmark results\n\nFigures are from one machine; compare ratios within one run.\n")
        results.write("\n" + section.rstrip("\n") + "\n")


def _serve_bare(port: int, path: str, loop_name: str) -> None:
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def post_handler(request: web.Request) -> web.Response:
        await request.json()
        return web.json_response({"ok": True}, status=202)

    app = web.Application()
    app.router.add_get(path, handler, allow_head=False)
    app.router.add_post(path, post_handler)
    loop = None
    if loop_name == "uvloop":
        import uvloop  # type: ignore[import-not-found,unused-ignore]

        loop = uvloop.new_event_loop()
    elif loop_name != "asyncio":
        raise SystemExit(f"unknown event loop {loop_name!r}: asyncio or uvloop")
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    if sys.argv[1:2] != ["bare"] or len(sys.argv) != 5:
        raise SystemExit("usage: python -m bench.harness bare PORT PATH LOOP")
    _serve_bare(int(sys.argv[2]), sys.argv[3], sys.argv[4])
