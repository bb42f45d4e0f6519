"""Limiter benchmark: the real service stack against a bare handler and two naive limiters.

One run, side by side, each server one web process on loopback, the same load generator
(``wrk`` if installed, else ``bench.http_load``) and a private ``redis-server``:

1. bare: a ``web.Application`` with one JSON handler, no middleware;
2. reference: the service's app with ``RATE_LIMIT_ENABLED=false`` (what the other
   middlewares cost: request id, metrics, problem+json, key look-up, validation);
3. service, allowed: ``create_app(settings)`` with every middleware, plus a trivial JSON
   route at ``/v1/bench``; requests rotate over 1,000 tenants' real API keys, all allowed;
4. service, hot tenant: the same, one tenant far over its limit (almost all 429);
5. bare + one ``EVALSHA`` of the same script per request (redis-py, no batching);
6. bare + the service's ``Limiter`` alone (batched, same policy, no other middleware), to
   compare limiters on equal footing;
7. bare + the ``limits`` library's moving window (redis-py), 1,000 tenants.

Prints requests/s, p50 and p99 with each as a ratio to bare, and the web process's CPU
time per request (user + system, from ``/proc/<pid>/stat`` before and after the load), and
appends them to ``bench/RESULTS.md``. Requests/s is the headline; CPU per request is the
fairer figure on a small machine, where the load generator, Redis and the web process share
the cores and a busier server also slows its neighbours. Access logs are off in every server
(they would cost the same in each).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
TENANTS = 1000
SECONDS = 10.0
CONNECTIONS = 50
PATH = "/v1/bench"

POLICY_TOML = """
[plans.default]   # so roomy that the allowed runs never hit it: every request goes to Redis
"*" = [
  { name = "burst", capacity = 1000000, per_second = 100000 },
  { name = "sustained", capacity = 1000000, per_second = 100000 },
]
[plans.hot]       # the hot tenant: 10 requests, then one every 10 s
"*" = [
  { name = "burst", capacity = 10, per_second = 0.1 },
  { name = "sustained", capacity = 600, per_second = 10 },
]
[anonymous]
"*" = [{ name = "address", capacity = 10, per_second = 1 }]
"""

WRK_SCRIPT = """
local keys = {}
local i = 0
init = function(args)
  for line in io.lines(args[1]) do keys[#keys + 1] = line end
  i = math.random(#keys)
end
request = function()
  i = i % #keys + 1
  return wrk.format("GET", nil, { ["X-API-Key"] = keys[i] })
end
done = function(summary, latency, requests)
  io.write(string.format('{"requests": %d, "seconds": %f, "p50_us": %d, "p99_us": %d, "non_2xx": %d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(99),
    summary.errors.status))
end
"""

SCENARIOS = (
    ("bare aiohttp JSON handler", "bare", "tenants"),
    ("service middlewares, limiter off (reference)", "stack", "tenants"),
    ("service limiter, 1,000 tenants, allowed", "service", "tenants"),
    ("service limiter, one hot tenant over limit", "service", "hot"),
    ("bare + this limiter alone (batched, no other middleware)", "batched", "tenants"),
    ("bare + this limiter alone, one hot tenant over limit", "batched", "hot"),
    ("bare + one EVALSHA per request, no batching", "evalsha", "tenants"),
    ("bare + limits moving window (redis-py)", "limits", "tenants"),
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
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


async def _create_keys(redis_url: str, folder: Path) -> None:
    from redis.asyncio import Redis

    from service.auth import ApiKeyStore

    client = Redis.from_url(redis_url)
    store = ApiKeyStore(client)
    keys = [await store.create(f"bench-{n}") for n in range(TENANTS)]
    (folder / "tenants.keys").write_text("\n".join(keys) + "\n")
    (folder / "hot.keys").write_text(await store.create("bench-hot", "hot") + "\n")
    await client.aclose()


def _load(port: int, keys_file: Path, folder: Path) -> dict[str, float]:
    if shutil.which("wrk"):
        script = folder / "rotate.lua"
        script.write_text(WRK_SCRIPT)
        command = [
            "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{int(SECONDS)}s", "-s", str(script),
            f"http://127.0.0.1:{port}{PATH}", "--", str(keys_file),
        ]  # fmt: skip
    else:
        command = [
            sys.executable, "-m", "bench.http_load", "127.0.0.1", str(port), PATH, str(keys_file),
            str(SECONDS), str(CONNECTIONS),
        ]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    line = next(line for line in reversed(output.splitlines()) if line.startswith("{"))
    result: dict[str, float] = json.loads(line)
    return result


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``; 0 elsewhere)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rpartition(")")[2].split()  # after "pid (comm)"; comm may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def _measure(mode: str, keys_file: Path, redis_url: str, folder: Path) -> dict[str, float]:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "bench.limiter", "serve", mode, str(port), redis_url, str(folder)]
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL)
    try:
        _wait_for_port(port, server)
        first_key = keys_file.read_text().split()[0]
        request = urllib.request.Request(f"http://127.0.0.1:{port}{PATH}", headers={"X-API-Key": first_key})
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                first_status = answer.status
        except urllib.error.HTTPError as error:
            first_status = error.code
        cpu_before = _cpu_seconds(server.pid)
        result = _load(port, keys_file, folder)
        result["cpu_us_per_request"] = (_cpu_seconds(server.pid) - cpu_before) * 1e6 / max(1, result["requests"])
        result["first_status"] = float(first_status)
        result["rps"] = result["requests"] / result["seconds"]
        return result
    finally:
        server.terminate()
        server.wait(timeout=10)


def _machine(redis_url: str) -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    version = subprocess.run(
        ["redis-cli", "-s", redis_url.removeprefix("unix://"), "info", "server"],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    redis_version = next((x.split(":")[1] for x in version.splitlines() if x.startswith("redis_version")), "?")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, Redis {redis_version.strip()}"
        f" (load average before the run: {load})"
    )


def main() -> None:
    """Run every scenario once, print the table and append it to ``bench/RESULTS.md``."""
    from service.embedded_redis import RedisServer

    generator = "wrk (1 thread, 50 connections)" if shutil.which("wrk") else "bench.http_load (50 connections)"
    with (
        tempfile.TemporaryDirectory(prefix="ottoai-bench-") as tmp,
        RedisServer(Path(tmp), unix_socket=Path(tmp) / "redis.sock", args=["--save", ""]) as server,
    ):
        folder = Path(tmp)
        redis_url = server.url
        (folder / "policies.toml").write_text(POLICY_TOML)
        asyncio.run(_create_keys(redis_url, folder))
        machine = _machine(redis_url)
        rows = []
        for label, mode, keys in SCENARIOS:
            print(f"  running: {label} ...", flush=True)
            rows.append((label, _measure(mode, folder / f"{keys}.keys", redis_url, folder)))
    bare = rows[0][1]
    lines = [
        "| scenario | requests/s | vs bare | server CPU µs/request | bare's CPU / this | p50 ms | p50 vs bare "
        "| p99 ms | p99 vs bare | non-2xx |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in rows:
        cpu = r["cpu_us_per_request"]
        lines.append(
            f"| {label} | {r['rps']:,.0f} | {r['rps'] / bare['rps']:.2f} | {cpu:.1f} | "
            f"{bare['cpu_us_per_request'] / cpu if cpu else 0:.2f} | {r['p50_us'] / 1000:.2f} | "
            f"{r['p50_us'] / bare['p50_us']:.2f} | {r['p99_us'] / 1000:.2f} | {r['p99_us'] / bare['p99_us']:.2f} | "
            f"{r['non_2xx'] / max(1, r['requests']):.0%} |"
        )
    by_label = dict(rows)
    limits = by_label[SCENARIOS[-1][0]]["rps"]
    service, alone = by_label[SCENARIOS[2][0]]["rps"], by_label[SCENARIOS[4][0]]["rps"]
    lines.append("")
    lines.append(
        f"Requests/s against the limits moving window: service stack with this limiter {service / limits:.2f} x;"
        f" this limiter alone on the bare app (equal footing) {alone / limits:.2f} x."
        ' "bare\'s CPU / this" is the requests/s ratio the scenario would reach if server CPU were the only cost.'
    )
    table = "\n".join(lines)
    print(table)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"\n## Limiter, {stamp}\n\nMachine: {machine}. Load: {generator}, {SECONDS:g} s per scenario, "
        f"loopback, one web process each, private redis-server on a unix socket, access logs off.\n\n{table}\n"
    )
    with RESULTS.open("a", encoding="utf-8") as results:
        if results.tell() == 0:
            results.write("# Benchmark results\n\nFigures are from one machine; compare ratios within one run.\n")
        results.write(section)


def _serve(mode: str, port: int, redis_url: str, folder: Path) -> None:
    from aiohttp import web

    async def bench_handler(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    if mode in ("service", "stack"):
        from service.app import create_app
        from service.logging import configure_logging
        from service.settings import Settings

        env = {"REDIS_URL": redis_url, "RATE_LIMITS_FILE": str(folder / "policies.toml"), "LOG_FORMAT": "json"}
        if mode == "stack":  # the service's middlewares without the limiter, to see what the limiter costs
            env["RATE_LIMIT_ENABLED"] = "false"
        configure_logging("json")
        app = create_app(Settings.from_env(env))
    else:
        app = web.Application(middlewares=_naive_limiter(mode, redis_url, folder))
    app.router.add_get(PATH, bench_handler, allow_head=False)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def _batched_limiter(redis_url: str, folder: Path) -> Any:
    """The service's limiter on the bare app: the tenant is the key's tail, no key look-up."""
    import tomllib

    from aiohttp import web
    from aiohttp.typedefs import Handler
    from redis.asyncio import Redis

    from service.ratelimit.limiter import Limiter, Outcome
    from service.ratelimit.policy import parse_policies

    policies = parse_policies(tomllib.loads(POLICY_TOML))
    roomy, hot = policies.plan("default").for_route(None), policies.plan("hot").for_route(None)
    hot_key = (folder / "hot.keys").read_text().strip()
    limiter = Limiter(Redis.from_url(redis_url), deadline_s=0.05)

    @web.middleware
    async def batched(request: web.Request, handler: Handler) -> web.StreamResponse:
        key = request.headers.get("X-API-Key", "")
        decision = await limiter.decide(key[-16:], hot if key == hot_key else roomy)
        if decision.outcome == Outcome.LIMITED:
            return web.json_response({"status": 429}, status=429, headers=decision.headers())
        response = await handler(request)
        response.headers.update(decision.headers())
        return response

    return batched


def _naive_limiter(mode: str, redis_url: str, folder: Path) -> list[Any]:
    """The comparison points: a per-request ``EVALSHA``, or ``limits``' moving window."""
    from aiohttp import web
    from aiohttp.typedefs import Handler

    if mode == "bare":
        return []
    if mode == "batched":
        return [_batched_limiter(redis_url, folder)]
    if mode == "evalsha":
        import tomllib

        from redis.asyncio import Redis

        from service.ratelimit.policy import parse_policies
        from service.ratelimit.script import SCRIPT, SCRIPT_SHA, argv, bucket_key

        redis = Redis.from_url(redis_url)
        roomy = parse_policies(tomllib.loads(POLICY_TOML)).plan("default").for_route(None).buckets
        args = argv([(roomy, 0)])
        loaded = False

        @web.middleware
        async def evalsha(request: web.Request, handler: Handler) -> web.StreamResponse:
            nonlocal loaded
            if not loaded:
                await redis.script_load(SCRIPT)
                loaded = True
            tenant = request.headers.get("X-API-Key", "")[-16:]
            keys = [bucket_key(tenant, bucket.name) for bucket in roomy]
            reply = await redis.evalsha(SCRIPT_SHA, len(keys), *keys, *args)
            if reply[0] != 1:
                return web.json_response({"status": 429}, status=429)
            return await handler(request)

        return [evalsha]
    from limits import parse
    from limits.aio.storage import RedisStorage
    from limits.aio.strategies import MovingWindowRateLimiter

    storage = RedisStorage("async+redis+unix://" + redis_url.removeprefix("unix://"), implementation="redispy")
    limiter = MovingWindowRateLimiter(storage)
    item = parse("100000/second")

    @web.middleware
    async def moving_window(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not await limiter.hit(item, request.headers.get("X-API-Key", "")[-16:]):
            return web.json_response({"status": 429}, status=429)
        return await handler(request)

    return [moving_window]


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        _serve(sys.argv[2], int(sys.argv[3]), sys.argv[4], Path(sys.argv[5]))
    else:
        main()
