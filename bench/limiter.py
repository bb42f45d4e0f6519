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
7. the same limiter with its one ``EVALSHA`` per loop turn built and sent by redis-py's
   ``pipeline`` instead of framed by hand: whether the hand framing earns its place;
8. bare + the ``limits`` library's moving window (redis-py), 1,000 tenants.

Prints requests/s, p50 and p99 with each as a ratio to bare, and the web process's CPU
time per request (user + system, from ``/proc/<pid>/stat`` before and after the load), and
appends them to ``bench/RESULTS.md``. Requests/s is the headline; CPU per request is the
fairer figure on a small machine, where the load generator, Redis and the web process share
the cores and a busier server also slows its neighbours. Access logs are off in every server
(they would cost the same in each). ``bench.api`` measures the shipped ``serve`` instead.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench import harness
from service.ratelimit.cluster import ClusterTransport
from service.ratelimit.limiter import Limiter
from service.ratelimit.policy import RouteBuckets
from service.ratelimit.script import ALLOW_OOM_SCRIPT_SHA, SCRIPT_SHA, BatchFramer, argv, bucket_key
from service.settings import RedisURL

TENANTS = 1000
SECONDS = 10
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

SCENARIOS = (
    ("bare aiohttp JSON handler", "bare", "tenants"),
    ("service middlewares, limiter off (reference)", "stack", "tenants"),
    ("service limiter, 1,000 tenants, allowed", "service", "tenants"),
    ("service limiter, one hot tenant over limit", "service", "hot"),
    ("bare + this limiter alone (batched, no other middleware)", "batched", "tenants"),
    ("bare + this limiter alone, one hot tenant over limit", "batched", "hot"),
    ("bare + this limiter, its EVALSHA per loop turn built by redis-py's pipeline", "pipelined", "tenants"),
    ("bare + one EVALSHA per request, no batching", "evalsha", "tenants"),
    ("bare + limits moving window (redis-py)", "limits", "tenants"),
)


async def _create_keys(redis_url: str, folder: Path) -> None:
    from service.auth import ApiKeyStore

    client = Redis.from_url(redis_url)
    store = ApiKeyStore(client)
    keys = [await store.create(f"bench-{n}") for n in range(TENANTS)]
    (folder / "tenants.targets").write_text("".join(f"{PATH}\t{key}\n" for key in keys))
    (folder / "hot.targets").write_text(f"{PATH}\t{await store.create('bench-hot', 'hot')}\n")
    await client.aclose()


def _measure(mode: str, targets: Path, redis_url: str, folder: Path) -> dict[str, float]:
    port = harness.free_port()
    env = {**os.environ, "PYTHONPATH": str(harness.ROOT)}
    command = [sys.executable, "-m", "bench.limiter", "serve", mode, str(port), redis_url, str(folder)]
    server = subprocess.Popen(command, cwd=harness.ROOT, env=env, stdin=subprocess.DEVNULL)
    try:
        harness.wait_for_port(port, server)
        first_key = targets.read_text().split()[1]
        request = urllib.request.Request(f"http://127.0.0.1:{port}{PATH}", headers={"X-API-Key": first_key})
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                first_status = answer.status
        except urllib.error.HTTPError as error:
            first_status = error.code
        cpu_before = harness.cpu_seconds(server.pid)
        result = harness.load(port, targets, SECONDS)
        cpu = harness.cpu_seconds(server.pid) - cpu_before
        result["cpu_us_per_request"] = cpu * 1e6 / max(1, result["requests"])
        result["first_status"] = float(first_status)
        result["rps"] = result["requests"] / result["seconds"]
        return result
    finally:
        harness.stop(server)


def main() -> None:
    """Run every scenario once, print the table and append it to ``bench/RESULTS.md``."""
    with (
        tempfile.TemporaryDirectory(prefix="ottoai-bench-") as tmp,
        harness.private_redis(Path(tmp)) as redis_url,
    ):
        folder = Path(tmp)
        (folder / "policies.toml").write_text(POLICY_TOML)
        asyncio.run(_create_keys(redis_url, folder))
        machine = harness.machine(harness.redis_version(redis_url))
        rows = []
        for label, mode, targets in SCENARIOS:
            print(f"limiter bench: {label} ...", flush=True)
            rows.append((label, _measure(mode, folder / f"{targets}.targets", redis_url, folder)))
    bare = rows[0][1]
    lines = [
        f"## Limiter, {harness.now_utc()}",
        "",
        f"Machine: {machine}. Load: {harness.load_generator()}, {SECONDS} s per scenario, loopback, one web process "
        "each, private redis-server on a unix socket, access logs off.",
        "",
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
    by_mode = {(mode, targets): r for (_, r), (_, mode, targets) in zip(rows, SCENARIOS, strict=True)}
    limits = by_mode["limits", "tenants"]["rps"]
    service, alone = by_mode["service", "tenants"]["rps"], by_mode["batched", "tenants"]["rps"]
    pipelined = by_mode["pipelined", "tenants"]
    lines.append("")
    lines.append(
        f"Requests/s against the limits moving window: service stack with this limiter {service / limits:.2f} x;"
        f" this limiter alone on the bare app (equal footing) {alone / limits:.2f} x."
        f" Hand-framed RESP against redis-py's pipeline building the same EVALSHA: {alone / pipelined['rps']:.2f} x"
        f" requests/s, {pipelined['cpu_us_per_request'] - by_mode['batched', 'tenants']['cpu_us_per_request']:.1f} µs"
        " less server CPU per request."
        ' "bare\'s CPU / this" is the requests/s ratio the scenario would reach if server CPU were the only cost.'
    )
    section = "\n".join(lines)
    print(section)
    harness.append_results(section)


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


def _batched_limiter(redis_url: str, folder: Path, pipelined: bool = False, cluster: bool = False) -> Any:
    """The service's limiter on the bare app: the tenant is the key's tail, no key look-up.

    With ``cluster``, ``redis_url`` is a Redis Cluster node and the limiter sends through its cluster transport.
    """
    import tomllib

    from aiohttp import web
    from aiohttp.typedefs import Handler

    from service.ratelimit.limiter import Outcome
    from service.ratelimit.policy import parse_policies

    policies = parse_policies(tomllib.loads(POLICY_TOML))
    roomy, hot = policies.plan("default").for_route(None), policies.plan("hot").for_route(None)
    hot_key = (folder / "hot.targets").read_text().split()[1]
    limiter = (_PipelinedLimiter if pipelined else Limiter)(Redis.from_url(redis_url), deadline_s=0.05)
    if cluster:
        limiter.cluster = ClusterTransport(
            RedisURL.parse("RATE_LIMIT_REDIS_URL", redis_url), timeout_s=5.0, max_connections=50, client_name="bench"
        )

    @web.middleware
    async def batched(request: web.Request, handler: Handler) -> web.StreamResponse:
        if limiter.cluster is not None and not limiter.cluster.primaries:
            await limiter.cluster.start()  # the slot map, on the first request (there is no start-up hook here)
        key = request.headers.get("X-API-Key", "")
        decision = await limiter.decide(key[-16:], hot if key == hot_key else roomy)
        if decision.outcome == Outcome.LIMITED:
            return web.json_response({"status": 429}, status=429, headers=decision.headers())
        response = await handler(request)
        response.headers.update(decision.headers())
        return response

    return batched


class _RedisPyCommand:
    """Stands in for the limiter's ``BatchFramer``: a batch's ``EVALSHA`` as plain arguments, for redis-py to pack."""

    def __init__(self, script_sha: str) -> None:
        self.script_sha = script_sha

    def evalsha(self, decisions: Sequence[tuple[str, RouteBuckets, object]]) -> tuple[Any, ...]:
        keys = [bucket_key(caller, bucket.name) for caller, route, _ in decisions for bucket in route.buckets]
        args = argv([(route.buckets, route.read_only) for _, route, _ in decisions])
        return (self.script_sha, len(keys), *keys, *args)


class _PipelinedLimiter(Limiter):
    """The service's limiter, but its one ``EVALSHA`` per loop turn is built and sent by redis-py.

    Everything else (batching, local refusals, deadline, replies) is the service's code;
    only the framing differs: redis-py's ``pipeline`` packs the command and reads the
    reply, where ``Limiter`` frames RESP by hand and reads from a connection it keeps.
    """

    def __init__(self, redis: Redis, *, deadline_s: float) -> None:
        super().__init__(redis, deadline_s=deadline_s)
        # The script the limiter loads (flagged allow-oom), as the hand framing sends: not the plain
        # script's SHA, which nothing loads, so that every call would come back NOSCRIPT and fail open.
        self._framer = _RedisPyCommand(ALLOW_OOM_SCRIPT_SHA)  # type: ignore[assignment]

    async def load_script(self, redis: Redis) -> None:
        await super().load_script(redis)
        if isinstance(self._framer, BatchFramer):  # a Redis before 7: the limiter fell back to the plain script
            self._framer = _RedisPyCommand(SCRIPT_SHA)  # type: ignore[assignment]

    async def _send(
        self, commands: list[Any], trailing: Sequence[bytes] = (), between: Callable[[list[Any]], None] | None = None
    ) -> list[Any]:
        assert not trailing, "no reads ride along here (carries_reads is off)"
        async with self._redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.evalsha(*command)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
            return replies


def _naive_limiter(mode: str, redis_url: str, folder: Path) -> list[Any]:
    """The comparison points: a per-request ``EVALSHA``, or ``limits``' moving window."""
    from aiohttp import web
    from aiohttp.typedefs import Handler

    if mode == "bare":
        return []
    if mode in ("batched", "pipelined", "batched-cluster"):
        return [_batched_limiter(redis_url, folder, pipelined=mode == "pipelined", cluster=mode == "batched-cluster")]
    if mode in ("evalsha", "evalsha-cluster"):  # the latter through redis-py's RedisCluster
        import tomllib

        from redis.asyncio import RedisCluster

        from service.ratelimit.policy import parse_policies
        from service.ratelimit.script import SCRIPT

        redis = RedisCluster.from_url(redis_url) if mode == "evalsha-cluster" else Redis.from_url(redis_url)
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
